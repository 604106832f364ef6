//! The phone route (`phone.path`): the getPhoneNumber button's data becomes
//! the cleartext phone number in headers to the backend.
//!
//! - Needs a live session (401 `session_required` otherwise: log in again).
//! - The body is `{"encryptedData", "iv"}` (legacy flow), `{"code"}` (base
//!   library >= 2.21.2), or both. With both, decryption is tried first (no
//!   WeChat call, nothing billed) and the code only if that fails.
//! - Decryption tries the session's key, then the user's previous keys: a
//!   `wx.login` during the callback may have replaced the key the data was
//!   encrypted with. Padding, UTF-8 and JSON failures are one answer
//!   (401 `decrypt_failed`), so the route is no padding oracle.
//! - The code flow calls getuserphonenumber with the session's openid and the
//!   stable access token; on a token rejection (40001/40014/42001) it
//!   refreshes the token once and retries once. That is the only retry: each
//!   successful call is billed.
//! - With several mini programs, everything is the session's app's: the
//!   watermark must name its AppID, the code goes to WeChat with its access
//!   token, the previous keys are its user's.
//! - The code flow is billed: `[limits] phone_per_session` bounds phone
//!   requests per session.
//! - Every value is checked (digits, an optional leading '+', bounded
//!   length) before it is established; a refused request never reaches the
//!   backend. The number goes into the request's identity
//!   ([`Identity::phone`]); the render step writes the headers.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::apps::{App, Apps};
use crate::body::{self, Body};
use crate::config::{Config, ForwardBody};
use crate::error::Error;
use crate::headers::visible_ascii;
use crate::identity::Identity;
use crate::metrics;
use crate::proxy::Proxy;
use crate::ratelimit::Limiter;
use crate::session::{PhoneNumber, Session, SessionStore, SessionToken, unix_now};
use crate::weixin::client::{PhoneCallError, PhoneInfo, WeixinClient};
use crate::weixin::crypto::{self, DecryptError, DecryptedData, SessionKey, mask_phone};
use crate::weixin::token::StableToken;

/// Fields removed from the forwarded body with `forward_body = "strip"`.
const ENCRYPTED_FIELDS: [&str; 4] = ["encryptedData", "iv", "code", "cloudID"];

pub struct Phone {
    apps: Arc<Apps>,
    body_limits: body::Limits,
    max_age: u64,
    remember: bool,
    forward_body: ForwardBody,
    store: Arc<dyn SessionStore>,
    weixin: WeixinClient,
    per_session: Arc<Limiter<SessionToken>>,
}

impl Phone {
    pub fn new(
        config: &Config,
        apps: Arc<Apps>,
        store: Arc<dyn SessionStore>,
        weixin: WeixinClient,
        per_session: Arc<Limiter<SessionToken>>,
    ) -> Self {
        Self {
            apps,
            body_limits: body::Limits::new(&config.server),
            max_age: config.phone.max_age.get().as_secs(),
            remember: config.phone.remember,
            forward_body: config.phone.forward_body,
            store,
            weixin,
            per_session,
        }
    }
}

/// What the client sent; the strings borrow from the body when they can.
#[derive(Debug, PartialEq, Eq)]
pub struct PhoneRequest<'a> {
    pub encrypted: Option<(Cow<'a, str>, Cow<'a, str>)>,
    pub code: Option<Cow<'a, str>>,
}

/// One field of the body as sent: absent (or null), a string, or anything
/// else. Reading it never fails, so each field gets its own error message.
#[derive(Default)]
enum Field<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Wrong,
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Absent)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Absent)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Wrong)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Field::Wrong)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Field::Wrong)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field::Wrong)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Wrong)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Wrong)
            }
        }
        deserializer.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
}

/// The phone body's fields; any others are skipped unread.
#[derive(Deserialize)]
struct RawPhoneRequest<'a> {
    #[serde(rename = "encryptedData", default, borrow)]
    encrypted_data: Field<'a>,
    #[serde(default, borrow)]
    iv: Field<'a>,
    #[serde(default, borrow)]
    code: Field<'a>,
}

