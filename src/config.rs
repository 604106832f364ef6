//! Configuration: the TOML file, `WXGATE_<SECTION>__<KEY>` environment
//! overrides, defaults, and validation.
//!
//! Loading happens in three steps so that every error can name its key:
//!
//! 1. the file is parsed into a plain TOML table (syntax errors carry a line);
//! 2. environment overrides are written into that table, typed after the
//!    key's default (an integer key takes an integer, everything else a
//!    string), so `WXGATE_WEIXIN__SECRET=123456` stays a string;
//! 3. the table is deserialised key by key (`deny_unknown_fields`), collecting
//!    every bad key instead of stopping at the first, then [`Config::validate`]
//!    checks what types cannot (URLs, paths, header names, ranges).
//!
//! The shipped `config.toml` documents every key; keep it in step with the
//! doc comments here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Everything wxgate can be told. Each section has its own struct.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub weixin: WeixinConfig,
    pub session: SessionConfig,
    pub login: LoginConfig,
    pub phone: PhoneConfig,
    pub headers: HeadersConfig,
}

/// `[server]`: the listeners and the limits of what wxgate itself reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public address the mini program's requests arrive on.
    pub listen: SocketAddr,
    /// Admin address (/healthz, /readyz, /metrics). Keep it off the public network.
    pub admin_listen: SocketAddr,
    /// Largest body wxgate reads itself (login and phone routes). Pass-through
    /// bodies are streamed and never limited by wxgate.
    pub max_body_bytes: u64,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(with = "duration_str")]
    pub shutdown_grace: HumanDuration,
    /// Worker threads, each with its own runtime, listener (SO_REUSEPORT) and
    /// upstream pool. 0 means one per CPU core.
    pub workers: usize,
    /// How long a client may take to send a request's headers (slowloris
    /// guard), and how long a keep-alive connection may stay idle.
    #[serde(with = "duration_str")]
    pub header_read_timeout: HumanDuration,
    /// How long a client may go without sending any of a request body it
    /// has started (408 after).
    #[serde(with = "duration_str")]
    pub body_read_timeout: HumanDuration,
}

/// `[upstream]`: the legacy backend behind wxgate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the backend, e.g. "http://127.0.0.1:3000". http only: the
    /// backend is a neighbour on the same host or pod.
    pub url: String,
    /// Time allowed to open a TCP connection to the backend (502 after).
    #[serde(with = "duration_str")]
    pub connect_timeout: HumanDuration,
    /// Time allowed for the backend to answer with its response head once the
    /// request body has been sent (504 after): uploads are not timed. Bodies
    /// then stream for as long as they take.
    #[serde(with = "duration_str")]
    pub timeout: HumanDuration,
    /// How long an idle pooled connection to the backend is kept.
    #[serde(with = "duration_str")]
    pub pool_idle_timeout: HumanDuration,
    /// Idle pooled connections kept per worker.
    pub pool_max_idle: usize,
}

/// `[weixin]`: the mini program's credentials and WeChat's API.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeixinConfig {
    /// The mini program's AppID ("wx" followed by 16 hex digits).
    pub appid: String,
    /// The AppSecret. Prefer WXGATE_WEIXIN__SECRET to writing it in a file.
    pub secret: Secret,
    /// WeChat's API base URL; point it at `wxgate fake-weixin` in tests.
    pub api_base: String,
    /// Time allowed for one call to WeChat.
    #[serde(with = "duration_str")]
    pub timeout: HumanDuration,
    /// Most simultaneous calls (so connections) to WeChat per worker; more
    /// wait their turn. Keeps a login storm from opening a connection per user.
    pub max_connections: usize,
}

/// `[session]`: the sessions wxgate keeps after a login.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Header carrying the session token between the mini program and wxgate.
    /// Never forwarded to the backend.
    pub header: String,
    /// Lifetime of a session from its login.
    #[serde(with = "duration_str")]
    pub ttl: HumanDuration,
    /// Most sessions kept; the least used go first beyond it.
    pub max_entries: u64,
    /// How long a login code is remembered, so a retried login gets the same
    /// session instead of WeChat's "code been used".
    #[serde(with = "duration_str")]
    pub code_ttl: HumanDuration,
    /// How long a user's previous session keys are kept after a new login, so
    /// data encrypted just before the key changed still decrypts.
    #[serde(with = "duration_str")]
    pub previous_key_ttl: HumanDuration,
}

