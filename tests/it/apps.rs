//! Several mini programs in one wxgate: which app a request is for (host,
//! path prefix, WeChat's Referer, the default), and everything per app
//! (credentials, access tokens, code caches, key histories, sessions,
//! identity headers, metrics), with both session stores.

use crate::common::redis::RedisServer;
use crate::common::*;
use wxgate::config::{AppConfig, Secret, StoreKind};

const SHOP: &str = "wx5b0b000000000001";
const STAFF: &str = "wx5aff000000000002";
const CARD: &str = "wxcad0000000000003";

/// The fake knows the default app and the three others.
fn fake_with_apps() -> FakeWeixin {
    FakeWeixin::with_apps(
        [
            (APPID, SECRET),
            (SHOP, "shop-secret"),
            (STAFF, "staff-secret"),
            (CARD, "card-secret"),
        ]
        .map(|(a, s)| (a.to_owned(), s.to_owned())),
    )
}

/// `[apps.shop]` on host shop.test, `[apps.staff]` under /staff,
/// `[apps.card]` without selector (Referer only), and the test's
/// `[weixin].appid` as the default unless `with_default` is false.
fn three_apps(with_default: bool) -> impl FnOnce(&mut wxgate::Config) {
    move |c| {
        let app = |appid: &str, secret: &str, hosts: &[&str], path_prefix: &str| AppConfig {
            appid: appid.into(),
            secret: Secret::new(secret),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: path_prefix.into(),
        };
        c.apps
            .insert("shop".into(), app(SHOP, "shop-secret", &["shop.test"], ""));
        c.apps.insert("staff".into(), app(STAFF, "staff-secret", &[], "/staff"));
        c.apps.insert("card".into(), app(CARD, "card-secret", &[], ""));
        if !with_default {
            c.weixin.appid.clear();
            c.weixin.secret = Secret::default();
        }
    }
}

async fn apps_gate(with_default: bool, configure: impl FnOnce(&mut wxgate::Config)) -> Gate {
    let fake = fake_with_apps();
    let fake_addr = fake.spawn_local().await.unwrap();
    start_on(start_upstream().await, fake, fake_addr, |c| {
        three_apps(with_default)(c);
        configure(c);
    })
    .await
}

fn referer(appid: &str) -> String {
    format!("https://servicewechat.com/{appid}/0/page-frame.html")
}