fn field<'a>(name: &str, f: Field<'a>) -> Result<Option<Cow<'a, str>>, Error> {
    match f {
        Field::Absent => Ok(None),
        Field::Str(s) if !s.is_empty() => Ok(Some(s)),
        _ => Err(Error::invalid(format!("\"{name}\" must be a non-empty string"))),
    }
}

/// Parses the phone route's body: `{"encryptedData","iv"}`, `{"code"}`, or both.
pub fn parse_request(body: &[u8]) -> Result<PhoneRequest<'_>, Error> {
    let invalid = |m: &'static str| Error::invalid(m);
    let not_an_object = || invalid("the body must be a JSON object with \"encryptedData\" and \"iv\", or \"code\"");
    // An object only: the derived visitor would also take an array of the
    // fields in order.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(not_an_object());
    }
    let raw: RawPhoneRequest<'_> = serde_json::from_slice(body).map_err(|_| not_an_object())?;
    let data = field("encryptedData", raw.encrypted_data)?;
    let iv = field("iv", raw.iv)?;
    let code = field("code", raw.code)?;
    let encrypted = match (data, iv) {
        (Some(d), Some(i)) => Some((d, i)),
        (None, None) => None,
        _ => return Err(invalid("\"encryptedData\" and \"iv\" go together")),
    };
    if let Some(c) = &code
        && !visible_ascii(c, 128)
    {
        return Err(invalid("\"code\" must be 1 to 128 visible ASCII characters"));
    }
    if encrypted.is_none() && code.is_none() {
        return Err(invalid(
            "expected \"encryptedData\" and \"iv\", or \"code\" (from the getPhoneNumber button)",
        ));
    }
    Ok(PhoneRequest { encrypted, code })
}

impl Phone {
    pub async fn handle(&self, req: Request<Body>, proxy: &Proxy) -> Result<Response<Body>, Error> {
        if req.method() != Method::POST {
            return Err(Error::MethodNotAllowed("POST"));
        }
        let Some(current) = req.extensions().get::<Identity>().cloned() else {
            return Err(Error::SessionRequired);
        };
        // Stores hand out sessions of configured apps only.
        let Some(app) = self.apps.get(current.session.app()) else {
            return Err(Error::SessionRequired);
        };
        if let Some(token) = &current.token {
            self.per_session.check(token)?;
        }
        let (mut parts, body) = req.into_parts();
        let bytes = body::read_limited(&parts.headers, body, self.body_limits).await?;
        let request = parse_request(&bytes)?;

        let (flow, result) = match (&request.encrypted, &request.code) {
            (Some((data, iv)), code) => match self.decrypt(app, &current.session, data, iv).await {
                Err(Error::DecryptFailed | Error::InvalidRequest(_)) if code.is_some() => {
                    metrics::phone(app.name, "decrypt", "fallback_to_code");
                    let code = code.as_deref().unwrap_or_default();
                    ("code", self.exchange(app, &current.session, code).await)
                }
                other => ("decrypt", other),
            },
            (None, Some(code)) => ("code", self.exchange(app, &current.session, code).await),
            // parse_request refuses a body with neither.
            (None, None) => ("none", Err(Error::invalid("expected encryptedData and iv, or code"))),
        };
        let phone = match result {
            Ok(p) => p,
            Err(e) => {
                metrics::phone(app.name, flow, e.code());
                return Err(e);
            }
        };
        metrics::phone(app.name, flow, "ok");
        tracing::info!(app = app.name, openid = %current.session.openid(), phone = %mask_phone(&phone.phone_number), flow, "phone number established");

        if self.remember
            && current.session.phone() != Some(&phone)
            && let Some(token) = &current.token
        {
            let session = current.session.with_phone(phone.clone());
            if let Err(e) = self.store.insert(token, &session).await {
                // The number is established for this request either way.
                tracing::warn!(error = %e.chain(), "cannot remember the phone number in the session");
            }
        }
        if let Some(identity) = parts.extensions.get_mut::<Identity>() {
            identity.phone = Some(phone);
        }
        let body = match self.forward_body {
            ForwardBody::Forward => bytes,
            ForwardBody::Strip => {
                parts.headers.remove(header::CONTENT_LENGTH);
                strip_encrypted(&bytes)
            }
        };
        proxy.forward(Request::from_parts(parts, body::full(body))).await
    }

