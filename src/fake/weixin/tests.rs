//! The fake WeChat's own tests: every directive, endpoint and control route.

use super::*;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APPID: &str = "wxfa4e000000000001";
const SECRET: &str = "s3cret";

struct Harness {
    fake: FakeWeixin,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What the fake answered: status, Content-Type, raw body, and the body as JSON if it is.
struct Reply {
    status: StatusCode,
    content_type: String,
    body: String,
    json: Value,
}

impl Reply {
    fn errcode(&self) -> i64 {
        self.json.get("errcode").and_then(Value::as_i64).unwrap_or(0)
    }
}

impl Harness {
    async fn start() -> Harness {
        let fake = FakeWeixin::new(APPID, SECRET);
        let addr = fake.spawn_local().await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness { fake, addr, client }
    }

    async fn send(&self, method: Method, path_and_query: &str, body: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path_and_query))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            body,
            json,
        }
    }

    async fn get(&self, path_and_query: &str) -> Reply {
        self.send(Method::GET, path_and_query, "").await
    }

    async fn post(&self, path_and_query: &str, body: &str) -> Reply {
        self.send(Method::POST, path_and_query, body).await
    }

    fn login_uri(code: &str) -> String {
        let code = code
            .replace('%', "%25")
            .replace('+', "%2B")
            .replace(':', "%3A")
            .replace(' ', "+");
        format!("/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code={code}&grant_type=authorization_code")
    }

    async fn login(&self, code: &str) -> Reply {
        self.get(&Harness::login_uri(code)).await
    }

    async fn stable_token(&self, force_refresh: bool) -> Reply {
        let body = json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": force_refresh});
        self.post("/cgi-bin/stable_token", &body.to_string()).await
    }

    async fn access_token(&self) -> String {
        let reply = self.stable_token(false).await;
        reply.json["access_token"].as_str().unwrap().to_owned()
    }

    async fn phone(&self, token: &str, code: &str) -> Reply {
        let body = json!({ "code": code }).to_string();
        self.post(&format!("/wxa/business/getuserphonenumber?access_token={token}"), &body)
            .await
    }
}

#[tokio::test]
async fn login_succeeds_once_per_code_with_a_new_key_each_time() {
    let h = Harness::start().await;
    let first = h.login("alice").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.content_type, "text/plain");
    assert_eq!(first.json["openid"], "oFAKEalice");
    assert_eq!(first.json.get("unionid"), None);
    let key1 = SessionKey::from_base64(first.json["session_key"].as_str().unwrap()).unwrap();
    assert_eq!(h.fake.session_key("alice"), Some(key1));

    let again = h.login("alice").await;
    assert_eq!(again.errcode(), 40163);
    assert_eq!(again.json["errmsg"], "code been used");
    assert_eq!(h.fake.session_key("alice"), Some(key1));

    let second = h.login("alice.2").await;
    assert_eq!(second.json["openid"], "oFAKEalice");
    let key2 = SessionKey::from_base64(second.json["session_key"].as_str().unwrap()).unwrap();
    assert_ne!(key1, key2);
    assert_eq!(h.fake.session_key("alice"), Some(key2));
    assert_eq!(h.fake.session_key("bob"), None);
}

#[tokio::test]
async fn union_users_get_a_unionid() {
    let h = Harness::start().await;
    let reply = h.login("unionjoe.1").await;
    assert_eq!(reply.json["openid"], "oFAKEunionjoe");
    assert_eq!(reply.json["unionid"], "UFAKEunionjoe");
}