/// How the login route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginMode {
    /// Forward the login to the backend with identity headers; add the
    /// session header to its response.
    Forward,
    /// Answer the client directly; the backend is not called.
    Respond,
}

/// `[login]`: the route that receives the `wx.login` code.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    pub path: String,
    pub mode: LoginMode,
}

/// What happens to the phone route's body when it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardBody {
    /// The original body, unchanged.
    Forward,
    /// The body without `encryptedData`, `iv`, `code` and `cloudID`.
    Strip,
}

/// `[phone]`: the route that receives the getPhoneNumber callback data.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhoneConfig {
    pub path: String,
    /// Oldest accepted watermark in decrypted data; unset means no limit.
    #[serde(with = "opt_duration_str", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Attach the phone headers to the session's later requests too.
    pub remember: bool,
    /// "forward" the original body or "strip" the encrypted fields.
    pub forward_body: ForwardBody,
}

/// `[headers]`: the names of the headers wxgate sends to the backend.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    pub openid: String,
    pub unionid: String,
    pub appid: String,
    pub phone_number: String,
    pub pure_phone_number: String,
    pub country_code: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9901).into(),
            max_body_bytes: 64 * 1024,
            shutdown_grace: HumanDuration::secs(30),
            workers: 0,
            header_read_timeout: HumanDuration::secs(30),
            body_read_timeout: HumanDuration::secs(60),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            connect_timeout: HumanDuration::secs(2),
            timeout: HumanDuration::secs(60),
            pool_idle_timeout: HumanDuration::secs(90),
            pool_max_idle: 256,
        }
    }
}

impl Default for WeixinConfig {
    fn default() -> Self {
        Self {
            appid: String::new(),
            secret: Secret::default(),
            api_base: "https://api.weixin.qq.com".into(),
            timeout: HumanDuration::secs(5),
            max_connections: 32,
        }
    }
}

impl fmt::Debug for WeixinConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeixinConfig")
            .field("appid", &self.appid)
            .field("secret", &self.secret)
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            header: "x-wx-session".into(),
            ttl: HumanDuration::secs(24 * 3600),
            max_entries: 1_000_000,
            code_ttl: HumanDuration::secs(5 * 60),
            previous_key_ttl: HumanDuration::secs(10 * 60),
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            path: "/api/login".into(),
            mode: LoginMode::Forward,
        }
    }
}

impl Default for PhoneConfig {
    fn default() -> Self {
        Self {
            path: "/api/phone".into(),
            max_age: None,
            remember: false,
            forward_body: ForwardBody::Forward,
        }
    }
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            openid: "x-wx-openid".into(),
            unionid: "x-wx-unionid".into(),
            appid: "x-wx-appid".into(),
            phone_number: "x-wx-phone-number".into(),
            pure_phone_number: "x-wx-pure-phone-number".into(),
            country_code: "x-wx-country-code".into(),
        }
    }
}

impl HeadersConfig {
    /// Every injected header, with its config key.
    pub fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("headers.openid", &self.openid),
            ("headers.unionid", &self.unionid),
            ("headers.appid", &self.appid),
            ("headers.phone_number", &self.phone_number),
            ("headers.pure_phone_number", &self.pure_phone_number),
            ("headers.country_code", &self.country_code),
        ]
    }
}

/// A secret string: its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that must send it (WeChat).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A duration written as "30s", "2h", "1h 30m" (humantime's grammar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

mod duration_str {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &HumanDuration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(d.0).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map(HumanDuration).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"30s\", \"5m\" or \"2h\""
            ))
        })
    }
}

mod opt_duration_str {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<HumanDuration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HumanDuration>, D::Error> {
        duration_str::deserialize(d).map(Some)
    }
}

