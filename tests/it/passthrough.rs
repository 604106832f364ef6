//! Pass-through proxying: method, path, query, headers and bodies reach the
//! backend unchanged, and its answers come back unchanged.

use crate::common::*;

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
