//! Who the user is, as data, and the ONE step that turns it into headers.
//!
//! The layers never write identity headers. They put what they established
//! into the request's extensions: the session layer a live session
//! ([`Identity`]), the login route the session it just opened, the phone
//! route the number it just decrypted or exchanged (into the same value,
//! [`Identity::phone`]).
//! Right before the request leaves for the backend, after its path has
//! been rewritten, [`Render::apply`]:
//!
//! 1. removes every client header that is, or looks like, a header wxgate
//!    owns ([`crate::headers::Forbidden`]: the identity and phone names, the
//!    session header, WeChat's `x-wx-` family and Cloud Hosting's names,
//!    compared on their letters and digits only);
//! 2. writes the headers of what was established, and nothing else.
//!
//! So "insert or remove, never keep what the client sent" holds by
//! construction, whatever the layers did: a header the backend sees was
//! written here, from data wxgate established. A removed client header is
//! logged at debug and counted in `wxgate_spoofed_headers_removed_total`.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Request};

use crate::apps::Apps;
use crate::assertion::{Signer, Subject};
use crate::config::Config;
use crate::headers::Forbidden;
use crate::metrics;
use crate::session::{PhoneNumber, Session, SessionToken};

/// Who the user is: a live session the request carries (or the login just
/// opened), and the phone number the phone route established for this
/// request. One value in the request's extensions, one insert.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The session's token; `None` never happens today but keeps the data
    /// honest for identities that come without one.
    pub token: Option<SessionToken>,
    pub session: Session,
    /// Established for this request by the phone route; otherwise the
    /// session's remembered number is written when `phone.remember` is on.
    pub phone: Option<PhoneNumber>,
}

/// The header names wxgate writes, parsed once.
#[derive(Debug)]
pub struct HeaderNames {
    pub openid: HeaderName,
    pub unionid: HeaderName,
    pub appid: HeaderName,
    pub phone_number: HeaderName,
    pub pure_phone_number: HeaderName,
    pub country_code: HeaderName,
    pub session: HeaderName,
}

/// A header name from a validated configuration.
fn header_name(v: &str) -> HeaderName {
    // Validation refused invalid names; an empty fallback never matches.
    HeaderName::from_bytes(v.as_bytes()).unwrap_or(HeaderName::from_static("x-wx-invalid"))
}

impl HeaderNames {
    pub fn new(config: &Config) -> Self {
        let h = &config.headers;
        Self {
            openid: header_name(&h.openid),
            unionid: header_name(&h.unionid),
            appid: header_name(&h.appid),
            phone_number: header_name(&h.phone_number),
            pure_phone_number: header_name(&h.pure_phone_number),
            country_code: header_name(&h.country_code),
            session: header_name(&config.session.header),
        }
    }
}

/// The render step (see the module docs). One per worker, shared by its
/// connections.
#[derive(Debug)]
pub struct Render {
    names: HeaderNames,
    forbidden: Forbidden,
    /// The session header in every spelling, for the backend's answers.
    session_spellings: Forbidden,
    /// Each app's AppID as a header value, by app index.
    appids: Box<[HeaderValue]>,
    remember_phone: bool,
    /// Signs an assertion with each identity (`[assertion]`).
    assertion: Option<Arc<Signer>>,
}

impl Render {
    pub fn new(config: &Config, apps: &Apps, assertion: Option<Arc<Signer>>) -> Arc<Self> {
        let h = &config.headers;
        let owned = h
            .injected()
            .into_iter()
            .map(|(_, n)| n)
            // The assertion header is stripped whether or not assertions are on.
            .chain([config.session.header.as_str(), config.assertion.header.as_str()])
            .chain(h.strip_names.iter().map(String::as_str));
        Arc::new(Self {
            names: HeaderNames::new(config),
            forbidden: Forbidden::new(h.strip_prefixes.iter().map(String::as_str), owned)
                .with_exact_only(&[
                    "x-real-ip",
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "forwarded",
                ])
                .with_known(&["x-request-id"]),
            session_spellings: Forbidden::new([], [config.session.header.as_str()]),
            appids: apps.all().iter().map(|a| a.appid_value.clone()).collect(),
            remember_phone: config.phone.remember,
            assertion,
        })
    }

    pub fn names(&self) -> &HeaderNames {
        &self.names
    }

    /// Strips every client copy of a header wxgate owns, then writes the
    /// identity and phone headers of what the request's extensions say was
    /// established.
    pub fn apply<B>(&self, req: &mut Request<B>) {
        self.strip(req.headers_mut());
        // Taken, not cloned: a phone number is three allocations, and
        // nothing reads the identity after the render.
        let identity = req.extensions_mut().remove::<Identity>();
        let headers = req.headers_mut();
        if let Some(identity) = identity {
            let Some(appid) = self.write_identity(headers, &identity.session) else {
                return;
            };
            let phone = match &identity.phone {
                Some(phone) => Some(phone),
                None if self.remember_phone => identity.session.phone(),
                None => None,
            };
            if let Some(phone) = phone {
                self.write_phone(headers, phone);
            }
            if let Some(signer) = &self.assertion {
                let session = &identity.session;
                let assertion = signer.sign(&Subject {
                    openid: session.openid(),
                    appid,
                    unionid: session.unionid(),
                    phone,
                    method: req.method().as_str(),
                    path: req.uri().path(),
                });
                if let Some(assertion) = assertion {
                    req.headers_mut().insert(signer.header_name(), assertion);
                }
            }
        }
    }

    fn strip(&self, headers: &mut HeaderMap) {
        for name in self.forbidden.strip(headers) {
            metrics::spoofed_header_removed();
            tracing::debug!(header = %name, "removed a client-sent copy of a header wxgate owns");
        }
    }

