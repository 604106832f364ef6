//! HTTP/1.1 details a client may rely on: Expect, pipelining, HTTP/1.0
//! clients, request ids, pooling, clients that leave.

use crate::common::*;

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
