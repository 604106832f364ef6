//! Fakes shipped with wxgate, so that users can test without WeChat.
//!
//! [`FakeWeixin`] stands in for `api.weixin.qq.com` (`wxgate fake-weixin` runs it on its own;
//! tests run it in-process with [`FakeWeixin::spawn_local`]). Its module documentation,
//! [`weixin`], is the reference for the login and phone codes that drive it. [`EchoBackend`]
//! answers every request with what it received, for demos and tests.

mod echo;
pub mod weixin;

pub use echo::{EchoBackend, Received, echo};
pub use weixin::{Api, FakeWeixin, MintError, MintRequest, Minted};
