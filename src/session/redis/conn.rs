//! Connections to Redis, with the redis crate (redis-rs).
//!
//! - **One multiplexed connection per worker** ([`WorkerConn`]), made on the
//!   worker's own runtime: a connection whose driver task lives on another
//!   worker's runtime would make every command hop threads. A multiplexed
//!   connection pipelines by itself, so one is enough per worker.
//! - **Made on first use and remade after a failure**: wxgate starts (and
//!   serves pass-through traffic) while Redis is down, and comes back by
//!   itself when Redis does. After a failed attempt, callers fail fast for a
//!   short while instead of all queueing on a connect that will time out.
//!   A connection that failed a command (I/O error, timeout, `READONLY`
//!   after a Sentinel failover) is dropped, so the next command reconnects,
//!   asking the sentinels for the master again: redis-rs does not follow a
//!   failover for connections it already has (redis-rs #1438). A command
//!   that finds its connection closed while idle is sent once more on a
//!   new one (`RedisStore::query`).
//! - Cluster mode uses redis-rs's cluster connection, which follows the
//!   cluster's slot map and reconnects to nodes by itself.
//! - TLS (`rediss://`) through rustls, with `[redis].tls_ca_file` as the
//!   root when set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tokio::time::Instant;

use crate::config::{RedisConfig, RedisMode};

/// After a failed connection attempt, commands fail at once for this long.
const RETRY_CONNECT_AFTER: Duration = Duration::from_millis(250);

/// What the configuration says to connect to. One per process.
pub enum Target {
    Standalone(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The cluster client, and a plain client per seed (for pub/sub).
    Cluster(ClusterClient, Vec<Client>),
}

/// Why `[redis]` cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// `redis.tls_ca_file` (named) cannot be read.
    #[error("redis.tls_ca_file {0}: {1}")]
    CaFile(String, std::io::Error),
    /// `redis.url` is not a usable Redis address (or list of them).
    #[error("redis.url: {0}")]
    Url(redis::RedisError),
}

impl Target {
    pub fn new(config: &RedisConfig) -> Result<Self, TargetError> {
        let certs = if config.tls_ca_file.is_empty() {
            None
        } else {
            let pem =
                std::fs::read(&config.tls_ca_file).map_err(|e| TargetError::CaFile(config.tls_ca_file.clone(), e))?;
            Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            })
        };
        let urls: Vec<&str> = config.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let tls = urls.first().is_some_and(|u| u.starts_with("rediss://"));
        let infos = urls
            .iter()
            .map(|u| u.into_connection_info())
            .collect::<RedisResult<Vec<ConnectionInfo>>>()
            .map_err(TargetError::Url)?;
        // `[redis].username`/`password` override what a URL says.
        let with_credentials = |info: ConnectionInfo| {
            let mut settings = info.redis_settings().clone();
            if !config.username.is_empty() {
                settings = settings.set_username(&config.username);
            }
            if !config.password.is_empty() {
                settings = settings.set_password(config.password.expose());
            }
            info.set_redis_settings(settings)
        };
        let client = |info: ConnectionInfo| -> RedisResult<Client> {
            match &certs {
                Some(certs) => Client::build_with_tls(info, certs.clone()),
                None => Client::open(info),
            }
        };
        let Some(first) = infos.first().cloned() else {
            return Err(TargetError::Url(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no address",
            ))));
        };
        Ok(match config.mode {
            RedisMode::Standalone => Target::Standalone(client(with_credentials(first)).map_err(TargetError::Url)?),
            RedisMode::Cluster => {
                let seeds: Vec<ConnectionInfo> = infos.into_iter().map(with_credentials).collect();
                let mut b = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(config.connect_timeout.get())
                    .response_timeout(config.timeout.get());
                if let Some(certs) = &certs {
                    b = b.certs(certs.clone());
                }
                let plain = seeds.into_iter().map(client).collect::<RedisResult<Vec<_>>>();
                Target::Cluster(b.build().map_err(TargetError::Url)?, plain.map_err(TargetError::Url)?)
            }
            RedisMode::Sentinel => {
                let addrs = infos.iter().map(|i| i.addr().clone());
                let mut b = SentinelClientBuilder::new(addrs, &config.master_name, SentinelServerType::Master)
                    .map_err(TargetError::Url)?;
                let master = with_credentials(first);
                let settings = master.redis_settings();
                if let Some(user) = settings.username() {
                    b = b.set_client_to_redis_username(user);
                }
                if let Some(password) = settings.password() {
                    b = b.set_client_to_redis_password(password);
                }
                b = b.set_client_to_redis_db(settings.db());
                if !config.sentinel_password.is_empty() {
                    b = b.set_client_to_sentinel_password(config.sentinel_password.expose());
                }
                if tls {
                    b = b
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                    if let Some(certs) = &certs {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs.clone());
                    }
                }
                Target::Sentinel(tokio::sync::Mutex::new(b.build().map_err(TargetError::Url)?))
            }
        })
    }

    /// A plain (not cluster) client: the server, the current master (the
    /// sentinels are asked each time), or a cluster seed (classic pub/sub
    /// reaches every node of a cluster, so any will do).
    pub async fn plain_client(&self, seed: usize) -> RedisResult<Client> {
        match self {
            Target::Standalone(c) => Ok(c.clone()),
            Target::Sentinel(s) => s.lock().await.async_get_client().await,
            Target::Cluster(_, seeds) => seeds
                .get(seed % seeds.len().max(1))
                .cloned()
                .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed"))),
        }
    }
}

