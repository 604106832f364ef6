//! What the types alone cannot check. Every problem names its key and says
//! what the key takes, in the operator's terms.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{Config, ConfigError, parse_base_url};
use crate::headers::{MAX_FOLDED, fold};

/// The smallest header buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    /// Checks what the types alone cannot. Every problem names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        self.validate_upstream(&mut p);
        self.validate_weixin(&mut p);
        self.validate_server(&mut p);
        self.validate_durations(&mut p);
        self.validate_headers(&mut p);
        self.validate_routes(&mut p);
        self.validate_access(&mut p);
        self.validate_redis(&mut p);
        self.validate_assertion(&mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    fn validate_upstream(&self, p: &mut Vec<String>) {
        let u = &self.upstream;
        if u.url.is_empty() {
            p.push("upstream.url: required (the backend's base URL, e.g. \"http://127.0.0.1:3000\")".into());
        } else if let Err(e) = parse_base_url(&u.url, &["http"]) {
            p.push(format!("upstream.url: {e}"));
        }
        if u.max_connections == 0 {
            p.push("upstream.max_connections: must be at least 1".into());
        }
        if u.max_response_headers == 0 {
            p.push("upstream.max_response_headers: must be at least 1".into());
        }
        if u.max_response_header_bytes < MIN_HEADER_BYTES {
            p.push(format!(
                "upstream.max_response_header_bytes: must be at least {MIN_HEADER_BYTES} bytes"
            ));
        }
    }

    fn validate_weixin(&self, p: &mut Vec<String>) {
        let w = &self.weixin;
        if w.appid.is_empty() && self.apps.is_empty() {
            p.push("weixin.appid: required (the mini program's AppID, like \"wx0123456789abcdef\"), or [apps.<name>] sections".into());
            if w.secret.is_empty() {
                p.push("weixin.secret: required (set WXGATE_WEIXIN__SECRET rather than writing it in a file)".into());
            }
        }
        if !w.appid.is_empty() {
            check_app(p, "weixin", &w.appid, &w.secret, "WXGATE_WEIXIN__SECRET");
        } else if !w.secret.is_empty() {
            p.push("weixin.secret: set, but weixin.appid is not".into());
        }
        self.validate_apps(p);
        if let Err(e) = parse_base_url(&w.api_base, &["http", "https"]) {
            p.push(format!("weixin.api_base: {e}"));
        }
        if w.max_connections == 0 {
            p.push("weixin.max_connections: must be at least 1".into());
        }
    }

    fn validate_server(&self, p: &mut Vec<String>) {
        let s = &self.server;
        if listeners_clash(s.listen, s.admin_listen) {
            p.push(format!(
                "server.admin_listen: {} overlaps server.listen {} (the admin endpoints never share the public port)",
                s.admin_listen, s.listen
            ));
        }
        if s.max_body_bytes == 0 {
            p.push("server.max_body_bytes: must be at least 1 byte".into());
        }
        if s.workers > 256 {
            p.push("server.workers: at most 256".into());
        }
        if s.max_connections == 0 {
            p.push("server.max_connections: must be at least 1".into());
        }
        if s.http2_max_concurrent_streams == 0 {
            p.push("server.http2_max_concurrent_streams: must be at least 1".into());
        }
        if s.max_request_headers == 0 {
            p.push("server.max_request_headers: must be at least 1".into());
        }
        if s.max_request_header_bytes < MIN_HEADER_BYTES {
            p.push(format!(
                "server.max_request_header_bytes: must be at least {MIN_HEADER_BYTES} bytes"
            ));
        }
        for (i, cidr) in s.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                p.push(format!(
                    "server.trusted_proxies[{i}]: {cidr:?} is not an address range like \"10.0.0.0/8\" or an address like \"192.0.2.1\""
                ));
            }
        }
    }

    fn validate_durations(&self, p: &mut Vec<String>) {
        for (key, d) in [
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.send_timeout", self.server.send_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.timeout", self.upstream.timeout),
            ("upstream.queue_timeout", self.upstream.queue_timeout),
            ("upstream.websocket_idle_timeout", self.upstream.websocket_idle_timeout),
            ("weixin.timeout", self.weixin.timeout),
            ("session.ttl", self.session.ttl),
            ("session.code_ttl", self.session.code_ttl),
            ("session.previous_key_ttl", self.session.previous_key_ttl),
            ("phone.max_age", self.phone.max_age),
        ] {
            if d.0.is_zero() {
                p.push(format!("{key}: must be longer than zero"));
            }
        }
    }

    fn validate_assertion(&self, p: &mut Vec<String>) {
        let a = &self.assertion;
        if a.ttl.0.is_zero() {
            p.push("assertion.ttl: must be longer than zero".into());
        }
        if !a.enabled {
            return;
        }
        if a.audience.is_empty() {
            p.push("assertion.audience: required with assertion.enabled (the name your backend checks in `aud`, like \"shop-backend\")".into());
        }
        if a.issuer.is_empty() {
            p.push("assertion.issuer: must not be empty".into());
        }
        for (key, file) in std::iter::once(("assertion.key_file".to_owned(), &a.key_file))
            .filter(|(_, f)| !f.is_empty())
            .chain(
                a.previous_key_files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("assertion.previous_key_files[{i}]"), f)),
            )
        {
            if let Err(e) = crate::assertion::KeyPair::from_file(file) {
                p.push(format!("{key}: {e}"));
            }
        }
    }

    fn validate_headers(&self, p: &mut Vec<String>) {
        let mut names = BTreeMap::new();
        let session = ("session.header", self.session.header.as_str());
        let assertion = ("assertion.header", self.assertion.header.as_str());
        for (key, name) in self.headers.injected().into_iter().chain([session, assertion]) {
            let folded = fold(name);
            if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!("{key}: {name:?} is not a valid header name"));
            } else if folded.is_empty() || folded.len() > MAX_FOLDED {
                p.push(format!(
                    "{key}: {name:?} must have 1 to {MAX_FOLDED} letters and digits"
                ));
            } else if let Some(other) = names.insert(folded, key) {
                p.push(format!(
                    "{key}: {name:?} is the same header as {other} (names compare on their letters and digits only, case-folded)"
                ));
            }
        }
        for (key, list) in [
            ("headers.strip_prefixes", &self.headers.strip_prefixes),
            ("headers.strip_names", &self.headers.strip_names),
        ] {
            for (i, name) in list.iter().enumerate() {
                let folded = fold(name);
                if folded.is_empty() || folded.len() > MAX_FOLDED {
                    p.push(format!(
                        "{key}[{i}]: {name:?} must have 1 to {MAX_FOLDED} letters and digits"
                    ));
                }
            }
        }
    }

    fn validate_routes(&self, p: &mut Vec<String>) {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (key, path) in [
            ("login.path", &self.login.path),
            ("phone.path", &self.phone.path),
            ("logout.path", &self.logout.path),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#']) || path.parse::<http::uri::PathAndQuery>().is_err() {
                p.push(format!(
                    "{key}: {path:?} must be a URL path starting with '/', without query"
                ));
                continue;
            }
            let normalized = crate::path::normalize(path).into_owned();
            if let Some(other) = seen.insert(normalized, key) {
                p.push(format!("{key}: {path:?} is the same route as {other}"));
            }
        }
    }
}

