//! The trust boundary, attack by attack: each test replays one of the
//! adversarial review's attacks (issue 10) as the attacker did it, against a
//! backend that misbehaves as the real ones did, and checks it fails.

use std::sync::{Arc, Mutex};

use crate::common::*;

/// What a raw backend saw: each request head, and the bytes after the last.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

const WEBSOCKET_HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

// ---------------------------------------------------------------------------
// 1. No tunnel but WebSocket
// ---------------------------------------------------------------------------

/// The 2020 h2c smuggling attack: the backend would upgrade to h2c if asked,
/// and the client would then speak HTTP/2 to it past wxgate. wxgate removes
/// the upgrade: the backend never hears of it and answers a plain request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_smuggling_gets_a_plain_request() {
    let seen = Seen::default();
    let heads = seen.clone();
    let up = raw_backend(move |mut s| {
        let heads = heads.clone();
        async move {
            while let Some((head, _)) = read_head(&mut s).await {
                heads.push(head.clone());
                if head.to_ascii_lowercase().contains("upgrade: h2c") {
                    let _ = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                        .await;
                    let _ = read_rest(&mut s).await;
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain").await;
            }
        }
    })
    .await;
    let gate = gate_to(up).await;
    for request in [
        &b"GET /smuggle HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"[..],
        // HTTP2-Settings is not even needed.
        b"GET /smuggle HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        // Nor is any particular token.
        b"GET /smuggle HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: something-else/1\r\n\r\n",
    ] {
        let res = raw_one(gate.addr, request).await;
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        assert_eq!(res.body, b"plain");
    }
    let heads = seen.all();
    assert_eq!(heads.len(), 3);
    for head in heads {
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("upgrade") && !lower.contains("http2-settings"),
            "{head}"
        );
    }
    finish(gate).await;
}

/// WebSocket smuggling, variant 2: a backend path that answers a bare `101`
/// (or a 101 for something else, or with a wrong accept key) must not open a
/// tunnel: 502 `upstream_protocol`, and the backend connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_is_not_a_websocket_accept_opens_no_tunnel() {
    for answer in [
        &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: d3JvbmcgYWNjZXB0IGtleQ==\r\n\r\n",
    ] {
        let closed = Arc::new(AtomicUsize::new(0));
        let count = closed.clone();
        let up = raw_backend(move |mut s| {
            let count = count.clone();
            async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s.write_all(answer).await;
                let _ = s.write_all(b"raw bytes past the proxy").await;
                // wxgate must hang up on this connection.
                let _ = read_rest(&mut s).await;
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
        let gate = gate_to(up).await;
        for request in [WEBSOCKET_HANDSHAKE, b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"] {
            let res = raw_one(gate.addr, request).await;
            assert_raw_error(&res, 502, "upstream_protocol");
        }
        assert!(
            eventually(async || closed.load(Ordering::SeqCst) == 2).await,
            "the backend connections were not closed"
        );
        finish(gate).await;
    }
}

// ---------------------------------------------------------------------------
// 2, 3. Header look-alikes and the whole WeChat family
// ---------------------------------------------------------------------------

/// What a CGI-style backend would read as `HTTP_X_WX_...`, and Cloud
/// Hosting's own headers: none may come from a client, in any spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alikes_and_the_cloud_hosting_family_never_pass() {
    let gate = gate(|_| {}).await;
    let token = gate.login("mallory.1").await;
    let forged = [
        "x.wx.openid",
        "x+wx+openid",
        "x~wx~phone~number",
        "X-WX-FROM-OPENID",
        "X-WX-FROM-APPID",
        "x_wx_from_unionid",
        "X-WX-SOURCE",
        "X-WX-ENV",
        "X-WX-CLOUDBASE-ACCESS-TOKEN",
        "X-WX-FROM-CLOUDBASE-ACCESS-TOKEN",
        "X-Original-Forwarded-For",
        "x_original.forwarded+for",
        "x-wx-a-name-nobody-has-used-yet",
        // Spellings of the client-address headers wxgate sets itself.
        "x.real.ip",
        "x_forwarded_for",
        "X-Forwarded_Host",
        "x-forwarded-proto_",
        "forwarded_",
    ];
    for session in [None, Some(token.as_str())] {
        let mut request = String::from("GET /family HTTP/1.1\r\nHost: h\r\n");
        for name in forged {
            request.push_str(&format!("{name}: forged\r\n"));
        }
        if let Some(t) = session {
            request.push_str(&format!("x-wx-session: {t}\r\n"));
        }
        request.push_str("x-ordinary: kept\r\n\r\n");
        let res = raw_one(gate.addr, request.as_bytes()).await;
        assert_eq!(res.status, 200);
        let r = gate.upstream.last();
        let fold = |n: &str| -> String {
            n.bytes()
                .filter(u8::is_ascii_alphanumeric)
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect()
        };
        for (name, value) in &r.headers {
            let folded = fold(name.as_str());
            assert!(
                !(folded.starts_with("xwx") || folded == "xoriginalforwardedfor") || value != "forged",
                "{name} came from the client"
            );
            assert_ne!(value, "forged", "{name} came from the client");
        }
        assert_eq!(values(&r.headers, "x-real-ip"), ["127.0.0.1"]);
        assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(values(&r.headers, "x-ordinary"), ["kept"]);
        match session {
            None => assert!(
                r.headers.keys().all(|n| !fold(n.as_str()).starts_with("xwx")),
                "{:?}",
                r.headers
            ),
            Some(_) => assert_eq!(values(&r.headers, "x-wx-openid"), [FakeWeixin::openid_for("mallory")]),
        }
    }
    let metrics = gate.admin_get("/metrics").await.text();
    assert!(
        eventually(async || {
            let text = gate.admin_get("/metrics").await.text();
            metric_value(&text, "wxgate_spoofed_headers_removed_total").is_some_and(|n| n >= 26.0)
        })
        .await,
        "{metrics}"
    );
    finish(gate).await;
}

