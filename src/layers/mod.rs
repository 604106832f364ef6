//! The tower layers of the request path, one per file, in the order
//! `lib.rs::stack` applies them.

pub mod access_log;
pub mod identity;
pub mod login;
pub mod phone;
pub mod route;
pub mod strip_identity;