impl Config {
    fn validate_redis(&self, p: &mut Vec<String>) {
        if self.session.store != crate::config::StoreKind::Redis {
            return;
        }
        let r = &self.redis;
        let schemes: &[&str] = &["redis", "rediss"];
        if r.url.trim().is_empty() {
            p.push("redis.url: required with session.store = \"redis\" (e.g. \"redis://127.0.0.1:6379\")".into());
        }
        for (i, one) in r.url.split(',').map(str::trim).enumerate() {
            if let Err(e) = parse_base_url(one, schemes) {
                p.push(format!("redis.url: address {}: {e}", i + 1));
            }
        }
        if r.mode == crate::config::RedisMode::Standalone && r.url.contains(',') {
            p.push(
                "redis.url: one address in standalone mode (a list is for mode = \"cluster\" or \"sentinel\")".into(),
            );
        }
        if r.mode == crate::config::RedisMode::Sentinel && r.master_name.is_empty() {
            p.push("redis.master_name: required with mode = \"sentinel\" (the name the sentinels monitor)".into());
        }
        if r.secret.expose().len() < 32 {
            p.push(
                "redis.secret: required with session.store = \"redis\", at least 32 characters, the same on every replica (set WXGATE_REDIS__SECRET)"
                    .into(),
            );
        }
        if r.key_prefix.contains(['{', '}']) {
            p.push("redis.key_prefix: must not contain '{' or '}' (a Redis Cluster hash tag would put every key in one slot)".into());
        }
        if r.timeout.0.is_zero() {
            p.push("redis.timeout: must be longer than zero".into());
        }
        if r.connect_timeout.0.is_zero() {
            p.push("redis.connect_timeout: must be longer than zero".into());
        }
        if !r.tls_ca_file.is_empty() && std::fs::metadata(&r.tls_ca_file).is_err() {
            p.push(format!("redis.tls_ca_file: {:?} cannot be read", r.tls_ca_file));
        }
        if r.l1_max_entries == 0 {
            p.push("redis.l1_max_entries: must be at least 1".into());
        }
    }

    fn validate_access(&self, p: &mut Vec<String>) {
        for (key, list) in [
            ("access.require_session", &self.access.require_session),
            ("access.require_phone", &self.access.require_phone),
        ] {
            for (i, prefix) in list.iter().enumerate() {
                if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
                    p.push(format!(
                        "{key}[{i}]: {prefix:?} must be a path prefix starting with '/', without query"
                    ));
                }
            }
        }
        if !self.access.require_phone.is_empty() && !self.phone.remember {
            p.push(
                "access.require_phone: needs phone.remember = true (the phone number must stay with the session)"
                    .into(),
            );
        }
    }
}