#[tokio::test]
async fn bad_app_credentials_and_missing_code() {
    let h = Harness::start().await;
    let path = "/sns/jscode2session";
    let cases = [
        (
            format!("{path}?appid=wxother&secret={SECRET}&js_code=a&grant_type=authorization_code"),
            40013,
        ),
        (
            format!("{path}?appid={APPID}&secret=nope&js_code=a&grant_type=authorization_code"),
            40125,
        ),
        (
            format!("{path}?appid={APPID}&js_code=a&grant_type=authorization_code"),
            40125,
        ),
        (
            format!("{path}?appid={APPID}&secret={SECRET}&grant_type=authorization_code"),
            40029,
        ),
        (
            format!("{path}?appid={APPID}&secret={SECRET}&js_code=&grant_type=authorization_code"),
            40029,
        ),
        (format!("{path}?appid={APPID}&secret={SECRET}&js_code=a"), 40002),
        (path.to_owned(), 40013),
    ];
    for (uri, errcode) in cases {
        let reply = h.get(&uri).await;
        assert_eq!((reply.status, reply.errcode()), (StatusCode::OK, errcode), "{uri}");
    }
    let reply = h.post(&Harness::login_uri("a"), "").await;
    assert_eq!(reply.errcode(), 43001);
    // None of these used the code up.
    assert!(h.login("a").await.json["openid"].is_string());
    assert_eq!(h.fake.calls(Api::Jscode2Session), 9);
}

#[tokio::test]
async fn fail_codes_answer_their_errcode_and_are_not_used_up() {
    let h = Harness::start().await;
    for (code, errcode) in [
        ("fail:40226", 40226),
        ("fail:45011", 45011),
        ("fail:-1", -1),
        ("fail:40029:whatever.else", 40029),
        ("fail:40226", 40226),
    ] {
        let reply = h.login(code).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.errcode(), errcode, "{code}");
        assert!(reply.json["errmsg"].is_string());
        assert_eq!(reply.json.get("openid"), None);
    }
}

#[tokio::test]
async fn busy_answers_system_error_n_times_then_succeeds_once() {
    let h = Harness::start().await;
    assert_eq!(h.login("busy:2:bob.1").await.errcode(), -1);
    assert_eq!(h.login("busy:2:bob.1").await.errcode(), -1);
    let ok = h.login("busy:2:bob.1").await;
    assert_eq!(ok.json["openid"], "oFAKEbob");
    assert_eq!(h.login("busy:2:bob.1").await.errcode(), 40163);
    // A different exact code has its own counter.
    assert_eq!(h.login("busy:1:bob.2").await.errcode(), -1);
    assert_eq!(h.login("busy:0:bob.3").await.json["openid"], "oFAKEbob");
    // Nested: each busy has its own count.
    assert_eq!(h.login("busy:1:busy:1:bob.4").await.errcode(), -1);
    assert_eq!(h.login("busy:1:busy:1:bob.4").await.errcode(), -1);
    assert_eq!(h.login("busy:1:busy:1:bob.4").await.json["openid"], "oFAKEbob");
    assert_eq!(h.login("busy:1:fail:45011").await.errcode(), -1);
    assert_eq!(h.login("busy:1:fail:45011").await.errcode(), 45011);
}

#[tokio::test]
async fn slow_waits_then_behaves_as_the_rest() {
    let h = Harness::start().await;
    let started = Instant::now();
    let reply = h.login("slow:150:carol").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(reply.json["openid"], "oFAKEcarol");
    assert_eq!(h.login("slow:1:fail:40226").await.errcode(), 40226);
    assert_eq!(h.login("slow:1:busy:1:carol.2").await.errcode(), -1);
    assert_eq!(h.login("slow:1:busy:1:carol.2").await.json["openid"], "oFAKEcarol");
}

#[tokio::test]
async fn concurrent_uses_of_one_code_succeed_once() {
    let h = Harness::start().await;
    let (a, b) = tokio::join!(h.login("slow:100:dave"), h.login("slow:100:dave"));
    let mut errcodes = [a.errcode(), b.errcode()];
    errcodes.sort_unstable();
    assert_eq!(errcodes, [0, 40163]);
}

