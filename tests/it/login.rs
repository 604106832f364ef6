//! The login route end to end: wxgate in front of the mock upstream, WeChat
//! played by the shipped fake.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use serde_json::json;
use wxgate::config::{HumanDuration, LoginMode};
use wxgate::fake::{Api, FakeWeixin};

fn openid(user: &str) -> String {
    FakeWeixin::openid_for(user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_mode_sends_the_identity_upstream_and_the_token_to_the_client() {
    let mut gate = start(|_| {}).await;
    let a = gate
        .post("/api/login", None, json!({"code": "alice.1", "nickname": "A"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let token = a.session().expect("session header");
    assert_eq!(token.len(), 22);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    // The upstream answered (echo) and got the identity and the original body.
    let r = gate.upstream.last();
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/api/login");
    assert_eq!(header_str(&r, "x-wx-openid"), Some(openid("alice").as_str()));
    assert_eq!(header_str(&r, "x-wx-appid"), Some(APPID));
    assert_eq!(header_str(&r, "x-wx-unionid"), None);
    assert!(r.headers.get("x-wx-session").is_none());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["nickname"], "A");
    assert_eq!(a.json()["uri"], "/api/login", "the client gets the upstream's answer");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_mode_answers_itself_and_never_calls_the_upstream() {
    let mut gate = start(|c| {
        c.login.mode = LoginMode::Respond;
        c.session.ttl = HumanDuration(Duration::from_secs(3600));
    })
    .await;
    let a = gate.post("/api/login", None, json!({"code": "union_bob.1"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["openid"], openid("union_bob"));
    assert_eq!(v["expires_in"], 3600);
    let token = v["session"].as_str().unwrap().to_owned();
    assert_eq!(a.session().as_deref(), Some(token.as_str()));
    assert_eq!(gate.upstream.count(), 0);
    // The session works, with the unionid WeChat gave.
    gate.get("/profile", Some(&token)).await;
    let r = gate.upstream.last();
    assert_eq!(header_str(&r, "x-wx-openid"), Some(openid("union_bob").as_str()));
    assert_eq!(header_str(&r, "x-wx-unionid"), Some("UFAKEunion_bob"));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_may_come_in_the_query_and_the_body_wins() {
    let mut gate = start(|_| {}).await;
    let a = send(
        Request::post(gate.url("/api/login?code=carol.1"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        header_str(&gate.upstream.last(), "x-wx-openid"),
        Some(openid("carol").as_str())
    );
    let a = gate
        .post("/api/login?code=carol.2", None, json!({"code": "dave.1"}))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        header_str(&gate.upstream.last(), "x-wx-openid"),
        Some(openid("dave").as_str())
    );
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 2);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_requests_carry_the_identity_and_bad_tokens_carry_none() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("erin.1").await;
    gate.get("/orders?page=2", Some(&token)).await;
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/orders?page=2");
    assert_eq!(header_str(&r, "x-wx-openid"), Some(openid("erin").as_str()));
    assert_eq!(header_str(&r, "x-wx-appid"), Some(APPID));
    assert!(r.headers.get("x-wx-session").is_none());

    let mut flipped = token.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let unknown = String::from_utf8(flipped).unwrap();
    for bad in [unknown.as_str(), "not-a-token", "", "AAAAAAAAAAAAAAAAAAAAAA"] {
        let a = gate.get("/orders", Some(bad)).await;
        assert_eq!(a.status, 200);
        let r = gate.upstream.last();
        for h in ["x-wx-openid", "x-wx-unionid", "x-wx-appid", "x-wx-session"] {
            assert!(r.headers.get(h).is_none(), "{h} sent for token {bad:?}");
        }
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_carry_no_identity() {
    let mut gate = start(|c| c.session.ttl = HumanDuration(Duration::from_secs(1))).await;
    let token = gate.login("frank.1").await;
    gate.get("/a", Some(&token)).await;
    assert!(gate.upstream.last().headers.contains_key("x-wx-openid"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    gate.get("/b", Some(&token)).await;
    assert!(!gate.upstream.last().headers.contains_key("x-wx-openid"));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weixin_errors_map_to_documented_answers_and_never_reach_the_upstream() {
    let mut gate = start(|c| c.weixin.timeout = HumanDuration(Duration::from_millis(700))).await;
    for (code, status, error) in [
        ("fail:40029", 401, "invalid_code"),
        ("fail:40163", 401, "invalid_code"),
        ("fail:40226", 403, "user_blocked"),
        ("fail:45011", 429, "rate_limited"),
        ("busy:2:gina.1", 503, "weixin_busy"),
        ("fail:40013", 502, "weixin_config"),
        ("fail:40125", 502, "weixin_config"),
        ("fail:99999", 502, "weixin_error"),
        ("garbage", 502, "weixin_error"),
        ("http:500", 502, "weixin_error"),
        ("slow:3000:hank.1", 504, "weixin_timeout"),
    ] {
        let a = gate.post("/api/login", None, json!({ "code": code })).await;
        a.assert_error(status, error);
        assert!(a.session().is_none());
    }
    assert_eq!(gate.upstream.count(), 0, "a failed login is never forwarded");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_answer_is_retried_once_with_the_same_code() {
    let mut gate = start(|_| {}).await;
    let a = gate.post("/api/login", None, json!({"code": "busy:1:ivan.1"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 2);
    let a = gate.post("/api/login", None, json!({"code": "busy:2:ivan.2"})).await;
    a.assert_error(503, "weixin_busy");
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 4, "one retry, not more");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_configuration_error() {
    let mut gate = start(|c| c.weixin.secret = wxgate::config::Secret::new("wrong")).await;
    gate.post("/api/login", None, json!({"code": "jane.1"}))
        .await
        .assert_error(502, "weixin_config");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_weixin_is_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut gate = start(|c| c.weixin.api_base = format!("http://{closed}")).await;
    gate.post("/api/login", None, json!({"code": "kim.1"}))
        .await
        .assert_error(503, "weixin_unavailable");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_login_requests_are_refused_before_weixin() {
    let mut gate = start(|c| c.server.max_body_bytes = 256).await;
    for body in [
        json!({}),
        json!({"code": ""}),
        json!({"code": "a b"}),
        json!({"code": 5}),
        json!({"code": "x".repeat(129)}),
    ] {
        gate.post("/api/login", None, body)
            .await
            .assert_error(400, "invalid_request");
    }
    let a = send(
        Request::post(gate.url("/api/login"))
            .body(Full::new(Bytes::from_static(b"{nope")))
            .unwrap(),
    )
    .await;
    a.assert_error(400, "invalid_request");
    let big = json!({"code": "x", "pad": "y".repeat(300)});
    gate.post("/api/login", None, big)
        .await
        .assert_error(413, "body_too_large");
    let a = gate.get("/api/login", None).await;
    a.assert_error(405, "method_not_allowed");
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 0);
    assert_eq!(gate.upstream.count(), 0);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_login_gets_the_same_session_with_one_weixin_call() {
    let mut gate = start(|_| {}).await;
    let first = gate.login("lily.1").await;
    let again = gate.login("lily.1").await;
    assert_eq!(first, again);
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 1);
    // Forward mode: each retry still reaches the upstream, with the same identity.
    let got = gate.upstream.received();
    assert_eq!(got.len(), 2);
    assert_eq!(header_str(&got[0], "x-wx-openid"), header_str(&got[1], "x-wx-openid"));

    // Concurrent identical logins coalesce into one exchange.
    let tokens = futures_util::future::join_all((0..20).map(|_| gate.login("lily.2"))).await;
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_ne!(tokens[0], first);
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 2);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_logins_use_pooled_connections() {
    let mut gate = start(|c| c.weixin.max_connections = 8).await;
    let logins = (0..200).map(|i| {
        let gate = &gate;
        async move { gate.login(&format!("user{i}.1")).await }
    });
    let tokens = futures_util::future::join_all(logins).await;
    let distinct: HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), 200);
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 200);
    // Two workers, each at most 8 calls at once, over pooled connections. A
    // connection goes back to the pool a moment after its answer was read, so
    // a few more than 16 may open; without pooling it would be 200.
    assert!(
        gate.fake.connections() <= 40,
        "{} connections to WeChat",
        gate.fake.connections()
    );
    // Each token names its own user.
    gate.get("/who", Some(&tokens[123])).await;
    assert_eq!(
        header_str(&gate.upstream.last(), "x-wx-openid"),
        Some(openid("user123").as_str())
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_key_and_token_never_leave_wxgate() {
    let mut gate = start(|_| {}).await;
    let mut secrets = vec![SECRET.to_owned()];
    let mut tokens = Vec::new();
    for (i, mode_user) in ["mia", "union_ned"].iter().enumerate() {
        let a = gate
            .post("/api/login", None, json!({"code": format!("{mode_user}.{i}")}))
            .await;
        assert_eq!(a.status, 200);
        let key = gate.fake.session_key(mode_user).unwrap();
        secrets.push(key.to_base64());
        assert!(!a.text().contains(&key.to_base64()));
        assert!(!format!("{:?}", a.headers).contains(&key.to_base64()));
        let token = a.session().unwrap();
        gate.get("/x?y=1", Some(&token)).await;
        tokens.push(token);
    }
    let upstream_seen: String = gate
        .upstream
        .received()
        .iter()
        .map(|r| format!("{} {:?} {}", r.uri, r.headers, String::from_utf8_lossy(&r.body)))
        .collect();
    let logs = logs();
    assert!(logs.contains("login"), "the log capture works: {logs}");
    for s in &secrets {
        assert!(!upstream_seen.contains(s.as_str()), "a secret reached the upstream");
        assert!(!logs.contains(s.as_str()), "a secret reached the logs");
    }
    for t in &tokens {
        assert!(!upstream_seen.contains(t.as_str()), "a token reached the upstream");
        assert!(!logs.contains(t.as_str()), "a token reached the logs");
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_metrics_are_exported() {
    let mut gate = start(|_| {}).await;
    gate.login("olga.1").await;
    gate.login("olga.1").await;
    gate.post("/api/login", None, json!({"code": "fail:40029"})).await;
    let ok = eventually(async || {
        let m = gate.admin_get("/metrics").await.text();
        m.contains(r#"wxgate_weixin_calls_total{api="jscode2session",app="default",outcome="ok"}"#)
            && m.contains(r#"wxgate_weixin_calls_total{api="jscode2session",app="default",outcome="40029"}"#)
            && m.contains("wxgate_weixin_call_duration_seconds_bucket")
            && m.contains("wxgate_login_code_cache_hits_total")
            && !m.contains(r#"wxgate_login_code_cache_hits_total{app="default"} 0"#)
            && m.contains(r#"wxgate_logins_total{app="default",outcome="ok"} 2"#)
            && m.contains("wxgate_sessions ")
            && !m.contains("wxgate_sessions 0")
            && m.contains(r#"wxgate_requests_total{route="login",status="200"}"#)
    })
    .await;
    assert!(ok, "{}", gate.admin_get("/metrics").await.text());
    gate.stop().await;
}
