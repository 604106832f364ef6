//! The shared store (`session.store = "redis"`): sessions, login codes, key
//! histories and the token-refresh lock in Redis, so that any request can
//! land on any replica and a restart logs nobody out.
//!
//! - **Sessions**: `SET <name> <sealed> PXAT <login + session.ttl>`; a
//!   remembered phone rewrites the value with the same absolute expiry.
//!   Each user's session names are also in a set (`SADD`), for revoking
//!   them all at once; the set holds names, not tokens.
//! - **Login codes**: the first replica to see a code takes it with
//!   `SET <name> P NX PX <lock>`, calls WeChat, and writes the outcome over
//!   the lock for `session.code_ttl`; the others poll the key until the
//!   outcome is there (or the lock is gone, and one of them takes it). So a
//!   retried login on another replica, or two at once, cost one WeChat call.
//! - **Key histories**: `LPUSH`, `LTRIM 0 2`, `PEXPIRE` in one transaction:
//!   no read-modify-write race between replicas.
//! - **Forced token refreshes**: `SET <name> 1 NX PX 30000` elects one
//!   replica per 30 s.
//! - Every key is one slot (single-key commands; a transaction touches one
//!   key), so Redis Cluster works.
//! - Nothing is readable at rest: names and values are sealed
//!   ([`seal`]).
//!
//! In front of Redis, each process keeps recent sessions in memory (moka,
//! `[redis].l1_ttl`, never past a session's own expiry), with concurrent
//! misses for one session coalesced. A revocation (logout, the admin's, a
//! phone remembered) is published on `<prefix>revoked`; every replica
//! listens ([`subscriber`]) and drops its copy within milliseconds. When the
//! subscription drops, the cache is emptied and not used until the
//! subscription is back (and emptied again then): a revocation missed in
//! between is never served.
//!
//! Failures are never "no session": a command that fails or takes longer
//! than `[redis].timeout` fails the request (503
//! `session_store_unavailable`), unless the in-process cache can answer. A
//! value that does not open, or one of another type under a name of
//! wxgate's (`WRONGTYPE`), is treated as absent and logged: a read finds
//! nothing, a login code's outcome is cleared and the code exchanged again,
//! a write clears the name and writes once more (`Failed`).

mod conn;
pub mod seal;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use moka::Expiry;
use moka::future::Cache;
use redis::{FromRedisValue, Value};
use serde::{Deserialize, Serialize};

use self::conn::{AnyConn, Target, WorkerConn};
use self::seal::{Keys, Kind};
use super::{FORCE_REFRESH_EVERY, Issued, Login, PhoneNumber, Session, SessionStore, SessionToken, unix_now};
use crate::apps::{App, Apps};
use crate::config::{RedisConfig, SessionConfig};
use crate::error::Error;
use crate::metrics;
use crate::weixin::crypto::SessionKey;

pub use conn::TargetError;

/// How often a replica waiting for another's login exchange looks again.
const CODE_POLL: Duration = Duration::from_millis(25);
/// The value of a login-code key while its exchange runs.
const PENDING: &[u8] = b"P";

/// What every worker of a process shares.
pub struct RedisShared {
    target: Arc<Target>,
    keys: Keys,
    /// The configured apps' AppIDs, by index.
    appids: Arc<[Box<str>]>,
    channel: String,
    timeout: Duration,
    connect_timeout: Duration,
    ttl: Duration,
    code_ttl: Duration,
    previous_key_ttl: Duration,
    /// The longest a login-code lock is held (WeChat's timeout, twice, and a margin).
    code_lock: Duration,
    l1: Option<Cache<[u8; 16], Session>>,
    /// The revocation subscription is up: the in-process cache may answer.
    l1_valid: AtomicBool,
    /// Counts revocations seen by this process: a cache fill that a
    /// revocation overtook is dropped from the cache once it lands.
    revocations: std::sync::atomic::AtomicU64,
    health: Health,
}

