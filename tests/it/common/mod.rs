//! Test harness: the real wxgate, started in-process on 127.0.0.1:0, in front
//! of an in-process mock upstream and the shipped fake WeChat.

// What every test module uses, so that each needs only `use crate::common::*;`.
pub use std::convert::Infallible;
pub use std::net::SocketAddr;
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::time::Duration;

pub use bytes::Bytes;
pub use futures_util::{SinkExt, StreamExt};
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
pub use http_body_util::combinators::BoxBody;
pub use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
pub use hyper::body::Frame;
pub use hyper_util::client::legacy::Client;
pub use hyper_util::client::legacy::connect::HttpConnector;
pub use hyper_util::rt::TokioExecutor;
pub use serde_json::{Value, json};
pub use sha2::{Digest, Sha256};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::TcpStream;
pub use wxgate::config::HumanDuration;
pub use wxgate::fake::{Api, FakeWeixin, MintRequest};

pub mod redis;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use http::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use wxgate::config::{Config, Secret};
use wxgate::{Listeners, Running};

pub const APPID: &str = "wx4f4bc4dec97d474b";
pub const SECRET: &str = "test-secret-0123456789";

/// Everything wxgate logged in this test binary (tracing at trace level for
/// wxgate's own targets).
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let buf = LOGS.get_or_init(Default::default).clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("wxgate=trace")
            .with_ansi(false)
            .with_writer(move || LogWriter(buf.clone()))
            .try_init();
    });
}

pub use wxgate::fake::Received;

/// What the phone button gives, `{"encryptedData", "iv"}`, minted by the fake
/// for `user` in the app `appid` (the fake's first app by default),
/// watermarked with `watermark` (by default that same app).
pub fn phone_body(fake: &FakeWeixin, user: &str, phone: &str, appid: Option<&str>, watermark: Option<&str>) -> Value {
    let m = fake
        .mint_phone(&MintRequest {
            user: user.into(),
            phone_number: phone.into(),
            pure_phone_number: phone.into(),
            country_code: "86".into(),
            appid: appid.map(Into::into),
            watermark_appid: watermark.map(Into::into),
            timestamp: None,
        })
        .unwrap();
    json!({"encryptedData": m.encrypted_data, "iv": m.iv})
}

#[derive(Clone, Default)]
pub struct Upstream {
    pub addr: Option<SocketAddr>,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    upload_progress: Arc<std::sync::atomic::AtomicU64>,
    /// `/slow` requests being answered now, and the most at once.
    slow_now: Arc<std::sync::atomic::AtomicU64>,
    slow_max: Arc<std::sync::atomic::AtomicU64>,
}

