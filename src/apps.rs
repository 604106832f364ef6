//! Several mini programs in one wxgate: which app a request is for.
//!
//! Each app has its own AppID and secret, access token, login codes, key
//! histories and sessions; a session belongs to the app it logged in to,
//! and its identity headers carry that app's AppID. The app is passed
//! explicitly everywhere (never kept in ambient state: WxJava's
//! thread-local `switchover` caused a long run of bugs).
//!
//! A request's app, in this order:
//!
//! 1. a **host** or **path-prefix selector** of the configuration: the
//!    operator's rule, which no client can change;
//! 2. the **Referer** the WeChat client sets on every `wx.request`
//!    (`https://servicewechat.com/<appid>/<version>/page-frame.html`), when
//!    it names a configured AppID. Anyone outside WeChat can forge it, so it
//!    only routes: it cannot make anybody somebody else, because WeChat binds
//!    each login code to its own app's secret (a code of app A exchanged
//!    with B's credentials is refused);
//! 3. the **default app** (`[weixin].appid`, or `[weixin].default_app`);
//! 4. none: the login route answers 400 `unknown_app`.
//!
//! A session presented on a request that a selector assigns to another app
//! is not honoured (no identity, logged at debug): a shop's token does not
//! open the staff app's paths.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};

use crate::config::{Config, DEFAULT_APP, Secret};
use crate::weixin::token::AccessTokenProvider;

/// One configured mini program.
pub struct App {
    /// Its place in [`Apps`] (what a session records).
    pub index: u16,
    /// Its name (`[apps.<name>]`, or "default"): the metrics' `app` label.
    pub name: &'static str,
    /// Its AppID.
    pub appid: Box<str>,
    /// The AppID as the `x-wx-appid` header value.
    pub appid_value: HeaderValue,
    /// Its AppSecret.
    pub secret: Secret,
    /// Its access token, shared by every worker.
    pub tokens: AccessTokenProvider,
}

impl App {
    /// The app at `index`, named `name`, with its credentials and its own
    /// access-token provider.
    pub fn new(index: u16, name: &str, appid: &str, secret: Secret) -> Self {
        let name = crate::metrics::app_label(name);
        Self {
            index,
            name,
            appid: appid.into(),
            // Validation allows letters and digits only.
            appid_value: HeaderValue::from_str(appid).unwrap_or(HeaderValue::from_static("")),
            secret,
            tokens: AccessTokenProvider::new(name, appid),
        }
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

/// Every configured app, and how requests find theirs.
#[derive(Debug)]
pub struct Apps {
    apps: Vec<App>,
    default: Option<u16>,
    by_host: HashMap<String, u16>,
    /// Normalised path prefixes.
    prefixes: Vec<(Box<str>, u16)>,
}

impl Apps {
    /// From a validated configuration.
    pub fn new(config: &Config) -> Arc<Self> {
        let mut apps = Vec::new();
        let mut default = None;
        let mut by_host = HashMap::new();
        let mut prefixes = Vec::new();
        let mut push = |name: &str, appid: &str, secret: &Secret| -> u16 {
            let index = u16::try_from(apps.len()).unwrap_or(u16::MAX);
            apps.push(App::new(index, name, appid, secret.clone()));
            index
        };
        if !config.weixin.appid.is_empty() {
            default = Some(push(DEFAULT_APP, &config.weixin.appid, &config.weixin.secret));
        }
        for (name, app) in &config.apps {
            let index = push(name, &app.appid, &app.secret);
            if *name == config.weixin.default_app {
                default = Some(index);
            }
            for host in &app.hosts {
                by_host.insert(normalize_host(host), index);
            }
            if !app.path_prefix.is_empty() {
                prefixes.push((
                    crate::path::normalize(&app.path_prefix).into_owned().into_boxed_str(),
                    index,
                ));
            }
        }
        Arc::new(Self {
            apps,
            default,
            by_host,
            prefixes,
        })
    }

    /// The app with index `index` (a session's).
    pub fn get(&self, index: u16) -> Option<&App> {
        self.apps.get(usize::from(index))
    }

    /// Every app, in index order.
    pub fn all(&self) -> &[App] {
        &self.apps
    }

    /// Whether any app has a selector (else [`Apps::selected`] is always `None`).
    fn has_selectors(&self) -> bool {
        !self.by_host.is_empty() || !self.prefixes.is_empty()
    }

    /// The app an operator's selector (host or path prefix) assigns the
    /// request to, if any.
    pub fn selected(&self, headers: &HeaderMap, authority: Option<&str>, path: &str) -> Option<u16> {
        if !self.has_selectors() {
            return None;
        }
        if !self.by_host.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or(authority)
                .map(normalize_host);
            if let Some(index) = host.and_then(|h| self.by_host.get(&h)) {
                return Some(*index);
            }
        }
        if !self.prefixes.is_empty() {
            let path = crate::path::normalize(path);
            return self
                .prefixes
                .iter()
                .find(|(p, _)| crate::path::under(&path, p))
                .map(|(_, i)| *i);
        }
        None
    }

    /// The app a login is for: a selector, else the Referer's AppID, else
    /// the default.
    pub fn for_login(&self, headers: &HeaderMap, authority: Option<&str>, path: &str) -> Option<&App> {
        self.selected(headers, authority, path)
            .or_else(|| self.by_referer(headers))
            .or(self.default)
            .and_then(|i| self.get(i))
    }

    /// The configured app the WeChat client's Referer names.
    fn by_referer(&self, headers: &HeaderMap) -> Option<u16> {
        let referer = headers.get(header::REFERER)?.to_str().ok()?;
        let appid = referer_appid(referer)?;
        self.apps.iter().find(|a| *a.appid == *appid).map(|a| a.index)
    }
}

/// `https://servicewechat.com/<appid>/<version>/page-frame.html` → the AppID.
fn referer_appid(referer: &str) -> Option<&str> {
    let rest = referer.strip_prefix("https://servicewechat.com/")?;
    let mut parts = rest.split('/');
    let (appid, version, page) = (parts.next()?, parts.next()?, parts.next()?);
    let version_ok = version == "devtools" || (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()));
    (version_ok && page == "page-frame.html" && parts.next().is_none() && !appid.is_empty()).then_some(appid)
}

