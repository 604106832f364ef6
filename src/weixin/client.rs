//! WeChat's server API: code2Session, stable_token, getuserphonenumber.
//!
//! One client per worker thread, each with its own pool of keep-alive
//! connections (HTTPS with rustls and the Mozilla roots built in, so the
//! runtime image needs no CA bundle; plain HTTP for a local fake). Every call
//! is bounded by `weixin.timeout`; its body is parsed as JSON whatever its
//! Content-Type says (WeChat labels JSON `text/plain`).
//!
//! Errcodes become [`Error`]s here, in [`errcode_error`]; the AppSecret goes
//! only into the request to WeChat, never into a log line or an error.
//! Every call names its app ([`App`]): one client serves every configured
//! mini program, with no per-app state of its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::time::Instant;

use crate::apps::App;
use crate::config::WeixinConfig;
use crate::error::Error;
use crate::metrics;
use crate::weixin::crypto::SessionKey;

/// Largest answer read from WeChat.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Pause before the one retry of a code2Session that answered -1 (busy).
const BUSY_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A client of WeChat's server API, one per worker; cheap to clone (the
/// clones share its connection pool and call limit).
#[derive(Clone)]
pub struct WeixinClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    inner: Arc<Inner>,
}

struct Inner {
    /// Bounds simultaneous calls, so a burst reuses pooled connections.
    permits: tokio::sync::Semaphore,
    base: String,
    timeout: Duration,
}

/// code2Session's answer.
pub struct Login {
    /// The user's openid in this mini program.
    pub openid: String,
    /// The user's unionid, when WeChat gave one (an Open Platform account).
    pub unionid: Option<String>,
    /// The key that decrypts the user's `encryptedData`.
    pub session_key: SessionKey,
}

/// An access token and its lifetime in seconds.
pub struct AccessToken {
    /// The token itself.
    pub token: Arc<str>,
    /// Its lifetime in seconds, from now (7200 when WeChat gave none).
    pub expires_in: u64,
}

/// getuserphonenumber's `phone_info`, as WeChat sent it (not yet validated).
#[derive(Debug)]
pub struct PhoneInfo {
    /// `phoneNumber`: with its country code for numbers outside mainland China.
    pub phone_number: String,
    /// `purePhoneNumber`: without its country code.
    pub pure_phone_number: String,
    /// `countryCode`.
    pub country_code: String,
}

/// getuserphonenumber either fails for the token (refresh and retry) or for
/// good.
#[derive(Debug)]
pub enum PhoneCallError {
    /// WeChat refused the access token (invalid or expired): refresh it and
    /// call once more.
    TokenRejected {
        /// WeChat's errcode: 40001, 40014 or 42001.
        errcode: i64,
    },
    /// Any other failure, final for this request.
    Failed(Error),
}

