//! Configuration: the TOML file, `WXGATE_<SECTION>__<KEY>` environment
//! overrides, defaults, and validation.
//!
//! Loading happens in three steps so that every error can name its key
//! ([`load`]):
//!
//! 1. the file is parsed into a plain TOML table (syntax errors carry a line);
//! 2. environment overrides are written into that table, typed after the
//!    key's default (an integer key takes an integer, a list key a
//!    comma-separated list, everything else a string), so
//!    `WXGATE_WEIXIN__SECRET=123456` stays a string; a `WXGATE_` variable that
//!    names no key is an error that suggests the nearest one;
//! 3. the table is deserialised key by key (`deny_unknown_fields`), collecting
//!    every bad key instead of stopping at the first, then
//!    [`Config::validate`] checks what types cannot (URLs, paths, header
//!    names, ranges, clashes).
//!
//! The shipped `config.toml` documents every key; keep it in step with the
//! doc comments here (a unit test checks that it names every key).

mod load;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

pub use load::ConfigError;
pub use validate::parse_cidr;

/// Everything wxgate can be told. Each section has its own struct.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the listeners, the client side's limits and timeouts.
    pub server: ServerConfig,
    /// `[upstream]`: the backend behind wxgate.
    pub upstream: UpstreamConfig,
    /// `[weixin]`: the mini program's credentials and WeChat's API.
    pub weixin: WeixinConfig,
    /// `[session]`: where sessions live, their header and lifetimes.
    pub session: SessionConfig,
    /// `[login]`: the route that receives the `wx.login` code.
    pub login: LoginConfig,
    /// `[phone]`: the route that receives the getPhoneNumber data.
    pub phone: PhoneConfig,
    /// `[logout]`: the route that ends a session everywhere.
    pub logout: LogoutConfig,
    /// `[limits]`: login and phone request rates.
    pub limits: LimitsConfig,
    /// `[access]`: paths refused to anonymous callers.
    pub access: AccessConfig,
    /// `[headers]`: the identity headers' names and the client headers removed.
    pub headers: HeadersConfig,
    /// `[redis]`: the shared store, with `session.store = "redis"`.
    pub redis: RedisConfig,
    /// `[assertion]`: a signed JWT with each identity forwarded.
    pub assertion: AssertionConfig,
    /// Several mini programs: `[apps.<name>]`, each with its own AppID,
    /// secret and selectors. `[weixin].appid`/`secret`, when set, is one more
    /// app, named "default".
    pub apps: BTreeMap<String, AppConfig>,
}

/// `[server]`: the listeners, the client side's limits and timeouts.
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
    /// After SIGTERM, how long wxgate keeps accepting and serving while
    /// `/readyz` already answers 503, so that load balancers stop sending
    /// before the listener closes (Envoy's drain time). SIGINT skips it.
    #[serde(with = "duration_str")]
    pub shutdown_delay: HumanDuration,
    /// How long in-flight requests may run once the listener has closed.
    #[serde(with = "duration_str")]
    pub shutdown_grace: HumanDuration,
    /// Worker threads, each with its own runtime, listener (SO_REUSEPORT) and
    /// upstream pool. 0 means one per CPU core.
    pub workers: usize,
    /// Most client connections open at once, over all workers (nginx's
    /// `worker_connections`). At the limit, idle keep-alive connections are
    /// closed to make room; when none is idle, a new connection is closed at
    /// once.
    pub max_connections: usize,
    /// Most concurrent streams on one HTTP/2 client connection.
    pub http2_max_concurrent_streams: u32,
    /// Most header fields in a request head (431 beyond).
    pub max_request_headers: usize,
    /// Largest request head in bytes: request line and header fields (431
    /// beyond). At least 8192.
    pub max_request_header_bytes: usize,
    /// How long a client may take to send a request's headers (slowloris
    /// guard), and how long a keep-alive connection may stay idle.
    #[serde(with = "duration_str")]
    pub header_read_timeout: HumanDuration,
    /// How long a client may go without sending any of a request body it
    /// has started (408 after).
    #[serde(with = "duration_str")]
    pub body_read_timeout: HumanDuration,
    /// How long a client may go without reading any of a response wxgate is
    /// sending it (nginx's `send_timeout`); the connection is closed after.
    #[serde(with = "duration_str")]
    pub send_timeout: HumanDuration,
    /// Load balancers in front of wxgate (CIDR ranges like "10.0.0.0/8", or
    /// single addresses) whose `X-Forwarded-For`, `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` are kept. Anybody else's are replaced.
    pub trusted_proxies: Vec<String>,
}

