//! The tower layers of the request path, in the order `lib.rs::stack`
//! applies them (top to bottom), then the routes the router dispatches to:
//!
//! 1. [`request_id`]: `x-request-id`, kept or made, on every log line about the request.
//! 2. [`access_log`]: the metrics of every request, and its access log line.
//! 3. [`errors`]: errors become JSON answers here, and are logged here, once.
//! 4. [`session`]: a live session token becomes the request's identity.
//! 5. [`router`]: admits a request, then dispatches it to a route or the backend.
//!
//! The routes:
//!
//! - [`login`]: exchanges the `wx.login` code with WeChat and opens a session.
//! - [`phone`]: the getPhoneNumber data becomes the phone headers.
//! - [`logout`]: ends the session everywhere.

// One module a group, so that rustfmt keeps the stack's order.
pub mod request_id;

pub mod access_log;

pub mod errors;

pub mod session;

pub mod router;

pub mod login;

pub mod phone;

pub mod logout;