impl WeixinClient {
    /// One per worker. Fails only if rustls cannot be set up.
    pub fn new(config: &WeixinConfig) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout.get()));
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_connections)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            http,
            inner: Arc::new(Inner {
                permits: tokio::sync::Semaphore::new(config.max_connections.max(1)),
                base: config.api_base.trim_end_matches('/').to_owned(),
                timeout: config.timeout.get(),
            }),
        })
    }

    /// Exchanges a `wx.login` code of `app`. A busy answer (-1) is retried
    /// once with the same code after a short pause: WeChat did not consume it.
    pub async fn code2session(&self, app: &App, code: &str) -> Result<Login, Error> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("appid", &app.appid)
            .append_pair("secret", app.secret.expose())
            .append_pair("js_code", code)
            .append_pair("grant_type", "authorization_code")
            .finish();
        let uri = format!("{}/sns/jscode2session?{query}", self.inner.base);
        let mut attempt = 0;
        let answer = loop {
            let req = request(Method::GET, &uri, None)?;
            let answer = self.call(app, "jscode2session", req).await?;
            match errcode(&answer) {
                0 => break answer,
                -1 if attempt == 0 => {
                    attempt += 1;
                    tokio::time::sleep(BUSY_RETRY_PAUSE).await;
                }
                code => return Err(errcode_error(code, &answer)),
            }
        };
        let openid = string_field(&answer, "openid")
            .filter(|s| valid_id(s))
            .ok_or_else(|| Error::Weixin("code2Session answered without a valid openid".into()))?;
        let unionid = match answer.get("unionid") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if valid_id(s) => Some(s.clone()),
            Some(_) => return Err(Error::Weixin("code2Session answered an invalid unionid".into())),
        };
        let session_key = string_field(&answer, "session_key")
            .and_then(|k| SessionKey::from_base64(&k).ok())
            .ok_or_else(|| Error::Weixin("code2Session answered without a valid session_key".into()))?;
        Ok(Login {
            openid,
            unionid,
            session_key,
        })
    }

    /// Fetches `app`'s stable access token; `force_refresh` invalidates the
    /// current one at WeChat (rate-limited there: use only after a rejection).
    pub async fn stable_token(&self, app: &App, force_refresh: bool) -> Result<AccessToken, Error> {
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": &*app.appid,
            "secret": app.secret.expose(),
            "force_refresh": force_refresh,
        });
        let uri = format!("{}/cgi-bin/stable_token", self.inner.base);
        let req = request(Method::POST, &uri, Some(body.to_string()))?;
        let answer = self.call(app, "stable_token", req).await?;
        match errcode(&answer) {
            0 => {}
            code => return Err(errcode_error(code, &answer)),
        }
        let token = string_field(&answer, "access_token")
            .filter(|t| crate::headers::visible_ascii(t, 512))
            .ok_or_else(|| Error::Weixin("stable_token answered without an access_token".into()))?;
        let expires_in = answer.get("expires_in").and_then(number_or_string).unwrap_or(7200);
        Ok(AccessToken {
            token: token.into(),
            expires_in,
        })
    }

    /// Exchanges a phone code. Billed by WeChat: the caller must never call
    /// it twice for one request, except once after a token refresh.
    pub async fn get_user_phone_number(
        &self,
        app: &App,
        token: &str,
        code: &str,
        openid: &str,
    ) -> Result<PhoneInfo, PhoneCallError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", token)
            .finish();
        let uri = format!("{}/wxa/business/getuserphonenumber?{query}", self.inner.base);
        let body = serde_json::json!({ "code": code, "openid": openid }).to_string();
        let req = request(Method::POST, &uri, Some(body)).map_err(PhoneCallError::Failed)?;
        let answer = self
            .call(app, "getuserphonenumber", req)
            .await
            .map_err(PhoneCallError::Failed)?;
        match errcode(&answer) {
            0 => {}
            code @ (40001 | 40014 | 42001) => return Err(PhoneCallError::TokenRejected { errcode: code }),
            code => return Err(PhoneCallError::Failed(errcode_error(code, &answer))),
        }
        let info = answer.get("phone_info").ok_or_else(|| {
            PhoneCallError::Failed(Error::Weixin("getuserphonenumber answered without phone_info".into()))
        })?;
        let field = |name: &str| {
            info.get(name).and_then(number_or_string_text).ok_or_else(|| {
                PhoneCallError::Failed(Error::Weixin(
                    format!("getuserphonenumber answered without {name}").into(),
                ))
            })
        };
        Ok(PhoneInfo {
            phone_number: field("phoneNumber")?,
            pure_phone_number: field("purePhoneNumber")?,
            country_code: field("countryCode")?,
        })
    }

    /// One HTTP exchange with WeChat, answered as a JSON object.
    async fn call(&self, app: &App, api: &'static str, req: Request<Full<Bytes>>) -> Result<Value, Error> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.inner.timeout, async {
            let _permit = self
                .inner
                .permits
                .acquire()
                .await
                .map_err(|_| ("closed", Error::WeixinUnavailable(None)))?;
            let res = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ("unreachable", Error::WeixinUnavailable(Some(Arc::new(e))))
                } else {
                    (
                        "io_error",
                        Error::Weixin(
                            format!("the connection to WeChat failed: {}", crate::error::chain_of(&e)).into(),
                        ),
                    )
                }
            })?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|_| ("io_error", Error::Weixin("WeChat's answer was cut or too large".into())))?
                .to_bytes();
            if !status.is_success() {
                return Err((
                    "http_error",
                    Error::Weixin(format!("WeChat answered HTTP {}", status.as_u16()).into()),
                ));
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(("bad_body", Error::Weixin("WeChat's answer is not a JSON object".into()))),
            }
        })
        .await
        .unwrap_or(Err(("timeout", Error::WeixinTimeout)));
        let elapsed = start.elapsed();
        match &result {
            Ok(answer) => {
                let code = errcode(answer);
                let outcome = if code == 0 { "ok".to_string() } else { code.to_string() };
                if code != 0 {
                    let errmsg = answer.get("errmsg").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(app = %app.name, api, errcode = code, errmsg, "WeChat answered an error");
                }
                metrics::weixin_call(app.name, api, &outcome, elapsed);
            }
            // Logged once, where the error becomes the client's answer.
            Err((outcome, _)) => metrics::weixin_call(app.name, api, outcome, elapsed),
        }
        result.map_err(|(_, e)| e)
    }
}