    /// The legacy flow: the session's key, then the user's previous keys.
    async fn decrypt(&self, app: &App, session: &Session, data: &str, iv: &str) -> Result<PhoneNumber, Error> {
        let format_error = |e: DecryptError| Error::invalid(format!("encryptedData/iv: {e}"));
        let decrypted = match crypto::decrypt(session.session_key(), iv, data) {
            Ok(d) => d,
            Err(e) if e.is_client_format_error() => return Err(format_error(e)),
            Err(_) => {
                // A store that cannot answer fails the request: answering
                // decrypt_failed without the previous keys would be wrong.
                let previous: Vec<SessionKey> = self
                    .store
                    .recent_keys(&app.appid, session.openid())
                    .await?
                    .into_iter()
                    .filter(|k| k != session.session_key())
                    .take(2)
                    .collect();
                let found = previous.iter().find_map(|k| crypto::decrypt(k, iv, data).ok());
                match found {
                    Some(d) => {
                        metrics::phone(app.name, "decrypt", "previous_key");
                        tracing::debug!(openid = %session.openid(), "decrypted with a previous session key");
                        d
                    }
                    None => return Err(Error::DecryptFailed),
                }
            }
        };
        self.check_decrypted(app, decrypted)
    }

    /// The data must be this app's (its watermark), recent, and a number.
    fn check_decrypted(&self, app: &App, data: DecryptedData) -> Result<PhoneNumber, Error> {
        let Some(watermark) = data.watermark else {
            return Err(Error::WatermarkMismatch);
        };
        if *watermark.appid != *app.appid {
            return Err(Error::WatermarkMismatch);
        }
        if unix_now().saturating_sub(watermark.timestamp) > self.max_age {
            return Err(Error::WatermarkExpired);
        }
        let Some(phone_number) = data.phone_number else {
            return Err(Error::NoPhoneNumber);
        };
        let pure = data.pure_phone_number.unwrap_or_else(|| phone_number.clone());
        let country_code = data.country_code.unwrap_or_default();
        validate(PhoneInfo {
            phone_number,
            pure_phone_number: pure,
            country_code,
        })
    }

    /// The code flow: one billed call with the app's token, plus one retry
    /// after a token refresh.
    async fn exchange(&self, app: &App, session: &Session, code: &str) -> Result<PhoneNumber, Error> {
        let source = StableToken {
            client: &self.weixin,
            app,
        };
        let token = app.tokens.get(&source).await?;
        let info = match self
            .weixin
            .get_user_phone_number(app, &token, code, session.openid())
            .await
        {
            Ok(info) => info,
            Err(PhoneCallError::Failed(e)) => return Err(e),
            Err(PhoneCallError::TokenRejected { errcode }) => {
                tracing::info!(errcode, "WeChat rejected the access token; refreshing once");
                let fresh = app
                    .tokens
                    .refresh_after_rejection(&source, &token, &*self.store)
                    .await?;
                match self
                    .weixin
                    .get_user_phone_number(app, &fresh, code, session.openid())
                    .await
                {
                    Ok(info) => info,
                    Err(PhoneCallError::Failed(e)) => return Err(e),
                    Err(PhoneCallError::TokenRejected { errcode }) => {
                        return Err(Error::Weixin(
                            format!("errcode {errcode} again after a token refresh").into(),
                        ));
                    }
                }
            }
        };
        validate(info)
    }
}