impl Upstream {
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
    pub fn last(&self) -> Received {
        self.received().pop().expect("the upstream received a request")
    }
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Body bytes `/upload` has read so far, over all its requests.
    pub fn upload_progress(&self) -> u64 {
        self.upload_progress.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// The most `/slow` requests the upstream was answering at once.
    pub fn slow_max(&self) -> u64 {
        self.slow_max.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Starts the mock upstream. Routes:
/// - `/upload`: streams the body through SHA-256, answers `{"len","sha256"}` (body not kept;
///   [`Upstream::upload_progress`] counts the bytes as they arrive);
/// - `/download?bytes=N`: streams N pattern bytes in 64 KiB chunks;
/// - `/slow?ms=N`: answers after N ms (counting how many it answers at once);
/// - `/set-session`: answers with its own `x-wx-session` (which wxgate must remove);
/// - `/with-trailers`: a chunked body with the trailers `x-sum: 42` and `x-wx-session` (which wxgate removes);
/// - `/hop`: answers with hop-by-hop headers;
/// - `/ws`: WebSocket echo;
/// - `/rich`: 201 with [`RICH_BODY`] (every byte value) and end-to-end headers: two
///   `set-cookie`, `x-multi` twice, a value with obs-text, `etag`, `content-type`;
/// - anything else: 200 `{"method","uri","headers"}` after keeping the request.
pub async fn start_upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: Some(listener.local_addr().unwrap()),
        ..Default::default()
    };
    let state = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            state.connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| upstream_answer(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    up
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full_body(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

/// Byte `i` of the test pattern is `i % 251` (a prime, so chunk boundaries
/// never line up with the cycle). Built from slices of one cycle: debug
/// builds copy memory fast but compute byte by byte slowly.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    const CYCLE: usize = 251;
    static ONE_CYCLE: OnceLock<Vec<u8>> = OnceLock::new();
    let cycle = ONE_CYCLE.get_or_init(|| (0..CYCLE).map(|i| i as u8).collect());
    let mut out = Vec::with_capacity(len);
    let mut pos = (offset % CYCLE as u64) as usize;
    while out.len() < len {
        let take = (CYCLE - pos).min(len - out.len());
        out.extend_from_slice(&cycle[pos..pos + take]);
        pos = 0;
    }
    out
}

async fn upstream_answer(state: Upstream, mut req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let record = |req: &Request<Incoming>, body: Bytes| Received {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        body,
        trailers: HeaderMap::new(),
    };
    match path.as_str() {
        "/upload" => {
            let r = record(&req, Bytes::new());
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            let mut stream = BodyStream::new(req.into_body());
            while let Some(frame) = stream.next().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    hasher.update(data);
                    state
                        .upload_progress
                        .fetch_add(data.len() as u64, std::sync::atomic::Ordering::SeqCst);
                }
            }
            state.received.lock().unwrap().push(r);
            let out = json!({"len": len, "sha256": hex(&hasher.finalize())});
            Ok(Response::new(full_body(out.to_string())))
        }
        "/download" => {
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let total = param("bytes").unwrap_or(0);
            let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(64 * 1024) as usize;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(pattern(sent, n)))),
                    sent + n as u64,
                ))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))))
        }
        "/slow" => {
            use std::sync::atomic::Ordering::SeqCst;
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let now = state.slow_now.fetch_add(1, SeqCst) + 1;
            state.slow_max.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(1000))).await;
            state.slow_now.fetch_sub(1, SeqCst);
            Ok(Response::new(full_body("slow done")))
        }
        "/with-trailers" => {
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
                Ok(Frame::trailers({
                    let mut t = HeaderMap::new();
                    t.insert("x-sum", "42".parse().unwrap());
                    // The session header is wxgate's, in trailers too.
                    t.insert("x-wx-session", "from-a-trailer".parse().unwrap());
                    t
                })),
            ]);
            let mut res = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            res.headers_mut()
                .insert(header::TRAILER, "x-sum, x-wx-session".parse().unwrap());
            Ok(res)
        }
        "/set-session" => {
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let mut res = Response::new(full_body("the backend tried to hand out a session"));
            res.headers_mut().insert("x-wx-session", "stolen".parse().unwrap());
            res.headers_mut().insert("x_wx_session", "stolen-too".parse().unwrap());
            Ok(res)
        }
        "/rich" => {
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let mut res = Response::new(full_body(RICH_BODY.as_slice()));
            *res.status_mut() = StatusCode::CREATED;
            for (name, value) in rich_headers() {
                res.headers_mut().append(name, value);
            }
            Ok(res)
        }
        "/hop" => {
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let mut res = Response::new(full_body("hop"));
            let h = res.headers_mut();
            h.insert(header::CONNECTION, "x-upstream-hop".parse().unwrap());
            h.insert("x-upstream-hop", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-connection", "keep-alive".parse().unwrap());
            h.insert(header::TRAILER, "x-sum".parse().unwrap());
            h.insert(header::UPGRADE, "h2c".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            Ok(res)
        }
        "/ws" => {
            state.received.lock().unwrap().push(record(&req, Bytes::new()));
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                let mut res = Response::new(full_body("not a websocket"));
                *res.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(res);
            };
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() || msg.is_binary() {
                        use futures_util::SinkExt;
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut res = Response::new(full_body(Bytes::new()));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
            h.insert(header::UPGRADE, "websocket".parse().unwrap());
            h.insert("sec-websocket-accept", accept.parse().unwrap());
            Ok(res)
        }
        _ => {
            let (received, res) = wxgate::fake::echo(req).await;
            state.received.lock().unwrap().push(received);
            Ok(res.map(|b| b.boxed()))
        }
    }
}

/// The body of `/rich`: every byte value, twice.
pub static RICH_BODY: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| (0..512u32).map(|i| i as u8).collect());