/// Whether Redis answers, for `/readyz` and `/metrics`.
#[derive(Default)]
pub struct Health {
    failing: AtomicBool,
    errors: AtomicU64,
}

impl Health {
    fn ok(&self) {
        if self.failing.load(Ordering::Relaxed) {
            self.failing.store(false, Ordering::Relaxed);
            tracing::info!("the session store answers again");
        }
    }

    fn failed(&self, op: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(op, "the session store does not answer");
        }
        metrics::session_store_error(op);
    }

    /// Whether the last command succeeded.
    pub fn is_up(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }
}

/// A session as stored (JSON, then sealed).
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The app's AppID (several mini programs): not its index, which may
    /// differ between replicas while a deploy adds an app.
    #[serde(rename = "a")]
    appid: String,
    #[serde(rename = "o")]
    openid: String,
    #[serde(default, rename = "u", skip_serializing_if = "Option::is_none")]
    unionid: Option<String>,
    #[serde(rename = "k")]
    key: String,
    #[serde(rename = "c")]
    created_at: u64,
    #[serde(default, rename = "p", skip_serializing_if = "Option::is_none")]
    phone: Option<[String; 3]>,
}

impl Stored {
    fn of(s: &Session, appids: &[Box<str>]) -> Self {
        Self {
            appid: appids
                .get(usize::from(s.app()))
                .map(|a| a.to_string())
                .unwrap_or_default(),
            openid: s.openid().to_owned(),
            unionid: s.unionid().map(str::to_owned),
            key: s.session_key().to_base64(),
            created_at: s.created_at(),
            phone: s.phone().map(|p| {
                [
                    p.phone_number.to_string(),
                    p.pure_phone_number.to_string(),
                    p.country_code.to_string(),
                ]
            }),
        }
    }

    /// The session, when its app is still configured here.
    fn session(self, appids: &[Box<str>]) -> Option<Session> {
        let key = SessionKey::from_base64(&self.key).ok()?;
        let Some(app) = appids.iter().position(|a| **a == *self.appid) else {
            tracing::debug!(appid = %self.appid, "a stored session is of an app not configured here; treated as absent");
            return None;
        };
        let app = u16::try_from(app).ok()?;
        let session = Session::new(&self.openid, self.unionid.as_deref(), key, self.created_at).in_app(app);
        Some(match self.phone {
            Some([phone_number, pure_phone_number, country_code]) => session.with_phone(PhoneNumber {
                phone_number: phone_number.into(),
                pure_phone_number: pure_phone_number.into(),
                country_code: country_code.into(),
            }),
            None => session,
        })
    }
}

/// A login code's outcome as stored: a session under its token, or the
/// errcode WeChat refused the code with.
#[derive(Serialize, Deserialize)]
enum CodeOutcome {
    Issued { token: String, session: Stored },
    Refused { errcode: i64 },
}

/// Keeps each in-process entry no longer than `[redis].l1_ttl` nor past
/// its session's expiry.
struct L1Expiry {
    l1_ttl: Duration,
    ttl_secs: u64,
}

impl Expiry<[u8; 16], Session> for L1Expiry {
    fn expire_after_create(&self, _: &[u8; 16], session: &Session, _: Instant) -> Option<Duration> {
        let left = (session.created_at() + self.ttl_secs).saturating_sub(unix_now());
        Some(self.l1_ttl.min(Duration::from_secs(left)))
    }
}

