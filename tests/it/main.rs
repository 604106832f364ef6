//! wxgate's integration tests, one binary (linking one per topic costs
//! minutes on two cores): the real server started in-process on 127.0.0.1:0
//! in front of in-process mock upstreams and the shipped fake WeChat, or the
//! real binary (`cli`). Shared helpers are in `common`.
//!
//! Every test asserts on what the upstream received or what the client got,
//! so each fails when the behaviour it names breaks. Waits are bounded
//! (timeouts, `eventually`), never timing assertions.

mod common;

mod anti_spoofing;
mod apps;
mod assertion;
mod bad_input;
mod cli;
mod demo;
mod forwarding;
mod http1;
mod http2;
mod lifecycle;
mod login;
mod passthrough;
mod phone;
mod sessions;
mod shared_state;
mod smoke;
mod streaming;
mod trust;
mod upstream;
mod websocket;
