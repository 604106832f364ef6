//! The phone route end to end: both flows against the shipped fake WeChat.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use wxgate::config::{ForwardBody, HumanDuration};
use wxgate::fake::{Api, FakeWeixin, MintRequest, Minted};
use wxgate::weixin::crypto;

fn mint(fake: &FakeWeixin, user: &str, phone: &str) -> Minted {
    fake.mint_phone(&MintRequest {
        user: user.into(),
        phone_number: phone.into(),
        pure_phone_number: phone.trim_start_matches("+86").into(),
        country_code: "86".into(),
        appid: None,
        watermark_appid: None,
        timestamp: None,
    })
    .unwrap()
}

fn encrypted(m: &Minted) -> Value {
    json!({"encryptedData": m.encrypted_data, "iv": m.iv})
}

fn phone_headers(r: &Received) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        header_str(r, "x-wx-phone-number"),
        header_str(r, "x-wx-pure-phone-number"),
        header_str(r, "x-wx-country-code"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_data_becomes_phone_headers() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("alice.1").await;
    let m = mint(&gate.fake, "alice", "13580006666");
    let mut body = encrypted(&m);
    body["extra"] = json!("kept");
    let a = gate.post("/api/phone", Some(&token), body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/api/phone");
    assert_eq!(
        phone_headers(&r),
        (Some("13580006666"), Some("13580006666"), Some("86"))
    );
    assert_eq!(
        header_str(&r, "x-wx-openid"),
        Some(FakeWeixin::openid_for("alice").as_str())
    );
    assert!(r.headers.get("x-wx-session").is_none());
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        body,
        "the body is forwarded as sent"
    );
    assert_eq!(
        gate.fake.calls(Api::GetUserPhoneNumber),
        0,
        "decryption calls no WeChat API"
    );
    // Masked in the logs, never in clear.
    let logs = logs();
    assert!(logs.contains("135****6666"), "{logs}");
    assert!(!logs.contains("13580006666"));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_code_flow_accepts_number_and_string_country_codes() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("bob.1").await;
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800138000"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        phone_headers(&gate.upstream.last()),
        (Some("13800138000"), Some("13800138000"), Some("86"))
    );
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phonestr:2025550123:1"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        phone_headers(&gate.upstream.last()),
        (Some("+12025550123"), Some("2025550123"), Some("1"))
    );
    assert_eq!(gate.fake.calls(Api::GetUserPhoneNumber), 2);
    assert_eq!(gate.fake.calls(Api::StableToken), 1, "the access token is cached");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_decryption_goes_first_and_the_code_is_the_fallback() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("carl.1").await;
    let m = mint(&gate.fake, "carl", "13900000001");
    let mut body = encrypted(&m);
    body["code"] = json!("phone:13900000002");
    let a = gate.post("/api/phone", Some(&token), body).await;
    assert_eq!(a.status, 200);
    assert_eq!(phone_headers(&gate.upstream.last()).0, Some("13900000001"));
    assert_eq!(gate.fake.calls(Api::GetUserPhoneNumber), 0, "nothing billed");

    // Data under another key: the code is used instead.
    gate.login("dora.1").await;
    let other = mint(&gate.fake, "dora", "13900000009");
    let mut body = encrypted(&other);
    body["code"] = json!("phone:13900000003");
    let a = gate.post("/api/phone", Some(&token), body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(phone_headers(&gate.upstream.last()).0, Some("13900000003"));
    assert_eq!(gate.fake.calls(Api::GetUserPhoneNumber), 1);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_reach_the_upstream() {
    let mut gate = start(|c| c.server.max_body_bytes = 2048).await;
    let token = gate.login("eve.1").await;
    gate.login("finn.1").await;
    let before = gate.upstream.count();
    let good = mint(&gate.fake, "eve", "13580006666");

    // Another mini program's watermark.
    let foreign = gate
        .fake
        .mint_phone(&MintRequest {
            user: "eve".into(),
            phone_number: "13580006666".into(),
            pure_phone_number: "13580006666".into(),
            country_code: "86".into(),
            appid: Some("wx0000000000other".into()),
            watermark_appid: None,
            timestamp: None,
        })
        .unwrap();
    gate.post("/api/phone", Some(&token), encrypted(&foreign))
        .await
        .assert_error(403, "watermark_mismatch");
    // Another user's key.
    let finn = mint(&gate.fake, "finn", "13580006666");
    gate.post("/api/phone", Some(&token), encrypted(&finn))
        .await
        .assert_error(401, "decrypt_failed");
    // Malformed inputs.
    let cases = [
        json!({"encryptedData": "***not base64***", "iv": good.iv}),
        json!({"encryptedData": good.encrypted_data, "iv": "AAAAAAAAAAAAAAAA"}),
        json!({"encryptedData": &good.encrypted_data[..good.encrypted_data.len() - 8], "iv": good.iv}),
        json!({"encryptedData": good.encrypted_data}),
        json!({"iv": good.iv}),
        json!({"encryptedData": 12, "iv": good.iv}),
        json!({"code": ["x"]}),
        json!({}),
        json!([1, 2]),
    ];
    for body in cases {
        gate.post("/api/phone", Some(&token), body.clone())
            .await
            .assert_error(400, "invalid_request");
    }
    let big = json!({"encryptedData": "A".repeat(4096), "iv": good.iv});
    gate.post("/api/phone", Some(&token), big)
        .await
        .assert_error(413, "body_too_large");
    // No session, an unknown one, the wrong method.
    gate.post("/api/phone", None, encrypted(&good))
        .await
        .assert_error(401, "session_required");
    gate.post("/api/phone", Some("AAAAAAAAAAAAAAAAAAAAAA"), encrypted(&good))
        .await
        .assert_error(401, "session_required");
    gate.get("/api/phone", Some(&token))
        .await
        .assert_error(405, "method_not_allowed");
    // WeChat refusing the code, or sending something that is not a number.
    gate.post("/api/phone", Some(&token), json!({"code": "fail:40029"}))
        .await
        .assert_error(401, "invalid_code");
    gate.post("/api/phone", Some(&token), json!({"code": "fail:45011"}))
        .await
        .assert_error(429, "rate_limited");
    gate.post("/api/phone", Some(&token), json!({"code": "fail:-1"}))
        .await
        .assert_error(503, "weixin_busy");
    gate.post("/api/phone", Some(&token), json!({"code": "badphone:12a45"}))
        .await
        .assert_error(502, "weixin_error");
    gate.post("/api/phone", Some(&token), json!({"code": "garbage"}))
        .await
        .assert_error(502, "weixin_error");
    assert_eq!(gate.upstream.count(), before, "no refused request reached the upstream");
    // The good one still works.
    assert_eq!(
        gate.post("/api/phone", Some(&token), encrypted(&good)).await.status,
        200
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_under_the_previous_key_decrypts_after_a_relogin() {
    let mut gate = start(|_| {}).await;
    let first = gate.login("gus.1").await;
    // The button's data was encrypted under the first key...
    let m = mint(&gate.fake, "gus", "13700000000");
    // ...then wx.login ran again during the callback and WeChat changed the key.
    let second = gate.login("gus.2").await;
    assert_ne!(first, second);
    let a = gate.post("/api/phone", Some(&second), encrypted(&m)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(phone_headers(&gate.upstream.last()).0, Some("13700000000"));
    // Data under the new key works too, and the old session still decrypts its own.
    let m2 = mint(&gate.fake, "gus", "13700000001");
    assert_eq!(gate.post("/api/phone", Some(&second), encrypted(&m2)).await.status, 200);
    assert_eq!(gate.post("/api/phone", Some(&first), encrypted(&m)).await.status, 200);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_key_of_a_carried_session_is_kept_even_after_the_index_expired() {
    let mut gate = start(|c| c.session.previous_key_ttl = HumanDuration(Duration::from_secs(1))).await;
    let first = gate.login("hal.1").await;
    let m = mint(&gate.fake, "hal", "13700000002");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The re-login carries the old session header, so its key is recorded again.
    let a = gate.post("/api/login", Some(&first), json!({"code": "hal.2"})).await;
    let second = a.session().unwrap();
    let a = gate.post("/api/phone", Some(&second), encrypted(&m)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_refreshed_once_and_the_call_retried_once() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("ida.1").await;
    assert_eq!(
        gate.post("/api/phone", Some(&token), json!({"code": "phone:13600000001"}))
            .await
            .status,
        200
    );
    assert_eq!(gate.fake.calls(Api::StableToken), 1);
    gate.fake.expire_access_tokens();
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13600000002"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(phone_headers(&gate.upstream.last()).0, Some("13600000002"));
    assert_eq!(gate.fake.calls(Api::StableToken), 2, "one refresh");
    assert_eq!(
        gate.fake.calls(Api::GetUserPhoneNumber),
        3,
        "first call, rejected call, one retry"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_code_requests_fetch_the_token_once() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("jo.1").await;
    let calls = (0..100).map(|i| {
        let (gate, token) = (&gate, &token);
        async move {
            gate.post(
                "/api/phone",
                Some(token),
                json!({"code": format!("phone:1360000{i:04}")}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(gate.fake.calls(Api::StableToken), 1);
    assert_eq!(gate.fake.calls(Api::GetUserPhoneNumber), 100);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypted_data_without_a_phone_number_is_422() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("kay.1").await;
    let key = gate.fake.session_key("kay").unwrap();
    let iv = [7u8; 16];
    // A user-info payload (like WeChat's demo vector), freshly watermarked.
    let now = wxgate::session::unix_now();
    let plain = json!({"openId": "x", "nickName": "Band", "watermark": {"appid": APPID, "timestamp": now}});
    let data = crypto::encrypt(&key, &iv, plain.to_string().as_bytes());
    use base64::Engine;
    let iv = base64::engine::general_purpose::STANDARD.encode(iv);
    let a = gate
        .post("/api/phone", Some(&token), json!({"encryptedData": data, "iv": iv}))
        .await;
    a.assert_error(422, "no_phone_number");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_bounds_the_watermark() {
    let mut gate = start(|c| c.phone.max_age = HumanDuration(Duration::from_secs(600))).await;
    let token = gate.login("lee.1").await;
    let old = gate
        .fake
        .mint_phone(&MintRequest {
            user: "lee".into(),
            phone_number: "13580006666".into(),
            pure_phone_number: "13580006666".into(),
            country_code: "86".into(),
            appid: None,
            watermark_appid: None,
            timestamp: Some(1_477_314_187),
        })
        .unwrap();
    gate.post("/api/phone", Some(&token), encrypted(&old))
        .await
        .assert_error(403, "watermark_expired");
    let fresh = mint(&gate.fake, "lee", "13580006666");
    assert_eq!(
        gate.post("/api/phone", Some(&token), encrypted(&fresh)).await.status,
        200
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_attaches_the_phone_to_later_requests_and_strip_drops_the_fields() {
    let mut gate = start(|c| {
        c.phone.remember = true;
        c.phone.forward_body = ForwardBody::Strip;
    })
    .await;
    let token = gate.login("max.1").await;
    let m = mint(&gate.fake, "max", "13580006666");
    let mut body = encrypted(&m);
    body["code"] = json!("phone:1");
    body["note"] = json!("kept");
    assert_eq!(gate.post("/api/phone", Some(&token), body).await.status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!({"note": "kept"})
    );
    gate.get("/later", Some(&token)).await;
    assert_eq!(phone_headers(&gate.upstream.last()).0, Some("13580006666"));
    // A client-sent phone header never passes, remembered or not.
    let other = gate.login("ned.1").await;
    let req = http::Request::get(gate.url("/spoof"))
        .header("x-wx-session", &other)
        .header("X_WX_PHONE_NUMBER", "10000000000")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    send(req).await;
    assert_eq!(phone_headers(&gate.upstream.last()), (None, None, None));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_remember_later_requests_carry_no_phone() {
    let mut gate = start(|_| {}).await;
    let token = gate.login("oz.1").await;
    let m = mint(&gate.fake, "oz", "13580006666");
    assert_eq!(gate.post("/api/phone", Some(&token), encrypted(&m)).await.status, 200);
    gate.get("/later", Some(&token)).await;
    assert_eq!(phone_headers(&gate.upstream.last()), (None, None, None));
    gate.stop().await;
}

/// The fake's HTTP mint (what a backend's own CI uses) makes data wxgate
/// decrypts, and its stats count the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_minted_over_http_by_the_fake_decrypts() {
    let gate = start(|_| {}).await;
    let token = gate.login("http.1").await;
    let minted = send(
        Request::post(format!("http://{}/__fake/mint", gate.fake_addr))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                json!({"user": "http", "phoneNumber": "13700137000", "purePhoneNumber": "13700137000", "countryCode": "86"})
                    .to_string(),
            )))
            .unwrap(),
    )
    .await
    .json();
    let a = gate
        .post(
            "/api/phone",
            Some(&token),
            json!({"encryptedData": minted["encryptedData"], "iv": minted["iv"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        values(&gate.upstream.last().headers, "x-wx-phone-number"),
        ["13700137000"]
    );
    let stats = send(
        Request::get(format!("http://{}/__fake/stats", gate.fake_addr))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(stats["jscode2session"], 1);
}

/// Every line logged about a request names it: the route's own lines, the
/// WeChat client's, and the one line of a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_about_a_request_carry_its_id() {
    let gate = start(|_| {}).await;
    let token = gate.login("traced.1").await;
    let phone = |code: &str, id: &str| {
        Request::post(gate.url("/api/phone"))
            .header("x-wx-session", &token)
            .header("x-request-id", id)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json!({"code": code}).to_string())))
            .unwrap()
    };
    assert_eq!(send(phone("phone:13800138000.1", "trace-ok-7f3a")).await.status, 200);
    send(phone("fail:40029", "trace-fail-9c1b"))
        .await
        .assert_error(401, "invalid_code");
    send(phone("fail:12345", "trace-odd-4e2d"))
        .await
        .assert_error(502, "weixin_error");
    let logs = logs();
    let lines = |id: &str| -> Vec<String> { logs.lines().filter(|l| l.contains(id)).map(str::to_owned).collect() };
    let ok = lines("trace-ok-7f3a");
    assert!(ok.iter().any(|l| l.contains("phone number established")), "{ok:#?}");
    let fail = lines("trace-fail-9c1b");
    assert!(fail.iter().any(|l| l.contains("WeChat answered an error")), "{fail:#?}");
    let odd = lines("trace-odd-4e2d");
    let failures: Vec<_> = odd.iter().filter(|l| l.contains("request failed")).collect();
    assert_eq!(failures.len(), 1, "logged once: {odd:#?}");
    assert!(failures[0].contains("errcode 12345"), "{odd:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_behind_the_phone_route_is_a_504_json() {
    // The route's body is held whole and goes out with its head, so the
    // response timeout runs from the start: a backend that never answers
    // is a 504, not a hang; a quick one on the same gate still answers.
    let mut gate = start(|c| {
        c.phone.path = "/slow".into();
        c.upstream.timeout = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let token = gate.login("alice.1").await;
    let m = mint(&gate.fake, "alice", "13580006666");
    let a = gate.post("/slow?ms=5000", Some(&token), encrypted(&m)).await;
    a.assert_error(504, "upstream_timeout");
    let a = gate.post("/slow?ms=1", Some(&token), encrypted(&m)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        phone_headers(&gate.upstream.last()),
        (Some("13580006666"), Some("13580006666"), Some("86"))
    );
    gate.stop().await;
}