/// `[upstream]`: the backend behind wxgate.
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
    /// How long an idle pooled connection to the backend is kept. Below the
    /// idle timeouts of common backends (gunicorn 2 s, Node and uvicorn 5 s),
    /// so wxgate closes first; a backend's `Keep-Alive: timeout=N` shortens it.
    #[serde(with = "duration_str")]
    pub pool_idle_timeout: HumanDuration,
    /// Idle pooled connections kept per worker.
    pub pool_max_idle: usize,
    /// Most connections to the backend per worker, WebSocket tunnels
    /// included. Further requests wait for one up to `queue_timeout`.
    pub max_connections: usize,
    /// How long a request waits for a backend connection when
    /// `max_connections` are busy (503 upstream_busy after).
    #[serde(with = "duration_str")]
    pub queue_timeout: HumanDuration,
    /// A WebSocket tunnel with no byte either way for this long is closed.
    #[serde(with = "duration_str")]
    pub websocket_idle_timeout: HumanDuration,
    /// Most header fields in a response head from the backend (502 beyond).
    pub max_response_headers: usize,
    /// Largest response head from the backend in bytes (502 beyond). At least 8192.
    pub max_response_header_bytes: usize,
    /// An HTTP/1.0 backend cannot read a chunked body: a request body
    /// without Content-Length going to one is buffered up to this many bytes
    /// and sent with a Content-Length (411 beyond).
    pub max_buffered_body_bytes: u64,
}

/// `[weixin]`: the mini program's credentials and WeChat's API.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeixinConfig {
    /// The mini program's AppID ("wx" followed by 16 hex digits). With
    /// `[apps]`, optional: when set, it is the app named "default".
    pub appid: String,
    /// The AppSecret. Prefer WXGATE_WEIXIN__SECRET to writing it in a file.
    pub secret: Secret,
    /// With `[apps]` and no `appid` here: the app a request goes to when no
    /// selector and no Referer names one. Empty: no default (400
    /// `unknown_app` on the login route).
    pub default_app: String,
    /// WeChat's API base URL; point it at `wxgate fake-weixin` in tests.
    pub api_base: String,
    /// Time allowed for one call to WeChat.
    #[serde(with = "duration_str")]
    pub timeout: HumanDuration,
    /// Most simultaneous calls (so connections) to WeChat per worker; more
    /// wait their turn. Keeps a login storm from opening a connection per user.
    pub max_connections: usize,
}

/// `[apps.<name>]`: one mini program, when wxgate serves several.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Its AppID.
    pub appid: String,
    /// Its AppSecret: set `WXGATE_APPS__<NAME>__SECRET`.
    pub secret: Secret,
    /// Requests to these hosts (`Host`, without port) are this app's: a
    /// selector the client cannot choose, unlike the Referer.
    pub hosts: Vec<String>,
    /// Requests under this path prefix are this app's (same matching as
    /// `[access]`).
    pub path_prefix: String,
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("appid", &self.appid)
            .field("secret", &self.secret)
            .field("hosts", &self.hosts)
            .field("path_prefix", &self.path_prefix)
            .finish()
    }
}

/// The name of the app `[weixin].appid` makes.
pub const DEFAULT_APP: &str = "default";

/// Where wxgate keeps what it shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process (moka): one replica only; a restart logs everyone out.
    Memory,
    /// In Redis (`[redis]`), behind an in-process cache: any number of replicas.
    Redis,
}