#[tokio::test]
async fn garbage_and_http_codes() {
    let h = Harness::start().await;
    for code in ["garbage", "garbage:1", "slow:1:garbage"] {
        let reply = h.login(code).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "<html>not json</html>");
    }
    for (code, status) in [
        ("http:503", 503),
        ("http:500:x", 500),
        ("http:404", 404),
        ("http:200", 200),
    ] {
        let reply = h.login(code).await;
        assert_eq!(reply.status.as_u16(), status, "{code}");
        assert!(reply.body.starts_with("<html>"), "{code}");
        assert!(reply.content_type.starts_with("text/html"));
    }
}

#[tokio::test]
async fn malformed_codes_are_invalid() {
    let h = Harness::start().await;
    for code in [
        "busy:x:alice",
        "busy:1",
        "slow::alice",
        "slow:-5:alice",
        "fail:abc",
        "fail:",
        "http:99",
        "http:600",
        "http:abc",
        ".nonce",
        "slow:1:",
    ] {
        assert_eq!(h.login(code).await.errcode(), 40029, "{code}");
    }
}

#[tokio::test]
async fn deeply_nested_directives_do_not_overflow() {
    let h = Harness::start().await;
    let code = format!("{}erin", "slow:0:".repeat(1000));
    assert_eq!(h.login(&code).await.json["openid"], "oFAKEerin");
}

#[test]
fn openids_are_visible_ascii_and_short() {
    assert_eq!(FakeWeixin::openid_for("alice"), "oFAKEalice");
    assert_eq!(FakeWeixin::openid_for("a-b_C9"), "oFAKEa-b_C9");
    let long = "x".repeat(200);
    for user in ["", "with space", "é", "x\r\nSet-Cookie: a", long.as_str(), "busy:1:x"] {
        let openid = FakeWeixin::openid_for(user);
        assert!(openid.len() <= 64, "{openid}");
        assert!(openid.bytes().all(|b| b.is_ascii_graphic()), "{openid}");
        assert_eq!(openid, FakeWeixin::openid_for(user));
    }
    assert_ne!(FakeWeixin::openid_for("é"), FakeWeixin::openid_for("è"));
    assert_eq!(FakeWeixin::openid_for(&"y".repeat(59)).len(), 64);
}

#[tokio::test]
async fn odd_users_get_safe_openids() {
    let h = Harness::start().await;
    let reply = h.login("white space.1").await;
    assert_eq!(reply.json["openid"], FakeWeixin::openid_for("white space"));
    assert!(h.fake.session_key("white space").is_some());
}

#[tokio::test]
async fn legacy_token_is_new_every_call() {
    let h = Harness::start().await;
    let uri = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
    let first = h.get(&uri).await;
    let second = h.get(&uri).await;
    assert_eq!(first.json["expires_in"], 7200);
    let (t1, t2) = (
        first.json["access_token"].as_str().unwrap(),
        second.json["access_token"].as_str().unwrap(),
    );
    assert_ne!(t1, t2);
    // Both stay valid.
    assert_eq!(h.phone(t1, "phone:13580006666.1").await.errcode(), 0);
    assert_eq!(h.phone(t2, "phone:13580006666.2").await.errcode(), 0);

    let bad_secret = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret=x");
    assert_eq!(h.get(&bad_secret).await.errcode(), 40125);
    let bad_appid = format!("/cgi-bin/token?grant_type=client_credential&appid=wx1&secret={SECRET}");
    assert_eq!(h.get(&bad_appid).await.errcode(), 40013);
    let bad_grant = format!("/cgi-bin/token?appid={APPID}&secret={SECRET}");
    assert_eq!(h.get(&bad_grant).await.errcode(), 40002);
    assert_eq!(h.fake.calls(Api::Token), 5);
}