/// A connection of either kind, usable as one.
#[derive(Clone)]
pub enum AnyConn {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConn::Plain(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Plain(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to Redis failed less than {RETRY_CONNECT_AFTER:?} ago")]
    Backoff,
    #[error("no connection to Redis within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// A worker's connection (see the module docs).
pub struct WorkerConn {
    target: Arc<Target>,
    connect_timeout: Duration,
    state: Mutex<State>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    conn: Option<AnyConn>,
    failed_at: Option<Instant>,
}

impl WorkerConn {
    pub fn new(target: Arc<Target>, connect_timeout: Duration) -> Self {
        Self {
            target,
            connect_timeout,
            state: Mutex::default(),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection, made now if there is none.
    pub async fn get(&self) -> Result<AnyConn, ConnectError> {
        if let Some(c) = self.ready()? {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.ready()? {
            return Ok(c);
        }
        let made = tokio::time::timeout(self.connect_timeout, self.connect()).await;
        let mut state = self.state();
        match made {
            Ok(Ok(c)) => {
                state.conn = Some(c.clone());
                state.failed_at = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                state.failed_at = Some(Instant::now());
                Err(ConnectError::Redis(e))
            }
            Err(_) => {
                state.failed_at = Some(Instant::now());
                Err(ConnectError::Timeout(self.connect_timeout))
            }
        }
    }

    /// The current connection, `None` to make one, or the back-off error.
    fn ready(&self) -> Result<Option<AnyConn>, ConnectError> {
        let state = self.state();
        if let Some(c) = &state.conn {
            return Ok(Some(c.clone()));
        }
        match state.failed_at {
            Some(at) if at.elapsed() < RETRY_CONNECT_AFTER => Err(ConnectError::Backoff),
            _ => Ok(None),
        }
    }

    async fn connect(&self) -> RedisResult<AnyConn> {
        match &*self.target {
            Target::Cluster(c, _) => Ok(AnyConn::Cluster(c.get_async_connection().await?)),
            target => {
                let client = target.plain_client(0).await?;
                let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(self.connect_timeout));
                Ok(AnyConn::Plain(
                    client.get_multiplexed_async_connection_with_config(&config).await?,
                ))
            }
        }
    }

    /// The connection failed a command: the next one reconnects.
    pub fn broken(&self) {
        self.state().conn = None;
    }
}