/// `[session]`: the sessions wxgate keeps after a login.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// "memory" (one replica) or "redis" (several; see `[redis]`).
    pub store: StoreKind,
    /// Header carrying the session token between the mini program and wxgate.
    /// Never forwarded to the backend, and removed from the backend's answers.
    pub header: String,
    /// Lifetime of a session from its login.
    #[serde(with = "duration_str")]
    pub ttl: HumanDuration,
    /// Most sessions kept; the least used go first beyond it.
    pub max_entries: u64,
    /// How long a login code's outcome is remembered, so a retried login gets
    /// the same session instead of WeChat's "code been used". Kept short: a
    /// remembered code opens its session to whoever sends it again.
    #[serde(with = "duration_str")]
    pub code_ttl: HumanDuration,
    /// How long a user's previous session keys are kept after a new login, so
    /// data encrypted just before the key changed still decrypts.
    #[serde(with = "duration_str")]
    pub previous_key_ttl: HumanDuration,
}

/// How the login and logout routes answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginMode {
    /// Forward the request to the backend with identity headers; add the
    /// session header to its response.
    Forward,
    /// Answer the client directly; the backend is not called.
    Respond,
}

/// How wxgate finds Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a managed endpoint): `url` names it.
    Standalone,
    /// Redis Cluster: `url` lists seed nodes, comma-separated.
    Cluster,
    /// Redis Sentinel: `url` lists the sentinels; `master_name` names the master.
    Sentinel,
}

/// `[redis]`: the shared store, with `session.store = "redis"`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://` for TLS; a
    /// comma-separated list of seeds (cluster) or sentinels (sentinel).
    pub url: String,
    /// "standalone", "cluster" or "sentinel".
    pub mode: RedisMode,
    /// Sentinel mode: the monitored master's name.
    pub master_name: String,
    /// ACL user for Redis (overrides the URL's).
    pub username: String,
    /// ACL password for Redis (overrides the URL's); set
    /// WXGATE_REDIS__PASSWORD rather than writing it in a file.
    pub password: Secret,
    /// Sentinel mode: the sentinels' own password, when they have one.
    pub sentinel_password: Secret,
    /// Every key wxgate writes starts with this.
    pub key_prefix: String,
    /// Longest wait for one command; a request that needs Redis gets 503
    /// `session_store_unavailable` after it.
    #[serde(with = "duration_str")]
    pub timeout: HumanDuration,
    /// Longest wait for a new connection.
    #[serde(with = "duration_str")]
    pub connect_timeout: HumanDuration,
    /// A PEM file of the CA that signed the server's certificate (`rediss://`);
    /// empty: the system's roots.
    pub tls_ca_file: String,
    /// Names and seals everything wxgate stores (at least 32 characters; the
    /// same on every replica). Required in redis mode; set
    /// WXGATE_REDIS__SECRET rather than writing it in a file.
    pub secret: Secret,
    /// How long a replica may serve a session from its own memory before
    /// asking Redis again (revocations reach it at once by pub/sub); 0 turns
    /// the in-process cache off.
    #[serde(with = "duration_str")]
    pub l1_ttl: HumanDuration,
    /// Most sessions in each replica's in-process cache.
    pub l1_max_entries: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            mode: RedisMode::Standalone,
            master_name: String::new(),
            username: String::new(),
            password: Secret::default(),
            sentinel_password: Secret::default(),
            key_prefix: "wxgate:".into(),
            timeout: HumanDuration(Duration::from_millis(300)),
            connect_timeout: HumanDuration::secs(1),
            tls_ca_file: String::new(),
            secret: Secret::default(),
            l1_ttl: HumanDuration::secs(10),
            l1_max_entries: 100_000,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// A URL with any password in it replaced (`redis://user:[redacted]@host`).
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &one[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{}{user}:[redacted]{}", &one[..scheme + 3], &one[at..])
            }
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `[login]`: the route that receives the `wx.login` code.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// The route: POST `{"code": "..."}` (or a form, or `?code=`). The code
    /// never reaches the backend: it is removed from the forwarded body and query.
    pub path: String,
    /// "forward" to the backend with the identity headers, or "respond"
    /// directly; the logout route follows the same mode.
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
    /// The route: POST `{"encryptedData", "iv"}` or `{"code"}`. Needs a live session.
    pub path: String,
    /// Oldest accepted watermark in decrypted data.
    #[serde(with = "duration_str")]
    pub max_age: HumanDuration,
    /// Attach the phone headers to the session's later requests too.
    pub remember: bool,
    /// "forward" the original body or "strip" the encrypted fields.
    pub forward_body: ForwardBody,
}