fn request(method: Method, uri: &str, json: Option<String>) -> Result<Request<Full<Bytes>>, Error> {
    let mut b = Request::builder().method(method).uri(uri);
    if json.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(json.map(Bytes::from).unwrap_or_default()))
        .map_err(|e| Error::Internal(format!("cannot build the WeChat request: {e}").into()))
}

/// The answer's errcode; a missing one means success.
fn errcode(answer: &Value) -> i64 {
    match answer.get("errcode") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(i64::MIN),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(i64::MIN),
        Some(_) => i64::MIN,
    }
}

/// The error for a WeChat errcode, shared by every API.
pub fn errcode_error(code: i64, answer: &Value) -> Error {
    match code {
        40029 | 40163 => Error::WeixinInvalidCode { errcode: code },
        40226 => Error::UserBlocked,
        45011 => Error::RateLimited,
        -1 => Error::WeixinBusy,
        40013 | 40125 => Error::WeixinConfig { errcode: code },
        i64::MIN => Error::Weixin("WeChat answered a malformed errcode".into()),
        _ => {
            // WeChat's errmsg was logged at debug with the call: it is not
            // for the client.
            let _ = answer;
            Error::Weixin(format!("errcode {code}").into())
        }
    }
}

fn string_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn number_or_string(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn number_or_string_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// openids and unionids become header values: visible ASCII, bounded.
fn valid_id(s: &str) -> bool {
    crate::headers::visible_ascii(s, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcodes_map_to_the_documented_errors() {
        let v = Value::Null;
        assert!(matches!(
            errcode_error(40029, &v),
            Error::WeixinInvalidCode { errcode: 40029 }
        ));
        assert!(matches!(
            errcode_error(40163, &v),
            Error::WeixinInvalidCode { errcode: 40163 }
        ));
        assert!(matches!(errcode_error(40226, &v), Error::UserBlocked));
        assert!(matches!(errcode_error(45011, &v), Error::RateLimited));
        assert!(matches!(errcode_error(-1, &v), Error::WeixinBusy));
        assert!(matches!(errcode_error(40013, &v), Error::WeixinConfig { .. }));
        assert!(matches!(errcode_error(40125, &v), Error::WeixinConfig { .. }));
        assert!(matches!(errcode_error(12345, &v), Error::Weixin(_)));
    }

    #[test]
    fn errcode_accepts_numbers_strings_and_absence() {
        assert_eq!(errcode(&serde_json::json!({})), 0);
        assert_eq!(errcode(&serde_json::json!({"errcode": 0})), 0);
        assert_eq!(errcode(&serde_json::json!({"errcode": "40029"})), 40029);
        assert_eq!(errcode(&serde_json::json!({"errcode": -1})), -1);
        assert_eq!(errcode(&serde_json::json!({"errcode": [1]})), i64::MIN);
    }
}
