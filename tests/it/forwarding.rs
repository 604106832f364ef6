//! Per-hop headers: hop-by-hop ones go, `X-Forwarded-*` and `X-Real-IP` say
//! where a request came from (and who may say so).

use crate::common::*;

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

/// `Trailer` is end to end: a backend's trailers reach a client that said
/// `TE: trailers` (and only one that did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_clients_that_accept_them() {
    let gate = gate(|_| {}).await;
    let res = raw(
        gate.addr,
        b"GET /with-trailers HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&res).to_ascii_lowercase();
    assert!(text.contains("trailer: x-sum, x-wx-session"), "{text}");
    assert!(text.contains("0\r\nx-sum: 42\r\n"), "{text}");
    assert!(
        !text.contains("from-a-trailer"),
        "the backend handed out a session in a trailer: {text}"
    );
    assert_eq!(values(&gate.upstream.last().headers, "te"), ["trailers"]);
    let res = raw(
        gate.addr,
        b"GET /with-trailers HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&res).to_ascii_lowercase();
    assert!(!text.contains("x-sum: 42"), "{text}");
    finish(gate).await;
}

/// `OPTIONS *` asks about the server, not a path: it stays `*` whatever the
/// upstream URL's base path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_asterisk_stays_an_asterisk() {
    let upstream = start_upstream().await;
    let gate = gate(|c| c.upstream.url = format!("http://{}/base", upstream.addr.unwrap())).await;
    let res = raw(gate.addr, b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = upstream.last();
    assert_eq!(r.method, Method::OPTIONS);
    assert_eq!(r.uri, "*");
    let res = raw(
        gate.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    assert_eq!(upstream.last().uri, "/base/x");
    finish(gate).await;
}
