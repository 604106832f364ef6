//! Bad input of every kind: answered or closed, never a panic or a hang.

use crate::common::*;

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