    /// Writes the identity headers; returns the AppID written, `None` when
    /// there is no identity to write.
    fn write_identity(&self, headers: &mut HeaderMap, session: &Session) -> Option<&str> {
        // Login refuses such openids, and a store never hands out a session
        // of an app that is not configured; never forward half an identity.
        let (Ok(openid), Some(appid)) = (
            HeaderValue::from_str(session.openid()),
            self.appids.get(usize::from(session.app())),
        ) else {
            return None;
        };
        headers.insert(&self.names.openid, openid);
        if let Some(unionid) = session.unionid().and_then(|u| HeaderValue::from_str(u).ok()) {
            headers.insert(&self.names.unionid, unionid);
        }
        headers.insert(&self.names.appid, appid.clone());
        // AppIDs are letters and digits (validated).
        appid.to_str().ok()
    }

    fn write_phone(&self, headers: &mut HeaderMap, phone: &PhoneNumber) {
        for (name, value) in [
            (&self.names.phone_number, &phone.phone_number),
            (&self.names.pure_phone_number, &phone.pure_phone_number),
            (&self.names.country_code, &phone.country_code),
        ] {
            // Values are checked to be digits (and '+') before they are stored.
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }

    /// Removes every spelling of the session header from a backend's
    /// answer: wxgate alone hands out session tokens.
    pub fn strip_session_from_response(&self, headers: &mut HeaderMap) {
        for name in self.session_spellings.strip(headers) {
            tracing::debug!(header = %name, "removed the backend's copy of the session header");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::PhoneNumber;
    use crate::weixin::crypto::SessionKey;

    fn config(remember: bool) -> Config {
        let mut c = Config::default();
        c.weixin.appid = "wx4f4bc4dec97d474b".into();
        c.phone.remember = remember;
        c
    }

    fn make(c: &Config) -> Arc<Render> {
        Render::new(c, &Apps::new(c), None)
    }

    fn phone(n: &str) -> PhoneNumber {
        PhoneNumber {
            phone_number: n.into(),
            pure_phone_number: n.into(),
            country_code: "86".into(),
        }
    }

    fn forged() -> Request<()> {
        Request::builder()
            .header("x-wx-openid", "forged")
            .header("x.wx.unionid", "forged")
            .header("X_WX_PHONE_NUMBER", "forged")
            .header("x-wx-from-openid", "forged")
            .header("x-original-forwarded-for", "forged")
            .header("x_wx_session", "forged")
            .header("accept", "kept")
            .body(())
            .unwrap()
    }

    fn names(req: &Request<()>) -> Vec<String> {
        let mut n: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn an_anonymous_request_keeps_nothing_of_wxgates() {
        let render = make(&config(false));
        let mut req = forged();
        render.apply(&mut req);
        assert_eq!(names(&req), ["accept"]);
    }

    #[test]
    fn an_identity_is_written_and_only_it() {
        let render = make(&config(true));
        let session = Session::new("oUSER", Some("uUNION"), SessionKey::random(), 0);
        let mut req = forged();
        req.extensions_mut().insert(Identity {
            token: None,
            session: session.clone(),
            phone: None,
        });
        render.apply(&mut req);
        let h = req.headers();
        assert_eq!(h["x-wx-openid"], "oUSER");
        assert_eq!(h["x-wx-unionid"], "uUNION");
        assert_eq!(h["x-wx-appid"], "wx4f4bc4dec97d474b");
        assert!(h.get("x-wx-phone-number").is_none(), "no phone was established");
        assert_eq!(h.get_all("x-wx-openid").iter().count(), 1);
        assert_eq!(names(&req).len(), 4, "{:?}", names(&req));

        // A remembered phone is written with remember on, the one just
        // established wins over it, and without remember only the latter.
        let remembered = session.with_phone(phone("13800000001"));
        for (remember, established, want) in [
            (true, None, Some("13800000001")),
            (true, Some("13800000002"), Some("13800000002")),
            (false, None, None),
            (false, Some("13800000002"), Some("13800000002")),
        ] {
            let render = make(&config(remember));
            let mut req = forged();
            req.extensions_mut().insert(Identity {
                token: None,
                session: remembered.clone(),
                phone: established.map(phone),
            });
            render.apply(&mut req);
            let got = req
                .headers()
                .get("x-wx-phone-number")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(got.as_deref(), want, "remember {remember}, established {established:?}");
        }
    }

    #[test]
    fn the_appid_written_is_the_sessions_apps() {
        let mut c = config(false);
        c.apps.insert(
            "staff".into(),
            crate::config::AppConfig {
                appid: "wxstaff000000001".into(),
                ..Default::default()
            },
        );
        let render = make(&c);
        let session = Session::new("oUSER", None, SessionKey::random(), 0);
        for (app, want) in [
            (0, Some("wx4f4bc4dec97d474b")),
            (1, Some("wxstaff000000001")),
            (7, None),
        ] {
            let mut req = forged();
            req.extensions_mut().insert(Identity {
                token: None,
                session: session.clone().in_app(app),
                phone: None,
            });
            render.apply(&mut req);
            let h = req.headers();
            assert_eq!(h.get("x-wx-appid").map(|v| v.to_str().unwrap()), want, "app {app}");
            // An app that is not configured gets no half identity.
            assert_eq!(h.get("x-wx-openid").is_some(), want.is_some());
        }
    }

    #[test]
    fn the_backends_session_header_is_removed_in_every_spelling() {
        let render = make(&config(false));
        let mut h = HeaderMap::new();
        h.insert("x-wx-session", "stolen".parse().unwrap());
        h.insert("X_WX_SESSION", "stolen".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        render.strip_session_from_response(&mut h);
        assert_eq!(h.len(), 1);
    }
}