/// `[assertion]`: a signed JWT with each identity, for a backend that
/// verifies who is calling instead of trusting the network.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssertionConfig {
    /// Sign an assertion for every request forwarded with an identity.
    pub enabled: bool,
    /// The header that carries it.
    pub header: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim: the name the backend checks. Required when enabled.
    pub audience: String,
    /// An assertion's lifetime (`exp` - `iat`).
    #[serde(with = "duration_str")]
    pub ttl: HumanDuration,
    /// A PKCS#8 PEM P-256 private key (`wxgate keygen --out FILE`); empty:
    /// a key made at start, for a single instance only.
    pub key_file: String,
    /// Keys still published in the JWKS (a rotation's overlap), never used
    /// to sign.
    pub previous_key_files: Vec<String>,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            header: "x-wx-assertion".into(),
            issuer: "wxgate".into(),
            audience: String::new(),
            ttl: HumanDuration::secs(120),
            key_file: String::new(),
            previous_key_files: Vec::new(),
        }
    }
}

/// `[logout]`: the route that ends a session everywhere.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogoutConfig {
    /// POST with the session header; answered like the login route
    /// (`login.mode`): forwarded with the identity headers, or 204.
    pub path: String,
}

/// `[limits]`: request rates per client, requests per minute; 0 is off.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Login requests per minute per client address (each may cost a WeChat
    /// call). Carrier-grade NAT puts many users behind one address.
    pub login_per_address: u32,
    /// Phone requests per minute per session (the code flow is billed).
    pub phone_per_session: u32,
}

/// `[access]`: paths wxgate itself refuses to anonymous callers. Path
/// prefixes, matched on the normalised path (the same normalisation as the
/// routes: case, `%`-escapes, `;` parameters, dot segments, repeated and
/// trailing slashes): `/api/orders` covers `/api/orders` and what is under
/// it, `/api/user/` only what is under it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Without a live session: 401 `session_required`, the backend is not called.
    pub require_session: Vec<String>,
    /// Also needs a phone number remembered on the session (`phone.remember`):
    /// 403 `phone_required` without.
    pub require_phone: Vec<String>,
}

/// `[headers]`: the headers wxgate sends to the backend, and the client
/// headers it never lets through.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    /// Header carrying the user's openid (as in WeChat Cloud Hosting).
    pub openid: String,
    /// Header carrying the user's unionid, when WeChat gave one (as in WeChat
    /// Cloud Hosting).
    pub unionid: String,
    /// Header carrying the AppID of the session's mini program (as in WeChat
    /// Cloud Hosting).
    pub appid: String,
    /// Header carrying the phone number, with its country code for numbers
    /// outside mainland China.
    pub phone_number: String,
    /// Header carrying the phone number without its country code.
    pub pure_phone_number: String,
    /// Header carrying the phone number's country code.
    pub country_code: String,
    /// Client headers whose name starts with one of these are removed
    /// (names compared on their letters and digits only, case-folded).
    pub strip_prefixes: Vec<String>,
    /// More client headers removed, compared the same way.
    pub strip_names: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9901).into(),
            max_body_bytes: 64 * 1024,
            shutdown_delay: HumanDuration::secs(5),
            shutdown_grace: HumanDuration::secs(30),
            workers: 0,
            max_connections: 10_000,
            http2_max_concurrent_streams: 128,
            max_request_headers: 200,
            max_request_header_bytes: 32 * 1024,
            header_read_timeout: HumanDuration::secs(30),
            body_read_timeout: HumanDuration::secs(60),
            send_timeout: HumanDuration::secs(60),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            connect_timeout: HumanDuration::secs(2),
            timeout: HumanDuration::secs(60),
            pool_idle_timeout: HumanDuration::secs(1),
            pool_max_idle: 256,
            max_connections: 512,
            queue_timeout: HumanDuration::secs(5),
            websocket_idle_timeout: HumanDuration::secs(600),
            max_response_headers: 200,
            max_response_header_bytes: 32 * 1024,
            max_buffered_body_bytes: 1024 * 1024,
        }
    }
}

