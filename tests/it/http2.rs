//! HTTP/2 clients (h2c prior knowledge): forwarded to the HTTP/1.1 backend.

use crate::common::*;

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
// HTTP/2 details (issue 11)
// ---------------------------------------------------------------------------

fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// RFC 9113 §8.2.3: a cookie split over several HTTP/2 fields reaches an
/// HTTP/1.1 backend as one line, or backends that read the first lose some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_cookies_reach_the_backend_as_one_line() {
    let gate = gate(|_| {}).await;
    let res = h2_client()
        .request(
            Request::get(gate.url("/cookies"))
                .header(header::COOKIE, "a=1")
                .header(header::COOKIE, "b=2")
                .header(header::COOKIE, "session=xyz")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "cookie"), ["a=1; b=2; session=xyz"]);
    finish(gate).await;
}

/// An HTTP/2 `host` that differs from `:authority` is refused (RFC 9113
/// §8.3.1): the backend would not know which one the client meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_host_that_differs_from_the_authority_is_400() {
    let gate = gate(|_| {}).await;
    let res = h2_client()
        .request(
            Request::get(gate.url("/authority"))
                .header(header::HOST, "evil.example")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(gate.upstream.count(), 0);
    finish(gate).await;
}

/// `server.http2_max_concurrent_streams` bounds what one connection can ask
/// of the backend at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_connection_are_bounded() {
    let gate = gate(|c| c.server.http2_max_concurrent_streams = 2).await;
    let h2 = h2_client();
    // One request first, so the client has the server's SETTINGS (streams
    // opened before it may be refused, which is HTTP/2 working as meant).
    let warm = h2.request(Request::get(gate.url("/warm")).body(Full::new(Bytes::new())).unwrap());
    assert_eq!(warm.await.unwrap().status(), 200);
    let all = futures_util::future::join_all((0..6).map(|_| {
        h2.request(
            Request::get(gate.url("/slow?ms=300"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    }))
    .await;
    let statuses: Vec<_> = all
        .iter()
        .map(|r| r.as_ref().map(|r| r.status()).map_err(|e| format!("{e:?}")))
        .collect();
    assert!(
        statuses.iter().all(|s| s.as_ref().is_ok_and(|s| *s == 200)),
        "{statuses:?}"
    );
    assert_eq!(gate.upstream.slow_max(), 2);
    finish(gate).await;
}

/// An idle HTTP/2 connection is closed with a GOAWAY first, so the client
/// knows no stream was lost and can open a new connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_a_goaway() {
    let gate = gate(|c| c.server.header_read_timeout = HumanDuration(Duration::from_millis(500))).await;
    let tcp = TcpStream::connect(gate.addr).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let req = Request::get(format!("http://{}/before-idle", gate.addr))
        .body(())
        .unwrap();
    let (res, _) = send.send_request(req, true).unwrap();
    assert_eq!(res.await.unwrap().status(), 200);
    // Idle: the server says goodbye with a GOAWAY, then closes.
    let _ = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("closed within 15 s");
    let refused = futures_util::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .expect_err("the connection is closed");
    assert!(refused.is_go_away(), "closed without a GOAWAY: {refused:?}");
    assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR));
    finish(gate).await;
}