#[tokio::test]
async fn stable_token_is_reused_until_force_refresh() {
    let h = Harness::start().await;
    let first = h.stable_token(false).await;
    let token = first.json["access_token"].as_str().unwrap().to_owned();
    let expires_in = first.json["expires_in"].as_u64().unwrap();
    assert!((7199..=7200).contains(&expires_in), "{expires_in}");
    let again = h.stable_token(false).await;
    assert_eq!(again.json["access_token"], token.as_str());
    assert!(again.json["expires_in"].as_u64().unwrap() <= expires_in);

    let refreshed = h.stable_token(true).await;
    let new_token = refreshed.json["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(refreshed.json["expires_in"], 7200);
    assert_eq!(h.phone(&token, "phone:13580006666.1").await.errcode(), 40001);
    assert_eq!(h.phone(&new_token, "phone:13580006666.2").await.errcode(), 0);
    assert_eq!(h.stable_token(false).await.json["access_token"], new_token.as_str());
}

#[tokio::test]
async fn stable_token_rejects_bad_requests() {
    let h = Harness::start().await;
    let body = |grant: &str, appid: &str, secret: &str| {
        json!({"grant_type": grant, "appid": appid, "secret": secret}).to_string()
    };
    for (body, errcode) in [
        ("not json".to_owned(), 47001),
        (String::new(), 47001),
        (r#"{"grant_type":"client_credential","appid":1}"#.to_owned(), 47001),
        (
            r#"{"grant_type":"client_credential","force_refresh":"yes"}"#.to_owned(),
            47001,
        ),
        (body("password", APPID, SECRET), 40002),
        (body("client_credential", "wx1", SECRET), 40013),
        (body("client_credential", APPID, "nope"), 40125),
    ] {
        let reply = h.post("/cgi-bin/stable_token", &body).await;
        assert_eq!(reply.errcode(), errcode, "{body}");
    }
    assert_eq!(h.get("/cgi-bin/stable_token").await.errcode(), 43002);
    assert_eq!(h.fake.calls(Api::StableToken), 8);
}

#[tokio::test]
async fn expired_tokens_answer_40001_and_stable_token_renews() {
    let h = Harness::start().await;
    let stable = h.access_token().await;
    let uri = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
    let legacy = h.get(&uri).await.json["access_token"].as_str().unwrap().to_owned();
    h.fake.expire_access_tokens();
    for token in [&stable, &legacy] {
        let reply = h.phone(token, "phone:13580006666").await;
        assert_eq!(reply.errcode(), 40001);
        assert_eq!(
            reply.json["errmsg"],
            "invalid credential, access_token is invalid or not latest"
        );
    }
    let renewed = h.access_token().await;
    assert_ne!(renewed, stable);
    assert_eq!(h.phone(&renewed, "phone:13580006666").await.errcode(), 0);

    // The same over HTTP.
    let reply = h.post("/__fake/expire_tokens", "").await;
    assert_eq!(reply.json, json!({"ok": true}));
    assert_eq!(h.phone(&renewed, "phone:13580006666.2").await.errcode(), 40001);
}

#[tokio::test]
async fn phone_codes_give_numbers_and_strings() {
    let h = Harness::start().await;
    let token = h.access_token().await;

    let reply = h.phone(&token, "phone:13580006666").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type, "text/plain");
    assert_eq!(reply.json["errcode"], 0);
    assert_eq!(reply.json["errmsg"], "ok");
    let info = &reply.json["phone_info"];
    assert_eq!(info["phoneNumber"], "13580006666");
    assert_eq!(info["purePhoneNumber"], "13580006666");
    assert_eq!(info["countryCode"], json!(86));
    assert_eq!(info["watermark"]["appid"], APPID);
    assert!(info["watermark"]["timestamp"].as_u64().unwrap() > 1_600_000_000);

    let reply = h.phone(&token, "phone:2025550123:1.x").await;
    let info = &reply.json["phone_info"];
    assert_eq!(info["phoneNumber"], "+12025550123");
    assert_eq!(info["purePhoneNumber"], "2025550123");
    assert_eq!(info["countryCode"], json!(1));

    let reply = h.phone(&token, "phonestr:13580006666").await;
    assert_eq!(reply.json["phone_info"]["countryCode"], json!("86"));
    assert_eq!(reply.json["phone_info"]["phoneNumber"], "13580006666");
    let reply = h.phone(&token, "phonestr:61234567:852.n").await;
    assert_eq!(reply.json["phone_info"]["countryCode"], json!("852"));
    assert_eq!(reply.json["phone_info"]["phoneNumber"], "+85261234567");

    let reply = h.phone(&token, "badphone:13580006666\r\nX-Evil: 1").await;
    assert_eq!(reply.json["phone_info"]["phoneNumber"], "13580006666\r\nX-Evil: 1");
    assert_eq!(reply.json["phone_info"]["purePhoneNumber"], "13580006666\r\nX-Evil: 1");
}

#[tokio::test]
async fn phone_codes_are_single_use_and_validated() {
    let h = Harness::start().await;
    let token = h.access_token().await;
    assert_eq!(h.phone(&token, "phone:13580006666.a").await.errcode(), 0);
    assert_eq!(h.phone(&token, "phone:13580006666.a").await.errcode(), 40029);
    for code in [
        "hello",
        "phone:",
        "phone:abc",
        "phone:123:",
        "phone:123:12345",
        "phone:123456789012345678901",
        "phonestr:12a",
    ] {
        assert_eq!(h.phone(&token, code).await.errcode(), 40029, "{code}");
    }
    assert_eq!(h.phone(&token, "fail:45011").await.errcode(), 45011);
    assert_eq!(h.phone(&token, "fail:-1:x").await.errcode(), -1);
    assert_eq!(h.phone(&token, "busy:1:phone:1.b").await.errcode(), -1);
    assert_eq!(h.phone(&token, "busy:1:phone:1.b").await.errcode(), 0);
    assert_eq!(h.phone(&token, "slow:20:phone:1").await.errcode(), 0);
    assert_eq!(h.phone(&token, "garbage").await.body, "<html>not json</html>");
    assert_eq!(h.phone(&token, "http:502").await.status, StatusCode::BAD_GATEWAY);

    let uri = format!("/wxa/business/getuserphonenumber?access_token={token}");
    for (body, errcode) in [
        ("not json", 47001),
        ("[1]", 47001),
        ("", 47001),
        ("{}", 40029),
        (r#"{"code":5}"#, 40029),
        (r#"{"code":""}"#, 40029),
    ] {
        assert_eq!(h.post(&uri, body).await.errcode(), errcode, "{body}");
    }
    // The openid in the body is accepted and ignored.
    let body = json!({"code": "phone:13580006666.c", "openid": "oFAKEalice"}).to_string();
    assert_eq!(h.post(&uri, &body).await.errcode(), 0);
    // Tokens are checked first.
    let no_token = h
        .post("/wxa/business/getuserphonenumber", r#"{"code":"phone:1"}"#)
        .await;
    assert_eq!(no_token.errcode(), 40001);
    assert_eq!(h.phone("FAKE_unknown", "phone:1.z").await.errcode(), 40001);
    assert_eq!(h.get(&uri).await.errcode(), 43002);
}

#[tokio::test]
async fn minted_data_decrypts_under_the_current_session_key() {
    let h = Harness::start().await;
    let request = MintRequest {
        user: "frank".to_owned(),
        phone_number: "+12025550123".to_owned(),
        pure_phone_number: "2025550123".to_owned(),
        country_code: "1".to_owned(),
        appid: None,
        watermark_appid: None,
        timestamp: None,
    };
    assert_eq!(
        h.fake.mint_phone(&request),
        Err(MintError::NeverLoggedIn {
            user: "frank".to_owned()
        })
    );
    h.login("frank").await;
    let key = h.fake.session_key("frank").unwrap();
    let minted = h.fake.mint_phone(&request).unwrap();
    let data = crypto::decrypt(&key, &minted.iv, &minted.encrypted_data).unwrap();
    assert_eq!(data.phone_number.as_deref(), Some("+12025550123"));
    assert_eq!(data.pure_phone_number.as_deref(), Some("2025550123"));
    assert_eq!(data.country_code.as_deref(), Some("1"));
    let watermark = data.watermark.unwrap();
    assert_eq!(watermark.appid, APPID);
    assert!(watermark.timestamp.abs_diff(unix_now()) < 5);

    // Over HTTP, with an explicit watermark.
    let body = json!({
        "user": "frank", "phoneNumber": "13580006666", "purePhoneNumber": "13580006666",
        "countryCode": "86", "appid": "wxsomeoneelse", "timestamp": 1_477_314_187u64,
    });
    let reply = h.post("/__fake/mint", &body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type, "application/json");
    let minted: Minted = serde_json::from_value(reply.json).unwrap();
    let data = crypto::decrypt(&key, &minted.iv, &minted.encrypted_data).unwrap();
    assert_eq!(data.pure_phone_number.as_deref(), Some("13580006666"));
    let watermark = data.watermark.unwrap();
    assert_eq!(
        (watermark.appid.as_str(), watermark.timestamp),
        ("wxsomeoneelse", 1_477_314_187)
    );

    // A new login changes the key: data minted before no longer decrypts under the new one.
    h.login("frank.2").await;
    let new_key = h.fake.session_key("frank").unwrap();
    assert_ne!(new_key, key);
    assert!(crypto::decrypt(&new_key, &minted.iv, &minted.encrypted_data).is_err());
}

#[tokio::test]
async fn mint_route_errors() {
    let h = Harness::start().await;
    let body = json!({"user": "nobody", "phoneNumber": "1", "purePhoneNumber": "1", "countryCode": "86"});
    let reply = h.post("/__fake/mint", &body.to_string()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["error"], "unknown_user");
    for bad in [
        "not json",
        "{}",
        r#"{"user":"a","phoneNumber":"1","purePhoneNumber":"1","countryCode":86}"#,
    ] {
        let reply = h.post("/__fake/mint", bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json["error"], "bad_request");
    }
    assert_eq!(h.get("/__fake/mint").await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn mint_request_uses_camel_case_names() {
    let request = MintRequest {
        user: "u".to_owned(),
        phone_number: "1".to_owned(),
        pure_phone_number: "2".to_owned(),
        country_code: "86".to_owned(),
        appid: Some("wx".to_owned()),
        watermark_appid: None,
        timestamp: Some(7),
    };
    let value = serde_json::to_value(&request).unwrap();
    assert_eq!(
        value,
        json!({"user": "u", "phoneNumber": "1", "purePhoneNumber": "2", "countryCode": "86", "appid": "wx", "timestamp": 7})
    );
    assert_eq!(serde_json::from_value::<MintRequest>(value).unwrap(), request);
    let minted = Minted {
        encrypted_data: "d".to_owned(),
        iv: "i".to_owned(),
    };
    assert_eq!(
        serde_json::to_value(&minted).unwrap(),
        json!({"encryptedData": "d", "iv": "i"})
    );
}

#[tokio::test]
async fn revoked_tokens_fail_until_a_forced_refresh() {
    let h = Harness::start().await;
    h.login("rita").await;
    let token = h.access_token().await;
    assert_eq!(h.phone(&token, "phone:1.a").await.errcode(), 0);
    let reply = h.post("/__fake/revoke_tokens", "").await;
    assert_eq!(reply.json, json!({"ok": true}));
    assert_eq!(h.phone(&token, "phone:1.b").await.errcode(), 40001);
    // Asked without forcing, WeChat hands back the very token it refuses.
    assert_eq!(h.access_token().await, token);
    let forced = h
        .post(
            "/cgi-bin/stable_token",
            &json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": true})
                .to_string(),
        )
        .await;
    let fresh = forced.json["access_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token);
    assert_eq!(h.phone(&fresh, "phone:1.c").await.errcode(), 0);
    assert_eq!(h.fake.forced_refreshes(), 1);
}

#[tokio::test]
async fn stats_count_requests_and_pooled_connections() {
    let h = Harness::start().await;
    h.login("gina").await;
    h.login("gina").await;
    h.login("fail:-1").await;
    let token = h.access_token().await;
    h.phone(&token, "phone:1").await;
    h.get("/cgi-bin/token").await;
    h.get("/nowhere").await;
    let reply = h.get("/__fake/stats").await;
    assert_eq!(
        reply.json,
        json!({"jscode2session": 3, "token": 1, "stable_token": 1, "getuserphonenumber": 1, "stable_token_forced": 0, "connections": 1,
            "apps": {APPID: {"jscode2session": 3, "stable_token": 1, "getuserphonenumber": 1}}})
    );
    assert_eq!(h.fake.calls(Api::Jscode2Session), 3);
    assert_eq!(h.fake.calls(Api::GetUserPhoneNumber), 1);
    // Keep-alive: the pooled client used one connection for all of the above.
    assert_eq!(h.fake.connections(), 1);
}

#[tokio::test]
async fn unknown_paths_and_odd_input_never_break_the_server() {
    let h = Harness::start().await;
    for path in ["/", "/nowhere", "/sns/jscode2session/extra", "/__fake/", "/%ff%fe"] {
        let reply = h.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json, json!({"errcode": -1, "errmsg": "not found"}));
    }
    for query in ["%", "%zz=%1", "js_code=%ff%fe&&&==&appid", "a=b=c"] {
        let reply = h.get(&format!("/sns/jscode2session?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}");
    }
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    assert_eq!(h.post("/cgi-bin/stable_token", &big).await.errcode(), 47001);
    assert_eq!(h.post("/__fake/mint", &big).await.status, StatusCode::BAD_REQUEST);
    let token = h.access_token().await;
    let reply = h
        .post(
            &format!("/wxa/business/getuserphonenumber?access_token={token}"),
            "\u{0}\u{ff}{",
        )
        .await;
    assert_eq!(reply.errcode(), 47001);

    // Bytes that are not HTTP at all.
    let mut raw = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    raw.write_all(b"\x00\xff\xfe garbage \r\n\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink).await;

    // Still serving.
    assert_eq!(h.login("helen").await.json["openid"], "oFAKEhelen");
}

#[tokio::test]
async fn percent_encoded_query_values_are_decoded() {
    let h = Harness::start().await;
    let uri =
        format!("/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code=fail%3A45011&grant_type=authorization_code");
    assert_eq!(h.get(&uri).await.errcode(), 45011);
    let uri =
        format!("/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code=fail:40226&grant_type=authorization_code");
    assert_eq!(h.get(&uri).await.errcode(), 40226);
}

#[test]
fn query_parsing() {
    let query = parse_query("a=1&b=x+y&c=%41%3a&d&a=2&e=%&f=%4&g=%zz&h=%e4%bd%a0");
    assert_eq!(query["a"], "1");
    assert_eq!(query["b"], "x y");
    assert_eq!(query["c"], "A:");
    assert_eq!(query["d"], "");
    assert_eq!(query["e"], "%");
    assert_eq!(query["f"], "%4");
    assert_eq!(query["g"], "%zz");
    assert_eq!(query["h"], "你");
    assert_eq!(parse_query("x=%ff")["x"], "\u{fffd}");
}

#[tokio::test]
async fn serve_stops_when_shutdown_resolves() {
    let fake = FakeWeixin::new(APPID, SECRET);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fake.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .get(format!("http://{addr}/__fake/stats").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn debug_hides_the_secret() {
    let debug = format!("{:?}", FakeWeixin::new(APPID, SECRET));
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains(APPID));
}