impl RedisShared {
    /// The state `[redis]` and `[session]` describe, for the configured apps;
    /// `weixin_timeout` bounds how long a login code stays locked by the
    /// replica exchanging it. Connections are made later, per worker
    /// ([`handle`](Self::handle)).
    pub fn new(
        config: &RedisConfig,
        session: &SessionConfig,
        weixin_timeout: Duration,
        apps: &Apps,
    ) -> Result<Arc<Self>, TargetError> {
        let l1 = (!config.l1_ttl.0.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(config.l1_max_entries)
                .expire_after(L1Expiry {
                    l1_ttl: config.l1_ttl.get(),
                    ttl_secs: session.ttl.get().as_secs(),
                })
                .build()
        });
        Ok(Arc::new(Self {
            target: Arc::new(Target::new(config)?),
            keys: Keys::new(config.secret.expose().as_bytes(), &config.key_prefix),
            appids: apps.all().iter().map(|a| a.appid.clone()).collect(),
            channel: format!("{}revoked", config.key_prefix),
            timeout: config.timeout.get(),
            connect_timeout: config.connect_timeout.get(),
            ttl: session.ttl.get(),
            code_ttl: session.code_ttl.get(),
            previous_key_ttl: session.previous_key_ttl.get(),
            code_lock: weixin_timeout * 2 + Duration::from_secs(1),
            l1,
            l1_valid: AtomicBool::new(false),
            revocations: std::sync::atomic::AtomicU64::new(0),
            health: Health::default(),
        }))
    }

    /// A handle for the calling worker, with its own connection.
    pub fn handle(self: &Arc<Self>) -> Arc<RedisStore> {
        Arc::new(RedisStore {
            conn: WorkerConn::new(self.target.clone(), self.connect_timeout),
            shared: self.clone(),
        })
    }

    /// Whether Redis answers, for `/readyz` and `/metrics`.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Drops every in-process session (the subscription went or came back).
    fn flush_l1(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
    }

    /// Drops this process's copy of a session that changed or went.
    async fn forget(&self, digest: &[u8; 16]) {
        self.revocations.fetch_add(1, Ordering::AcqRel);
        if let Some(l1) = &self.l1 {
            l1.invalidate(digest).await;
        }
    }
}

/// One worker's handle on the shared store.
pub struct RedisStore {
    shared: Arc<RedisShared>,
    conn: WorkerConn,
}

/// What a failed command did to the request: Redis could not answer.
fn unavailable(cause: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::StoreUnavailable(Some(Arc::new(cause)))
}

#[derive(Debug, thiserror::Error)]
#[error("no answer from Redis within {0:?}")]
struct Timeout(Duration);

/// Why a command gave no usable answer.
#[derive(Debug)]
enum Failed {
    /// Redis answered, but not with what wxgate writes under that name: a
    /// reply of another type, or `WRONGTYPE` (a value of another type sits
    /// there). Logged where it happens; a read treats it as absent, a write
    /// clears the name and tries once more.
    Garbage,
    /// Redis could not be reached, did not answer in time, or refused.
    Unavailable(Error),
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        match f {
            Failed::Garbage => {
                Error::Internal("Redis holds a value of another type under one of wxgate's names".into())
            }
            Failed::Unavailable(e) => e,
        }
    }
}

/// `WRONGTYPE`, alone or from a command of a transaction: a value of
/// another type sits under the name.
fn wrong_type(e: &redis::RedisError) -> bool {
    e.clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "WRONGTYPE"))
}

/// A read's answer: garbage is absent.
fn absent_if_garbage<T: Default>(r: Result<T, Failed>) -> Result<T, Error> {
    match r {
        Ok(v) => Ok(v),
        Err(Failed::Garbage) => Ok(T::default()),
        Err(Failed::Unavailable(e)) => Err(e),
    }
}

