//! Which of wxgate's own routes a request is for.
//!
//! A route is matched on its exact configured path. A path that is not
//! exactly a route but normalises to one ([`crate::path::normalize`]:
//! `/api/%70hone`, `/API/phone/`, `/api//phone;x`) is neither handled nor
//! passed through: it is refused (400 `non_canonical_path`), because a
//! backend may route that spelling to its own handler for the route, and
//! would then get the client's body without wxgate's checks. Refusing
//! rather than handling keeps one spelling per route, the one a client
//! library sends.
//!
//! With several mini programs, an app with a `path_prefix` has the routes
//! under it too (`/staff` + `/api/login` = `/staff/api/login`): that is how
//! a login reaches an app that a path selects.

use std::borrow::Cow;

use crate::config::Config;
use crate::error::Error;
use crate::identity::Identity;
use crate::metrics::RouteKind;
use crate::path::{normalize, normalize_keeping_dots, stem, under};

/// wxgate's own routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Login,
    Phone,
    Logout,
}

impl Route {
    pub fn kind(self) -> RouteKind {
        match self {
            Route::Login => RouteKind::Login,
            Route::Phone => RouteKind::Phone,
            Route::Logout => RouteKind::Logout,
        }
    }
}

/// What a request path is.
#[derive(Debug, PartialEq, Eq)]
pub enum Classified {
    /// Exactly a route's path.
    Route(Route),
    /// Another spelling of a route's path.
    Spelling(Route),
    /// Anything else: the backend's.
    PassThrough,
}

/// The routes' paths, as configured and normalised.
#[derive(Debug)]
pub struct Routes {
    /// The routes' paths: the configured ones first, then under each app's
    /// path prefix.
    exact: Vec<(Box<str>, Route)>,
    /// `exact`, normalised, in the same order.
    normalized: Vec<(Box<str>, Route)>,
}

impl Routes {
    pub fn new(config: &Config) -> Self {
        let configured = [
            (config.login.path.as_str(), Route::Login),
            (config.phone.path.as_str(), Route::Phone),
            (config.logout.path.as_str(), Route::Logout),
        ];
        let mut exact: Vec<(Box<str>, Route)> = configured.iter().map(|(p, r)| ((*p).into(), *r)).collect();
        for app in config.apps.values().filter(|a| !a.path_prefix.is_empty()) {
            let prefix = normalize(&app.path_prefix);
            let prefix = prefix.trim_end_matches('/');
            exact.extend(
                configured
                    .iter()
                    .map(|(p, r)| (format!("{prefix}{p}").into_boxed_str(), *r)),
            );
        }
        let normalized = exact
            .iter()
            .map(|(p, r)| (normalize(p).into_owned().into_boxed_str(), *r))
            .collect();
        Self { exact, normalized }
    }

    /// Classifies a request path. Exact matches cost a comparison per
    /// route; other paths one scan, and a normalisation only when they are
    /// not plain.
    pub fn classify(&self, path: &str) -> Classified {
        if let Some((_, r)) = self.exact.iter().find(|(p, _)| **p == *path) {
            return Classified::Route(*r);
        }
        let normalized: Cow<'_, str> = normalize(path);
        let stemmed = stem(&normalized);
        match self
            .normalized
            .iter()
            .find(|(p, _)| **p == *normalized || stemmed.is_some_and(|s| **p == *s))
        {
            Some((_, r)) => Classified::Spelling(*r),
            None => Classified::PassThrough,
        }
    }

    /// The configured path of `route`.
    pub fn path(&self, route: Route) -> &str {
        self.exact.iter().find(|(_, r)| *r == route).map_or("/", |(p, _)| p)
    }

    /// The route path that `spelling` is another spelling of.
    pub fn canonical(&self, spelling: &str) -> Option<&str> {
        let normalized = normalize(spelling);
        let stemmed = stem(&normalized);
        let i = self
            .normalized
            .iter()
            .position(|(p, _)| **p == *normalized || stemmed.is_some_and(|s| **p == *s))?;
        Some(&self.exact[i].0)
    }

    /// The route kind for metrics and logs.
    pub fn kind(&self, path: &str) -> RouteKind {
        match self.classify(path) {
            Classified::Route(r) | Classified::Spelling(r) => r.kind(),
            Classified::PassThrough => RouteKind::Passthrough,
        }
    }
}

/// `[access]`: path prefixes wxgate refuses to callers without a session
/// (or without a remembered phone number), matched on the normalised path,
/// so no spelling slips past.
#[derive(Debug, Default)]
pub struct Access {
    session: Vec<Box<str>>,
    phone: Vec<Box<str>>,
}

impl Access {
    pub fn new(config: &Config) -> Self {
        // Normalised, but a trailing '/' ("what is under it only") is kept.
        let prefixes = |list: &[String]| -> Vec<Box<str>> {
            list.iter()
                .map(|p| {
                    let mut n = normalize(p).into_owned();
                    if p.ends_with('/') && n != "/" {
                        n.push('/');
                    }
                    n.into_boxed_str()
                })
                .collect()
        };
        Self {
            session: prefixes(&config.access.require_session),
            phone: prefixes(&config.access.require_phone),
        }
    }

