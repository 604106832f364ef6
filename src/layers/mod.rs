//! The tower layers of the request path, in the order `lib.rs::stack`
//! applies them (top to bottom), then the routes the router dispatches to.

pub mod access_log;
pub mod errors;
pub mod request_id;
pub mod router;
pub mod session;

pub mod login;
pub mod logout;
pub mod phone;
