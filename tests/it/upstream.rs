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

// ---------------------------------------------------------------------------
// Real backends' habits (issue 11)
// ---------------------------------------------------------------------------

/// A backend that closes idle keep-alive connections without saying so
/// (Node, uvicorn, gunicorn do, after 2 to 5 s) races wxgate's next request
/// on them. Here it always loses: it answers one request per connection,
/// then reads the next and hangs up. A GET is sent again on a fresh
/// connection; a POST never is (it might have been acted on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_connection_the_backend_dropped_is_sent_again_but_never_a_post() {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    let up = raw_backend(move |mut s| {
        let seen = seen.clone();
        async move {
            for answer in [true, false] {
                let Some((head, _)) = read_head(&mut s).await else {
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_owned());
                if answer {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                }
            }
        }
    })
    .await;
    let gate = gate(|c| {
        c.upstream.url = format!("http://{up}");
        c.server.workers = 1;
    })
    .await;
    for i in 0..10 {
        let a = gate.get(&format!("/get/{i}"), None).await;
        assert_eq!(a.status, 200, "GET {i}: {}", a.text());
        assert_eq!(a.body, "ok");
    }
    let a = gate.post("/post", None, json!({"pay": 1})).await;
    a.assert_error(502, "upstream_unavailable");
    let posts = lines.lock().unwrap().iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(posts, 1, "a POST was sent twice");
    finish(gate).await;
}

/// A backend that says how long it keeps idle connections
/// (`Keep-Alive: timeout=N`) is taken at its word: here 1 s, so wxgate
/// never reuses one (it closes a second before the backend would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_keep_alive_timeout_is_honoured() {
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let up = raw_backend(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            while read_head(&mut s).await.is_some() {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let gate = gate(|c| {
        c.upstream.url = format!("http://{up}");
        c.server.workers = 1;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(gate.get("/ka", None).await.status, 200);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    finish(gate).await;
}

/// An HTTP/1.0 backend (python's http.server, wsgiref): the client still
/// gets HTTP/1.1 and keeps its connection; a chunked upload reaches the
/// backend with a Content-Length, or is refused with 411 beyond the buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_backend_gets_lengths_and_the_client_keeps_http11() {
    let up = raw_backend(move |mut s| async move {
        let Some((head, mut body)) = read_head(&mut s).await else {
            return;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = length {
            while body.len() < n {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => body.extend_from_slice(&chunk[..k]),
                }
            }
        }
        // Like http.server: HTTP/1.0, the body's end is the connection's end.
        let answer = format!("length={length:?} body={}", String::from_utf8_lossy(&body));
        let _ = s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{answer}").as_bytes()).await;
    })
    .await;
    let gate = gate(|c| {
        c.upstream.url = format!("http://{up}");
        c.upstream.max_buffered_body_bytes = 64;
        c.server.workers = 1;
    })
    .await;
    // Two requests on one client connection: HTTP/1.1 answers, kept alive.
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    for i in 0..2 {
        s.write_all(b"GET /old HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let (head, mut tail) = read_head(&mut s).await.unwrap_or_else(|| panic!("answer {i}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        // The body is chunked (the backend gave no length); read it to its
        // end, from what came with the head.
        assert!(
            head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "{head}"
        );
        while !tail.ends_with(b"0\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after answer {i}");
            tail.extend_from_slice(&chunk[..n]);
        }
    }
    // The access log calls them complete: the body's end is its connection's.
    let complete = |l: &&str| l.contains("path=/old ") && l.contains("outcome=\"ok\"");
    assert!(
        eventually(async || logs().lines().filter(complete).count() >= 2).await,
        "{}",
        logs()
    );
    // A chunked upload, now that wxgate knows the backend speaks HTTP/1.0.
    let res = raw(
        gate.addr,
        b"POST /old HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&res).into_owned();
    assert!(text.contains("length=Some(11) body=hello world"), "{text}");
    // Beyond max_buffered_body_bytes: 411, and nothing half-forwarded.
    let big = "x".repeat(100);
    let request =
        format!("POST /old HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n{big}\r\n0\r\n\r\n");
    let res = raw_one(gate.addr, request.as_bytes()).await;
    assert_raw_error(&res, 411, "length_required");
    finish(gate).await;
}

/// `Expect: 100-continue` is the backend's to answer: one that refuses
/// early has its answer reach the client whole, without a 100 first; one
/// that accepts says 100 before the client sends its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_the_backends_to_answer() {
    let up = raw_backend(move |mut s| async move {
        let Some((head, _)) = read_head(&mut s).await else {
            return;
        };
        if head.contains("/reject") {
            let _ = s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 19\r\n\r\nnot with this token")
                .await;
            return;
        }
        assert!(head.to_ascii_lowercase().contains("expect: 100-continue"), "{head}");
        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let mut body = vec![0u8; 10];
        let _ = s.read_exact(&mut body).await;
        let answer = format!("got {}", String::from_utf8_lossy(&body));
        let _ = s
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len()).as_bytes())
            .await;
    })
    .await;
    let gate = gate_to(up).await;

    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"PUT /reject HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_head(&mut s).await.expect("the early refusal");
    assert!(head.starts_with("HTTP/1.1 401"), "a 100 came first: {head}");
    let mut body = body;
    while body.len() < 19 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the refusal was cut");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body, b"not with this token");

    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"PUT /accept HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await.expect("the backend's 100");
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"0123456789").await.unwrap();
    let (head, body) = read_head(&mut s).await.expect("the final answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = body;
    while body.len() < 14 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body, b"got 0123456789");
    finish(gate).await;
}

/// Header counts and sizes are limited like nginx's (by size, with a
/// generous count), and both are configurable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_headers_pass_and_the_limits_are_keys() {
    let many: String = (0..150).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let answer: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok")
            .into_bytes()
            .into_boxed_slice(),
    );
    let up = raw_backend(move |mut s| async move {
        while read_head(&mut s).await.is_some() {
            let _ = s.write_all(answer).await;
        }
    })
    .await;
    let gate = gate_to(up).await;
    let res = raw_one(
        gate.addr,
        format!("GET /many HTTP/1.1\r\nHost: h\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(res.status, 200, "150 request headers");
    assert!(res.header("x-h149").is_some(), "150 response headers");
    finish(gate).await;

    let gate = self::gate(|c| {
        c.upstream.url = format!("http://{up}");
        c.server.max_request_headers = 20;
        c.upstream.max_response_headers = 20;
    })
    .await;
    let res = raw(
        gate.addr,
        format!("GET /many HTTP/1.1\r\nHost: h\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).map(|r| r.status), Some(431));
    let res = raw_one(gate.addr, b"GET /many HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_raw_error(&res, 502, "upstream_unavailable");
    finish(gate).await;
}

/// A backend failure is logged once, where it becomes the answer, with the
/// request id, the address tried and the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failure_is_logged_once_with_its_cause() {
    let down = closed_port();
    let gate = gate_to(down).await;
    let a = send(
        Request::get(gate.url("/down"))
            .header("x-request-id", "trace-down-5a7e")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    a.assert_error(502, "upstream_unavailable");
    let logs = logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("trace-down-5a7e") && !l.contains("wxgate::access"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(&down.to_string()), "the address tried: {}", lines[0]);
    assert!(
        lines[0].to_ascii_lowercase().contains("refused"),
        "the cause: {}",
        lines[0]
    );
    finish(gate).await;
}