/// An app's AppID and secret.
fn check_app(p: &mut Vec<String>, section: &str, appid: &str, secret: &crate::config::Secret, env: &str) {
    if appid.is_empty() {
        p.push(format!(
            "{section}.appid: required (the mini program's AppID, like \"wx0123456789abcdef\")"
        ));
    } else if !appid.bytes().all(|b| b.is_ascii_alphanumeric()) || appid.len() > 64 {
        p.push(format!(
            "{section}.appid: {appid:?} is not an AppID (letters and digits only, like \"wx0123456789abcdef\")"
        ));
    }
    if secret.is_empty() {
        p.push(format!(
            "{section}.secret: required (set {env} rather than writing it in a file)"
        ));
    } else if !secret.expose().bytes().all(|b| b.is_ascii_graphic()) {
        p.push(format!("{section}.secret: must be visible ASCII characters"));
    }
}

impl Config {
    fn validate_apps(&self, p: &mut Vec<String>) {
        use crate::config::DEFAULT_APP;
        let mut appids: BTreeMap<&str, String> = BTreeMap::new();
        if !self.weixin.appid.is_empty() {
            appids.insert(&self.weixin.appid, "weixin.appid".into());
            if self.apps.contains_key(DEFAULT_APP) {
                p.push(format!(
                    "apps.{DEFAULT_APP}: the name is taken by the app of weixin.appid; rename this one"
                ));
            }
            if !self.weixin.default_app.is_empty() {
                p.push("weixin.default_app: with weixin.appid set, that app is the default".into());
            }
        } else if !self.weixin.default_app.is_empty() && !self.apps.contains_key(&self.weixin.default_app) {
            p.push(format!(
                "weixin.default_app: {:?} names no [apps.<name>] section",
                self.weixin.default_app
            ));
        }
        let mut hosts: BTreeMap<String, String> = BTreeMap::new();
        let mut prefixes: Vec<(String, String)> = Vec::new();
        for (name, app) in &self.apps {
            let section = format!("apps.{name}");
            let env = format!("WXGATE_APPS__{}__SECRET", name.to_ascii_uppercase());
            check_app(p, &section, &app.appid, &app.secret, &env);
            if let Some(other) = appids.insert(&app.appid, format!("{section}.appid")) {
                p.push(format!("{section}.appid: {:?} is also {other}", app.appid));
            }
            for (i, host) in app.hosts.iter().enumerate() {
                let h = crate::apps::normalize_host(host);
                if h.is_empty() || h.contains(['/', ' ', '@']) {
                    p.push(format!(
                        "{section}.hosts[{i}]: {host:?} is not a host name like \"shop.example.com\""
                    ));
                } else if let Some(other) = hosts.insert(h, section.clone()) {
                    p.push(format!("{section}.hosts[{i}]: {host:?} is also a host of {other}"));
                }
            }
            if !app.path_prefix.is_empty() {
                if !app.path_prefix.starts_with('/') || app.path_prefix.contains(['?', '#']) {
                    p.push(format!(
                        "{section}.path_prefix: {:?} must be a path starting with '/'",
                        app.path_prefix
                    ));
                    continue;
                }
                let normalized = crate::path::normalize(&app.path_prefix).into_owned();
                if normalized == "/" {
                    p.push(format!(
                        "{section}.path_prefix: \"/\" would take every request; use weixin.default_app for a default"
                    ));
                    continue;
                }
                for (other_prefix, other) in &prefixes {
                    if crate::path::under(&normalized, other_prefix) || crate::path::under(other_prefix, &normalized) {
                        p.push(format!(
                            "{section}.path_prefix: {:?} overlaps {other}.path_prefix",
                            app.path_prefix
                        ));
                    }
                }
                prefixes.push((normalized, section.clone()));
            }
        }
    }
}

/// Two listeners clash when they share a port and one address covers the
/// other (`0.0.0.0:P` takes `127.0.0.1:P`). Port 0 asks the OS for a free
/// port, different for each.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// "10.0.0.0/8", "::1/128" or a single address.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_clash_across_wildcards() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(listeners_clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(listeners_clash(a("127.0.0.1:80"), a("[::]:80")));
        assert!(!listeners_clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!listeners_clash(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!listeners_clash(a("0.0.0.0:0"), a("0.0.0.0:0")));
    }

    #[test]
    fn cidrs_and_single_addresses_parse() {
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert!(parse_cidr("192.0.2.1").is_some());
        assert!(parse_cidr("::1").is_some());
        assert!(parse_cidr("fd00::/8").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("example.com").is_none());
    }
}