    /// No protected path: nothing to check (the pass-through fast path).
    pub fn is_empty(&self) -> bool {
        self.session.is_empty() && self.phone.is_empty()
    }

    /// Whether a caller with `identity` may reach `path`.
    pub fn check(&self, path: &str, identity: Option<&Identity>) -> Result<(), Error> {
        // Every form a backend might route on: dot segments resolved or not,
        // with or without a suffix. Matching any of them protects the path.
        let resolved = normalize(path);
        let kept = normalize_keeping_dots(path);
        let forms = [Some(&*resolved), stem(&resolved), Some(&*kept), stem(&kept)];
        let covers = |list: &[Box<str>]| list.iter().any(|p| forms.iter().flatten().any(|form| under(form, p)));
        if covers(&self.phone) {
            return match identity {
                None => Err(Error::SessionRequired),
                Some(i) if i.session.phone().is_none() => Err(Error::PhoneRequired),
                Some(_) => Ok(()),
            };
        }
        if identity.is_none() && covers(&self.session) {
            return Err(Error::SessionRequired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_spellings_are_told_apart() {
        let routes = Routes::new(&Config::default());
        assert_eq!(routes.classify("/api/phone"), Classified::Route(Route::Phone));
        assert_eq!(routes.classify("/api/login"), Classified::Route(Route::Login));
        assert_eq!(routes.classify("/api/logout"), Classified::Route(Route::Logout));
        for spelling in [
            "/api/%70hone",
            "/API/phone",
            "/api/phone/",
            "/api//phone",
            "/api/phone;x",
            "/api/./phone",
        ] {
            assert_eq!(
                routes.classify(spelling),
                Classified::Spelling(Route::Phone),
                "{spelling}"
            );
        }
        for other in ["/api/phones", "/api/orders", "/", "/api/phone/x"] {
            assert_eq!(routes.classify(other), Classified::PassThrough, "{other}");
        }
        assert_eq!(routes.kind("/API/LOGIN"), RouteKind::Login);
        assert_eq!(routes.canonical("/API/LOGIN"), Some("/api/login"));
    }

    #[test]
    fn an_apps_path_prefix_has_the_routes_too() {
        let mut config = Config::default();
        config.apps.insert(
            "staff".into(),
            crate::config::AppConfig {
                path_prefix: "/Staff/".into(),
                ..Default::default()
            },
        );
        let routes = Routes::new(&config);
        assert_eq!(routes.classify("/staff/api/login"), Classified::Route(Route::Login));
        assert_eq!(routes.classify("/staff/api/phone"), Classified::Route(Route::Phone));
        assert_eq!(routes.classify("/api/login"), Classified::Route(Route::Login));
        assert_eq!(routes.classify("/STAFF/api/login"), Classified::Spelling(Route::Login));
        assert_eq!(routes.canonical("/STAFF/api//login"), Some("/staff/api/login"));
        assert_eq!(routes.classify("/staff/api/orders"), Classified::PassThrough);
    }

    #[test]
    fn protected_paths_hold_in_every_spelling() {
        use crate::session::{PhoneNumber, Session};
        use crate::weixin::crypto::SessionKey;
        let mut config = Config::default();
        config.access.require_session = vec!["/api/orders".into(), "/api/user/".into()];
        config.access.require_phone = vec!["/api/checkout".into()];
        let access = Access::new(&config);
        let anonymous = None;
        let session = Session::new("o1", None, SessionKey::random(), 0);
        let user = Identity {
            token: None,
            session: session.clone(),
            phone: None,
        };
        let with_phone = Identity {
            token: None,
            session: session.with_phone(PhoneNumber {
                phone_number: "13800138000".into(),
                pure_phone_number: "13800138000".into(),
                country_code: "86".into(),
            }),
            phone: None,
        };
        for path in [
            "/api/orders",
            "/API/Orders/7",
            "/api/%6frders",
            "/api//orders;x",
            "/api/x/../orders/",
        ] {
            assert!(
                matches!(access.check(path, anonymous), Err(Error::SessionRequired)),
                "{path}"
            );
            assert!(access.check(path, Some(&user)).is_ok(), "{path}");
        }
        assert!(access.check("/api/ordersx", anonymous).is_ok());
        assert!(
            access.check("/api/user", anonymous).is_ok(),
            "a trailing '/' covers what is under it only"
        );
        assert!(matches!(
            access.check("/api/user/1", anonymous),
            Err(Error::SessionRequired)
        ));
        assert!(matches!(
            access.check("/api/checkout", anonymous),
            Err(Error::SessionRequired)
        ));
        assert!(matches!(
            access.check("/API/checkout/", Some(&user)),
            Err(Error::PhoneRequired)
        ));
        assert!(access.check("/api/checkout/pay", Some(&with_phone)).is_ok());
        assert!(access.check("/public", anonymous).is_ok());
    }
}