/// wxgate alone hands out session tokens: a backend's copy is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_cannot_set_the_session_header() {
    let gate = gate(|_| {}).await;
    let a = gate.get("/set-session", None).await;
    assert_eq!(a.status, 200);
    assert!(a.headers.get("x-wx-session").is_none(), "{:?}", a.headers);
    assert!(a.headers.get("x_wx_session").is_none(), "{:?}", a.headers);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 4. Login-code replay
// ---------------------------------------------------------------------------

/// The backend (and its logs) never see the login code, so they cannot
/// replay it for the victim's session; a retry answered from the cache is
/// logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_code_never_reaches_the_backend() {
    let gate = gate(|_| {}).await;
    let a = gate
        .post(
            "/api/login?code=ignored.9&keep=1",
            None,
            json!({"code": "victim.1", "nick": "v"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/api/login?keep=1");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, json!({"nick": "v"}));
    assert!(!format!("{:?}", r.headers).contains("victim.1"));

    // A form body and a query code alike.
    let res = raw_one(
        gate.addr,
        b"POST /api/login HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 24\r\n\r\ncode=victim.2&lang=zh_CN",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(gate.upstream.last().body, "lang=zh_CN");
    let a = gate.post("/api/login?code=victim.3", None, json!({})).await;
    assert_eq!(a.status, 200);
    assert_eq!(gate.upstream.last().uri, "/api/login");

    // A retry gets the same session, from the cache: logged and counted.
    let first = a.session().unwrap();
    let again = gate.post("/api/login?code=victim.3", None, json!({})).await;
    assert_eq!(again.session().unwrap(), first);
    assert!(logs().contains("retried login answered from the code cache"));
    assert!(
        eventually(async || {
            let text = gate.admin_get("/metrics").await.text();
            metric_value(&text, r#"wxgate_login_code_cache_hits_total{app="default"}"#).is_some_and(|n| n >= 1.0)
        })
        .await
    );
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 5. Route spellings
// ---------------------------------------------------------------------------

/// A spelling of a wxgate route that a backend framework would route to its
/// own handler is refused; it never reaches the backend unprocessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_the_routes_never_reach_the_backend() {
    let gate = gate(|_| {}).await;
    let token = gate.login("spell.1").await;
    let before = gate.upstream.count();
    for path in [
        "/api/%70hone",
        "/api/phon%65",
        "/api%2fphone",
        "/api/phone/",
        "/API/phone",
        "/api/phone;x",
        "/api//phone",
        "/api/./phone",
        "/api/x/../phone",
        "/api/%2570hone",
        "/API/LOGIN",
        "/api/login/",
        "/api/logout;jsessionid=1",
        // Suffixes: Rails' `(.:format)`, Spring's suffix matching.
        "/api/phone.json",
        "/api/phone.",
        "/api/phone%20",
        "/api/phone%00",
        "/api/login.xml",
    ] {
        let body = r#"{"encryptedData":"x","iv":"y","code":"phone:13800000000"}"#;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: h\r\nx-wx-session: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let res = raw_one(gate.addr, request.as_bytes()).await;
        assert_raw_error(&res, 400, "non_canonical_path");
    }
    assert_eq!(gate.upstream.count(), before, "a spelling reached the backend");
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 6. Resource limits
// ---------------------------------------------------------------------------

/// Many requests at once open at most `upstream.max_connections` backend
/// connections per worker; the rest wait, and give up with 503 after
/// `upstream.queue_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_capped_and_waiters_give_up() {
    let gate = gate(|c| {
        c.server.workers = 1;
        c.upstream.max_connections = 2;
        c.upstream.queue_timeout = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let all = futures_util::future::join_all((0..5).map(|_| gate.get("/slow?ms=1500", None))).await;
    let ok = all.iter().filter(|a| a.status == 200).count();
    let busy: Vec<_> = all.iter().filter(|a| a.status == 503).collect();
    assert_eq!(ok, 2, "{:?}", all.iter().map(|a| a.status).collect::<Vec<_>>());
    assert_eq!(busy.len(), 3);
    for a in busy {
        a.assert_error(503, "upstream_busy");
        assert!(a.headers.contains_key(header::RETRY_AFTER));
    }
    assert_eq!(gate.upstream.connections(), 2);
    finish(gate).await;

    // With time to wait, everyone is served on the same two connections.
    let gate = self::gate(|c| {
        c.server.workers = 1;
        c.upstream.max_connections = 2;
    })
    .await;
    let all = futures_util::future::join_all((0..6).map(|_| gate.get("/slow?ms=200", None))).await;
    assert!(all.iter().all(|a| a.status == 200));
    assert_eq!(gate.upstream.connections(), 2);
    assert_eq!(gate.upstream.slow_max(), 2);
    finish(gate).await;
}

/// At `server.max_connections`, the longest-idle keep-alive connection is
/// closed to make room; with none idle, a new connection is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_are_capped_and_idle_ones_make_room() {
    let gate = gate(|c| {
        c.server.workers = 1;
        c.server.max_connections = 2;
    })
    .await;
    let hello = b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut a = TcpStream::connect(gate.addr).await.unwrap();
    a.write_all(hello).await.unwrap();
    assert_next_answer_is_200(&mut a, "a").await;
    let mut b = TcpStream::connect(gate.addr).await.unwrap();
    b.write_all(hello).await.unwrap();
    assert_next_answer_is_200(&mut b, "b").await;
    // A third: the idle ones are closed to make room, and it is served.
    let mut c = TcpStream::connect(gate.addr).await.unwrap();
    c.write_all(hello).await.unwrap();
    assert_next_answer_is_200(&mut c, "c").await;
    assert!(read_rest(&mut a).await.is_empty(), "a was closed, cleanly");

    // Two busy connections, and a third has no room.
    let busy = |addr: SocketAddr| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        s
    };
    drop((b, c));
    let _x = busy(gate.addr).await;
    let _y = busy(gate.addr).await;
    assert!(eventually(async || gate.upstream.slow_max() >= 2).await);
    let mut refused = TcpStream::connect(gate.addr).await.unwrap();
    let _ = refused.write_all(hello).await;
    assert!(read_rest(&mut refused).await.is_empty(), "refused without an answer");
    assert!(
        eventually(async || {
            let text = gate.admin_get("/metrics").await.text();
            metric_value(&text, "wxgate_connections_refused_total").is_some_and(|n| n >= 1.0)
        })
        .await
    );
    finish(gate).await;
}

/// A client that stops reading a large answer is cut after
/// `server.send_timeout`, which also ends the backend's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let gate = gate(|c| c.server.send_timeout = HumanDuration(Duration::from_secs(1))).await;
    let total: u64 = 1 << 30;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(format!("GET /download?bytes={total} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing for a while: buffers fill, wxgate holds a frame it cannot send.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was never cut");
    assert!(got < total / 4, "{got} bytes: it was not cut");
    finish(gate).await;
}

/// The open-files limit is raised to the hard limit at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised() {
    let gate = gate(|_| {}).await;
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    assert_eq!(soft, hard);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 7. Backend desync guard
// ---------------------------------------------------------------------------

/// A backend that answers before reading the body (CL.0) would parse the
/// rest of the body as a new request, with headers of the client's choosing.
/// Once it has answered, no more of the body goes to it, and its connection
/// is closed, not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_body_goes_to_a_backend_that_answered_early() {
    let seen = Seen::default();
    let rest = seen.clone();
    let up = raw_backend(move |mut s| {
        let rest = rest.clone();
        async move {
            let Some((head, after)) = read_head(&mut s).await else {
                return;
            };
            rest.push(head);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly").await;
            let mut more = after;
            more.extend(read_rest(&mut s).await);
            rest.push(String::from_utf8_lossy(&more).into_owned());
        }
    })
    .await;
    let gate = gate_to(up).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: h\r\nX-Wx-Openid: admin\r\n\r\n";
    let body = format!("{smuggled}{}", "x".repeat(200 - smuggled.len()));
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 200\r\n\r\n")
        .await
        .unwrap();
    let (head, body_start) = read_head(&mut s).await.expect("the early answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body_start.starts_with(b"early") || body_start.is_empty());
    // The rest of the body, with the smuggled request, comes after the answer.
    let _ = s.write_all(body.as_bytes()).await;
    let _ = read_rest(&mut s).await;
    assert!(
        eventually(async || seen.all().len() == 2).await,
        "the backend connection was not closed"
    );
    let after_answer = &seen.all()[1];
    assert!(!after_answer.contains("smuggled"), "the backend got {after_answer:?}");
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 8. Host
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_hold() {
    let gate = gate(|_| {}).await;
    // Two Host headers: which one would the backend believe?
    let res = raw_one(
        gate.addr,
        b"GET /h HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    assert_raw_error(&res, 400, "invalid_request");
    // HTTP/1.1 without Host, also with an absolute-form target.
    let res = raw_one(gate.addr, b"GET /h HTTP/1.1\r\n\r\n").await;
    assert_raw_error(&res, 400, "invalid_request");
    let res = raw_one(gate.addr, b"GET http://evil.example/h HTTP/1.1\r\n\r\n").await;
    assert_raw_error(&res, 400, "invalid_request");
    // An absolute-form target's authority wins over Host (RFC 9112 3.2.2).
    let res = raw_one(
        gate.addr,
        b"GET http://mp.example/abs HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "host"), ["mp.example"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), ["mp.example"]);
    // User information in the target's authority.
    let res = raw_one(
        gate.addr,
        b"GET http://evil@mp.example/h HTTP/1.1\r\nHost: mp.example\r\n\r\n",
    )
    .await;
    assert_raw_error(&res, 400, "invalid_request");
    // Connection cannot name Host, so X-Forwarded-Host is always the Host forwarded.
    let res = raw_one(
        gate.addr,
        b"GET /h HTTP/1.1\r\nHost: mp.example\r\nConnection: host\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "host"), ["mp.example"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), ["mp.example"]);
    // HTTP/1.0 without Host: the client's X-Forwarded-Host is not kept.
    let res = raw(gate.addr, b"GET /h HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n").await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert!(values(&r.headers, "x-forwarded-host").is_empty(), "{:?}", r.headers);
    assert_eq!(values(&r.headers, "host"), [gate.upstream.addr.unwrap().to_string()]);
    assert_no_wxgate_panic();
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 10. Forced token refresh
// ---------------------------------------------------------------------------

/// Nine phone requests that each meet a rejected token cause one forced
/// refresh, and only because WeChat handed the rejected token back; another
/// within 30 s is not forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_forced_once_and_not_again_within_30_s() {
    let gate = gate(|_| {}).await;
    let token = gate.login("tok.1").await;
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800000000.0"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    gate.fake.revoke_access_tokens();
    for i in 1..=9 {
        let a = gate
            .post(
                "/api/phone",
                Some(&token),
                json!({"code": format!("phone:13800000000.{i}")}),
            )
            .await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
    }
    assert_eq!(gate.fake.forced_refreshes(), 1);
    gate.fake.revoke_access_tokens();
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800000000.10"}))
        .await;
    a.assert_error(502, "weixin_error");
    assert_eq!(gate.fake.forced_refreshes(), 1, "forced twice within 30 s");
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 11. Floods
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_per_address_and_phone_requests_per_session_are_limited() {
    let gate = gate(|c| {
        c.limits.login_per_address = 2;
        c.limits.phone_per_session = 1;
    })
    .await;
    let token = gate.login("flood.1").await;
    gate.login("flood.2").await;
    let a = gate.post("/api/login", None, json!({"code": "flood.3"})).await;
    a.assert_error(429, "rate_limited");
    let retry: u64 = a.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800000000.1"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800000000.2"}))
        .await;
    a.assert_error(429, "rate_limited");
    assert_eq!(
        gate.fake.calls(Api::GetUserPhoneNumber),
        1,
        "the refused one cost nothing"
    );
    finish(gate).await;
}

/// A code WeChat refused is remembered as refused: the same bad code again
/// costs no WeChat call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_code_costs_one_weixin_call() {
    let gate = gate(|_| {}).await;
    for _ in 0..3 {
        let a = gate.post("/api/login", None, json!({"code": "fail:40029"})).await;
        a.assert_error(401, "invalid_code");
    }
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 1);
    // A busy WeChat is not remembered: the next try calls again.
    for _ in 0..2 {
        let a = gate.post("/api/login", None, json!({"code": "fail:-1"})).await;
        a.assert_error(503, "weixin_busy");
    }
    assert!(gate.fake.calls(Api::Jscode2Session) >= 3);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// 12. Freshness
// ---------------------------------------------------------------------------

/// Data watermarked long ago (2001 in the review) is refused by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_phone_data_is_refused_by_default() {
    let gate = gate(|_| {}).await;
    let token = gate.login("stale.1").await;
    let minted = gate
        .fake
        .mint_phone(&MintRequest {
            user: "stale".into(),
            phone_number: "13800138000".into(),
            pure_phone_number: "13800138000".into(),
            country_code: "86".into(),
            appid: None,
            watermark_appid: None,
            timestamp: Some(1_000_000_000),
        })
        .unwrap();
    let a = gate
        .post(
            "/api/phone",
            Some(&token),
            json!({"encryptedData": minted.encrypted_data, "iv": minted.iv}),
        )
        .await;
    a.assert_error(403, "watermark_expired");
    finish(gate).await;
}
