//! Ending sessions and guarding paths: the logout route, the admin's
//! revocation of a user, and `[access]`'s protected paths.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_forwards_with_the_identity_then_the_token_is_dead() {
    let gate = gate(|_| {}).await;
    let token = gate.login("leaving.1").await;
    let a = gate.post("/api/logout", Some(&token), json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/api/logout");
    assert_eq!(values(&r.headers, "x-wx-openid"), [FakeWeixin::openid_for("leaving")]);
    assert!(r.headers.get("x-wx-session").is_none());
    // The token identifies nobody any more.
    gate.get("/after", Some(&token)).await;
    assert!(gate.upstream.last().headers.get("x-wx-openid").is_none());
    let a = gate.post("/api/phone", Some(&token), json!({"code": "phone:1"})).await;
    a.assert_error(401, "session_required");
    // Logging out again, or without a session, is a no-op answered here.
    let before = gate.upstream.count();
    for session in [Some(token.as_str()), None] {
        let a = gate.post("/api/logout", session, json!({})).await;
        assert_eq!(a.status, 204);
    }
    assert_eq!(gate.upstream.count(), before);
    let a = gate.get("/api/logout", Some(&token)).await;
    a.assert_error(405, "method_not_allowed");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_in_respond_mode_answers_204_itself() {
    let gate = gate(|c| c.login.mode = wxgate::config::LoginMode::Respond).await;
    let token = gate.login("leaving.2").await;
    let a = gate.post("/api/logout", Some(&token), json!({})).await;
    assert_eq!(a.status, 204);
    assert_eq!(gate.upstream.count(), 0);
    gate.get("/after", Some(&token)).await;
    assert!(gate.upstream.last().headers.get("x-wx-openid").is_none());
    finish(gate).await;
}

/// The admin ends every session of a user at once (an account ban, a
/// leaked key), on the admin port only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_revokes_every_session_of_a_user() {
    let gate = gate(|_| {}).await;
    let (a1, a2) = (gate.login("banned.1").await, gate.login("banned.2").await);
    let other = gate.login("innocent.1").await;
    let openid = FakeWeixin::openid_for("banned");
    let url = format!("http://{}/sessions?openid={openid}", gate.admin);
    let a = send(Request::delete(&url).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["revoked"], 2);
    for token in [&a1, &a2] {
        gate.get("/after", Some(token)).await;
        assert!(gate.upstream.last().headers.get("x-wx-openid").is_none());
    }
    gate.get("/after", Some(&other)).await;
    assert_eq!(
        values(&gate.upstream.last().headers, "x-wx-openid"),
        [FakeWeixin::openid_for("innocent")]
    );
    // Not on the public port, and not without an openid.
    let a = send(
        Request::delete(gate.url(&format!("/sessions?openid={openid}")))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_ne!(a.json().get("revoked"), Some(&json!(0)));
    let a = send(
        Request::delete(format!("http://{}/sessions", gate.admin))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    a.assert_error(400, "invalid_request");
    finish(gate).await;
}

/// `[access]`: protected paths, in every spelling, need a session (and a
/// remembered phone number) before the backend sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_paths_need_a_session_and_a_phone() {
    let gate = gate(|c| {
        c.access.require_session = vec!["/api/orders".into()];
        c.access.require_phone = vec!["/api/checkout/".into()];
        c.phone.remember = true;
    })
    .await;
    for path in [
        "/api/orders",
        "/api/orders/7",
        "/API/orders",
        "/api/%6frders",
        "/api//orders/",
        // Dot segments: a backend that does not resolve them (Express,
        // prefix checks) still routes these under /api/orders.
        "/api/orders/../../x",
        "/api/orders/%2e%2e/%2e%2e/x",
        "/api/orders/7%2f..%2f..%2f..%2fx",
        "/api/orders/..;/..;/x",
        // Suffixes: Rails' `(.:format)`.
        "/api/orders.json",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        let res = raw_one(gate.addr, request.as_bytes()).await;
        assert_raw_error(&res, 401, "session_required");
    }
    assert_eq!(
        gate.upstream.count(),
        0,
        "an anonymous request reached a protected path"
    );
    let a = gate.get("/api/ordersx", None).await;
    assert_eq!(a.status, 200, "unprotected paths are unchanged");
    let token = gate.login("shopper.1").await;
    assert_eq!(gate.get("/api/orders/7", Some(&token)).await.status, 200);
    let a = gate.get("/api/checkout/pay", Some(&token)).await;
    a.assert_error(403, "phone_required");
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800138000.1"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = gate.get("/api/checkout/pay", Some(&token)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        values(&gate.upstream.last().headers, "x-wx-phone-number"),
        ["13800138000"]
    );
    finish(gate).await;
}