impl Default for WeixinConfig {
    fn default() -> Self {
        Self {
            appid: String::new(),
            secret: Secret::default(),
            default_app: String::new(),
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
            .field("default_app", &self.default_app)
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            header: "x-wx-session".into(),
            ttl: HumanDuration::secs(24 * 3600),
            max_entries: 1_000_000,
            code_ttl: HumanDuration::secs(60),
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
            max_age: HumanDuration::secs(10 * 60),
            remember: false,
            forward_body: ForwardBody::Forward,
        }
    }
}

impl Default for LogoutConfig {
    fn default() -> Self {
        Self {
            path: "/api/logout".into(),
        }
    }
}

/// WeChat Cloud Hosting's own headers: backends written for it trust them,
/// so no client may send them (`weixin-api.md`, section 7). Those starting
/// with `x-wx-` are covered by the prefix too; listed for when the prefix
/// list is changed.
pub const CLOUD_HOSTING_HEADERS: [&str; 8] = [
    "x-wx-from-openid",
    "x-wx-from-appid",
    "x-wx-from-unionid",
    "x-wx-source",
    "x-wx-env",
    "x-wx-cloudbase-access-token",
    "x-wx-from-cloudbase-access-token",
    "x-original-forwarded-for",
];

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            openid: "x-wx-openid".into(),
            unionid: "x-wx-unionid".into(),
            appid: "x-wx-appid".into(),
            phone_number: "x-wx-phone-number".into(),
            pure_phone_number: "x-wx-pure-phone-number".into(),
            country_code: "x-wx-country-code".into(),
            strip_prefixes: vec!["x-wx-".into()],
            strip_names: CLOUD_HOSTING_HEADERS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl HeadersConfig {
    /// Every injected header, with its config key.
    pub fn injected(&self) -> [(&'static str, &str); 6] {
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
    /// Wraps a secret string.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that must send it (WeChat).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret was given.
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
    /// A duration of `s` seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    /// The duration itself.
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
        let text = String::deserialize(d)
            .map_err(|_| de::Error::custom("expected a duration like \"30s\", \"5m\" or \"2h\""))?;
        humantime::parse_duration(text.trim()).map(HumanDuration).map_err(|_| {
            de::Error::custom(format!(
                "{text:?} is not a duration: write e.g. \"500ms\", \"30s\", \"5m\" or \"2h\""
            ))
        })
    }
}

impl Config {
    /// Number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The configuration as TOML, every secret replaced by `"[redacted]"`
    /// (`wxgate config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).unwrap_or_default();
        if let Some(toml::Value::Table(apps)) = table.get_mut("apps") {
            for (_, app) in apps.iter_mut() {
                if let Some(toml::Value::String(secret)) = app.get_mut("secret")
                    && !secret.is_empty()
                {
                    *secret = String::from("[redacted]");
                }
            }
        }
        for section in ["redis", "upstream"] {
            if let Some(toml::Value::Table(t)) = table.get_mut(section)
                && let Some(toml::Value::String(url)) = t.get_mut("url")
            {
                *url = redact_url(url);
            }
        }
        for (section, key) in load::SECRET_KEYS {
            if let Some(toml::Value::Table(t)) = table.get_mut(*section)
                && let Some(toml::Value::String(v)) = t.get_mut(*key)
                && !v.is_empty()
            {
                *v = "[redacted]".into();
            }
        }
        toml::to_string_pretty(&table).unwrap_or_default()
    }
}

/// Parses a base URL: scheme in `schemes`, a host, and no query.
pub fn parse_base_url(url: &str, schemes: &[&str]) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL like \"http://127.0.0.1:3000\""))?;
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
