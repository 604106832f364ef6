//! Integration-test harness that runs **real** `redis-server` processes.
//!
//! Modelled on redis-rs's own `redis-test` crate (`redis-test/src/{server,cluster,sentinel,utils}.rs`),
//! but self-contained: it needs nothing but `std` (no `tempfile`, no `libc`, no `unsafe`, no
//! redis client crate), so this single file can be dropped into another crate as e.g.
//! `tests/it/common/redis.rs` unchanged.
//!
//! What it provides:
//!
//! * [`RedisServer`]: one standalone server on a free loopback port, plain TCP
//!   ([`RedisServer::start`], [`RedisServer::start_with`]) or TLS ([`RedisServer::start_tls`], with a
//!   throwaway CA and server certificate made by the `openssl` CLI). It can be paused (SIGSTOP),
//!   resumed (SIGCONT), killed (SIGKILL) and restarted on the same port and data directory, and it
//!   speaks just enough RESP over a raw [`TcpStream`] to run single commands
//!   ([`RedisServer::command`], [`RedisServer::query`]) without any client library.
//! * [`RedisCluster`]: `n >= 3` cluster-enabled masters joined with `redis-cli --cluster create`,
//!   returned only once every node reports `cluster_state:ok` and the same full slot map.
//! * [`RedisSentinel`]: a master, one replica and one sentinel monitoring them as `mymaster`,
//!   plus [`RedisSentinel::wait_for_new_master`] to follow a failover.
//!
//! Every process lives in its own temporary directory under [`std::env::temp_dir`]
//! (`redis-harness-<pid>-<n>-<nanos>`) holding its data, its log file (`log`) and its captured
//! stdout/stderr (`stdio`). Dropping a handle SIGKILLs and reaps its processes, then removes the
//! directory, so processes are cleaned up when a test panics too. (A test binary that is itself
//! SIGKILLed cannot run destructors; its servers then outlive it. That cannot be prevented
//! without `prctl(PR_SET_PDEATHSIG)`, i.e. without `unsafe`/`libc`.)
//!
//! All calls are **blocking** (they poll with `std::thread::sleep`, every wait is bounded). That
//! is fine inside `#[tokio::test]`: nothing else needs to run while a server starts. In a
//! long-running async context wrap them in `tokio::task::spawn_blocking`.
//!
//! Failures never skip a test: a missing `redis-server`, `redis-cli` or `openssl` binary, a
//! server that does not come up within [`STARTUP_TIMEOUT`], and so on, all panic with a message
//! that includes the server's log. The binaries are looked up on `PATH`; the environment
//! variables `REDIS_HARNESS_SERVER_BIN`, `REDIS_HARNESS_CLI_BIN` and `REDIS_HARNESS_OPENSSL_BIN`
//! override them.
//!
//! ```no_run
//! use redis_harness::redis_harness::RedisServer; // in another crate: `use crate::common::redis::RedisServer;`
//!
//! let server = RedisServer::start();
//! assert_eq!(server.command(&["SET", "k", "v"]), "+OK\r\n");
//! assert_eq!(server.command(&["GET", "k"]), "$1\r\nv\r\n");
//! let url = server.url(); // "redis://127.0.0.1:<port>", hand it to a client
//! # let _ = url;
//! ```

#![allow(dead_code)] // A test crate may use only part of the harness.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server (or cluster, or sentinel setup) may take to become ready before the
/// harness panics.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Read/write timeout of the harness's own RESP connections ([`RedisServer::command`] and
/// friends); a paused server makes those calls fail after this long instead of hanging.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The loopback address every server binds to.
const HOST: &str = "127.0.0.1";
/// How often a server is started on a fresh port when the previous one turned out to be taken.
const START_ATTEMPTS: usize = 5;
/// Redis Cluster listens on `port + 10000` for its bus, so ports are picked below 55536.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
/// Poll interval of all the bounded waits.
const POLL: Duration = Duration::from_millis(20);
/// Number of hash slots in a Redis Cluster.
const CLUSTER_SLOTS: u64 = 16_384;

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

fn binary(env_var: &str, default: &str) -> OsString {
    std::env::var_os(env_var).unwrap_or_else(|| default.into())
}

fn server_bin() -> OsString {
    binary("REDIS_HARNESS_SERVER_BIN", "redis-server")
}

fn cli_bin() -> OsString {
    binary("REDIS_HARNESS_CLI_BIN", "redis-cli")
}

fn openssl_bin() -> OsString {
    binary("REDIS_HARNESS_OPENSSL_BIN", "openssl")
}

/// Panics with an actionable message when spawning `bin` failed.
fn spawn_failed(bin: &OsString, what: &str, err: &io::Error) -> ! {
    if err.kind() == io::ErrorKind::NotFound {
        panic!(
            "redis harness: `{}` not found on PATH; {what} is required by these tests \
             (Debian/Ubuntu: `apt-get install redis-server openssl`)",
            bin.to_string_lossy()
        );
    }
    panic!("redis harness: failed to run `{}`: {err}", bin.to_string_lossy());
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A uniquely named directory under [`std::env::temp_dir`], removed (recursively) on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut last_err = None;
        for _ in 0..100 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("redis-harness-{}-{n}-{nanos}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_err = Some(err),
                Err(err) => panic!("redis harness: cannot create temp dir {}: {err}", path.display()),
            }
        }
        panic!(
            "redis harness: cannot create a unique temp dir under {}: {last_err:?}",
            base.display()
        );
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Ports (and their cluster bus ports) handed out to servers of this process that are still
/// alive, so that concurrently running tests never pick each other's ports.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved_ports() -> MutexGuard<'static, BTreeSet<u16>> {
    RESERVED_PORTS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Picks a free loopback port `P` (bind `127.0.0.1:0`, read the port, close) such that