impl RedisStore {
    /// Runs a command (or a transaction) within `[redis].timeout`, counted
    /// from when a connection is at hand (making one has its own
    /// `connect_timeout`: a TLS handshake must not eat the command's time).
    ///
    /// A connection that Redis (or something between) closed while it sat
    /// idle fails its next command at once with "connection dropped": Redis
    /// restarted, a failover, or Redis' own `timeout` for idle clients. Such
    /// a command is sent once more on a new connection, so the first request
    /// after it is not a 503 (go-redis and Lettuce retry the same way). A
    /// command that timed out is not retried.
    async fn query<T: FromRedisValue>(&self, op: &'static str, cmd: Query<'_>) -> Result<T, Failed> {
        let shared = &self.shared;
        let mut retried = false;
        loop {
            let mut conn: AnyConn = match self.conn.get().await {
                Ok(c) => c,
                Err(e) => {
                    shared.health.failed(op);
                    return Err(Failed::Unavailable(unavailable(e)));
                }
            };
            let sent = async {
                match &cmd {
                    Query::Cmd(c) => c.query_async::<T>(&mut conn).await,
                    Query::Pipe(p) => p.query_async::<T>(&mut conn).await,
                }
            };
            return match tokio::time::timeout(shared.timeout, sent).await {
                Ok(Ok(v)) => {
                    shared.health.ok();
                    Ok(v)
                }
                Ok(Err(e))
                    if e.kind() == redis::ErrorKind::UnexpectedReturnType
                        || e.kind() == redis::ErrorKind::Parse
                        || wrong_type(&e) =>
                {
                    // Redis answered, but not what wxgate writes there.
                    shared.health.ok();
                    tracing::warn!(op, error = %e, "Redis holds a value of another type under one of wxgate's names");
                    Err(Failed::Garbage)
                }
                Ok(Err(e)) if e.is_connection_dropped() && !retried => {
                    tracing::debug!(op, error = %e, "the connection to Redis was closed; sending again on a new one");
                    self.conn.broken();
                    retried = true;
                    continue;
                }
                Ok(Err(e)) => {
                    self.conn.broken();
                    shared.health.failed(op);
                    Err(Failed::Unavailable(unavailable(e)))
                }
                Err(_) => {
                    self.conn.broken();
                    shared.health.failed(op);
                    Err(Failed::Unavailable(unavailable(Timeout(shared.timeout))))
                }
            };
        }
    }

    /// A write to `names` (one key, or one transaction on it): when one of
    /// them holds a value of another type, the names are cleared and the
    /// write made once more, so a damaged key costs one login, not every one.
    async fn write(&self, op: &'static str, names: &[&str], mut cmd: Query<'_>) -> Result<(), Error> {
        match self.query::<Value>(op, cmd.reborrow()).await {
            Ok(_) => Ok(()),
            Err(Failed::Garbage) => {
                for name in names {
                    let _: Value = self.query(op, Query::Cmd(redis::cmd("DEL").arg(*name))).await?;
                }
                let _: Value = self.query(op, cmd).await?;
                Ok(())
            }
            Err(Failed::Unavailable(e)) => Err(e),
        }
    }

    /// A bulk-string value, or `None` for a missing key or one of another type.
    async fn get_bytes(&self, op: &'static str, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let value: Value = absent_if_garbage(self.query(op, Query::Cmd(redis::cmd("GET").arg(name))).await)?;
        Ok(match value {
            Value::BulkString(b) => Some(b),
            Value::Nil => None,
            other => {
                tracing::warn!(op, kind = ?std::mem::discriminant(&other), "a stored value is not a string; treated as absent");
                None
            }
        })
    }

    fn session_name(&self, token: &SessionToken) -> ([u8; 16], String) {
        let keys = &self.shared.keys;
        let digest = keys.digest(Kind::Session, &[token.as_bytes()]);
        (digest, keys.name_of(Kind::Session, &digest))
    }

    async fn fetch(&self, token: &SessionToken, name: &str) -> Result<Option<Session>, Error> {
        let Some(sealed) = self.get_bytes("get_session", name).await? else {
            return Ok(None);
        };
        Ok(open_session(&self.shared, token, name, &sealed))
    }

    async fn publish(&self, name: &str) -> Result<(), Error> {
        let _: Value = self
            .query(
                "publish",
                Query::Cmd(redis::cmd("PUBLISH").arg(&self.shared.channel).arg(name)),
            )
            .await?;
        Ok(())
    }