/// Everything wrong with a configuration, one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(p: impl Into<String>) -> Self {
        Self {
            problems: vec![p.into()],
        }
    }
}

const ENV_PREFIX: &str = "WXGATE_";

impl Config {
    /// Reads `path` (which must exist) and applies the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text, applies `WXGATE_<SECTION>__<KEY>` overrides from
    /// `env`, checks every key and validates the result.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::one(format!("config is not valid TOML: {e}")))?;
        let mut problems = apply_env(&mut table, env);
        // Report every bad key, then validate what remains, so one run names
        // every problem.
        problems.extend(check_keys(&mut table));
        let config: Config = match serde_path_to_error::deserialize(toml::Value::Table(table)) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{}: {}", e.path(), e.inner()));
                return Err(ConfigError { problems });
            }
        };
        if let Err(e) = config.validate() {
            problems.extend(e.problems);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks what the types alone cannot. Every problem names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        if self.upstream.url.is_empty() {
            p.push("upstream.url: required (the backend's base URL, e.g. \"http://127.0.0.1:3000\")".into());
        } else if let Err(e) = parse_base_url(&self.upstream.url, &["http"]) {
            p.push(format!("upstream.url: {e}"));
        }
        if self.weixin.appid.is_empty() {
            p.push("weixin.appid: required (the mini program's AppID)".into());
        } else if !self.weixin.appid.bytes().all(|b| b.is_ascii_alphanumeric()) || self.weixin.appid.len() > 64 {
            p.push(format!(
                "weixin.appid: {:?} is not an AppID (letters and digits only)",
                self.weixin.appid
            ));
        }
        if self.weixin.secret.is_empty() {
            p.push("weixin.secret: required (set WXGATE_WEIXIN__SECRET rather than writing it in a file)".into());
        } else if !self.weixin.secret.expose().bytes().all(|b| b.is_ascii_graphic()) {
            p.push("weixin.secret: must be visible ASCII characters".into());
        }
        if let Err(e) = parse_base_url(&self.weixin.api_base, &["http", "https"]) {
            p.push(format!("weixin.api_base: {e}"));
        }
        // Port 0 asks the OS for a free port, different for each listener.
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            p.push(
                "server.admin_listen: must differ from server.listen (admin endpoints never share the public port)"
                    .into(),
            );
        }
        if self.server.max_body_bytes == 0 {
            p.push("server.max_body_bytes: must be at least 1".into());
        }
        if self.weixin.max_connections == 0 {
            p.push("weixin.max_connections: must be at least 1".into());
        }
        if self.server.workers > 256 {
            p.push("server.workers: at most 256".into());
        }
        for (key, d) in [
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.timeout", self.upstream.timeout),
            ("weixin.timeout", self.weixin.timeout),
            ("session.ttl", self.session.ttl),
            ("session.code_ttl", self.session.code_ttl),
            ("session.previous_key_ttl", self.session.previous_key_ttl),
        ] {
            if d.0.is_zero() {
                p.push(format!("{key}: must be longer than zero"));
            }
        }
        if self.session.max_entries == 0 {
            p.push("session.max_entries: must be at least 1".into());
        }
        let mut names = BTreeMap::new();
        let session = ("session.header", self.session.header.as_str());
        for (key, name) in self.headers.all().into_iter().chain([session]) {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
                p.push(format!("{key}: {name:?} is not a valid header name"));
            } else if let Some(other) = names.insert(normalize_header_name(name), key) {
                p.push(format!(
                    "{key}: {name:?} is the same header as {other} (names compare case-insensitively, '_' as '-')"
                ));
            }
        }
        for (key, path) in [("login.path", &self.login.path), ("phone.path", &self.phone.path)] {
            if !path.starts_with('/') || path.contains(['?', '#']) || path.parse::<http::uri::PathAndQuery>().is_err() {
                p.push(format!(
                    "{key}: {path:?} must be a URL path starting with '/', without query"
                ));
            }
        }
        if self.login.path == self.phone.path {
            p.push("phone.path: must differ from login.path".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    /// Number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A header name as compared by anti-spoofing: lower case, `_` read as `-`.
pub fn normalize_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| if b == b'_' { '-' } else { b.to_ascii_lowercase() as char })
        .collect()
}

