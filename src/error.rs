//! The one error type of the request path, and the ONE function that turns an
//! error into the client's response.
//!
//! Every variant says who is at fault ([`Fault`]): the client, WeChat, the
//! upstream backend, or wxgate itself. That decides the log level when the
//! error becomes a response, and whether trying again can help
//! ([`Error::is_final`]: a login code WeChat refused stays refused, so the
//! refusal is remembered; a busy or unreachable WeChat is worth another try).
//!
//! Errors carry their cause ([`std::error::Error::source`]) behind an `Arc`,
//! so that they stay `Clone` (a coalesced login hands one outcome to every
//! waiter) and the cause is logged once, where the error becomes a response
//! ([`crate::layers::errors`]), with the request id. The answer is always
//! JSON `{"error": "<code>", "message": "<text>"}`; a message never carries a
//! secret, a session token, a session key or a phone number.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// A cause, shared so that [`Error`] stays `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Who caused an error: decides the log level and whether a retry helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Weixin,
    Upstream,
    /// The shared session store (Redis).
    Store,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    // --- the client ---
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("{0}")]
    InvalidRequest(Cow<'static, str>),
    #[error("this route accepts {0} only")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{what}: use {canonical}")]
    NonCanonicalPath { what: &'static str, canonical: Box<str> },
    #[error("this path needs a live session: log in (wx.login) and send the session header")]
    SessionRequired,
    #[error("no configured mini program matches this request's host, path or Referer, and there is no default app")]
    UnknownApp,
    #[error("this path needs a phone number: tap the getPhoneNumber button first")]
    PhoneRequired,
    #[error("the data could not be decrypted with this user's session key: call wx.login and try again")]
    DecryptFailed,
    #[error("the decrypted data belongs to another mini program")]
    WatermarkMismatch,
    #[error("the decrypted data is older than phone.max_age")]
    WatermarkExpired,
    #[error("the decrypted data carries no phone number")]
    NoPhoneNumber,
    #[error("the client closed the connection or sent a broken body")]
    ClientBody,
    #[error("the client sent nothing of its request body for server.body_read_timeout")]
    ClientTimeout,
    #[error("wxgate is a reverse proxy: CONNECT tunnels are not supported")]
    ConnectNotSupported,
    #[error("wxgate forwards chunked request bodies only: send gzip or deflate as Content-Encoding instead")]
    TransferCodingNotSupported,
    #[error("the backend speaks HTTP/1.0 and this body has no Content-Length and is larger than {limit} bytes")]
    LengthRequired { limit: u64 },
    #[error("too many requests: try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("WeChat rejected the code (errcode {errcode}): call wx.login again")]
    WeixinInvalidCode { errcode: i64 },
    #[error("WeChat blocked this user's login (errcode 40226)")]
    UserBlocked,

    // --- WeChat ---
    #[error("WeChat's frequency limit was reached (errcode 45011): try again later")]
    RateLimited,
    #[error("WeChat is busy (errcode -1): try again")]
    WeixinBusy,
    #[error("WeChat rejected wxgate's credentials (errcode {errcode}): check the appid and secret")]
    WeixinConfig { errcode: i64 },
    #[error("WeChat answered unexpectedly: {0}")]
    Weixin(Cow<'static, str>),
    #[error("WeChat could not be reached")]
    WeixinUnavailable(#[source] Option<Cause>),
    #[error("WeChat did not answer in time")]
    WeixinTimeout,

    // --- the upstream backend ---
    #[error("the upstream backend at {addr} could not be reached")]
    UpstreamUnavailable {
        addr: Arc<str>,
        #[source]
        cause: Option<Cause>,
    },
    #[error("the upstream backend at {addr} did not answer in time")]
    UpstreamTimeout { addr: Arc<str> },
    #[error("the upstream backend's answer cannot be forwarded: {0}")]
    UpstreamProtocol(&'static str),
    #[error("every connection to the upstream backend is busy (upstream.max_connections): try again")]
    UpstreamBusy,

    // --- the session store ---
    #[error("the session store cannot be reached: try again")]
    StoreUnavailable(#[source] Option<Cause>),

    // --- wxgate ---
    #[error("{0}")]
    Internal(Cow<'static, str>),
}

impl Error {
    /// An invalid request, with its message.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidRequest(message.into())
    }

    /// An upstream failure at `addr`, caused by `cause`.
    pub fn upstream_unavailable(addr: &Arc<str>, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::UpstreamUnavailable {
            addr: addr.clone(),
            cause: Some(Arc::new(cause)),
        }
    }

    pub fn fault(&self) -> Fault {
        use Error::*;
        match self {
            BodyTooLarge { .. }
            | InvalidRequest(_)
            | MethodNotAllowed(_)
            | NotFound(_)
            | NonCanonicalPath { .. }
            | SessionRequired
            | UnknownApp
            | PhoneRequired
            | DecryptFailed
            | WatermarkMismatch
            | WatermarkExpired
            | NoPhoneNumber
            | ClientBody
            | ClientTimeout
            | ConnectNotSupported
            | TransferCodingNotSupported
            | LengthRequired { .. }
            | TooManyRequests { .. }
            | WeixinInvalidCode { .. }
            | UserBlocked => Fault::Client,
            RateLimited | WeixinBusy | WeixinConfig { .. } | Weixin(_) | WeixinUnavailable(_) | WeixinTimeout => {
                Fault::Weixin
            }
            UpstreamUnavailable { .. } | UpstreamTimeout { .. } | UpstreamProtocol(_) | UpstreamBusy => Fault::Upstream,
            StoreUnavailable(_) => Fault::Store,
            Internal(_) => Fault::Internal,
        }
    }

    /// Whether the same request would fail the same way again: the client's
    /// own faults. Anything else (WeChat busy or unreachable, a backend
    /// down) may pass on a retry, so its outcome is never remembered.
    pub fn is_final(&self) -> bool {
        self.fault() == Fault::Client
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            BodyTooLarge { .. } => "body_too_large",
            InvalidRequest(_) => "invalid_request",
            MethodNotAllowed(_) => "method_not_allowed",
            NotFound(_) => "not_found",
            NonCanonicalPath { .. } => "non_canonical_path",
            WeixinInvalidCode { .. } => "invalid_code",
            SessionRequired => "session_required",
            UnknownApp => "unknown_app",
            PhoneRequired => "phone_required",
            DecryptFailed => "decrypt_failed",
            WatermarkMismatch => "watermark_mismatch",
            WatermarkExpired => "watermark_expired",
            NoPhoneNumber => "no_phone_number",
            ClientBody => "client_body",
            ClientTimeout => "client_timeout",
            ConnectNotSupported | TransferCodingNotSupported => "not_implemented",
            LengthRequired { .. } => "length_required",
            TooManyRequests { .. } | RateLimited => "rate_limited",
            UserBlocked => "user_blocked",
            WeixinBusy => "weixin_busy",
            WeixinConfig { .. } => "weixin_config",
            Weixin(_) => "weixin_error",
            WeixinUnavailable(_) => "weixin_unavailable",
            WeixinTimeout => "weixin_timeout",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamProtocol(_) => "upstream_protocol",
            UpstreamBusy => "upstream_busy",
            StoreUnavailable(_) => "session_store_unavailable",
            Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidRequest(_) | ClientBody | NonCanonicalPath { .. } | UnknownApp => StatusCode::BAD_REQUEST,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            NotFound(_) => StatusCode::NOT_FOUND,
            ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            LengthRequired { .. } => StatusCode::LENGTH_REQUIRED,
            WeixinInvalidCode { .. } | SessionRequired | DecryptFailed => StatusCode::UNAUTHORIZED,
            WatermarkMismatch | WatermarkExpired | UserBlocked | PhoneRequired => StatusCode::FORBIDDEN,
            NoPhoneNumber => StatusCode::UNPROCESSABLE_ENTITY,
            // 501, not 405: a 405 must list the allowed methods, and every
            // other method is the upstream's to allow.
            ConnectNotSupported | TransferCodingNotSupported => StatusCode::NOT_IMPLEMENTED,
            RateLimited | TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            WeixinBusy | WeixinUnavailable(_) | UpstreamBusy | StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WeixinConfig { .. } | Weixin(_) | UpstreamUnavailable { .. } | UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            WeixinTimeout | UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error and its causes, for the one log line it gets.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// The one place an error becomes an HTTP response. Logging is the
    /// caller's ([`crate::layers::errors`]), which knows the request.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() }).to_string();
        let mut res = Response::new(body::full(Bytes::from(body)));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Error::MethodNotAllowed(allowed) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            // The rest of the body may still come: the connection cannot be reused.
            Error::ClientTimeout => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Error::SessionRequired => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("WxSession"));
            }
            Error::TooManyRequests { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            Error::WeixinBusy | Error::UpstreamBusy | Error::RateLimited | Error::StoreUnavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}

/// An error followed by its causes, `: `-separated.
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Any error and its causes as one line.
pub fn chain_of(e: &(dyn std::error::Error + 'static)) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_json_with_code_and_message() {
        let res = Error::UpstreamTimeout {
            addr: "127.0.0.1:1".into(),
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "upstream_timeout");
        assert!(v["message"].as_str().unwrap().contains("in time"));
    }

    #[test]
    fn statuses_follow_the_documented_mapping() {
        assert_eq!(Error::WeixinInvalidCode { errcode: 40163 }.status(), 401);
        assert_eq!(Error::UserBlocked.status(), 403);
        assert_eq!(Error::RateLimited.status(), 429);
        assert_eq!(Error::TooManyRequests { retry_after: 3 }.status(), 429);
        assert_eq!(Error::WeixinBusy.status(), 503);
        assert_eq!(Error::WeixinConfig { errcode: 40125 }.status(), 502);
        assert_eq!(Error::WeixinUnavailable(None).status(), 503);
        assert_eq!(Error::WeixinTimeout.status(), 504);
        assert_eq!(Error::UpstreamBusy.status(), 503);
        assert_eq!(Error::LengthRequired { limit: 1 }.status(), 411);
        assert_eq!(Error::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(Error::NoPhoneNumber.status(), 422);
        assert_eq!(Error::PhoneRequired.status(), 403);
        assert_eq!(Error::DecryptFailed.code(), "decrypt_failed");
    }

    #[test]
    fn causes_are_chained_and_only_client_faults_are_final() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::upstream_unavailable(&Arc::from("127.0.0.1:9"), io);
        assert_eq!(
            e.chain().to_string(),
            "the upstream backend at 127.0.0.1:9 could not be reached: refused"
        );
        assert!(!e.is_final());
        assert!(Error::WeixinInvalidCode { errcode: 40029 }.is_final());
        assert!(!Error::WeixinBusy.is_final());
    }

    #[tokio::test]
    async fn retry_after_is_set_where_waiting_helps() {
        let res = Error::TooManyRequests { retry_after: 7 }.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        let res = Error::UpstreamBusy.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    }
}
