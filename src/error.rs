//! The one error type of the request path, and the ONE function that turns an
//! error into the client's response.
//!
//! Every variant says who is at fault ([`Fault`]): the client, WeChat, the
//! upstream backend, or wxgate itself. The answer is always JSON
//! `{"error": "<code>", "message": "<text>"}`; a message never carries a
//! secret, a session token, a session key or a phone number.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::body::Body;

/// Who caused an error: decides the log level and whether a retry helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Weixin,
    Upstream,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    // --- the client ---
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("this route accepts {0} only")]
    MethodNotAllowed(&'static str),
    #[error("this route needs a live session: log in again (wx.login)")]
    SessionRequired,
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

    // --- WeChat ---
    #[error("WeChat rejected the code (errcode {errcode}): call wx.login again")]
    WeixinInvalidCode { errcode: i64 },
    #[error("WeChat blocked this user's login (errcode 40226)")]
    UserBlocked,
    #[error("WeChat's frequency limit was reached (errcode 45011): try again later")]
    RateLimited,
    #[error("WeChat is busy (errcode -1): try again")]
    WeixinBusy,
    #[error("WeChat rejected wxgate's credentials (errcode {errcode}): check weixin.appid and weixin.secret")]
    WeixinConfig { errcode: i64 },
    #[error("WeChat answered unexpectedly: {0}")]
    Weixin(String),
    #[error("WeChat could not be reached")]
    WeixinUnavailable,
    #[error("WeChat did not answer in time")]
    WeixinTimeout,

    // --- the upstream backend ---
    #[error("the upstream backend could not be reached")]
    UpstreamUnavailable,
    #[error("the upstream backend did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream backend's answer cannot be forwarded: it used {0}")]
    UpstreamProtocol(&'static str),

    // --- wxgate ---
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn fault(&self) -> Fault {
        use Error::*;
        match self {
            BodyTooLarge { .. }
            | InvalidRequest(_)
            | MethodNotAllowed(_)
            | SessionRequired
            | DecryptFailed
            | WatermarkMismatch
            | WatermarkExpired
            | NoPhoneNumber
            | ClientBody
            | ClientTimeout
            | ConnectNotSupported
            | TransferCodingNotSupported => Fault::Client,
            WeixinInvalidCode { .. }
            | UserBlocked
            | RateLimited
            | WeixinBusy
            | WeixinConfig { .. }
            | Weixin(_)
            | WeixinUnavailable
            | WeixinTimeout => Fault::Weixin,
            UpstreamUnavailable | UpstreamTimeout | UpstreamProtocol(_) => Fault::Upstream,
            Internal(_) => Fault::Internal,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            BodyTooLarge { .. } => "body_too_large",
            InvalidRequest(_) => "invalid_request",
            MethodNotAllowed(_) => "method_not_allowed",
            WeixinInvalidCode { .. } => "invalid_code",
            SessionRequired => "session_required",
            DecryptFailed => "decrypt_failed",
            WatermarkMismatch => "watermark_mismatch",
            WatermarkExpired => "watermark_expired",
            NoPhoneNumber => "no_phone_number",
            ClientBody => "client_body",
            ClientTimeout => "client_timeout",
            ConnectNotSupported | TransferCodingNotSupported => "not_implemented",
            UserBlocked => "user_blocked",
            RateLimited => "rate_limited",
            WeixinBusy => "weixin_busy",
            WeixinConfig { .. } => "weixin_config",
            Weixin(_) => "weixin_error",
            WeixinUnavailable => "weixin_unavailable",
            WeixinTimeout => "weixin_timeout",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamProtocol(_) => "upstream_protocol",
            Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidRequest(_) | ClientBody => StatusCode::BAD_REQUEST,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            WeixinInvalidCode { .. } | SessionRequired | DecryptFailed => StatusCode::UNAUTHORIZED,
            WatermarkMismatch | WatermarkExpired | UserBlocked => StatusCode::FORBIDDEN,
            NoPhoneNumber => StatusCode::UNPROCESSABLE_ENTITY,
            // 501, not 405: a 405 must list the allowed methods, and every
            // other method is the upstream's to allow.
            ConnectNotSupported | TransferCodingNotSupported => StatusCode::NOT_IMPLEMENTED,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            WeixinBusy | WeixinUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            WeixinConfig { .. } | Weixin(_) | UpstreamUnavailable | UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            WeixinTimeout | UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one place an error becomes an HTTP response.
    pub fn into_response(self) -> Response<Body> {
        match self.fault() {
            Fault::Internal => tracing::error!(error = %self, "internal error"),
            Fault::Weixin if matches!(self, Error::WeixinConfig { .. }) => {
                tracing::error!(error = %self, "WeChat refuses wxgate's appid/secret")
            }
            Fault::Weixin | Fault::Upstream => tracing::warn!(error = %self, code = self.code(), "request failed"),
            Fault::Client => tracing::debug!(error = %self, code = self.code(), "request refused"),
        }
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() }).to_string();
        let mut res = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Error::MethodNotAllowed(allowed) = self {
            h.insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        if matches!(self, Error::ClientTimeout) {
            // The rest of the body may still come: the connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, Error::SessionRequired) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("WxSession"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_json_with_code_and_message() {
        let res = Error::UpstreamTimeout.into_response();
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
        assert_eq!(Error::WeixinBusy.status(), 503);
        assert_eq!(Error::WeixinConfig { errcode: 40125 }.status(), 502);
        assert_eq!(Error::WeixinUnavailable.status(), 503);
        assert_eq!(Error::WeixinTimeout.status(), 504);
        assert_eq!(Error::UpstreamUnavailable.status(), 502);
        assert_eq!(Error::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(Error::NoPhoneNumber.status(), 422);
        assert_eq!(Error::DecryptFailed.code(), "decrypt_failed");
    }
}