/// A request with extra headers (Host, Referer...).
async fn request(
    gate: &Gate,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    session: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut b = Request::builder().method(method).uri(gate.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if let Some(s) = session {
        b = b.header("x-wx-session", s);
    }
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    if !body.is_empty() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    send(b.body(Full::new(Bytes::from(body))).unwrap()).await
}

async fn login_with(gate: &Gate, path: &str, headers: &[(&str, &str)], code: &str) -> String {
    let a = request(gate, Method::POST, path, headers, None, Some(json!({"code": code}))).await;
    assert_eq!(a.status, 200, "login {code}: {}", a.text());
    a.session().expect("a session header")
}

fn appid_of(r: &Received) -> Option<String> {
    r.headers.get("x-wx-appid").map(|v| v.to_str().unwrap().to_owned())
}

fn mint(fake: &FakeWeixin, user: &str, phone: &str, appid: &str, watermark: Option<&str>) -> Value {
    phone_body(fake, user, phone, Some(appid), watermark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_the_path_prefix_the_referer_or_the_default_picks_the_app() {
    let mut gate = apps_gate(true, |_| {}).await;
    let fake = gate.fake.clone();
    let shop_host = [("host", "Shop.Test:8080")];
    for (path, headers, code, want) in [
        ("/api/login", &shop_host[..], "sam.1", SHOP),
        ("/staff/api/login", &[][..], "stella.1", STAFF),
        ("/api/login", &[("referer", referer(CARD).as_str())][..], "carl.1", CARD),
        // A selector wins over the Referer: the operator's rule.
        (
            "/api/login",
            &[("host", "shop.test"), ("referer", referer(CARD).as_str())][..],
            "sue.1",
            SHOP,
        ),
        // Nothing names an app, or the Referer names one not configured here: the default.
        ("/api/login", &[][..], "dora.1", APPID),
        (
            "/api/login",
            &[("referer", referer("wxnotconfigured0001").as_str())][..],
            "dan.1",
            APPID,
        ),
    ] {
        let token = login_with(&gate, path, headers, code).await;
        assert_eq!(appid_of(&gate.upstream.last()).as_deref(), Some(want), "{code}");
        // The session keeps its app on later requests.
        let a = request(&gate, Method::GET, "/me", &[], Some(&token), None).await;
        assert_eq!(a.status, 200);
        assert_eq!(appid_of(&gate.upstream.last()).as_deref(), Some(want), "{code} later");
    }
    // Each code went to WeChat with its own app's credentials (the fake
    // answers 40013/40125 to anything else).
    for (appid, logins) in [(SHOP, 2), (STAFF, 1), (CARD, 1), (APPID, 2)] {
        assert_eq!(fake.app_calls(appid, Api::Jscode2Session), logins, "{appid}");
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_app_an_unnamed_login_is_400_unknown_app() {
    let mut gate = apps_gate(false, |_| {}).await;
    let a = request(
        &gate,
        Method::POST,
        "/api/login",
        &[],
        None,
        Some(json!({"code": "x.1"})),
    )
    .await;
    a.assert_error(400, "unknown_app");
    let unknown = referer("wxnotconfigured0001");
    let a = request(
        &gate,
        Method::POST,
        "/api/login",
        &[("referer", &unknown)],
        None,
        Some(json!({"code": "x.2"})),
    )
    .await;
    a.assert_error(400, "unknown_app");
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 0, "no WeChat call for no app");
    assert_eq!(gate.upstream.count(), 0, "nothing forwarded");
    // Named, it works; a GET is still 405 first.
    login_with(&gate, "/api/login", &[("referer", &referer(CARD))], "x.3").await;
    request(&gate, Method::GET, "/api/login", &[], None, None)
        .await
        .assert_error(405, "method_not_allowed");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_route_works_with_the_sessions_app_only() {
    let mut gate = apps_gate(true, |_| {}).await;
    let fake = gate.fake.clone();
    let card = referer(CARD);
    // bob logs in to the default app, then to the card app (the fake gives
    // one openid in every app: only the app keeps them apart).
    let default_token = gate.login("bob.1").await;
    let card_token = login_with(&gate, "/api/login", &[("referer", &card)], "bob.2").await;

    // Data of the card app, under the card app's session: established.
    let a = gate
        .post(
            "/api/phone",
            Some(&card_token),
            mint(&fake, "bob", "13800000001", CARD, None),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let last = gate.upstream.last();
    assert_eq!(values(&last.headers, "x-wx-phone-number"), ["13800000001"]);
    assert_eq!(appid_of(&last).as_deref(), Some(CARD));

    // Encrypted under the card key, watermarked for the default app: 403.
    gate.post(
        "/api/phone",
        Some(&card_token),
        mint(&fake, "bob", "13800000002", CARD, Some(APPID)),
    )
    .await
    .assert_error(403, "watermark_mismatch");
    // The default app's data (its key) under the card session: the card
    // user's key history holds no key of the default app.
    gate.post(
        "/api/phone",
        Some(&card_token),
        mint(&fake, "bob", "13800000003", APPID, Some(CARD)),
    )
    .await
    .assert_error(401, "decrypt_failed");
    // And the other way round.
    gate.post(
        "/api/phone",
        Some(&default_token),
        mint(&fake, "bob", "13800000004", CARD, Some(APPID)),
    )
    .await
    .assert_error(401, "decrypt_failed");

    // The code flow: the card app's token, fetched with its credentials.
    let a = gate
        .post("/api/phone", Some(&card_token), json!({"code": "phone:13900000001"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(fake.app_calls(CARD, Api::StableToken), 1);
    assert_eq!(fake.app_calls(CARD, Api::GetUserPhoneNumber), 1);
    assert_eq!(fake.app_calls(APPID, Api::StableToken), 0);
    assert_eq!(appid_of(&gate.upstream.last()).as_deref(), Some(CARD));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_not_honoured_where_a_selector_names_another_app() {
    let mut gate = apps_gate(true, |_| {}).await;
    let shop = [("host", "shop.test")];
    let shop_token = login_with(&gate, "/api/login", &shop, "sam.1").await;
    let staff_token = login_with(&gate, "/staff/api/login", &[], "stella.1").await;

    // Its own host: the shop identity.
    request(&gate, Method::GET, "/orders", &shop, Some(&shop_token), None).await;
    assert_eq!(appid_of(&gate.upstream.last()).as_deref(), Some(SHOP));
    // The staff app's paths: anonymous, whatever the token.
    request(&gate, Method::GET, "/staff/tasks", &[], Some(&shop_token), None).await;
    let last = gate.upstream.last();
    assert!(last.headers.get("x-wx-openid").is_none(), "{:?}", last.headers);
    assert!(
        last.headers.get("x-wx-session").is_none(),
        "the token never goes upstream"
    );
    // The staff session on the shop's host: anonymous too.
    request(&gate, Method::GET, "/orders", &shop, Some(&staff_token), None).await;
    assert!(gate.upstream.last().headers.get("x-wx-openid").is_none());
    // The staff app's phone route with the shop's session: no session there.
    gate.post("/staff/api/phone", Some(&shop_token), json!({"code": "phone:1"}))
        .await
        .assert_error(401, "session_required");
    // Where no selector decides, a session keeps its own app.
    request(&gate, Method::GET, "/elsewhere", &[], Some(&shop_token), None).await;
    assert_eq!(appid_of(&gate.upstream.last()).as_deref(), Some(SHOP));
    // Protected paths follow the same rule.
    gate.stop().await;
    let mut gate = apps_gate(true, |c| c.access.require_session = vec!["/staff/".into()]).await;
    let shop_token = login_with(&gate, "/api/login", &shop, "sam.2").await;
    request(&gate, Method::GET, "/staff/tasks", &[], Some(&shop_token), None)
        .await
        .assert_error(401, "session_required");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_apps_access_token_is_fetched_once_under_concurrency() {
    let mut gate = apps_gate(true, |_| {}).await;
    let fake = gate.fake.clone();
    let card = referer(CARD);
    let mut sessions = Vec::new();
    for i in 0..4 {
        sessions.push(gate.login(&format!("d{i}.1")).await);
        sessions.push(login_with(&gate, "/api/login", &[("referer", &card)], &format!("c{i}.1")).await);
    }
    let phones = sessions.iter().enumerate().flat_map(|(i, s)| {
        let gate = &gate;
        (0..4).map(move |j| async move {
            gate.post(
                "/api/phone",
                Some(s),
                json!({"code": format!("phone:1390000{i}{j:03}")}),
            )
            .await
        })
    });
    let answers = futures_util::future::join_all(phones).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(fake.app_calls(APPID, Api::StableToken), 1);
    assert_eq!(fake.app_calls(CARD, Api::StableToken), 1);
    assert_eq!(fake.app_calls(APPID, Api::GetUserPhoneNumber), 16);
    assert_eq!(fake.app_calls(CARD, Api::GetUserPhoneNumber), 16);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_string_in_two_apps_is_two_logins() {
    let mut gate = apps_gate(true, |_| {}).await;
    let a = gate.login("eve.1").await;
    let b = login_with(&gate, "/api/login", &[("referer", &referer(CARD))], "eve.1").await;
    assert_ne!(a, b, "the card app's login is not the default app's cached outcome");
    assert_eq!(appid_of(&gate.upstream.last()).as_deref(), Some(CARD));
    // A retry in the same app is still answered from its code cache.
    let again = login_with(&gate, "/api/login", &[("referer", &referer(CARD))], "eve.1").await;
    assert_eq!(again, b);
    assert_eq!(gate.fake.app_calls(CARD, Api::Jscode2Session), 1);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_revocation_name_the_app() {
    // Metrics are process-wide: this test's app has a name of its own.
    let mut gate = apps_gate(true, |c| {
        let card = c.apps.remove("card").unwrap();
        c.apps.insert("metered".into(), card);
    })
    .await;
    let card = referer(CARD);
    let default_token = gate.login("fay.1").await;
    let card_token = login_with(&gate, "/api/login", &[("referer", &card)], "fay.2").await;
    request(
        &gate,
        Method::POST,
        "/api/login",
        &[("referer", &card)],
        None,
        Some(json!({"code": "fail:40029"})),
    )
    .await
    .assert_error(401, "invalid_code");
    let ok = eventually(async || {
        let m = gate.admin_get("/metrics").await.text();
        m.contains(r#"wxgate_logins_total{app="metered",outcome="ok"} 1"#)
            && m.contains(r#"wxgate_logins_total{app="metered",outcome="invalid_code"} 1"#)
            && m.contains(r#"wxgate_logins_total{app="default",outcome="ok"}"#)
            && m.contains(r#"wxgate_weixin_calls_total{api="jscode2session",app="metered",outcome="ok"} 1"#)
    })
    .await;
    assert!(ok, "{}", gate.admin_get("/metrics").await.text());

    // Revoking the user in one app leaves the other app's session.
    let delete = |query: String| {
        send(
            Request::delete(format!("http://{}/sessions?{query}", gate.admin))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    let openid = FakeWeixin::openid_for("fay");
    let a = delete(format!("openid={openid}&app=metered")).await;
    assert_eq!(a.json()["revoked"], 1, "{}", a.text());
    gate.get("/me", Some(&card_token)).await;
    assert!(gate.upstream.last().headers.get("x-wx-openid").is_none());
    gate.get("/me", Some(&default_token)).await;
    assert!(gate.upstream.last().headers.get("x-wx-openid").is_some());
    delete(format!("openid={openid}&app=nope"))
        .await
        .assert_error(400, "invalid_request");
    // Without app=, every app's.
    let a = delete(format!("openid={openid}")).await;
    assert_eq!(a.json()["revoked"], 1, "{}", a.text());
    gate.get("/me", Some(&default_token)).await;
    assert!(gate.upstream.last().headers.get("x-wx-openid").is_none());
    gate.stop().await;
}

/// On Redis, a session names its app by AppID: a replica whose
/// configuration lists the apps in another order (a deploy adding one)
/// still gives the right identity, and per-app code caches and tokens
/// hold across replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_redis_keep_each_sessions_app() {
    let redis = RedisServer::start();
    let url = redis.url();
    let on_redis = |c: &mut wxgate::Config| {
        c.session.store = StoreKind::Redis;
        c.redis.url = url.clone();
        c.redis.secret = Secret::new("a-redis-secret-for-tests-0123456789abcdef");
    };
    let mut a = apps_gate(true, on_redis).await;
    let mut b = start_on(a.upstream.clone(), a.fake.clone(), a.fake_addr, |c| {
        three_apps(true)(c);
        on_redis(c);
        // Sorted first: every other app's index moves.
        c.apps.insert(
            "aaa".into(),
            AppConfig {
                appid: "wxaaa0000000000004".into(),
                secret: Secret::new("aaa-secret"),
                ..AppConfig::default()
            },
        );
    })
    .await;
    let card = referer(CARD);
    let token = login_with(&a, "/api/login", &[("referer", &card)], "gus.1").await;
    b.get("/me", Some(&token)).await;
    assert_eq!(appid_of(&b.upstream.last()).as_deref(), Some(CARD));
    // The retried login on the other replica: the same session, one call.
    let again = login_with(&b, "/api/login", &[("referer", &card)], "gus.1").await;
    assert_eq!(again, token);
    assert_eq!(a.fake.app_calls(CARD, Api::Jscode2Session), 1);
    // The same code string for another app is another login.
    let other = login_with(&b, "/api/login", &[], "gus.1").await;
    assert_ne!(other, token);
    // Key history per app, across replicas: data of the default app's key
    // does not open under the card session.
    a.post(
        "/api/phone",
        Some(&token),
        mint(&a.fake, "gus", "13800000009", APPID, Some(CARD)),
    )
    .await
    .assert_error(401, "decrypt_failed");
    let ok = b
        .post(
            "/api/phone",
            Some(&token),
            mint(&a.fake, "gus", "13800000009", CARD, None),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(appid_of(&b.upstream.last()).as_deref(), Some(CARD));
    a.stop().await;
    b.stop().await;
}