/// Checks WeChat's values before they become headers.
fn validate(info: PhoneInfo) -> Result<PhoneNumber, Error> {
    let phone_like = |s: &str, max: usize| {
        let digits = s.strip_prefix('+').unwrap_or(s);
        !digits.is_empty() && digits.len() <= max && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if !phone_like(&info.phone_number, 20) || !phone_like(&info.pure_phone_number, 20) {
        return Err(Error::Weixin("WeChat's phone number is not a phone number".into()));
    }
    if !phone_like(&info.country_code, 4) {
        return Err(Error::Weixin("WeChat's country code is not a country code".into()));
    }
    Ok(PhoneNumber {
        phone_number: info.phone_number.into(),
        pure_phone_number: info.pure_phone_number.into(),
        country_code: info.country_code.into(),
    })
}

/// The body without its encrypted fields (for `forward_body = "strip"`).
fn strip_encrypted(body: &[u8]) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => {
            for f in ENCRYPTED_FIELDS {
                map.remove(f);
            }
            Bytes::from(Value::Object(map).to_string())
        }
        _ => Bytes::from_static(b"{}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_three_body_shapes_parse() {
        let r = parse_request(br#"{"encryptedData":"a","iv":"b"}"#).unwrap();
        assert_eq!(r.encrypted, Some(("a".into(), "b".into())));
        assert_eq!(r.code, None);
        let r = parse_request(br#"{"code":"c"}"#).unwrap();
        assert_eq!(r.code.as_deref(), Some("c"));
        let r = parse_request(br#"{"encryptedData":"a","iv":"b","code":"c","other":1}"#).unwrap();
        assert!(r.encrypted.is_some() && r.code.is_some());
    }

    #[test]
    fn fields_are_read_whatever_else_the_body_holds() {
        // Escapes are undone; nulls are absent; other fields of any shape are skipped.
        let r = parse_request(
            br#" {"other":{"a":[1,{"b":null}]},"encryptedData":"a\/b","iv":"c\u0064","code":null,"x":[true]}"#,
        )
        .unwrap();
        assert_eq!(r.encrypted, Some(("a/b".into(), "cd".into())));
        assert_eq!(r.code, None);
        // A wrong type names its field.
        for (body, field) in [
            (&br#"{"encryptedData":{"x":1},"iv":"b"}"#[..], "encryptedData"),
            (br#"{"encryptedData":"a","iv":["b"]}"#, "iv"),
            (br#"{"code":true}"#, "code"),
            (br#"{"code":1.5}"#, "code"),
        ] {
            match parse_request(body) {
                Err(Error::InvalidRequest(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        // An array of the fields in order is not an object.
        assert!(matches!(
            parse_request(br#"["a","b","c"]"#),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn anything_else_is_invalid() {
        for body in [
            &b""[..],
            b"[]",
            b"{}",
            b"nope",
            br#"{"encryptedData":"a"}"#,
            br#"{"iv":"a"}"#,
            br#"{"encryptedData":1,"iv":"b"}"#,
            br#"{"code":5}"#,
            br#"{"code":""}"#,
            br#"{"code":"a b"}"#,
        ] {
            assert!(
                matches!(parse_request(body), Err(Error::InvalidRequest(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn only_phone_numbers_become_headers() {
        let ok = |p: &str, cc: &str| {
            validate(PhoneInfo {
                phone_number: p.into(),
                pure_phone_number: p.trim_start_matches('+').into(),
                country_code: cc.into(),
            })
        };
        assert!(ok("13580006666", "86").is_ok());
        assert!(ok("+12025550123", "1").is_ok());
        assert!(ok("138 0000", "86").is_err());
        assert!(ok("1358000666\r\nx", "86").is_err());
        assert!(ok("", "86").is_err());
        assert!(ok("1".repeat(21).as_str(), "86").is_err());
        assert!(ok("13580006666", "86a").is_err());
        assert!(ok("13580006666", "").is_err());
    }

    #[test]
    fn strip_removes_the_encrypted_fields_only() {
        let out = strip_encrypted(br#"{"encryptedData":"a","iv":"b","code":"c","cloudID":"d","keep":1}"#);
        assert_eq!(&out[..], br#"{"keep":1}"#);
    }

    proptest! {
        #[test]
        fn the_body_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&body);
        }

        #[test]
        fn json_shaped_bodies_never_panic(d in proptest::option::of(".{0,40}"), i in proptest::option::of(".{0,40}"), c in proptest::option::of(".{0,40}")) {
            let v = serde_json::json!({"encryptedData": d, "iv": i, "code": c});
            let _ = parse_request(v.to_string().as_bytes());
        }
    }
}
