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