/// Parses a base URL: scheme in `schemes`, a host, and no query.
pub fn parse_base_url(url: &str, schemes: &[&str]) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(format!(
            "{url:?} must start with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not carry a query"));
    }
    Ok(uri)
}

/// Writes `WXGATE_<SECTION>__<KEY>` variables into the table. The value's
/// type follows the key's default: integers and booleans are parsed, the rest
/// stay strings (so a numeric secret is not turned into a number).
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut problems = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let default = defaults.get(&section).and_then(|s| s.get(&key));
        let typed = match default {
            Some(toml::Value::Integer(_)) => match value.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    problems.push(format!("{section}.{key} (from {name}): {value:?} is not an integer"));
                    continue;
                }
            },
            Some(toml::Value::Boolean(_)) => match value.trim() {
                "true" | "1" => toml::Value::Boolean(true),
                "false" | "0" => toml::Value::Boolean(false),
                _ => {
                    problems.push(format!("{section}.{key} (from {name}): {value:?} is not true or false"));
                    continue;
                }
            },
            _ => toml::Value::String(value),
        };
        match table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
        {
            toml::Value::Table(t) => {
                t.insert(key, typed);
            }
            _ => problems.push(format!("{section} (from {name}): is not a section")),
        }
    }
    problems
}

/// Deserialises each key on its own against its section's defaults, so that
/// every bad or unknown key is reported, not only the first. Bad keys and
/// sections are removed from the table, so the rest can still be validated.
fn check_keys(table: &mut toml::Table) -> Vec<String> {
    fn each<T: serde::de::DeserializeOwned>(section: &str, value: &mut toml::Value, out: &mut Vec<String>) -> bool {
        let toml::Value::Table(t) = value else {
            out.push(format!("{section}: must be a section ([{section}])"));
            return false;
        };
        t.retain(|key, v| {
            let mut single = toml::Table::new();
            single.insert(key.to_string(), v.clone());
            match T::deserialize(toml::Value::Table(single)) {
                Ok(_) => true,
                Err(e) => {
                    let msg = e.to_string();
                    // toml appends "\nin `key`": the key is named already, and
                    // each problem stays on one line.
                    let msg = msg.split("\nin `").next().unwrap_or_default().trim();
                    if msg.starts_with("unknown field") {
                        out.push(format!("{section}.{key}: unknown key ({msg})"));
                    } else {
                        out.push(format!("{section}.{key}: {msg}"));
                    }
                    false
                }
            }
        });
        true
    }
    let mut out = Vec::new();
    table.retain(|section, value| match section {
        "server" => each::<ServerConfig>(section, value, &mut out),
        "upstream" => each::<UpstreamConfig>(section, value, &mut out),
        "weixin" => each::<WeixinConfig>(section, value, &mut out),
        "session" => each::<SessionConfig>(section, value, &mut out),
        "login" => each::<LoginConfig>(section, value, &mut out),
        "phone" => each::<PhoneConfig>(section, value, &mut out),
        "headers" => each::<HeadersConfig>(section, value, &mut out),
        other => {
            out.push(format!(
                "{other}: unknown section (expected server, upstream, weixin, session, login, phone, headers)"
            ));
            false
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [upstream]
        url = "http://127.0.0.1:3000"
        [weixin]
        appid = "wx4f4bc4dec97d474b"
        secret = "s3cret"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9901");
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.server.shutdown_grace.get(), Duration::from_secs(30));
        assert_eq!(c.upstream.connect_timeout.get(), Duration::from_secs(2));
        assert_eq!(c.upstream.timeout.get(), Duration::from_secs(60));
        assert_eq!(c.weixin.api_base, "https://api.weixin.qq.com");
        assert_eq!(c.weixin.timeout.get(), Duration::from_secs(5));
        assert_eq!(c.session.header, "x-wx-session");
        assert_eq!(c.login.path, "/api/login");
        assert_eq!(c.login.mode, LoginMode::Forward);
        assert_eq!(c.phone.path, "/api/phone");
        assert_eq!(c.headers.openid, "x-wx-openid");
        assert_eq!(c.headers.country_code, "x-wx-country-code");
    }

    #[test]
    fn the_shipped_config_toml_is_valid_and_mentions_every_key() {
        let text = include_str!("../config.toml");
        let c = load(text, &[("WXGATE_WEIXIN__SECRET", "x")]).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in defaults {
            assert!(text.contains(&format!("[{section}]")), "config.toml lacks [{section}]");
            for key in keys.as_table().unwrap().keys() {
                assert!(text.contains(&format!("{key} =")), "config.toml lacks {section}.{key}");
            }
        }
        assert!(text.contains("max_age ="), "config.toml lacks phone.max_age");
    }

    #[test]
    fn env_overrides_win_and_keep_their_type() {
        let c = load(
            MINIMAL,
            &[
                ("WXGATE_WEIXIN__SECRET", "123456"),
                ("WXGATE_SERVER__MAX_BODY_BYTES", "1024"),
                ("WXGATE_LOGIN__MODE", "respond"),
                ("WXGATE_PHONE__REMEMBER", "true"),
                ("WXGATE_SESSION__TTL", "2h"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.weixin.secret.expose(), "123456");
        assert_eq!(c.server.max_body_bytes, 1024);
        assert_eq!(c.login.mode, LoginMode::Respond);
        assert!(c.phone.remember);
        assert_eq!(c.session.ttl.get(), Duration::from_secs(7200));
    }

    #[test]
    fn every_bad_key_is_named() {
        let text = r#"
            [server]
            lisen = "0.0.0.0:1"
            shutdown_grace = "soon"
            max_body_bytes = "big"
            [upstream]
            url = "ftp://x"
            [weixin]
            appid = "wx1"
            secret = "s"
            [bogus]
            a = 1
        "#;
        let e = load(text, &[]).unwrap_err().to_string();
        for key in [
            "server.lisen",
            "server.shutdown_grace",
            "server.max_body_bytes",
            "bogus",
        ] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        let e = load(
            text.replace("lisen", "listen")
                .replace("\"soon\"", "\"1s\"")
                .replace("\"big\"", "1")
                .as_str(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream.url"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn validation_names_keys() {
        let e = load("", &[]).unwrap_err().to_string();
        for key in ["upstream.url", "weixin.appid", "weixin.secret"] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        let bad = format!(
            "{MINIMAL}\n[headers]\nopenid = \"x wx\"\nunionid = \"X_WX_APPID\"\n[login]\npath = \"api\"\nmode = \"maybe\"\n"
        );
        let e = load(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("login.mode"), "{e}");
        let bad = bad.replace("mode = \"maybe\"", "");
        let e = load(&bad, &[]).unwrap_err().to_string();
        for key in ["headers.openid", "headers.unionid", "login.path"] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        let e = load(MINIMAL, &[("WXGATE_SERVER__WORKERS", "many")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.workers"), "{e}");
        let e = load(MINIMAL, &[("WXGATE_SESSION__TTL", "0s")]).unwrap_err().to_string();
        assert!(e.contains("session.ttl"), "{e}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(load("[server\nlisten=", &[]).unwrap_err().to_string().contains("TOML"));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = load(MINIMAL, &[]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn listeners_must_differ_unless_the_os_picks_the_ports() {
        let same = format!("[server]\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n{MINIMAL}");
        let e = load(&same, &[]).unwrap_err().to_string();
        assert!(e.contains("server.admin_listen"), "{e}");
        let ephemeral = same.replace(":9000", ":0");
        assert!(load(&ephemeral, &[]).is_ok());
    }

    #[test]
    fn header_names_normalise() {
        assert_eq!(normalize_header_name("X_WX_OpenID"), "x-wx-openid");
    }
}
