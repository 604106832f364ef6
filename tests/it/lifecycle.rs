//! The admin endpoints, readiness, and graceful shutdown.

use crate::common::*;

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
    // The standard process metrics, unprefixed, with real values.
    for series in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds"] {
        assert!(
            metric_value(&last, series).is_some_and(|v| v > 0.0),
            "{series}:\n{last}"
        );
    }
    assert!(metric_value(&last, "process_cpu_seconds_total").is_some(), "{last}");
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
        let req = Request::get(url)
            .header("x-request-id", "cut-by-the-grace")
            .body(Full::new(Bytes::new()))
            .unwrap();
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
    // Logged as cut by the shutdown, not as a client that went away (499).
    let line = |l: &&str| l.contains("request_id=cut-by-the-grace");
    assert!(
        eventually(async || logs().lines().any(|l| line(&l))).await,
        "{}",
        logs()
    );
    let logs = logs();
    let cut = logs.lines().find(line).unwrap();
    assert!(
        cut.contains("status=503") && cut.contains("outcome=\"shutdown\""),
        "{cut}"
    );
    assert_no_wxgate_panic();
}

/// `server.shutdown_delay`: after SIGTERM, `/readyz` says 503 at once, but
/// requests that load balancers still send are served until the delay ends;
/// then the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_the_shutdown_delay_are_served() {
    let mut gate = gate(|c| c.server.shutdown_delay = HumanDuration(Duration::from_secs(2))).await;
    let running = gate.running.take().unwrap();
    running.shutdown();
    assert_eq!(gate.admin_get("/readyz").await.status, 503);
    for i in 0..5 {
        // New connections each time, as a load balancer opens them.
        let res = raw(
            gate.addr,
            format!("GET /during/{i} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(RawResponse::parse(&res).map(|r| r.status), Some(200), "request {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), running.stopped())
        .await
        .expect("stops after the delay and the drain");
    assert!(TcpStream::connect(gate.addr).await.is_err(), "still listening");
}
