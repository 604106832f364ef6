//! Pass-through proxying, end to end: the real wxgate (2 workers) on
//! 127.0.0.1:0 in front of the in-process mock upstream of `common`.
//!
//! Every test asserts on what the upstream received or what the client got,
//! so each fails when the behaviour it names breaks. Waits are bounded
//! (timeouts, `eventually`), never timing assertions.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Panics on wxgate's own threads (workers, admin), counted by a hook that
/// every test installs: a client's bad input must never panic wxgate.
static WXGATE_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_wxgate_panics() {
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

fn assert_no_wxgate_panic() {
    assert_eq!(WXGATE_PANICS.load(Ordering::SeqCst), 0, "a wxgate thread panicked");
}

/// `common::start` with the panic counter installed.
async fn gate(configure: impl FnOnce(&mut wxgate::Config)) -> Gate {
    count_wxgate_panics();
    start(configure).await
}

/// wxgate in front of `upstream` (a closed port, a broken server...).
async fn gate_to(upstream: SocketAddr) -> Gate {
    gate(|c| c.upstream.url = format!("http://{upstream}")).await
}

/// Stops wxgate within a bounded time and checks nothing panicked.
async fn finish(mut gate: Gate) {
    tokio::time::timeout(Duration::from_secs(20), gate.stop())
        .await
        .expect("wxgate stops within 20 s");
    assert_no_wxgate_panic();
}

/// Sends `request` on a fresh connection and reads until wxgate closes it.
/// Write errors are ignored (wxgate may close before reading everything);
/// the read is bounded, so a hang fails the test instead of stalling it.
async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
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
async fn assert_next_answer_is_200(stream: &mut TcpStream, what: &str) {
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
async fn raw_one(addr: SocketAddr, request: &[u8]) -> RawResponse {
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
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn parse(bytes: &[u8]) -> Option<Self> {
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
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Asserts a raw response is a wxgate JSON error.
fn assert_raw_error(res: &RawResponse, status: u16, code: &str) {
    assert_eq!(res.status, status, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("content-type"), Some("application/json"));
    let v = res.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

type StreamingBody = BoxBody<Bytes, Infallible>;

fn streaming_client() -> Client<HttpConnector, StreamingBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A request body fed through a channel, so the test decides when it ends.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, StreamingBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(frames)))
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The values of `name`, in order, as strings.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------
// Method, path, query, headers and bodies pass unchanged
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_reaches_the_upstream_with_its_body() {
    let gate = gate(|_| {}).await;
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "M-SEARCH", "get",
    ];
    for (i, m) in methods.iter().enumerate() {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let body = Bytes::from(format!("body of {m} \u{4e2d}\0\u{1}"));
        let req = Request::builder()
            .method(method.clone())
            .uri(gate.url(&format!("/m/{i}?method={m}")))
            .body(Full::new(body.clone()))
            .unwrap();
        let a = send(req).await;
        assert_eq!(a.status, 200, "{m}: {}", a.text());
        let r = gate.upstream.last();
        assert_eq!(r.method, method, "{m}");
        assert_eq!(r.uri, format!("/m/{i}?method={m}"));
        assert_eq!(r.body, body, "{m}: request body changed");
        assert_eq!(r.version, Version::HTTP_11);
        // The echo's answer comes back byte for byte.
        let v = a.json();
        assert_eq!(v["method"], *m);
        assert_eq!(v["uri"], format!("/m/{i}?method={m}"));
        assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_paths_and_encoded_queries_arrive_byte_for_byte() {
    let gate = gate(|_| {}).await;
    let targets = [
        "/",
        "/a//b/./c/../d",
        "//leading/double",
        "/%2e%2e/%2F..%2fetc%00passwd",
        "/~user/$&'()*+,;=:@!/x;p=1,2",
        "/path?",
        "/path?a=1&a=2&&b=&=c&d",
        "/s?q=%E4%B8%AD%E6%96%87&sp=a+b%20c&pct=%25&amp=%26&eq=%3D&plus=%2B&hash=%23",
        "/s?redirect=http://example.com/x?y=1&z=/..//",
        "/s?json={a:[1,2]}&pipe=a|b&caret=^&tick=`",
        "/UPPER/MiXeD.Case?Key=Value",
        "/very/long/path/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    for target in targets {
        let request = format!("GET {target} HTTP/1.1\r\nHost: odd.example\r\nConnection: close\r\n\r\n");
        let res = RawResponse::parse(&raw(gate.addr, request.as_bytes()).await).expect("an HTTP answer");
        assert_eq!(res.status, 200, "{target}: {}", String::from_utf8_lossy(&res.body));
        assert_eq!(gate.upstream.last().uri, target, "request target changed");
    }
    // An absolute-form target goes to the configured upstream, path and query only.
    let res = raw(
        gate.addr,
        b"GET http://elsewhere.example:9/abs/x?y=%20 HTTP/1.1\r\nHost: elsewhere.example:9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(RawResponse::parse(&res).expect("an HTTP answer").status, 200);
    assert_eq!(gate.upstream.last().uri, "/abs/x?y=%20");
    // The asterisk form of OPTIONS (the whole server) stays an asterisk.
    let res = raw(gate.addr, b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(RawResponse::parse(&res).expect("an HTTP answer").status, 200);
    let r = gate.upstream.last();
    assert_eq!((r.method, r.uri.as_str()), (Method::OPTIONS, "*"));
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_and_host_are_kept() {
    let gate = gate(|_| {}).await;
    let obs = HeaderValue::from_bytes(b"caf\xe9 \xe4\xb8\xad").unwrap();
    let req = Request::post(gate.url("/headers"))
        .header(header::HOST, "api.example.com:8443")
        .header(header::AUTHORIZATION, "Bearer abc.def")
        .header(header::COOKIE, "a=1; b=2")
        .header(header::USER_AGENT, "wechatdevtools appservice port/1")
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-multi", "one")
        .header("x-multi", "two,  three")
        .header("x-obs-text", obs.clone())
        .header("x-empty", "")
        .header("x-request-id", "client-id-1")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        values(&r.headers, "host"),
        ["api.example.com:8443"],
        "the client's Host is kept"
    );
    assert_eq!(values(&r.headers, "authorization"), ["Bearer abc.def"]);
    assert_eq!(values(&r.headers, "cookie"), ["a=1; b=2"]);
    assert_eq!(values(&r.headers, "user-agent"), ["wechatdevtools appservice port/1"]);
    assert_eq!(values(&r.headers, "accept-encoding"), ["gzip, br"]);
    assert_eq!(values(&r.headers, "content-type"), ["text/plain; charset=utf-8"]);
    assert_eq!(values(&r.headers, "content-length"), ["7"]);
    assert_eq!(
        values(&r.headers, "x-multi"),
        ["one", "two,  three"],
        "order and spacing kept"
    );
    assert_eq!(r.headers.get("x-obs-text"), Some(&obs));
    assert_eq!(values(&r.headers, "x-empty"), [""]);
    assert_eq!(values(&r.headers, "x-request-id"), ["client-id-1"]);
    assert_eq!(r.body, "payload");
    assert_eq!(a.headers["x-request-id"], "client-id-1");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_status_headers_and_body_come_back_unchanged() {
    let gate = gate(|_| {}).await;
    let a = gate.get("/rich", None).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.body, RICH_BODY.as_slice(), "response body changed");
    for (name, _) in rich_headers() {
        let expected: Vec<HeaderValue> = rich_headers()
            .into_iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .collect();
        let got: Vec<HeaderValue> = a.headers.get_all(&name).iter().cloned().collect();
        assert_eq!(got, expected, "{name}");
    }
    assert_eq!(a.headers[header::CONTENT_LENGTH], RICH_BODY.len().to_string().as_str());

    // HEAD: the upstream's Content-Length, no body.
    let a = send(Request::head(gate.url("/rich")).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(gate.upstream.last().method, Method::HEAD);
    assert_eq!(a.headers[header::CONTENT_LENGTH], RICH_BODY.len().to_string().as_str());
    assert!(a.body.is_empty());
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_url_path_is_a_prefix() {
    let mut upstream_url = String::new();
    let gate = gate(|c| {
        c.upstream.url = format!("{}/base/", c.upstream.url);
        upstream_url = c.upstream.url.clone();
    })
    .await;
    assert!(upstream_url.ends_with("/base/"));
    for (target, expected) in [("/x?y=%2F", "/base/x?y=%2F"), ("/", "/base/"), ("/a//b", "/base/a//b")] {
        let a = gate.get(target, None).await;
        assert_eq!(a.status, 200, "{target}");
        assert_eq!(gate.upstream.last().uri, expected);
    }
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// Large bodies are streamed both ways
// ---------------------------------------------------------------------------

#[test]
fn the_test_pattern_is_i_mod_251() {
    for (offset, len) in [(0u64, 0usize), (0, 1000), (250, 3), (1 << 40, 600)] {
        let expected: Vec<u8> = (0..len as u64).map(|i| ((offset + i) % 251) as u8).collect();
        assert_eq!(pattern(offset, len), expected, "offset {offset}, len {len}");
    }
}

const LARGE: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_streamed_intact() {
    let gate = gate(|_| {}).await;
    let (tx, body) = channel_body();
    let req = Request::post(gate.url("/upload"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap();
    let response = tokio::spawn(streaming_client().request(req));

    let mut expected = Sha256::new();
    let mut sent = 0u64;
    let mut checked_streaming = false;
    while sent < LARGE {
        let chunk = Bytes::from(pattern(sent, CHUNK));
        expected.update(&chunk);
        if tx.send(chunk).await.is_err() {
            let r = response.await;
            panic!("wxgate stopped reading the upload: {r:?}\n{}", logs());
        }
        sent += CHUNK as u64;
        // Half way through, the upstream must already have bytes: wxgate
        // streams rather than buffering the whole body first.
        if !checked_streaming && sent >= LARGE / 2 {
            checked_streaming = true;
            assert!(
                eventually(async || gate.upstream.upload_progress() > 0).await,
                "the upstream saw nothing of a half-sent upload: is the body buffered?"
            );
            assert!(gate.upstream.upload_progress() < LARGE);
        }
    }
    drop(tx);
    let res = tokio::time::timeout(Duration::from_secs(60), response)
        .await
        .expect("upload answered within 60 s")
        .unwrap()
        .expect("upload reached the upstream");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["len"], LARGE);
    assert_eq!(v["sha256"], hex(&expected.finalize()));
    // Chunked from the client, so chunked to the upstream too.
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "transfer-encoding"), ["chunked"]);
    assert!(r.headers.get("content-length").is_none());
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pausing_mid_upload_is_not_timed_out() {
    // upstream.timeout is short, the client pauses longer: the upload is
    // waiting on the client, not on the upstream, and must go through.
    let gate = gate(|c| c.upstream.timeout = wxgate::config::HumanDuration(Duration::from_millis(200))).await;
    let (tx, body) = channel_body();
    let req = Request::post(gate.url("/upload")).body(body).unwrap();
    let response = tokio::spawn(streaming_client().request(req));
    let first = Bytes::from(pattern(0, 1024 * 1024));
    tx.send(first.clone()).await.unwrap();
    assert!(eventually(async || gate.upstream.upload_progress() == first.len() as u64).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = Bytes::from(pattern(first.len() as u64, 1024 * 1024));
    tx.send(second.clone()).await.unwrap();
    drop(tx);
    let res = tokio::time::timeout(Duration::from_secs(15), response)
        .await
        .expect("an answer within 15 s")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["sha256"], sha256_hex(&[first, second].concat()));
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_split_around_its_head_arrives_whole_with_its_length() {
    // Whether the body came with its head or after it, it reaches the
    // upstream once, in order, with its declared length (not re-chunked).
    let gate = gate(|_| {}).await;
    let first = pattern(0, 1000);
    let rest = pattern(1000, 3000);
    for (path, pause) in [("/whole", false), ("/split", true)] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 4000\r\n\r\n").into_bytes();
        head.extend_from_slice(&first);
        if !pause {
            head.extend_from_slice(&rest);
        }
        stream.write_all(&head).await.unwrap();
        if pause {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stream.write_all(&rest).await.unwrap();
        }
        assert_next_answer_is_200(&mut stream, path).await;
        let r = gate.upstream.last();
        assert_eq!(r.uri, path);
        assert_eq!(r.body, [first.as_slice(), rest.as_slice()].concat(), "{path}");
        assert_eq!(values(&r.headers, "content-length"), ["4000"], "{path}");
        assert!(r.headers.get("transfer-encoding").is_none(), "{path}");
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_an_upload_is_a_504() {
    // It accepts and then reads nothing: once the socket buffers are full,
    // nothing moves, and upstream.timeout later wxgate gives up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let gate = gate(|c| {
        c.upstream.url = format!("http://{up}");
        c.upstream.timeout = wxgate::config::HumanDuration(Duration::from_millis(500));
    })
    .await;
    let (tx, body) = channel_body();
    let req = Request::post(gate.url("/stall"))
        .header("x-request-id", "stalled-upload-check")
        .body(body)
        .unwrap();
    let response = tokio::spawn(streaming_client().request(req));
    let feeder = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < 1 << 30 {
            if tx.send(Bytes::from(pattern(sent, CHUNK))).await.is_err() {
                break;
            }
            sent += CHUNK as u64;
        }
    });
    // The client may see the 504 or, as wxgate closes a connection whose
    // body it did not read, a reset; the access log says what was answered.
    let answered = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("the stalled upload is answered (or cut) within 20 s")
        .unwrap();
    if let Ok(res) = answered {
        assert_eq!(res.status(), 504);
    }
    let logged = eventually(async || {
        logs()
            .lines()
            .any(|l| l.contains("request_id=stalled-upload-check") && l.contains("status=504"))
    })
    .await;
    assert!(logged, "no 504 access log line for the stalled upload");
    feeder.abort();
    held.abort();
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_is_streamed_intact() {
    let gate = gate(|_| {}).await;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        streaming_client().request(
            Request::get(gate.url(&format!("/download?bytes={LARGE}")))
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap(),
        ),
    )
    .await
    .expect("download head within 30 s")
    .unwrap();
    assert_eq!(res.status(), 200);
    let mut got = Sha256::new();
    let mut expected = Sha256::new();
    let mut len = 0u64;
    let mut stream = BodyStream::new(res.into_body());
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(frame) = stream.next().await {
            let frame = frame.expect("the download body arrives without error");
            if let Some(data) = frame.data_ref() {
                got.update(data);
                expected.update(pattern(len, data.len()));
                len += data.len() as u64;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "download body within 60 s");
    assert_eq!(len, LARGE);
    assert_eq!(hex(&got.finalize()), hex(&expected.finalize()), "download corrupted");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_reaches_the_client_before_the_upstream_finishes() {
    // 1 TiB: a proxy that buffered the body would never answer.
    let gate = gate(|_| {}).await;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        streaming_client().request(
            Request::get(gate.url("/download?bytes=1099511627776"))
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap(),
        ),
    )
    .await
    .expect("the head of an endless download arrives: is the body buffered?")
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::TRANSFER_ENCODING], "chunked");
    let mut stream = BodyStream::new(res.into_body());
    let mut first = Vec::new();
    while first.len() < 1024 * 1024 {
        let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("body data keeps coming")
            .expect("more data")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            first.extend_from_slice(d);
        }
    }
    assert_eq!(first[..1024 * 1024], pattern(0, 1024 * 1024)[..]);
    drop(stream);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// Hop-by-hop headers
// ---------------------------------------------------------------------------

/// `TE` is hop-by-hop too, but wxgate says `TE: trailers` itself when the
/// client does (it relays trailers); `Trailer` goes from requests only
/// (request trailers are not forwarded).
const REQUEST_HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "upgrade",
    "x-listed-hop",
    "x-other-listed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_removed() {
    let gate = gate(|_| {}).await;
    // Upgrade without "Connection: upgrade" is no upgrade: it just goes.
    let request = "POST /hop-req HTTP/1.1\r\n\
        Host: hop.example\r\n\
        Connection: keep-alive, X-Listed-Hop\r\n\
        Connection: x-other-listed\r\n\
        X-Listed-Hop: secret\r\n\
        X-Other-Listed: secret\r\n\
        Keep-Alive: timeout=5, max=100\r\n\
        Proxy-Connection: keep-alive\r\n\
        TE: trailers, deflate\r\n\
        Trailer: x-checksum\r\n\
        Upgrade: websocket\r\n\
        X-End-To-End: kept\r\n\
        Content-Length: 5\r\n\
        \r\n\
        hello";
    // Connection stays open (keep-alive); read one answer, not until EOF.
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
        .await
        .expect("an answer within 15 s")
        .unwrap();
    let res = RawResponse::parse(&buf[..n]).expect("an HTTP answer");
    assert_eq!(res.status, 200);
    let r = gate.upstream.last();
    for name in REQUEST_HOP_BY_HOP {
        assert!(
            r.headers.get(name).is_none(),
            "{name} reached the upstream: {:?}",
            r.headers
        );
    }
    assert_eq!(values(&r.headers, "x-end-to-end"), ["kept"]);
    assert_eq!(values(&r.headers, "te"), ["trailers"]);
    assert_eq!(r.body, "hello");
    drop(stream);

    // A chunked body (with a trailer) is re-framed, not passed as raw chunks.
    let request = "POST /chunked HTTP/1.1\r\n\
        Host: hop.example\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: x-checksum\r\n\
        Connection: close\r\n\
        \r\n\
        5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-checksum: abc\r\n\r\n";
    let res = RawResponse::parse(&raw(gate.addr, request.as_bytes()).await).expect("an HTTP answer");
    assert_eq!(res.status, 200);
    let r = gate.upstream.last();
    assert_eq!(r.body, "hello, world");
    assert!(
        values(&r.headers, "transfer-encoding") == ["chunked"] || values(&r.headers, "content-length") == ["12"],
        "{:?}",
        r.headers
    );
    assert!(r.headers.get("trailer").is_none());

    // A request that asks to close is answered, then closed; the upstream
    // connection is not told to close (it stays pooled).
    let res = RawResponse::parse(
        &raw(
            gate.addr,
            b"GET /close HTTP/1.1\r\nHost: hop.example\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .expect("an HTTP answer");
    assert_eq!(res.status, 200);
    assert!(gate.upstream.last().headers.get("connection").is_none());
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed() {
    let gate = gate(|_| {}).await;
    let a = gate.get("/hop", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "hop");
    for name in [
        "x-upstream-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            a.headers.get(name).is_none(),
            "{name} reached the client: {:?}",
            a.headers
        );
    }
    // hyper may add its own "connection: close", never the upstream's list.
    assert!(
        !values(&a.headers, "connection")
            .iter()
            .any(|v| v.contains("x-upstream-hop")),
        "{:?}",
        a.headers
    );
    assert_eq!(values(&a.headers, "x-end-to-end"), ["kept"]);
    // Trailer is end to end (RFC 9110 §6.6.2): it names the trailers to come.
    assert_eq!(values(&a.headers, "trailer"), ["x-sum"]);

    // The same over a raw connection: the bytes on the wire.
    let res = raw(gate.addr, b"GET /hop HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    let res = RawResponse::parse(&res).expect("an HTTP answer");
    assert_eq!(res.status, 200);
    for name in ["x-upstream-hop", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(res.header(name).is_none(), "{name} on the wire: {:?}", res.headers);
    }
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// X-Forwarded-*
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_appended_and_set() {
    let gate = gate(|_| {}).await;
    // No prior X-Forwarded-For.
    let a = gate.get("/xff", None).await;
    assert_eq!(a.status, 200);
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&r.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), [gate.addr.to_string()]);

    // A client is not a trusted proxy: its chain, proto, host, real IP and
    // Forwarded are its own words, replaced by what wxgate saw.
    let a = send(
        Request::get(gate.url("/xff"))
            .header(header::HOST, "mp.example.com")
            .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed.example")
            .header("x-real-ip", "203.0.113.7")
            .header("forwarded", "for=203.0.113.7;proto=https")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&r.headers, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(values(&r.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), ["mp.example.com"]);
    assert!(values(&r.headers, "forwarded").is_empty());
    finish(gate).await;

    // Behind a trusted load balancer (here: loopback), its list is kept and
    // appended to, the client is the last untrusted address, and its proto
    // and host are kept.
    let behind = self::gate(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()]).await;
    let res = raw(
        behind.addr,
        b"GET /xff HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-For: 10.0.0.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: mp.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = behind.upstream.last();
    assert_eq!(
        values(&r.headers, "x-forwarded-for"),
        ["6.6.6.6, 203.0.113.7, 10.0.0.3, 127.0.0.1"]
    );
    assert_eq!(values(&r.headers, "x-real-ip"), ["203.0.113.7"]);
    assert_eq!(values(&r.headers, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), ["mp.example.com"]);
    finish(behind).await;
}

// ---------------------------------------------------------------------------
// Anti-spoofing
// ---------------------------------------------------------------------------

/// Client-sent spellings of every identity, phone and session header.
const SPOOFED: [(&str, &str); 14] = [
    ("x-wx-openid", "spoof-openid-1"),
    ("X-WX-OPENID", "spoof-openid-2"),
    ("x_wx_openid", "spoof-openid-3"),
    ("X_Wx_UnionId", "spoof-unionid"),
    ("x-wx-appid", "wxspoofspoofspoof"),
    ("X-Wx-Phone-Number", "13800000001"),
    ("x_wx_phone_number", "13800000002"),
    ("X-WX-PURE-PHONE-NUMBER", "13800000003"),
    ("x_Wx_Pure_Phone_Number", "13800000004"),
    ("x-wx-country-code", "999"),
    ("X_WX_COUNTRY_CODE", "998"),
    ("x_wx_session", "spoof-session-1"),
    ("X_WX_SESSION", "spoof-session-2"),
    ("x-wx_session", "spoof-session-3"),
];

/// Every header of the upstream's request whose name reads as one of `names`
/// (case-insensitive, `_` as `-`).
fn identity_like<'a>(headers: &'a HeaderMap, names: &[&str]) -> Vec<(&'a HeaderName, &'a HeaderValue)> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    headers
        .iter()
        .filter(|(n, _)| names.iter().any(|x| norm(x) == norm(n.as_str())))
        .collect()
}

const DEFAULT_IDENTITY: [&str; 7] = [
    "x-wx-openid",
    "x-wx-unionid",
    "x-wx-appid",
    "x-wx-phone-number",
    "x-wx-pure-phone-number",
    "x-wx-country-code",
    "x-wx-session",
];

fn spoofed_request(path: &str, session: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: spoof.example\r\nConnection: close\r\n");
    for (name, value) in SPOOFED {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(s) = session {
        req.push_str(&format!("x-wx-session: {s}\r\n"));
    }
    req.push_str("x-wx-openidx: in-the-x-wx-family\r\n");
    req.push_str("x-openidx: not-an-identity-header\r\n\r\n");
    req.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let gate = gate(|_| {}).await;

    // Anonymous: none of them arrives, in any spelling.
    let res = raw(gate.addr, &spoofed_request("/anon", None)).await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/anon");
    assert_eq!(
        identity_like(&r.headers, &DEFAULT_IDENTITY),
        vec![],
        "spoofed headers passed"
    );
    assert_eq!(values(&r.headers, "x-openidx"), ["not-an-identity-header"]);
    assert!(
        values(&r.headers, "x-wx-openidx").is_empty(),
        "the x-wx- family is wxgate's"
    );

    // With a live session: only wxgate's own values, once each. alice has
    // no unionid (so none may arrive), unionann has one.
    let token = gate.login("alice.1").await;
    for (user, code, unionid) in [
        ("alice", None, None),
        ("unionann", Some("unionann.1"), Some("UFAKEunionann")),
    ] {
        let token = match code {
            None => token.clone(),
            Some(code) => gate.login(code).await,
        };
        let res = raw(gate.addr, &spoofed_request("/authed", Some(&token))).await;
        assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
        let r = gate.upstream.last();
        assert_eq!(r.uri, "/authed");
        let mut seen: Vec<(String, String)> = identity_like(&r.headers, &DEFAULT_IDENTITY)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        seen.sort();
        let mut expected = vec![
            ("x-wx-appid".to_string(), APPID.to_string()),
            ("x-wx-openid".to_string(), wxgate::fake::FakeWeixin::openid_for(user)),
        ];
        if let Some(u) = unionid {
            expected.push(("x-wx-unionid".to_string(), u.to_string()));
        }
        assert_eq!(
            seen, expected,
            "{user}: the upstream saw more than wxgate's own identity"
        );
    }

    // An unknown or malformed token: anonymous, and the token still stays here.
    for bad in [
        "0000000000000000000000000000000000000000000",
        "not a token",
        &token[..token.len() - 1],
    ] {
        let res = raw(gate.addr, &spoofed_request("/bad-token", Some(bad))).await;
        assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
        let r = gate.upstream.last();
        assert_eq!(
            identity_like(&r.headers, &DEFAULT_IDENTITY),
            vec![],
            "with token {bad:?}"
        );
    }

    // Two session lines: neither goes upstream.
    let res = raw(
        gate.addr,
        format!(
            "GET /two HTTP/1.1\r\nHost: h\r\nx-wx-session: {token}\r\nX-WX-Session: {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert!(
        identity_like(&r.headers, &["x-wx-session"]).is_empty(),
        "{:?}",
        r.headers
    );

    // The token is not echoed back either, nor logged (wxgate logs at trace here).
    assert!(
        !String::from_utf8_lossy(&res).contains(&token),
        "the session token came back from the upstream"
    );
    assert!(!logs().contains(&token), "a session token was logged");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_headers_that_wxgate_sets() {
    let gate = gate(|_| {}).await;
    let token = gate.login("unionbea.1").await;
    // Naming wxgate's own headers as hop-by-hop must not take them away.
    let res = raw(
        gate.addr,
        format!(
            "GET /conn HTTP/1.1\r\nHost: h\r\nx-wx-session: {token}\r\n\
             Connection: close, X-WX-Unionid, x-wx-openid, x-wx-appid, x-request-id, x-forwarded-for, x-forwarded-host, x-forwarded-proto\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("unionbea")]
    );
    assert_eq!(values(&r.headers, "x-wx-unionid"), ["UFAKEunionbea"]);
    assert_eq!(values(&r.headers, "x-wx-appid"), [APPID]);
    assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), ["h"]);
    assert_eq!(values(&r.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&r.headers, "x-request-id").len(), 1);
    assert!(r.headers.get("connection").is_none());
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_route_strips_spoofed_headers_too() {
    let gate = gate(|_| {}).await;
    let mut req = Request::post(gate.url("/api/login")).header(header::CONTENT_TYPE, "application/json");
    for (name, value) in SPOOFED {
        req = req.header(name, value);
    }
    let a = send(req.body(Full::new(Bytes::from(r#"{"code":"bob.1"}"#))).unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/api/login");
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("bob")]
    );
    assert_eq!(values(&r.headers, "x-wx-appid"), [APPID]);
    for name in [
        "x-wx-phone-number",
        "x-wx-pure-phone-number",
        "x-wx-country-code",
        "x-wx-session",
    ] {
        assert!(identity_like(&r.headers, &[name]).is_empty(), "{name}: {:?}", r.headers);
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_names_are_stripped_in_every_spelling() {
    let gate = gate(|c| {
        c.headers.openid = "X-User-Id".into();
        c.headers.unionid = "x-union".into();
        c.headers.appid = "x-app".into();
        c.headers.phone_number = "X-Phone".into();
        c.headers.pure_phone_number = "x-phone-pure".into();
        c.headers.country_code = "x-phone-cc".into();
        c.session.header = "X-Token".into();
        // Without the x-wx- family rule, the default names are ordinary headers.
        c.headers.strip_prefixes = vec![];
        c.headers.strip_names = vec![];
    })
    .await;
    let custom = [
        "x-user-id",
        "x-union",
        "x-app",
        "x-phone",
        "x-phone-pure",
        "x-phone-cc",
        "x-token",
    ];
    // Log in under the custom session header.
    let a = gate.post("/api/login", None, json!({"code": "carol.1"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let token = a.headers["x-token"].to_str().unwrap().to_owned();
    assert!(a.headers.get("x-wx-session").is_none());

    for session in [None, Some(token.as_str())] {
        let mut req = String::from("GET /custom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
        for n in [
            "X_USER_ID",
            "x-user-id",
            "X_Union",
            "x_app",
            "x-phone",
            "X_PHONE_PURE",
            "x_phone_cc",
            "x_token",
        ] {
            req.push_str(&format!("{n}: spoof\r\n"));
        }
        if let Some(t) = session {
            req.push_str(&format!("X-Token: {t}\r\n"));
        }
        // The default names are not wxgate's any more: they pass as ordinary headers.
        req.push_str("x-wx-openid: ordinary\r\n\r\n");
        let res = raw(gate.addr, req.as_bytes()).await;
        assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
        let r = gate.upstream.last();
        let seen: Vec<(String, String)> = identity_like(&r.headers, &custom)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        match session {
            None => assert_eq!(seen, vec![], "spoofed custom headers passed"),
            Some(_) => {
                let mut seen = seen;
                seen.sort();
                // carol has no unionid: none may arrive.
                assert_eq!(
                    seen,
                    [
                        ("x-app".to_string(), APPID.to_string()),
                        ("x-user-id".to_string(), wxgate::fake::FakeWeixin::openid_for("carol")),
                    ]
                );
            }
        }
        assert_eq!(values(&r.headers, "x-wx-openid"), ["ordinary"]);
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_header_named_with_underscores_works_and_stays_here() {
    let gate = gate(|c| c.session.header = "X_Session_Token".into()).await;
    let a = gate.post("/api/login", None, json!({"code": "erin.1"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let token = a.headers["x_session_token"].to_str().unwrap().to_owned();
    let res = raw(
        gate.addr,
        format!("GET /u HTTP/1.1\r\nHost: h\r\nX_Session_Token: {token}\r\nx-session-token: spoof\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("erin")]
    );
    assert!(
        identity_like(&r.headers, &["x-session-token"]).is_empty(),
        "{:?}",
        r.headers
    );
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_in_trailers_never_reach_the_upstream() {
    let gate = gate(|_| {}).await;
    let request = "POST /trailers HTTP/1.1\r\n\
        Host: h\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: x-wx-openid, x-wx-session, x-checksum\r\n\
        Connection: close\r\n\
        \r\n\
        4\r\nbody\r\n0\r\nx-wx-openid: spoof\r\nx-wx-session: spoof\r\nx-checksum: 1\r\n\r\n";
    let res = RawResponse::parse(&raw(gate.addr, request.as_bytes()).await).expect("an HTTP answer");
    assert_eq!(res.status, 200);
    let r = gate.upstream.last();
    assert_eq!(r.body, "body");
    assert!(
        identity_like(&r.headers, &DEFAULT_IDENTITY).is_empty(),
        "{:?}",
        r.headers
    );
    assert!(
        identity_like(&r.trailers, &DEFAULT_IDENTITY).is_empty(),
        "{:?}",
        r.trailers
    );
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let gate = gate(|_| {}).await;
    let token = gate.login("dave.1").await;
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let mut request = format!("ws://{}/ws?room=1", gate.addr).into_client_request().unwrap();
    request.headers_mut().insert("x-wx-session", token.parse().unwrap());
    request.headers_mut().insert("x_wx_openid", "spoof".parse().unwrap());
    let (mut ws, res) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("handshake within 15 s")
    .expect("the WebSocket handshake succeeds through wxgate");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        res.headers()[header::UPGRADE]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );

    let r = gate.upstream.last();
    assert_eq!(r.uri, "/ws?room=1");
    assert!(r.headers.get("sec-websocket-key").is_some());
    assert!(r.headers["upgrade"].to_str().unwrap().eq_ignore_ascii_case("websocket"));
    assert!(
        identity_like(&r.headers, &["x-wx-session"]).is_empty(),
        "{:?}",
        r.headers
    );
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("dave")]
    );
    assert!(r.headers.get("x_wx_openid").is_none());
    assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);

    let echo = async |ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, msg: Message| {
        ws.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("echo within 15 s")
            .expect("the tunnel is open")
            .unwrap();
        assert_eq!(back, msg);
    };
    echo(&mut ws, Message::text("你好, wxgate")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 0xff, 0xfe])).await;
    echo(&mut ws, Message::binary(pattern(7, 1024 * 1024))).await;
    echo(&mut ws, Message::text("again")).await;
    ws.close(None).await.unwrap();
    // The upstream ends the tunnel; the client sees the end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the tunnel stayed open after the close handshake");
    drop(ws);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_json() {
    let gate = gate_to(closed_port()).await;
    for method in [Method::GET, Method::POST] {
        let a = send(
            Request::builder()
                .method(method)
                .uri(gate.url("/anything?x=1"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await;
        a.assert_error(502, "upstream_unavailable");
        assert!(a.headers.get("x-request-id").is_some());
    }
    // A WebSocket upgrade too.
    let res = raw_one(
        gate.addr,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_raw_error(&res, 502, "upstream_unavailable");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_a_504_json() {
    let gate = gate(|c| c.upstream.timeout = wxgate::config::HumanDuration(Duration::from_millis(300))).await;
    let a = gate.get("/slow?ms=5000", None).await;
    a.assert_error(504, "upstream_timeout");
    // With a body, the timeout starts once the body is sent.
    let a = gate.post("/slow?ms=5000", None, json!({"pad": "x".repeat(1000)})).await;
    a.assert_error(504, "upstream_timeout");
    // A fast answer on the same gate is still fine.
    assert_eq!(gate.get("/slow?ms=1", None).await.status, 200);
    finish(gate).await;
}

/// A one-shot upstream that reads a request and then does `answer`.
async fn broken_upstream(answer: &'static [u8]) -> SocketAddr {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_the_exchange_is_a_502_json() {
    for answer in [&b""[..], b"this is not HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Le"] {
        let gate = gate_to(broken_upstream(answer).await).await;
        let a = gate.get("/x", None).await;
        a.assert_error(502, "upstream_unavailable");
        finish(gate).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_body_never_yields_a_complete_looking_body() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let gate = gate_to(broken_upstream(answer).await).await;
        let res = tokio::time::timeout(
            Duration::from_secs(15),
            client().request(Request::get(gate.url("/cut")).body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .expect("a head within 15 s")
        .expect("the head arrives");
        assert_eq!(res.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(15), res.into_body().collect())
            .await
            .expect("the body ends within 15 s");
        assert!(
            body.is_err(),
            "a cut body looked complete: {:?}",
            body.map(|b| b.to_bytes())
        );
        finish(gate).await;
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 cleartext from clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_reach_the_upstream_as_http11() {
    let gate = gate(|_| {}).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let h2_send = async |req: Request<Full<Bytes>>| {
        let res = tokio::time::timeout(Duration::from_secs(15), h2.request(req))
            .await
            .expect("h2 answer within 15 s")
            .expect("h2 request reaches wxgate");
        assert_eq!(res.version(), Version::HTTP_2);
        let (parts, body) = res.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    };

    let (parts, body) = h2_send(
        Request::post(gate.url("/h2/x?y=%20z"))
            .header("x-custom", "v")
            .header("x_wx_openid", "spoof")
            .body(Full::new(Bytes::from_static(b"over h2")))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let r = gate.upstream.last();
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri, "/h2/x?y=%20z");
    assert_eq!(values(&r.headers, "host"), [gate.addr.to_string()]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), [gate.addr.to_string()]);
    assert_eq!(values(&r.headers, "x-custom"), ["v"]);
    assert!(r.headers.get("x_wx_openid").is_none());
    assert_eq!(r.body, "over h2");

    // HTTP/1.1-only response headers never reach an HTTP/2 client.
    let (parts, body) = h2_send(Request::get(gate.url("/hop")).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, "hop");
    assert_eq!(values(&parts.headers, "x-end-to-end"), ["kept"]);

    // Many streams on one connection, and a streamed download.
    let many = futures_util::future::join_all((0..20).map(|i| {
        h2_send(
            Request::get(gate.url(&format!("/h2/many/{i}")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    }))
    .await;
    assert!(many.iter().all(|(p, _)| p.status == 200));
    let (parts, body) = h2_send(
        Request::get(gate.url("/download?bytes=3000000"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(sha256_hex(&body), sha256_hex(&pattern(0, 3_000_000)));
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_errors_are_json_too() {
    let gate = gate_to(closed_port()).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let res = tokio::time::timeout(
        Duration::from_secs(15),
        h2.request(Request::get(gate.url("/x")).body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// Admin endpoints
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_on_the_admin_port_only() {
    let gate = gate(|_| {}).await;
    let a = gate.admin_get("/healthz").await;
    assert_eq!(a.status, 200);
    assert!(
        eventually(async || gate.admin_get("/readyz").await.status == 200).await,
        "/readyz never became 200"
    );
    assert_eq!(gate.admin_get("/nope").await.status, 404);

    // Traffic for the metrics: a pass-through 200, then a 502 on another gate.
    assert_eq!(gate.get("/count-me", None).await.status, 200);
    let broken = gate_to(closed_port()).await;
    broken.get("/x", None).await.assert_error(502, "upstream_unavailable");

    let mut last = String::new();
    let found = eventually(async || {
        let a = gate.admin_get("/metrics").await;
        assert_eq!(a.status, 200);
        last = a.text();
        last.contains(r#"wxgate_requests_total{route="passthrough",status="200"}"#)
            && last.contains(r#"wxgate_requests_total{route="passthrough",status="502"}"#)
    })
    .await;
    assert!(found, "request counters missing from /metrics:\n{last}");
    assert!(
        last.contains("wxgate_request_duration_seconds_bucket{route=\"passthrough\""),
        "{last}"
    );
    assert!(last.contains("wxgate_request_duration_seconds_count"), "{last}");
    assert!(last.contains("wxgate_in_flight_requests"), "{last}");
    assert!(
        metric_value(&last, r#"wxgate_upstream_errors_total{kind="connect"}"#).is_some_and(|v| v >= 1.0),
        "{last}"
    );
    let text_plain = gate.admin_get("/metrics").await.headers[header::CONTENT_TYPE].clone();
    assert!(text_plain.to_str().unwrap().starts_with("text/plain"));

    // The public port has no admin endpoints: these are the upstream's paths.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let before = gate.upstream.count();
        let a = gate.get(path, None).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["uri"], path, "{path} was not forwarded");
        assert_eq!(gate.upstream.count(), before + 1);
        assert!(!a.text().contains("wxgate_requests_total"));
    }
    finish(broken).await;
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_are_a_gauge() {
    let gate = gate(|_| {}).await;
    let url = gate.url("/slow?ms=2000");
    let slow = tokio::spawn(async move { send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await });
    assert!(eventually(async || gate.upstream.count() == 1).await);
    let mut last = String::new();
    let seen = eventually(async || {
        last = gate.admin_get("/metrics").await.text();
        metric_value(&last, "wxgate_in_flight_requests").is_some_and(|v| v >= 1.0)
    })
    .await;
    assert!(seen, "an in-flight request is not counted:\n{last}");
    assert_eq!(slow.await.unwrap().status, 200);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// Readiness and graceful shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_shutdown_begins_and_in_flight_requests_finish() {
    let mut gate = gate(|_| {}).await;
    assert!(eventually(async || gate.admin_get("/readyz").await.status == 200).await);

    let url = gate.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await });
    assert!(
        eventually(async || gate.upstream.received().iter().any(|r| r.uri.starts_with("/slow"))).await,
        "the slow request never reached the upstream"
    );

    let running = gate.running.take().unwrap();
    running.shutdown();
    // Draining: not ready, still alive.
    let a = gate.admin_get("/readyz").await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.json()["status"], "draining");
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(gate.admin_get("/healthz").await.status, 200);

    // The in-flight request completes normally.
    let a = tokio::time::timeout(Duration::from_secs(15), slow)
        .await
        .expect("the in-flight request finishes")
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "slow done");

    // New connections are refused once the workers stop accepting.
    let addr = gate.addr;
    assert!(
        eventually(async || TcpStream::connect(addr).await.is_err()).await,
        "wxgate still accepts connections after shutdown"
    );
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns once drained");
    // The admin port closes last.
    assert!(
        TcpStream::connect(gate.admin).await.is_err(),
        "the admin listener outlived wxgate"
    );
    assert_no_wxgate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_requests_in_flight_on_http1_and_h2() {
    let mut gate = gate(|_| {}).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let url = gate.url("/slow?ms=1500");
    let h1_slow = tokio::spawn({
        let url = url.clone();
        async move { send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await }
    });
    let h2_slow = tokio::spawn({
        let h2 = h2.clone();
        async move {
            let res = h2
                .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
                .await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        }
    });
    assert!(
        eventually(async || gate
            .upstream
            .received()
            .iter()
            .filter(|r| r.uri.starts_with("/slow"))
            .count()
            == 2)
        .await
    );
    let running = gate.running.take().unwrap();
    running.shutdown();
    let a = tokio::time::timeout(Duration::from_secs(15), h1_slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.status.as_u16(), a.body.as_ref()), (200, &b"slow done"[..]));
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), h2_slow)
        .await
        .unwrap()
        .unwrap()
        .expect("the h2 stream in flight completes");
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"slow done"[..]));
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns once drained");
    assert_no_wxgate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    let mut gate = gate(|c| c.server.shutdown_grace = wxgate::config::HumanDuration(Duration::from_millis(300))).await;
    let url = gate.url("/slow?ms=60000");
    let slow = tokio::spawn(async move {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        tokio::time::timeout(Duration::from_secs(30), client().request(req)).await
    });
    assert!(eventually(async || gate.upstream.count() == 1).await);
    let running = gate.running.take().unwrap();
    running.shutdown();
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns after shutdown_grace even with a request in flight");
    // The cut-off request fails instead of hanging.
    let outcome = slow.await.unwrap().expect("the client is not left hanging");
    assert!(
        outcome.is_err(),
        "a 60 s request finished within the grace: {outcome:?}"
    );
    assert_no_wxgate_panic();
}

// ---------------------------------------------------------------------------
// Bad input: answered or closed, never a panic or a hang
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_refused() {
    let gate = gate(|_| {}).await;
    for request in [
        &b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\nhello"[..],
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nhello",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"GET /x HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        b"GET /x\x01y HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /x HTTP/9.9\r\nHost: h\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 this is TLS, not HTTP\r\n\r\n",
    ] {
        let before = gate.upstream.count();
        let out = raw(gate.addr, request).await;
        if let Some(res) = RawResponse::parse(&out) {
            assert!(
                (400..500).contains(&res.status),
                "{:?} got {}",
                String::from_utf8_lossy(request),
                res.status
            );
        }
        assert_eq!(
            gate.upstream.count(),
            before,
            "{:?} was forwarded",
            String::from_utf8_lossy(request)
        );
    }

    // A body that breaks after its head went upstream (streaming) is the
    // client's fault: 400, not a 502 blaming the upstream.
    for broken in [
        &b"POST /broken HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"[..],
        b"POST /broken HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ] {
        let res = RawResponse::parse(&raw(gate.addr, broken).await).expect("an answer");
        assert_raw_error(&res, 400, "client_body");
    }
    assert_eq!(gate.get("/still-alive", None).await.status, 200);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_header_section_is_refused() {
    let gate = gate(|_| {}).await;
    // Too many header lines.
    let mut many = String::from("GET /many HTTP/1.1\r\nHost: h\r\n");
    for i in 0..500 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    // One enormous header.
    let huge = format!(
        "GET /huge HTTP/1.1\r\nHost: h\r\nx-big: {}\r\n\r\n",
        "a".repeat(2 * 1024 * 1024)
    );
    // An enormous request line.
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "u".repeat(1024 * 1024));
    for request in [many, huge, long_uri] {
        let out = raw(gate.addr, request.as_bytes()).await;
        if let Some(res) = RawResponse::parse(&out) {
            assert!([414, 431, 400].contains(&res.status), "got {}", res.status);
        }
    }
    assert_eq!(gate.upstream.count(), 0, "an over-long request was forwarded");
    assert_eq!(gate.get("/still-alive", None).await.status, 200);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_login_body_is_413_before_it_is_read() {
    let gate = gate(|c| c.server.max_body_bytes = 1024).await;
    // Declared 1 MB, 13 bytes sent: answering at all proves nothing was waited for.
    let request = b"POST /api/login HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"code\":\"a\"}";
    let res = RawResponse::parse(&raw(gate.addr, request).await).expect("an answer before the body");
    assert_raw_error(&res, 413, "body_too_large");

    // With Expect: 100-continue and no body at all: 413, no "100 Continue".
    let request = b"POST /api/login HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n";
    let out = raw(gate.addr, request).await;
    assert!(!out.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&out));
    assert_raw_error(&RawResponse::parse(&out).expect("an answer"), 413, "body_too_large");

    // Without Content-Length (chunked), the limit still holds.
    let mut request =
        b"POST /api/login HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(format!("{:x}\r\n{}\r\n0\r\n\r\n", 2000, " ".repeat(2000)).as_bytes());
    assert_raw_error(
        &RawResponse::parse(&raw(gate.addr, &request).await).unwrap(),
        413,
        "body_too_large",
    );

    assert!(gate.upstream.received().iter().all(|r| r.uri != "/api/login"));
    // A pass-through body over max_body_bytes is not limited.
    let a = gate.post("/not-login", None, json!({"pad": "x".repeat(4096)})).await;
    assert_eq!(a.status, 200);
    assert!(gate.upstream.last().body.len() > 4096);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let gate = gate(|c| c.server.header_read_timeout = wxgate::config::HumanDuration(Duration::from_millis(500))).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"GET /slowloris HTTP/1.1\r\nHost: h\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a client that never finishes its headers keeps its connection"
    );
    if let Some(res) = RawResponse::parse(&buf) {
        assert_eq!(res.status, 408);
    }
    assert_eq!(gate.upstream.count(), 0);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_are_not() {
    let gate = gate(|c| c.server.header_read_timeout = wxgate::config::HumanDuration(Duration::from_millis(500))).await;

    // Idle after a response: closed after the timeout (within its sweep period).
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let closed = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle keep-alive connection stays open"
    );

    // An upstream slower than the timeout: the request is in flight, not idle.
    let res = raw_one(gate.addr, b"GET /slow?ms=1500 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"slow done");

    // A download read slowly for longer than the timeout: in flight too.
    const BYTES: usize = 16 << 20;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(format!("GET /download?bytes={BYTES} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = stream.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read_rest = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if got >= BYTES {
                break;
            }
        }
    })
    .await;
    assert!(read_rest.is_ok(), "the download stalled");
    assert!(got >= BYTES, "the download was cut off after {got} bytes");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408_and_the_backend_a_cut_request() {
    let gate = gate(|c| c.server.body_read_timeout = wxgate::config::HumanDuration(Duration::from_millis(500))).await;
    for path in ["/upload", "/api/login"] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        stream
            .write_all(format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789").as_bytes())
            .await
            .unwrap();
        // Nothing more is sent; the connection stays open on the client's side.
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "{path}: a stalled body holds its request forever");
        let res = RawResponse::parse(&out).unwrap_or_else(|| panic!("{path}: no answer: {out:?}"));
        assert_raw_error(&res, 408, "client_timeout");
        assert_eq!(res.header("connection"), Some("close"), "{path}");
    }
    // The backend's half of the upload was cut, not left waiting: /upload
    // records its request once its body ends, whichever way.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        while !gate.upstream.received().iter().any(|r| r.uri == "/upload") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(cut.is_ok(), "the upstream request was left open");
    assert_eq!(gate.upstream.upload_progress(), 10);
    // A slow but steady client is not a stalled one.
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"POST /steady HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(b"ab").await.unwrap();
    }
    assert_next_answer_is_200(&mut stream, "/steady").await;
    assert_eq!(gate.upstream.last().body, &b"abababab"[..]);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_are_refused_both_ways() {
    let gate = gate(|_| {}).await;
    // hyper would undo the chunking only, and the upstream would get gzip
    // bytes with nothing saying so.
    let out = raw(
        gate.addr,
        b"POST /gz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_raw_error(&RawResponse::parse(&out).expect("an answer"), 501, "not_implemented");
    assert_eq!(gate.upstream.count(), 0);

    let up =
        broken_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    let gz = gate_to(up).await;
    gz.get("/gz", None).await.assert_error(502, "upstream_protocol");
    // Plain chunked is fine.
    let up = broken_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    let chunked = gate_to(up).await;
    let a = chunked.get("/chunked", None).await;
    assert_eq!((a.status.as_u16(), a.body.as_ref()), (200, &b"hello"[..]));
    finish(chunked).await;
    finish(gz).await;
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_answered_not_tunnelled() {
    let gate = gate(|_| {}).await;
    let out = raw(
        gate.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    let res = RawResponse::parse(&out).expect("an HTTP answer to CONNECT");
    assert_raw_error(&res, 501, "not_implemented");
    assert_eq!(gate.upstream.count(), 0, "CONNECT reached the upstream");
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// HTTP/1.1 details a client may rely on
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_honoured_on_pass_through() {
    let gate = gate(|_| {}).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"POST /expect HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The client waits for "100 Continue" before sending its body.
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
        .await
        .expect("100 Continue within 15 s")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest))
        .await
        .expect("an answer within 15 s")
        .unwrap();
    let mut all = buf[..n].to_vec();
    all.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(gate.upstream.last().body, "hello");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_http10_requests_are_answered_in_order() {
    let gate = gate(|_| {}).await;
    let out = raw(
        gate.addr,
        b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nPOST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    let first = text.find("\"uri\":\"/first\"").expect("first answered");
    let second = text.find("\"uri\":\"/second\"").expect("second answered");
    let third = text.find("\"uri\":\"/third\"").expect("third answered");
    assert!(first < second && second < third, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");

    // HTTP/1.0 without Host: answered, the connection then closed.
    let out = raw(gate.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    let res = RawResponse::parse(&out).expect("an HTTP/1.0 answer");
    assert_eq!(res.status, 200);
    assert_eq!(gate.upstream.last().uri, "/old");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_made_when_missing_and_travels_both_ways() {
    let gate = gate(|_| {}).await;
    let a = gate.get("/id", None).await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id.is_empty());
    assert_eq!(values(&gate.upstream.last().headers, "x-request-id"), [id.as_str()]);
    let b = gate.get("/id", None).await;
    assert_ne!(b.headers["x-request-id"], id.as_str(), "request ids repeat");
    // An unusable client id is replaced.
    let a = send(
        Request::get(gate.url("/id"))
            .header("x-request-id", "has spaces in it")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_ne!(a.headers["x-request-id"], "has spaces in it");
    assert_eq!(values(&gate.upstream.last().headers, "x-request-id").len(), 1);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let gate = gate(|_| {}).await;
    for i in 0..30 {
        assert_eq!(gate.get(&format!("/pooled/{i}"), None).await.status, 200);
    }
    // One per worker would do; a new connection per request would be 30.
    let n = gate.upstream.connections();
    assert!(n <= 10, "{n} upstream connections for 30 sequential requests");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_upstream_declines_is_an_ordinary_answer() {
    let gate = gate(|_| {}).await;
    // The echo route answers 200 to anything: no 101, no tunnel.
    let res = raw_one(
        gate.addr,
        b"GET /no-ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["uri"], "/no-ws");
    let r = gate.upstream.last();
    assert!(
        r.headers["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
    assert_eq!(values(&r.headers, "upgrade"), ["websocket"]);
    // The mock's /ws without a key: 400, passed on.
    let res = raw_one(
        gate.addr,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 400);
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_counted_499() {
    let gate = gate(|_| {}).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(async || gate.upstream.count() == 1).await);
    drop(stream);
    let mut last = String::new();
    let counted = eventually(async || {
        last = gate.admin_get("/metrics").await.text();
        last.contains(r#"wxgate_requests_total{route="passthrough",status="499"}"#)
    })
    .await;
    assert!(counted, "a request whose client left is not counted as 499:\n{last}");
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// WebSocket tunnels and shutdown
// ---------------------------------------------------------------------------

async fn open_ws(gate: &Gate) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async(format!("ws://{}/ws", gate.addr), stream),
    )
    .await
    .expect("handshake within 15 s")
    .expect("handshake");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_working_during_the_drain() {
    let mut gate = gate(|_| {}).await;
    let mut ws = open_ws(&gate).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let running = gate.running.take().unwrap();
    running.shutdown();
    let addr = gate.addr;
    assert!(eventually(async || TcpStream::connect(addr).await.is_err()).await);
    // Shutdown has begun and no new connection is accepted, but the tunnel
    // is in flight: it still works until the client is done with it.
    ws.send(Message::text("during")).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("echo within 15 s")
        .expect("the tunnel is still open during the drain")
        .unwrap();
    assert_eq!(back, Message::text("during"));
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns once the tunnel is closed");
    assert_no_wxgate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_ends_an_open_websocket() {
    let mut gate = gate(|c| c.server.shutdown_grace = wxgate::config::HumanDuration(Duration::from_millis(500))).await;
    let mut ws = open_ws(&gate).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let running = gate.running.take().unwrap();
    running.shutdown();
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns after shutdown_grace with a tunnel open");
    // The tunnel is gone: the client sees the end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel outlived wxgate");
    assert_no_wxgate_panic();
}
