//! A backend that fails, stalls, closes or misbehaves: a JSON error, never a
//! hang, a panic, or a half-forwarded request.

use crate::common::*;

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