    fn user_index(&self, appid: &str, openid: &str) -> String {
        self.shared
            .keys
            .name(Kind::UserIndex, &[appid.as_bytes(), openid.as_bytes()])
    }
}

fn open_session(shared: &RedisShared, token: &SessionToken, name: &str, sealed: &[u8]) -> Option<Session> {
    let opened = shared.keys.open(Kind::Session, &[token.as_bytes()], name, sealed);
    let session = opened
        .ok()
        .and_then(|plain| serde_json::from_slice::<Stored>(&plain).ok())
        .and_then(|stored| stored.session(&shared.appids));
    if session.is_none() {
        tracing::warn!("a stored session does not open; treated as absent");
    }
    session
}

/// A command or a transaction.
enum Query<'a> {
    Cmd(&'a mut redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl Query<'_> {
    /// The same command, lent again (for a second try).
    fn reborrow(&mut self) -> Query<'_> {
        match self {
            Query::Cmd(c) => Query::Cmd(c),
            Query::Pipe(p) => Query::Pipe(p),
        }
    }
}

/// Why a lookup found no session to cache (never cached: an absent session
/// may be created a moment later, on another replica).
#[derive(Debug, Clone)]
enum Miss {
    Absent,
    Failed(Error),
}

impl SessionStore for RedisStore {
    fn get(&self, token: &SessionToken) -> BoxFuture<'_, Result<Option<Session>, Error>> {
        let token = *token;
        async move {
            let (digest, name) = self.session_name(&token);
            let shared = &self.shared;
            let ttl = shared.ttl.as_secs();
            let live = |s: &Session| unix_now().saturating_sub(s.created_at()) < ttl;
            let Some(l1) = shared.l1.as_ref().filter(|_| shared.l1_valid.load(Ordering::Acquire)) else {
                return Ok(self.fetch(&token, &name).await?.filter(live));
            };
            let seen = shared.revocations.load(Ordering::Acquire);
            let found = l1
                .try_get_with(digest, async {
                    match self.fetch(&token, &name).await {
                        Ok(Some(s)) => Ok(s),
                        Ok(None) => Err(Miss::Absent),
                        Err(e) => Err(Miss::Failed(e)),
                    }
                })
                .await;
            if found.is_ok() && shared.revocations.load(Ordering::Acquire) != seen {
                // A revocation came while this was read from Redis: what was
                // read may be what it revoked, so it is not kept (this request,
                // which came first, still gets it).
                l1.invalidate(&digest).await;
            }
            match found {
                Ok(s) => Ok(Some(s).filter(live)),
                Err(miss) => match &*miss {
                    Miss::Absent => Ok(None),
                    Miss::Failed(e) => Err(e.clone()),
                },
            }
        }
        .boxed()
    }

    fn insert(&self, token: &SessionToken, session: &Session) -> BoxFuture<'_, Result<(), Error>> {
        let (token, session) = (*token, session.clone());
        async move {
            let shared = &self.shared;
            let (digest, name) = self.session_name(&token);
            let stored = Stored::of(&session, &shared.appids);
            let index = self.user_index(&stored.appid, session.openid());
            let plain = serde_json::to_vec(&stored).unwrap_or_default();
            let sealed = shared.keys.seal(Kind::Session, &[token.as_bytes()], &name, &plain);
            let expires_ms = (session.created_at() + shared.ttl.as_secs()) * 1000;
            let _: Value = self
                .query(
                    "insert_session",
                    Query::Cmd(redis::cmd("SET").arg(&name).arg(sealed).arg("PXAT").arg(expires_ms)),
                )
                .await?;
            // The user's index: one key, so one transaction (and one slot).
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SADD")
                .arg(&index)
                .arg(&name)
                .ignore()
                // A new set has no expiry (NX sets one); a set's expiry
                // only ever moves later (GT).
                .cmd("PEXPIREAT")
                .arg(&index)
                .arg(expires_ms)
                .arg("NX")
                .ignore()
                .cmd("PEXPIREAT")
                .arg(&index)
                .arg(expires_ms)
                .arg("GT")
                .ignore();
            self.write("insert_session", &[&index], Query::Pipe(&pipe)).await?;
            shared.forget(&digest).await;
            // Other replicas drop their copy (a phone was remembered, say).
            self.publish(&name).await
        }
        .boxed()
    }

    fn revoke(&self, token: &SessionToken) -> BoxFuture<'_, Result<(), Error>> {
        let token = *token;
        async move {
            let (digest, name) = self.session_name(&token);
            let _: Value = self.query("revoke", Query::Cmd(redis::cmd("DEL").arg(&name))).await?;
            self.shared.forget(&digest).await;
            self.publish(&name).await
        }
        .boxed()
    }

    fn revoke_user<'a>(&'a self, app: &'a App, openid: &'a str) -> BoxFuture<'a, Result<u64, Error>> {
        async move {
            let index = self.user_index(&app.appid, openid);
            let names: Vec<String> = absent_if_garbage(
                self.query("revoke_user", Query::Cmd(redis::cmd("SMEMBERS").arg(&index)))
                    .await,
            )?;
            let mut revoked = 0;
            for name in &names {
                // One key per command: names may live on different cluster slots.
                let deleted: u64 = self
                    .query("revoke_user", Query::Cmd(redis::cmd("DEL").arg(name)))
                    .await?;
                revoked += deleted;
                if let Some(digest) = self.shared.keys.digest_of(name) {
                    self.shared.forget(&digest).await;
                }
                self.publish(name).await?;
            }
            let _: Value = self
                .query("revoke_user", Query::Cmd(redis::cmd("DEL").arg(&index)))
                .await?;
            Ok(revoked)
        }
        .boxed()
    }

    fn record_key<'a>(&'a self, appid: &'a str, openid: &'a str, key: SessionKey) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let shared = &self.shared;
            let material: [&[u8]; 2] = [appid.as_bytes(), openid.as_bytes()];
            let name = shared.keys.name(Kind::KeyHistory, &material);
            let sealed = shared.keys.seal(Kind::KeyHistory, &material, &name, key.as_bytes());
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("LPUSH")
                .arg(&name)
                .arg(sealed)
                .ignore()
                .cmd("LTRIM")
                .arg(&name)
                .arg(0)
                .arg(2)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&name)
                .arg(shared.previous_key_ttl.as_millis() as u64)
                .ignore();
            self.write("record_key", &[&name], Query::Pipe(&pipe)).await
        }
        .boxed()
    }

    fn recent_keys<'a>(&'a self, appid: &'a str, openid: &'a str) -> BoxFuture<'a, Result<Vec<SessionKey>, Error>> {
        async move {
            let shared = &self.shared;
            let material: [&[u8]; 2] = [appid.as_bytes(), openid.as_bytes()];
            let name = shared.keys.name(Kind::KeyHistory, &material);
            let sealed: Vec<Vec<u8>> = absent_if_garbage(
                self.query("recent_keys", Query::Cmd(redis::cmd("LRANGE").arg(&name).arg(0).arg(2)))
                    .await,
            )?;
            let mut keys: Vec<SessionKey> = Vec::new();
            for value in sealed {
                match shared.keys.open(Kind::KeyHistory, &material, &name, &value) {
                    Ok(bytes) => match <[u8; 16]>::try_from(bytes.as_slice()) {
                        Ok(k) => {
                            let k = SessionKey::from_bytes(k);
                            if !keys.contains(&k) {
                                keys.push(k);
                            }
                        }
                        Err(_) => tracing::warn!("a stored session key has the wrong length; skipped"),
                    },
                    Err(_) => tracing::warn!("a stored session key does not open; skipped"),
                }
            }
            Ok(keys)
        }
        .boxed()
    }

    fn login<'a>(
        &'a self,
        appid: &'a str,
        code: &'a str,
        exchange: BoxFuture<'a, Result<Issued, Error>>,
    ) -> BoxFuture<'a, Result<Login, Error>> {
        async move {
            let shared = &self.shared;
            let material: [&[u8]; 2] = [appid.as_bytes(), code.as_bytes()];
            let name = shared.keys.name(Kind::Code, &material);
            let mut exchange = Some(exchange);
            let mut cleared = 0;
            loop {
                let taken: Value = self
                    .query(
                        "login",
                        Query::Cmd(
                            redis::cmd("SET")
                                .arg(&name)
                                .arg(PENDING)
                                .arg("NX")
                                .arg("PX")
                                .arg(shared.code_lock.as_millis() as u64),
                        ),
                    )
                    .await?;
                if taken != Value::Nil {
                    // This replica calls WeChat; the others wait for the outcome.
                    let Some(exchange) = exchange.take() else {
                        return Err(Error::Internal("a login exchange ran twice".into()));
                    };
                    let result = exchange.await;
                    let outcome = match &result {
                        Ok(issued) => Some(CodeOutcome::Issued {
                            token: URL_SAFE_NO_PAD.encode(issued.token.as_bytes()),
                            session: Stored::of(&issued.session, &shared.appids),
                        }),
                        Err(Error::WeixinInvalidCode { errcode }) => Some(CodeOutcome::Refused { errcode: *errcode }),
                        Err(Error::UserBlocked) => Some(CodeOutcome::Refused { errcode: 40226 }),
                        Err(_) => None,
                    };
                    let mut cmd = match outcome {
                        Some(outcome) => {
                            let plain = serde_json::to_vec(&outcome).unwrap_or_default();
                            let sealed = shared.keys.seal(Kind::Code, &material, &name, &plain);
                            let mut c = redis::cmd("SET");
                            c.arg(&name)
                                .arg(sealed)
                                .arg("PX")
                                .arg(shared.code_ttl.as_millis() as u64);
                            c
                        }
                        // Busy, unreachable: let the next try call WeChat.
                        None => {
                            let mut c = redis::cmd("DEL");
                            c.arg(&name);
                            c
                        }
                    };
                    if let Err(e) = self.query::<Value>("login", Query::Cmd(&mut cmd)).await {
                        tracing::warn!(error = %Error::from(e).chain(), "cannot record a login code's outcome");
                    }
                    return result.map(|issued| Login { issued, fresh: true });
                }
                let deadline = tokio::time::Instant::now() + shared.code_lock + CODE_POLL;
                loop {
                    tokio::time::sleep(CODE_POLL).await;
                    let damaged = match self
                        .query::<Value>("login", Query::Cmd(redis::cmd("GET").arg(&name)))
                        .await
                    {
                        Ok(Value::BulkString(v)) if v == PENDING => false,
                        Ok(Value::BulkString(sealed)) => match self.code_outcome(&material, &name, &sealed) {
                            Some(outcome) => return outcome,
                            None => true,
                        },
                        // The lock went (a failed exchange): try to take it.
                        Ok(_) => break,
                        Err(Failed::Garbage) => true,
                        Err(Failed::Unavailable(e)) => return Err(e),
                    };
                    if damaged {
                        // Something that is no outcome of wxgate's sits under the code's
                        // name: clear it and go on as if it was never there (WeChat then
                        // says whether the code is still good). Twice at most.
                        cleared += 1;
                        if cleared > 2 {
                            return Err(Failed::Garbage.into());
                        }
                        let _: Value = self.query("login", Query::Cmd(redis::cmd("DEL").arg(&name))).await?;
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        break;
                    }
                }
            }
        }
        .boxed()
    }

    fn claim_force_refresh<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        async move {
            let name = self.shared.keys.name(Kind::RefreshLock, &[appid.as_bytes()]);
            let taken: Value = self
                .query(
                    "claim_force_refresh",
                    Query::Cmd(
                        redis::cmd("SET")
                            .arg(&name)
                            .arg(1)
                            .arg("NX")
                            .arg("PX")
                            .arg(FORCE_REFRESH_EVERY.as_millis() as u64),
                    ),
                )
                .await?;
            Ok(taken != Value::Nil)
        }
        .boxed()
    }

    fn count(&self) -> BoxFuture<'_, Option<u64>> {
        // Redis holds other keys too; counting sessions would be a scan.
        async { None }.boxed()
    }
}