/// `P + 10000` (the cluster bus port) is free as well, and reserves both in this process.
/// This is inherently racy against other processes; the start functions retry on conflicts.
fn reserve_port() -> u16 {
    for _ in 0..1_000 {
        let listener = TcpListener::bind(loopback(0))
            .unwrap_or_else(|err| panic!("redis harness: cannot bind 127.0.0.1:0: {err}"));
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(err) => panic!("redis harness: cannot read the address of a listener: {err}"),
        };
        drop(listener);
        let Some(bus) = port.checked_add(CLUSTER_BUS_OFFSET) else {
            continue;
        };
        let mut reserved = reserved_ports();
        if reserved.contains(&port) || reserved.contains(&bus) {
            continue;
        }
        if TcpListener::bind(loopback(bus)).is_err() {
            continue;
        }
        reserved.insert(port);
        reserved.insert(bus);
        return port;
    }
    panic!("redis harness: could not find a free loopback port (with a free port + 10000)");
}

fn release_port(port: u16) {
    let mut reserved = reserved_ports();
    reserved.remove(&port);
    if let Some(bus) = port.checked_add(CLUSTER_BUS_OFFSET) {
        reserved.remove(&bus);
    }
}

// ---------------------------------------------------------------------------------------------
// RESP
// ---------------------------------------------------------------------------------------------

/// One parsed RESP2 reply, as returned by [`RedisServer::query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`: a simple string such as `OK` or `PONG`.
    Status(String),
    /// `-...`: an error reply, e.g. `ERR unknown command`.
    Error(String),
    /// `:...`: an integer.
    Integer(i64),
    /// `$...`: a bulk string (binary safe); `None` is the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*...`: an array; `None` is the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk reply (lossily decoded as UTF-8); `None` for other kinds.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// The integer of an integer reply, or of a status/bulk reply holding a decimal number.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Integer(i) => Some(*i),
            other => other.as_text()?.trim().parse().ok(),
        }
    }

    /// The elements of a (non-null) array reply.
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one `\r\n`-terminated line, appending it verbatim to `raw`; returns it without `\r\n`.
fn read_line(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete reply",
        ));
    }
    raw.extend_from_slice(&line);
    if !line.ends_with(b"\r\n") {
        return Err(invalid_data("reply line not terminated by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

/// Reads exactly one RESP2 reply; every byte read is appended to `raw`.
fn read_reply(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Reply> {
    let line = read_line(reader, raw)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(invalid_data("empty reply line"));
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let number = || -> io::Result<i64> {
        text.parse()
            .map_err(|_| invalid_data(format!("bad number in reply: {text:?}")))
    };
    Ok(match kind {
        b'+' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Integer(number()?),
        b'$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            raw.extend_from_slice(&data);
            if !data.ends_with(b"\r\n") {
                return Err(invalid_data("bulk string not terminated by CRLF"));
            }
            data.truncate(len);
            Reply::Bulk(Some(data))
        }
        b'*' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_reply(reader, raw)?);
            }
            Reply::Array(Some(items))
        }
        other => {
            return Err(invalid_data(format!("unsupported RESP type byte {:?}", other as char)));
        }
    })
}

/// Sends one command to `127.0.0.1:port` over a fresh plain TCP connection and reads one reply.
/// Returns the parsed reply and its raw bytes.
fn roundtrip(port: u16, args: &[&[u8]], timeout: Duration) -> io::Result<(Reply, Vec<u8>)> {
    let stream = TcpStream::connect_timeout(&loopback(port), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    (&stream).write_all(&encode_command(args))?;
    let mut reader = BufReader::new(&stream);
    let mut raw = Vec::new();
    let reply = read_reply(&mut reader, &mut raw)?;
    Ok((reply, raw))
}

fn query_port(port: u16, args: &[&str], timeout: Duration) -> io::Result<Reply> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    roundtrip(port, &args, timeout).map(|(reply, _)| reply)
}

/// `INFO` output (a bulk string of `key:value` lines) as text; errors become `Err`.
fn info_text(port: u16, section: &str, timeout: Duration) -> io::Result<String> {
    match query_port(port, &["INFO", section], timeout)? {
        Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(invalid_data(format!("unexpected INFO reply: {other:?}"))),
    }
}

fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of `text` (on a char boundary), so panic messages stay readable.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Sends `sig` (e.g. `"STOP"`) to `pid` with the `kill` utility (no libc, no unsafe).
fn send_signal(pid: u32, sig: &str) -> io::Result<()> {
    let output = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`kill -{sig} {pid}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The one-letter process state from `/proc/<pid>/stat` (`R`, `S`, `T`, ...), if readable.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')' since comm may contain anything.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Polls `f` every [`POLL`] until it returns `Some`, or `timeout` has passed.
fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------------------------

/// Paths of the throwaway TLS material of a [`RedisServer::start_tls`] server.
#[derive(Clone, Debug)]
struct TlsFiles {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// What kind of process a [`RedisServer`] runs.
enum Kind {
    /// `redis-server --port P ...`.
    Plain,
    /// `redis-server --port 0 --tls-port P ...`.
    Tls(TlsFiles),
    /// A plain server with `--cluster-enabled yes` and its `nodes.conf` in its directory.
    ClusterNode,
    /// `redis-server <dir>/sentinel.conf --sentinel`; the string holds the `sentinel ...` lines.
    Sentinel(String),
}

/// Why one start attempt failed.
enum StartError {
    /// The port (or the cluster bus port) was taken by someone else: try another one.
    PortInUse(String),
    /// Anything else: give up.
    Fatal(String),
}

/// A real `redis-server` process on `127.0.0.1` for one test.
///
/// Dropping it SIGKILLs and reaps the process and removes its temporary directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    kind: Kind,
    extra_args: Vec<String>,
    log_path: PathBuf,
    stdio_path: PathBuf,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("tls", &self.is_tls())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisServer {
    /// Starts `redis-server --save "" --appendonly no --port P --bind 127.0.0.1 --dir <tmp>
    /// --logfile <tmp>/log` on a free loopback port and waits (at most [`STARTUP_TIMEOUT`])
    /// until it answers `PING` with `PONG`.
    ///
    /// Panics (with the server log) if `redis-server` is missing or does not come up.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with `args` appended to the command line, e.g.
    /// `&["--requirepass", "secret"]` or `&["--maxmemory", "1mb"]`. Note that the readiness
    /// check sends an unauthenticated `PING`; with `--requirepass` it gets `-NOAUTH`, which the
    /// harness also accepts as "up".
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::launch(Kind::Plain, args)
    }

    /// Starts a TLS-only server (`--port 0 --tls-port P --tls-auth-clients no`) with a fresh
    /// CA and a server certificate for `IP:127.0.0.1` and `DNS:localhost`, generated with the
    /// `openssl` CLI into the temp dir. Readiness is "the log says `Ready to accept
    /// connections`, the process is alive and the port accepts TCP connections" (std has no
    /// TLS client to send a `PING`).
    ///
    /// Connect with [`RedisServer::url`] (`rediss://127.0.0.1:P`) trusting
    /// [`RedisServer::ca_file`]. [`RedisServer::command`] and friends speak plain TCP only and
    /// panic on a TLS server.
    pub fn start_tls() -> RedisServer {
        RedisServer::start_tls_with(&[])
    }

    /// Like [`RedisServer::start_tls`], with `args` appended to the command line.
    pub fn start_tls_with(args: &[&str]) -> RedisServer {
        let dir = TempDir::new();
        let tls = generate_tls_files(dir.path());
        RedisServer::launch_in(dir, Kind::Tls(tls), args)
    }

    fn launch(kind: Kind, args: &[&str]) -> RedisServer {
        RedisServer::launch_in(TempDir::new(), kind, args)
    }

    fn launch_in(dir: TempDir, kind: Kind, args: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            kind,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            log_path: dir.path().join("log"),
            stdio_path: dir.path().join("stdio"),
            dir,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            if server.port != 0 {
                release_port(server.port);
            }
            server.port = reserve_port();
            // A fresh log per attempt, so old "Address already in use" lines do not confuse us.
            let _ = fs::remove_file(&server.log_path);
            if let Kind::Sentinel(monitor) = &server.kind {
                server.write_sentinel_conf(monitor);
            }
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartError::PortInUse(msg)) => failures.push(msg),
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "redis harness: could not start redis-server after {START_ATTEMPTS} attempts, \
             ports kept being taken:\n{}",
            failures.join("\n")
        );
    }

    fn write_sentinel_conf(&self, monitor: &str) {
        // Paths are double-quoted (redis config syntax) in case the temp dir has spaces.
        let quote = |path: &Path| {
            let text = path.display().to_string();
            format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
        };
        let conf = format!(
            "port {port}\nbind {HOST}\ndir {dir}\nlogfile {log}\n{monitor}",
            port = self.port,
            dir = quote(self.dir.path()),
            log = quote(&self.log_path),
        );
        let path = self.dir.path().join("sentinel.conf");
        if let Err(err) = fs::write(&path, conf) {
            panic!("redis harness: cannot write {}: {err}", path.display());
        }
    }

    /// The command line for the current port.
    fn command_line(&self) -> Command {
        let mut cmd = Command::new(server_bin());
        let dir = self.dir.path();
        let port = self.port.to_string();
        if let Kind::Sentinel(_) = self.kind {
            cmd.arg(dir.join("sentinel.conf")).arg("--sentinel");
        } else {
            cmd.args(["--save", "", "--appendonly", "no"]);
            match &self.kind {
                Kind::Tls(tls) => {
                    cmd.args(["--port", "0", "--tls-port", &port]);
                    cmd.arg("--tls-cert-file").arg(&tls.server_cert);
                    cmd.arg("--tls-key-file").arg(&tls.server_key);
                    cmd.arg("--tls-ca-cert-file").arg(&tls.ca_cert);
                    cmd.args(["--tls-auth-clients", "no"]);
                }
                _ => {
                    cmd.args(["--port", &port]);
                }
            }
            cmd.args(["--bind", HOST]);
            cmd.arg("--dir").arg(dir);
            cmd.arg("--logfile").arg(&self.log_path);
            if let Kind::ClusterNode = self.kind {
                cmd.args(["--cluster-enabled", "yes"]);
                cmd.arg("--cluster-config-file").arg(dir.join("nodes.conf"));
                cmd.args(["--cluster-node-timeout", "2000"]);
            }
        }
        cmd.args(&self.extra_args);
        cmd.current_dir(dir);
        cmd
    }

    /// Spawns the process on `self.port` and waits until it is ready.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0) as usize;
        let stdio = match OpenOptions::new().create(true).append(true).open(&self.stdio_path) {
            Ok(file) => file,
            Err(err) => panic!("redis harness: cannot open {}: {err}", self.stdio_path.display()),
        };
        let stdio_err = match stdio.try_clone() {
            Ok(file) => file,
            Err(err) => panic!("redis harness: cannot duplicate a file handle: {err}"),
        };
        let mut cmd = self.command_line();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdio))
            .stderr(Stdio::from(stdio_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|err| spawn_failed(&server_bin(), "redis-server", &err));
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(status)) => status,
                Some(Err(err)) => {
                    return Err(StartError::Fatal(format!(
                        "redis harness: cannot wait for redis-server: {err}"
                    )));
                }
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let log = read_lossy(&self.log_path);
                let new_log = log.get(log_offset..).unwrap_or(&log);
                let msg = format!(
                    "redis harness: redis-server on port {} exited during startup ({status})\n{}",
                    self.port,
                    self.diagnostics()
                );
                return if new_log.contains("Address already in use") {
                    Err(StartError::PortInUse(msg))
                } else {
                    Err(StartError::Fatal(msg))
                };
            }
            if self.is_ready(log_offset) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(StartError::Fatal(format!(
                    "redis harness: redis-server on port {} did not become ready within {:?}\n{}",
                    self.port,
                    STARTUP_TIMEOUT,
                    self.diagnostics()
                )));
            }
            sleep(POLL);
        }
    }

    /// One readiness probe. For plain servers and sentinels: `PING` answers `PONG` (or a
    /// `NOAUTH` error) and `INFO server` reports *our* child's pid, so a foreign process that
    /// grabbed the port cannot be mistaken for ours. For TLS: the log line plus a TCP connect.
    fn is_ready(&self, log_offset: usize) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let probe = Duration::from_millis(500);
        if let Kind::Tls(_) = self.kind {
            let log = read_lossy(&self.log_path);
            let new_log = log.get(log_offset..).unwrap_or(&log);
            return new_log.contains("Ready to accept connections")
                && TcpStream::connect_timeout(&self.addr(), probe).is_ok();
        }
        match query_port(self.port, &["PING"], probe) {
            Ok(Reply::Status(s)) if s == "PONG" => {}
            Ok(Reply::Error(e)) if e.starts_with("NOAUTH") => return true,
            _ => return false,
        }
        match info_text(self.port, "server", probe) {
            Ok(info) => info_field(&info, "process_id") == Some(pid.to_string().as_str()),
            Err(_) => false,
        }
    }

    /// Log and captured stdout/stderr, for panic messages.
    fn diagnostics(&self) -> String {
        format!(
            "--- {} (tail) ---\n{}\n--- {} (tail) ---\n{}",
            self.log_path.display(),
            tail(&read_lossy(&self.log_path), 16 * 1024),
            self.stdio_path.display(),
            tail(&read_lossy(&self.stdio_path), 4 * 1024),
        )
    }

    /// The TCP (or TLS) port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:P`, or `rediss://127.0.0.1:P` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "rediss" } else { "redis" };
        format!("{scheme}://{HOST}:{}", self.port)
    }

    /// Whether this server was started with [`RedisServer::start_tls`].
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, Kind::Tls(_))
    }

    /// The PEM file of the CA that signed a TLS server's certificate (`None` for plain
    /// servers). Clients trust this as their root certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Tls(tls) => Some(&tls.ca_cert),
            _ => None,
        }
    }

    /// The server's temporary directory (its `--dir`, holding `log`, `stdio` and any data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of the running process, `None` after [`RedisServer::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log file contents so far (empty if it has none yet).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    fn running_pid(&self, action: &str) -> u32 {
        match self.pid() {
            Some(pid) => pid,
            None => panic!(
                "redis harness: cannot {action} redis-server on port {}: it is not running \
                 (killed?)",
                self.port
            ),
        }
    }

    /// Freezes the process with SIGSTOP. The kernel keeps accepting TCP connections on its
    /// port but nothing is answered until [`RedisServer::resume`]. Returns once
    /// `/proc/<pid>/stat` shows the process stopped (bounded; skipped without `/proc`).
    pub fn pause(&self) {
        let pid = self.running_pid("pause");
        if let Err(err) = send_signal(pid, "STOP") {
            panic!("redis harness: cannot pause redis-server (pid {pid}): {err}");
        }
        let stopped = poll_until(Duration::from_secs(2), || match proc_state(pid) {
            Some('T') | None => Some(()),
            Some(_) => None,
        });
        if stopped.is_none() {
            panic!("redis harness: redis-server (pid {pid}) did not stop after SIGSTOP");
        }
    }

    /// Continues a paused process with SIGCONT and waits (at most [`STARTUP_TIMEOUT`]) until
    /// it answers `PING` again (TLS servers: until it is no longer in the stopped state).
    pub fn resume(&self) {
        let pid = self.running_pid("resume");
        if let Err(err) = send_signal(pid, "CONT") {
            panic!("redis harness: cannot resume redis-server (pid {pid}): {err}");
        }
        let probe = Duration::from_millis(500);
        let is_tls = self.is_tls();
        let port = self.port;
        let back = poll_until(STARTUP_TIMEOUT, || {
            let running = !matches!(proc_state(pid), Some('T'));
            let answers = is_tls
                || matches!(query_port(port, &["PING"], probe),
                            Ok(Reply::Status(ref s)) if s == "PONG");
            (running && answers).then_some(())
        });
        if back.is_none() {
            panic!(
                "redis harness: redis-server (pid {pid}) did not answer PING after SIGCONT\n{}",
                self.diagnostics()
            );
        }
    }

    /// SIGKILLs the process and reaps it. No-op if it is not running. The port stays reserved
    /// and the directory stays, so [`RedisServer::restart`] can bring it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also terminates a SIGSTOPped process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the SAME port, with the same arguments and directory
    /// (killing it first if it is still running), and waits for it like the initial start.
    /// Retries a few times if the port is momentarily taken by another process; panics with
    /// the log if it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortInUse(msg)) => {
                    last = msg;
                    sleep(Duration::from_millis(200) * attempt as u32);
                }
                Err(StartError::Fatal(msg)) => panic!("redis harness: restart failed: {msg}"),
            }
        }
        panic!(
            "redis harness: restart on port {} failed, the port stayed in use:\n{last}",
            self.port
        );
    }

    fn plain_port(&self, what: &str) -> u16 {
        if self.is_tls() {
            panic!(
                "redis harness: {what} speaks plain RESP over TCP and cannot talk to the TLS \
                 server on port {}; use a TLS client",
                self.port
            );
        }
        self.port
    }

    /// Sends one command (binary-safe arguments) over a fresh TCP connection and returns the
    /// raw reply bytes, e.g. for `DUMP`. Fails after [`COMMAND_TIMEOUT`] without a reply.
    pub fn try_command_bytes(&self, args: &[&[u8]]) -> io::Result<Vec<u8>> {
        let port = self.plain_port("command");
        roundtrip(port, args, COMMAND_TIMEOUT).map(|(_, raw)| raw)
    }

    /// Like [`RedisServer::try_command_bytes`], panicking (with the server log) on I/O errors.
    /// An error *reply* (`-ERR ...`) is returned, not a panic.
    pub fn command_bytes(&self, args: &[&[u8]]) -> Vec<u8> {
        self.try_command_bytes(args).unwrap_or_else(|err| {
            panic!(
                "redis harness: command {:?} to port {} failed: {err}\n{}",
                args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>(),
                self.port,
                self.diagnostics()
            )
        })
    }

    /// Sends one command over a fresh TCP connection and returns the raw RESP reply text
    /// (lossily decoded), e.g. `"+OK\r\n"`, `"$1\r\nv\r\n"`, `"*2\r\n$1\r\n0\r\n*0\r\n"`.
    /// Panics (with the server log) on I/O errors or after [`COMMAND_TIMEOUT`]; an error reply
    /// is returned as text (`"-ERR ...\r\n"`).
    pub fn command(&self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        String::from_utf8_lossy(&self.command_bytes(&args)).into_owned()
    }

    /// Sends one command and returns the parsed reply. Panics like [`RedisServer::command`].
    pub fn query(&self, args: &[&str]) -> Reply {
        let port = self.plain_port("query");
        query_port(port, args, COMMAND_TIMEOUT).unwrap_or_else(|err| {
            panic!(
                "redis harness: query {args:?} to port {port} failed: {err}\n{}",
                self.diagnostics()
            )
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.port != 0 {
            release_port(self.port);
        }
        // `dir` is removed when the fields are dropped, after this.
    }
}

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = redis-harness

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
";

/// Runs `openssl <args>` in `dir` (so file arguments can be plain names), panicking with its
/// output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let bin = openssl_bin();
    let output = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| spawn_failed(&bin, "openssl (to make TLS certificates)", &err));
    if !output.status.success() {
        panic!(
            "redis harness: `openssl {}` in {} failed ({}):\n{}{}",
            args.join(" "),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Makes a P-256 CA and a server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`) signed by
/// it, valid for 30 days, in `dir`. (EC keys: generating them is instant, unlike RSA-4096.)
fn generate_tls_files(dir: &Path) -> TlsFiles {
    let conf = dir.join("openssl.cnf");
    if let Err(err) = fs::write(&conf, OPENSSL_CONF) {
        panic!("redis harness: cannot write {}: {err}", conf.display());
    }
    // Arguments are whitespace-separated words; file names are relative to `dir`.
    let run = |words: &str| openssl(dir, &words.split_whitespace().collect::<Vec<_>>());
    let new_ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let common = "-sha256 -config openssl.cnf";
    // Self-signed CA.
    run(&format!(
        "req -x509 -new -days 30 {new_ec_key} {common} -extensions v3_ca \
         -subj /O=redis-harness/CN=redis-harness-test-CA -keyout ca.key -out ca.crt"
    ));
    // Server key and certificate signing request.
    run(&format!(
        "req -new {new_ec_key} {common} -subj /O=redis-harness/CN=localhost \
         -keyout server.key -out server.csr"
    ));
    // Server certificate signed by the CA, with the v3_server extensions (SAN etc.).
    run("x509 -req -sha256 -days 30 -in server.csr -CA ca.crt -CAkey ca.key \
         -CAserial ca.srl -CAcreateserial -extfile openssl.cnf -extensions v3_server \
         -out server.crt");

    TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    }
}

// ---------------------------------------------------------------------------------------------
// RedisCluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster of `n` masters (no replicas) on loopback, each a [`RedisServer`] started
/// with `--cluster-enabled yes --cluster-config-file <tmp>/nodes.conf
/// --cluster-node-timeout 2000`, joined with `redis-cli --cluster create`.
///
/// Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n >= 3` nodes, runs `redis-cli --cluster create 127.0.0.1:p1 ...
    /// --cluster-replicas 0 --cluster-yes`, and waits (at most [`STARTUP_TIMEOUT`]) until every
    /// node reports `cluster_state:ok`, knows all `n` nodes, and its `CLUSTER SLOTS` covers all
    /// 16384 slots with the same map as every other node.
    pub fn start(n: usize) -> RedisCluster {
        RedisCluster::start_with(n, &[])
    }

    /// Like [`RedisCluster::start`], with `args` appended to every node's command line.
    pub fn start_with(n: usize, args: &[&str]) -> RedisCluster {
        assert!(n >= 3, "redis harness: a cluster needs at least 3 masters, got {n}");
        let nodes: Vec<RedisServer> = (0..n).map(|_| RedisServer::launch(Kind::ClusterNode, args)).collect();
        let cluster = RedisCluster { nodes };

        let cli = cli_bin();
        let mut cmd = Command::new(&cli);
        cmd.args(["--cluster", "create"]);
        cmd.args(cluster.nodes.iter().map(|node| node.addr().to_string()));
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| spawn_failed(&cli, "redis-cli", &err));
        if !output.status.success() {
            panic!(
                "redis harness: `redis-cli --cluster create` failed ({}):\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                cluster.diagnostics()
            );
        }
        cluster.wait_until_healthy(STARTUP_TIMEOUT);
        cluster
    }

    /// Checks one node: `None` if healthy, else a description of what is still wrong.
    fn node_problem(node: &RedisServer, n: usize) -> (Option<String>, Vec<(i64, i64, i64)>) {
        let probe = Duration::from_secs(1);
        let info = match query_port(node.port, &["CLUSTER", "INFO"], probe) {
            Ok(reply) => reply.as_text().unwrap_or_default(),
            Err(err) => return (Some(format!("CLUSTER INFO failed: {err}")), Vec::new()),
        };
        if info_field(&info, "cluster_state") != Some("ok") {
            return (Some(format!("not ok yet: {}", info.trim())), Vec::new());
        }
        if info_field(&info, "cluster_known_nodes") != Some(n.to_string().as_str()) {
            return (Some(format!("does not know all {n} nodes yet")), Vec::new());
        }
        let slots = match query_port(node.port, &["CLUSTER", "SLOTS"], probe) {
            Ok(reply) => reply,
            Err(err) => return (Some(format!("CLUSTER SLOTS failed: {err}")), Vec::new()),
        };
        let mut ranges = Vec::new();
        for range in slots.as_array().unwrap_or_default() {
            let items = range.as_array().unwrap_or_default();
            let start = items.first().and_then(Reply::as_int);
            let end = items.get(1).and_then(Reply::as_int);
            let master_port = items
                .get(2)
                .and_then(Reply::as_array)
                .and_then(|m| m.get(1))
                .and_then(Reply::as_int);
            match (start, end, master_port) {
                (Some(s), Some(e), Some(p)) => ranges.push((s, e, p)),
                _ => {
                    return (Some(format!("odd CLUSTER SLOTS reply: {slots:?}")), Vec::new());
                }
            }
        }
        ranges.sort_unstable();
        let covered: i64 = ranges.iter().map(|(s, e, _)| e - s + 1).sum();
        let contiguous = ranges.windows(2).all(|w| w[0].1 + 1 == w[1].0);
        if covered as u64 != CLUSTER_SLOTS || !contiguous {
            return (
                Some(format!("CLUSTER SLOTS covers {covered} slots: {ranges:?}")),
                ranges,
            );
        }
        (None, ranges)
    }

    /// Waits until every node reports `cluster_state:ok`, knows all nodes, and all nodes agree
    /// on a `CLUSTER SLOTS` map covering all 16384 slots. Useful after killing/restarting a
    /// node. Panics with every node's log after `timeout`.
    pub fn wait_until_healthy(&self, timeout: Duration) {
        let n = self.nodes.len();
        let mut last_problem = String::new();
        let healthy = poll_until(timeout, || {
            let mut first_map = None;
            for node in &self.nodes {
                let (problem, map) = RedisCluster::node_problem(node, n);
                if let Some(problem) = problem {
                    last_problem = format!("node {}: {problem}", node.port);
                    return None;
                }
                match &first_map {
                    None => first_map = Some(map),
                    Some(first) if *first != map => {
                        last_problem = format!(
                            "nodes disagree on the slot map: {first:?} vs {map:?} (node {})",
                            node.port
                        );
                        return None;
                    }
                    Some(_) => {}
                }
            }
            Some(())
        });
        if healthy.is_none() {
            panic!(
                "redis harness: cluster not healthy within {timeout:?}: {last_problem}\n{}",
                self.diagnostics()
            );
        }
    }

    fn diagnostics(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("=== node {} ===\n{}", node.port, node.diagnostics()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The nodes, in the order they were passed to `redis-cli --cluster create`.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably (to [`RedisServer::kill`] / [`RedisServer::restart`] one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:p` for every node (e.g. for `redis::cluster::ClusterClient::new`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node URLs joined with commas: `redis://127.0.0.1:p1,redis://127.0.0.1:p2,...`.
    pub fn seed_list(&self) -> String {
        self.urls().join(",")
    }
}

// ---------------------------------------------------------------------------------------------
// RedisSentinel
// ---------------------------------------------------------------------------------------------

/// A master, one replica of it and ONE sentinel monitoring the master as `mymaster` with
/// quorum 1, `down-after-milliseconds 1000` and `failover-timeout 3000`.
///
/// Dropping it kills the sentinel, then the replica, then the master.
#[derive(Debug)]
pub struct RedisSentinel {
    // Field order is drop order: the sentinel goes first so it cannot react to the others dying.
    sentinel: RedisServer,
    replica: RedisServer,
    master: RedisServer,
    master_name: String,
}

impl RedisSentinel {
    /// The name under which the sentinel monitors the master.
    pub const MASTER_NAME: &'static str = "mymaster";

    /// Starts the master, the replica (`--replicaof 127.0.0.1 <master port>`), waits until the
    /// replica is in sync, then starts the sentinel (`redis-server <tmp>/sentinel.conf
    /// --sentinel`) and waits until `SENTINEL get-master-addr-by-name mymaster` answers the
    /// master's port and the sentinel lists the replica as healthy (so a failover can pick it).
    /// Every wait is bounded by [`STARTUP_TIMEOUT`].
    pub fn start() -> RedisSentinel {
        // No 5 s diskless-sync delay on either side (the replica may become master).
        let fast_sync = ["--repl-diskless-sync-delay", "0"];
        let master = RedisServer::start_with(&fast_sync);
        let master_port = master.port().to_string();
        let mut replica_args = vec!["--replicaof", HOST, &master_port];
        replica_args.extend(fast_sync);
        let replica = RedisServer::start_with(&replica_args);

        // `master_link_status:up` on the replica is not enough: after a diskless full sync a
        // 7.0 master waits for the replica's first `REPLCONF ACK` (sent once per second)
        // before it streams commands, so a write + `WAIT 1 ...` can stall for ~1 s. Prove the
        // stream is live instead: write a marker key on the master, see it on the replica,
        // delete it, see it gone (the store ends up empty again).
        let marker = "__redis_harness_replication_check__";
        let probe = Duration::from_secs(1);
        let replica_has = |expect_present: bool| {
            poll_until(STARTUP_TIMEOUT, || {
                let exists = query_port(replica.port, &["EXISTS", marker], probe).ok()?;
                (exists.as_int()? == i64::from(expect_present)).then_some(())
            })
        };
        let mut synced = replica_has(false).is_some(); // replica up and readable
        if synced {
            master.query(&["SET", marker, "1"]);
            synced = replica_has(true).is_some();
            master.query(&["DEL", marker]);
            synced = synced && replica_has(false).is_some();
        }
        if !synced {
            panic!(
                "redis harness: replica {} did not sync with master {} within {:?}\n\
                 === master ===\n{}\n=== replica ===\n{}",
                replica.port,
                master.port,
                STARTUP_TIMEOUT,
                master.diagnostics(),
                replica.diagnostics()
            );
        }

        let name = RedisSentinel::MASTER_NAME;
        let monitor = format!(
            "sentinel monitor {name} {HOST} {master_port} 1\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 3000\n"
        );
        let sentinel = RedisServer::launch(Kind::Sentinel(monitor), &[]);
        let setup = RedisSentinel {
            sentinel,
            replica,
            master,
            master_name: name.to_string(),
        };

        let mut last = String::new();
        let ready = poll_until(STARTUP_TIMEOUT, || {
            let port = setup.current_master_port();
            let entry = setup.master_entry();
            if port != Some(setup.master.port)
                || entry.as_ref().map(|(p, f)| (*p, f.as_str())) != Some((setup.master.port, "master"))
            {
                last = format!("get-master-addr-by-name answered port {port:?}, SENTINEL MASTER {entry:?}");
                return None;
            }
            if !setup.sentinel_sees_healthy_replica() {
                last = "the sentinel does not list the replica as healthy yet".into();
                return None;
            }
            Some(())
        });
        if ready.is_none() {
            panic!(
                "redis harness: sentinel not ready within {STARTUP_TIMEOUT:?}: {last}\n{}",
                setup.diagnostics()
            );
        }
        setup
    }

    /// Whether `SENTINEL REPLICAS` lists our replica with plain `slave` flags and a working link.
    fn sentinel_sees_healthy_replica(&self) -> bool {
        let reply = match query_port(
            self.sentinel.port,
            &["SENTINEL", "REPLICAS", &self.master_name],
            COMMAND_TIMEOUT,
        ) {
            Ok(reply) => reply,
            Err(_) => return false,
        };
        let replica_port = self.replica.port.to_string();
        reply.as_array().unwrap_or_default().iter().any(|entry| {
            let fields: Vec<String> = entry
                .as_array()
                .unwrap_or_default()
                .iter()
                .map(|f| f.as_text().unwrap_or_default())
                .collect();
            let get = |key: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0] == key)
                    .and_then(|kv| kv.get(1).cloned())
            };
            get("port").as_deref() == Some(replica_port.as_str())
                && get("flags").as_deref() == Some("slave")
                && get("master-link-status").as_deref() == Some("ok")
        })
    }

    fn diagnostics(&self) -> String {
        format!(
            "=== sentinel {} ===\n{}\n=== master {} ===\n{}\n=== replica {} ===\n{}",
            self.sentinel.port,
            self.sentinel.diagnostics(),
            self.master.port,
            self.master.diagnostics(),
            self.replica.port,
            self.replica.diagnostics()
        )
    }

    /// The monitored master's name (`mymaster`).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `redis://127.0.0.1:p` of the sentinel (one entry), for `redis::sentinel::SentinelClient`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        vec![self.sentinel.url()]
    }

    /// The sentinel process (a `redis-server --sentinel`; `command`/`query` work on it).
    pub fn sentinel(&self) -> &RedisServer {
        &self.sentinel
    }

    /// The sentinel process, mutably.
    pub fn sentinel_mut(&mut self) -> &mut RedisServer {
        &mut self.sentinel
    }

    /// The server started as master (after a failover it may be a replica, or dead).
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// The server started as master, mutably (e.g. to [`RedisServer::kill`] it).
    pub fn master_mut(&mut self) -> &mut RedisServer {
        &mut self.master
    }

    /// The server started as replica (after a failover it is normally the master).
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The server started as replica, mutably.
    pub fn replica_mut(&mut self) -> &mut RedisServer {
        &mut self.replica
    }

    /// The master port the sentinel currently reports (`SENTINEL get-master-addr-by-name`),
    /// `None` if the sentinel does not answer or knows no master.
    pub fn current_master_port(&self) -> Option<u16> {
        let reply = query_port(
            self.sentinel.port,
            &["SENTINEL", "get-master-addr-by-name", &self.master_name],
            COMMAND_TIMEOUT,
        )
        .ok()?;
        let port = reply.as_array()?.get(1)?.as_int()?;
        u16::try_from(port).ok()
    }

    /// The sentinel's `SENTINEL MASTER <name>` entry as `(port, flags)`, e.g.
    /// `(6379, "master")` or `(6379, "master,s_down,o_down,failover_in_progress")`.
    pub fn master_entry(&self) -> Option<(u16, String)> {
        let reply = query_port(
            self.sentinel.port,
            &["SENTINEL", "MASTER", &self.master_name],
            COMMAND_TIMEOUT,
        )
        .ok()?;
        let fields: Vec<String> = reply
            .as_array()?
            .iter()
            .map(|f| f.as_text().unwrap_or_default())
            .collect();
        let get = |key: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == key)
                .and_then(|kv| kv.get(1).cloned())
        };
        Some((get("port")?.parse().ok()?, get("flags")?))
    }

    /// Waits (at most `timeout`) until the failover away from the originally started master
    /// is complete and returns the new master's port. Complete means: the sentinel's
    /// `SENTINEL MASTER` entry has a different port and plain `master` flags (no `s_down`,
    /// `o_down`, `failover_in_progress`; redis-rs's `SentinelClient` rejects masters with
    /// down flags), `get-master-addr-by-name` agrees, and that server's `ROLE` says `master`.
    ///
    /// Note `get-master-addr-by-name` alone is not enough: it already answers the promoted
    /// replica while the failover is still in its `update-config` phase, when
    /// `SENTINEL MASTERS` still lists the old, down master.
    ///
    /// Typical use: `master_mut().kill()`, then this. Panics with all logs on timeout.
    pub fn wait_for_new_master(&self, timeout: Duration) -> u16 {
        let old = self.master.port;
        let mut last = String::from("no answer yet");
        let found = poll_until(timeout, || {
            let entry = self.master_entry();
            let addr_port = self.current_master_port();
            let Some((port, flags)) = entry.clone() else {
                last = "SENTINEL MASTER did not answer".into();
                return None;
            };
            if port == old || flags != "master" || addr_port != Some(port) {
                last = format!(
                    "SENTINEL MASTER: port {port} flags {flags:?}; \
                     get-master-addr-by-name: {addr_port:?}"
                );
                return None;
            }
            let role = query_port(port, &["ROLE"], Duration::from_secs(1));
            let role_name = role
                .as_ref()
                .ok()
                .and_then(Reply::as_array)
                .and_then(|r| r.first())
                .and_then(Reply::as_text);
            if role_name.as_deref() != Some("master") {
                last = format!("sentinel reports {port}, whose ROLE is {role:?}");
                return None;
            }
            Some(port)
        });
        found.unwrap_or_else(|| {
            panic!(
                "redis harness: no failover within {timeout:?}: {last}\n{}",
                self.diagnostics()
            )
        })
    }
}