/// The headers of `/rich`, in order.
pub fn rich_headers() -> Vec<(header::HeaderName, header::HeaderValue)> {
    [
        ("content-type", &b"application/octet-stream"[..]),
        ("set-cookie", b"a=1; Path=/; HttpOnly"),
        ("set-cookie", b"b=2; Path=/api"),
        ("x-multi", b"first"),
        ("x-multi", b"second,  with spaces"),
        ("x-obs-text", b"caf\xe9 \xe4\xb8\xad"),
        ("etag", b"\"v1\""),
        ("cache-control", b"private, max-age=60"),
    ]
    .into_iter()
    .map(|(n, v)| {
        (
            header::HeaderName::from_static(n),
            header::HeaderValue::from_bytes(v).unwrap(),
        )
    })
    .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running wxgate with its upstream and fake WeChat.
pub struct Gate {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: Upstream,
    pub fake: FakeWeixin,
    pub fake_addr: SocketAddr,
}

pub fn base_config(upstream: SocketAddr, fake: SocketAddr) -> Config {
    let mut c = Config::default();
    c.upstream.url = format!("http://{upstream}");
    c.upstream.timeout = wxgate::config::HumanDuration(Duration::from_secs(5));
    c.weixin.appid = APPID.into();
    c.weixin.secret = Secret::new(SECRET);
    c.weixin.api_base = format!("http://{fake}");
    c.weixin.timeout = wxgate::config::HumanDuration(Duration::from_secs(2));
    c.server.workers = 2;
    // Tests stop wxgate often; the delay has tests of its own.
    c.server.shutdown_delay = wxgate::config::HumanDuration(Duration::ZERO);
    c
}

/// Starts wxgate (2 workers) in front of a fresh mock upstream and fake WeChat.
pub async fn start(configure: impl FnOnce(&mut Config)) -> Gate {
    init_logs();
    let upstream = start_upstream().await;
    let fake = FakeWeixin::new(APPID, SECRET);
    let fake_addr = fake.spawn_local().await.unwrap();
    start_on(upstream, fake, fake_addr, configure).await
}

/// Another wxgate in front of the same upstream and fake WeChat (a replica).
pub async fn replica_of(gate: &Gate, configure: impl FnOnce(&mut Config)) -> Gate {
    start_on(gate.upstream.clone(), gate.fake.clone(), gate.fake_addr, configure).await
}

/// wxgate in front of a given upstream and fake WeChat.
pub async fn start_on(
    upstream: Upstream,
    fake: FakeWeixin,
    fake_addr: SocketAddr,
    configure: impl FnOnce(&mut Config),
) -> Gate {
    init_logs();
    let mut config = base_config(upstream.addr.unwrap(), fake_addr);
    configure(&mut config);
    config.validate().expect("test config is valid");
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        config.worker_count(),
    )
    .unwrap();
    let running = wxgate::start_with(config.clone(), listeners).unwrap();
    Gate {
        addr: running.addr,
        admin: running.admin_addr,
        running: Some(running),
        upstream,
        fake,
        fake_addr,
    }
}

impl Gate {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.stopped().await;
        }
    }

    /// POST JSON, with an optional session token.
    pub async fn post(&self, path: &str, session: Option<&str>, body: Value) -> Answer {
        let mut b = Request::post(self.url(path)).header(header::CONTENT_TYPE, "application/json");
        if let Some(s) = session {
            b = b.header("x-wx-session", s);
        }
        send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
    }

    pub async fn get(&self, path: &str, session: Option<&str>) -> Answer {
        let mut b = Request::get(self.url(path));
        if let Some(s) = session {
            b = b.header("x-wx-session", s);
        }
        send(b.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// Logs in with `code` and returns the session token.
    pub async fn login(&self, code: &str) -> String {
        let a = self.post("/api/login", None, json!({"code": code})).await;
        if a.status != 200 {
            let logs = logs();
            let tail: Vec<&str> = logs.lines().rev().take(15).collect();
            panic!(
                "login failed: {} {}\nlast log lines:\n{}",
                a.status,
                a.text(),
                tail.join("\n")
            );
        }
        a.session().expect("login answer has a session header")
    }

    /// [`Gate::login`] for futures that must own their code.
    pub async fn login_owned(&self, code: String) -> String {
        self.login(&code).await
    }

    pub async fn admin_get(&self, path: &str) -> Answer {
        send(
            Request::get(format!("http://{}{}", self.admin, path))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            // Detach: the threads end on their own once drained.
        }
    }
}

/// An HTTP answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn session(&self) -> Option<String> {
        self.headers.get("x-wx-session").map(|v| v.to_str().unwrap().to_owned())
    }
    /// Asserts a wxgate JSON error.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json");
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT
        .get_or_init(|| Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
        .clone()
}

pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let res = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .expect("answer within 30 s")
        .expect("request reached wxgate");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The request the upstream got for the last call, as JSON headers.
pub fn header_str<'a>(r: &'a Received, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

/// Polls until `f` holds, for at most 5 s (metrics are flushed once a second).
pub async fn eventually(mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// Raw connections, panics, streaming bodies
// ---------------------------------------------------------------------------

/// Panics on wxgate's own threads (workers, admin), counted by a hook that
/// every test installs: a client's bad input must never panic wxgate.
pub static WXGATE_PANICS: AtomicUsize = AtomicUsize::new(0);

pub fn count_wxgate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name().is_some_and(|n| n.starts_with("wxgate-")) {
                WXGATE_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

pub fn assert_no_wxgate_panic() {
    assert_eq!(WXGATE_PANICS.load(Ordering::SeqCst), 0, "a wxgate thread panicked");
}

/// `common::start` with the panic counter installed.
pub async fn gate(configure: impl FnOnce(&mut wxgate::Config)) -> Gate {
    count_wxgate_panics();
    start(configure).await
}

/// wxgate in front of `upstream` (a closed port, a broken server...).
pub async fn gate_to(upstream: SocketAddr) -> Gate {
    gate(|c| c.upstream.url = format!("http://{upstream}")).await
}

/// Stops wxgate within a bounded time and checks nothing panicked.
pub async fn finish(mut gate: Gate) {
    tokio::time::timeout(Duration::from_secs(20), gate.stop())
        .await
        .expect("wxgate stops within 20 s");
    assert_no_wxgate_panic();
}

/// Sends `request` on a fresh connection and reads until wxgate closes it.
/// Write errors are ignored (wxgate may close before reading everything);
/// the read is bounded, so a hang fails the test instead of stalling it.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect to wxgate");
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "wxgate neither answered nor closed within 15 s; got so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// Reads what comes next on `stream` (within 15 s): it must start a 200.
pub async fn assert_next_answer_is_200(stream: &mut TcpStream, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 15 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{what}: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Sends `request` on a fresh connection and reads one answer whose body has
/// a Content-Length (wxgate's own answers do), leaving the connection open.
pub async fn raw_one(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to wxgate");
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(res) = RawResponse::parse(&out) {
                let len: usize = res.header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                if res.body.len() >= len {
                    return res;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => panic!("closed before a whole answer: {:?}", String::from_utf8_lossy(&out)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.expect("an answer within 15 s")
}

/// A raw HTTP/1.1 response: status, headers (lower-case names) and body.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(Self {
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Asserts a raw response is a wxgate JSON error.
pub fn assert_raw_error(res: &RawResponse, status: u16, code: &str) {
    assert_eq!(res.status, status, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("content-type"), Some("application/json"));
    let v = res.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

pub type StreamingBody = BoxBody<Bytes, Infallible>;

pub fn streaming_client() -> Client<HttpConnector, StreamingBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A request body fed through a channel, so the test decides when it ends.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, StreamingBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(frames)))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The values of `name`, in order, as strings.
pub fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// A loopback address that refuses connections for the rest of the test
/// run: a socket bound to it and never listening holds the port, so no
/// concurrent test's server can take it over (a port only bound and then
/// released once was, now and then, another test's server answering).
pub fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Held until the test binary exits.
    std::mem::forget(socket);
    addr
}

/// Every header of the upstream's request whose name reads as one of `names`
/// to a CGI-style backend (letters and digits only, case-folded).
pub fn identity_like<'a>(headers: &'a HeaderMap, names: &[&str]) -> Vec<(&'a HeaderName, &'a HeaderValue)> {
    let norm = |s: &str| -> String {
        s.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect()
    };
    headers
        .iter()
        .filter(|(n, _)| names.iter().any(|x| norm(x) == norm(n.as_str())))
        .collect()
}

/// A one-shot upstream that reads a request and then does `answer`.
pub async fn broken_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                // Dropped: the connection closes.
            });
        }
    });
    addr
}

/// A backend written by hand on raw sockets, for misbehaviour hyper would
/// not produce: `serve` handles each accepted connection.
pub async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// Reads a request or response head (through the blank line); returns it as
/// text and whatever bytes came after it. `None` on EOF first.
pub async fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until EOF (or 15 s): what else arrived on a connection.
pub async fn read_rest(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(15), s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    out
}