impl RedisStore {
    /// A stored login outcome, or `None` when it does not open (another
    /// `[redis].secret`, tampering): logged, and treated as absent.
    fn code_outcome(&self, material: &[&[u8]], name: &str, sealed: &[u8]) -> Option<Result<Login, Error>> {
        let keys = &self.shared.keys;
        let outcome = keys
            .open(Kind::Code, material, name, sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice::<CodeOutcome>(&plain).ok());
        let opened = match outcome {
            Some(CodeOutcome::Issued { token, session }) => {
                match (
                    SessionToken::parse(token.as_bytes()),
                    session.session(&self.shared.appids),
                ) {
                    (Some(token), Some(session)) => Some(Ok(Login {
                        issued: Issued { token, session },
                        fresh: false,
                    })),
                    _ => None,
                }
            }
            Some(CodeOutcome::Refused { errcode }) => Some(Err(crate::weixin::client::errcode_error(
                errcode,
                &serde_json::Value::Null,
            ))),
            None => None,
        };
        if opened.is_none() {
            tracing::warn!("a stored login outcome does not open; treated as absent");
        }
        opened
    }
}

/// How often the revocation subscription is pinged.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(2);

/// Listens for revocations on `<prefix>revoked` until `stop`, keeping the
/// in-process cache honest (see the module docs). Runs on its own thread.
pub async fn subscriber(shared: Arc<RedisShared>, stop: tokio_util::sync::CancellationToken) {
    use futures_util::StreamExt;
    let mut seed = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let client = shared.target.plain_client(seed).await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&shared.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(shared.connect_timeout * 2, connected) => r,
        };
        match pubsub {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(100);
                // Whatever was missed while away is forgotten, then the
                // cache may serve again.
                shared.flush_l1();
                shared.l1_valid.store(true, Ordering::Release);
                shared.health.ok();
                tracing::info!("listening for session revocations");
                let (mut sink, mut messages) = pubsub.split();
                // A subscription can die without a word (a half-open TCP
                // connection): a ping every SUBSCRIPTION_PING proves it alive,
                // and tells `/readyz` whether Redis answers when no request does.
                let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = ping.tick() => {
                            let wait = shared.timeout.max(Duration::from_secs(1));
                            match tokio::time::timeout(wait, sink.ping::<Value>()).await {
                                Ok(Ok(_)) => shared.health.ok(),
                                _ => {
                                    shared.health.failed("subscription");
                                    break;
                                }
                            }
                        }
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                let name: String = msg.get_payload().unwrap_or_default();
                                if let Some(digest) = shared.keys.digest_of(&name) {
                                    shared.forget(&digest).await;
                                }
                            }
                            None => break,
                        }
                    }
                }
                shared.l1_valid.store(false, Ordering::Release);
                shared.flush_l1();
                tracing::warn!(
                    "the revocation subscription dropped; the in-process session cache is off until it is back"
                );
            }
            Ok(Err(e)) => {
                shared.health.failed("subscription");
                tracing::debug!(error = %e, "cannot subscribe to session revocations");
            }
            Err(_) => {
                shared.health.failed("subscription");
                tracing::debug!("subscribing to session revocations timed out");
            }
        }
        seed += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