/// A host as selectors compare it: lower case, no port, no trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;

    fn config() -> Config {
        let mut c = Config::default();
        c.apps.insert(
            "shop".into(),
            AppConfig {
                appid: "wxshop0000000001".into(),
                secret: Secret::new("s"),
                hosts: vec!["Shop.Example.com".into()],
                path_prefix: String::new(),
            },
        );
        c.apps.insert(
            "staff".into(),
            AppConfig {
                appid: "wxstaff000000001".into(),
                secret: Secret::new("s"),
                hosts: vec![],
                path_prefix: "/staff".into(),
            },
        );
        c.apps.insert(
            "card".into(),
            AppConfig {
                appid: "wxcard0000000001".into(),
                secret: Secret::new("s"),
                ..AppConfig::default()
            },
        );
        c
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn selectors_then_the_referer_then_the_default() {
        let mut c = config();
        let apps = Apps::new(&c);
        let name = |a: Option<&App>| a.map(|a| a.name);
        let card_referer = (
            "referer",
            "https://servicewechat.com/wxcard0000000001/12/page-frame.html",
        );
        assert_eq!(
            name(apps.for_login(&headers(&[("host", "shop.example.com:443")]), None, "/api/login")),
            Some("shop")
        );
        assert_eq!(
            name(apps.for_login(&headers(&[]), Some("SHOP.example.com"), "/api/login")),
            Some("shop")
        );
        assert_eq!(
            name(apps.for_login(&headers(&[("host", "x")]), None, "/Staff/api/login")),
            Some("staff")
        );
        // A selector wins over the Referer: only the operator's rule counts there.
        assert_eq!(
            name(apps.for_login(
                &headers(&[("host", "shop.example.com"), card_referer]),
                None,
                "/api/login"
            )),
            Some("shop")
        );
        assert_eq!(
            name(apps.for_login(&headers(&[("host", "x"), card_referer]), None, "/api/login")),
            Some("card")
        );
        // No default: nothing.
        assert!(apps.for_login(&headers(&[("host", "x")]), None, "/api/login").is_none());
        c.weixin.default_app = "card".into();
        let apps = Apps::new(&c);
        assert_eq!(
            apps.for_login(&headers(&[("host", "x")]), None, "/api/login")
                .map(|a| a.name),
            Some("card")
        );
    }

    #[test]
    fn the_weixin_app_is_the_default_and_first() {
        let mut c = config();
        c.weixin.appid = "wxdefault0000001".into();
        c.weixin.secret = Secret::new("s");
        let apps = Apps::new(&c);
        assert_eq!(apps.get(0).unwrap().name, "default");
        assert_eq!(
            apps.for_login(&headers(&[("host", "x")]), None, "/").map(|a| a.index),
            Some(0)
        );
        assert_eq!(apps.all().len(), 4);
    }

    #[test]
    fn only_wechats_referer_form_names_an_app() {
        assert_eq!(
            referer_appid("https://servicewechat.com/wxabc/0/page-frame.html"),
            Some("wxabc")
        );
        assert_eq!(
            referer_appid("https://servicewechat.com/wxabc/devtools/page-frame.html"),
            Some("wxabc")
        );
        assert_eq!(
            referer_appid("https://servicewechat.com/wxabc/17/page-frame.html"),
            Some("wxabc")
        );
        for other in [
            "http://servicewechat.com/wxabc/0/page-frame.html",
            "https://servicewechat.com.evil/wxabc/0/page-frame.html",
            "https://servicewechat.com/wxabc/x/page-frame.html",
            "https://servicewechat.com/wxabc/0/other.html",
            "https://servicewechat.com/wxabc/0/page-frame.html/more",
            "https://servicewechat.com//0/page-frame.html",
        ] {
            assert_eq!(referer_appid(other), None, "{other}");
        }
    }

    #[test]
    fn hosts_compare_without_case_port_or_final_dot() {
        assert_eq!(normalize_host("Shop.Example.com:8443"), "shop.example.com");
        assert_eq!(normalize_host("shop.example.com."), "shop.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }
}
