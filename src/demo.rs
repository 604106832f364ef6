//! `wxgate demo`: wxgate, the fake WeChat and a small echo backend in one
//! process, on local ports, walking through what a mini program does and
//! printing what the backend receives at each step, with two mini programs
//! (a shop, the default, and a staff app under `/staff`). Needs no WeChat
//! account.

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::config::{Config, Secret};
use crate::fake::{EchoBackend, FakeWeixin, MintRequest};
use crate::server::Listeners;

const APPID: &str = "wxd0000000000demo";
const SECRET: &str = "demo-secret";
/// A second mini program, the staff app, selected by the path prefix /staff.
const STAFF_APPID: &str = "wxd000000000staff";
const STAFF_SECRET: &str = "staff-secret";

type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the walk-through and stops everything.
pub fn run() -> Result<(), DemoError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(walk())
}

async fn walk() -> Result<(), DemoError> {
    let fake = FakeWeixin::with_apps([(APPID.into(), SECRET.into()), (STAFF_APPID.into(), STAFF_SECRET.into())]);
    let fake_addr = fake.spawn_local().await?;
    let backend = EchoBackend::spawn_local().await?.addr;

    let mut config = Config::default();
    config.upstream.url = format!("http://{backend}");
    config.weixin.appid = APPID.into();
    config.weixin.secret = Secret::new(SECRET);
    config.weixin.api_base = format!("http://{fake_addr}");
    config.apps.insert(
        "staff".into(),
        crate::config::AppConfig {
            appid: STAFF_APPID.into(),
            secret: Secret::new(STAFF_SECRET),
            hosts: Vec::new(),
            path_prefix: "/staff".into(),
        },
    );
    config.server.workers = 1;
    config.validate()?;
    let listeners = Listeners::bind("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?, 1)?;
    let running = crate::server::start_with(config, listeners)?;
    let gate = running.addr;

    println!("wxgate demo");
    println!("  wxgate        http://{gate}   (admin http://{})", running.admin_addr);
    println!("  fake WeChat   http://{fake_addr}");
    println!("  echo backend  http://{backend}   (answers with what it received)\n");

    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let send = |method: Method, path: &str, session: Option<&str>, extra: Option<(&str, &str)>, body: Option<Value>| {
        let mut b = Request::builder().method(method).uri(format!("http://{gate}{path}"));
        if let Some(s) = session {
            b = b.header("x-wx-session", s);
        }
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        if !body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b.body(Full::new(Bytes::from(body)));
        let client = client.clone();
        async move {
            let res = client.request(req?).await?;
            let session = res
                .headers()
                .get("x-wx-session")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Ok::<_, DemoError>((status, session, json))
        }
    };

    println!("1. The mini program calls wx.login and posts the code:  POST /api/login {{\"code\": \"alice.1\"}}");
    let (status, session, json) =
        send(Method::POST, "/api/login", None, None, Some(json!({"code": "alice.1"}))).await?;
    let session = session.ok_or("the login answer carries no session header")?;
    println!(
        "   wxgate exchanged the code with WeChat; the client gets {status} and x-wx-session: {}…",
        &session[..6]
    );
    show_backend(&json);
    check(
        backend_header(&json, "x-wx-openid").is_some(),
        "the login reached the backend without an openid",
    )?;

    println!("2. A later request with the session header:  GET /api/orders?page=1");
    let (_, _, json) = send(Method::GET, "/api/orders?page=1", Some(&session), None, None).await?;
    show_backend(&json);
    check(
        backend_header(&json, "x-wx-openid").is_some(),
        "the session did not give an identity",
    )?;
    check(
        backend_header(&json, "x-wx-session").is_none(),
        "the session token reached the backend",
    )?;

    println!("3. A forged identity header is removed:  GET /api/orders with X_WX_OPENID: admin and no session");
    let (_, _, json) = send(Method::GET, "/api/orders", None, Some(("X_WX_OPENID", "admin")), None).await?;
    show_backend(&json);
    check(
        json["headers"].get("x_wx_openid").is_none(),
        "a forged identity header reached the backend",
    )?;

    println!("4. The getPhoneNumber button (legacy flow):  POST /api/phone {{encryptedData, iv}}");
    let minted = fake.mint_phone(&MintRequest {
        user: "alice".into(),
        phone_number: "13800138000".into(),
        pure_phone_number: "13800138000".into(),
        country_code: "86".into(),
        appid: None,
        watermark_appid: None,
        timestamp: None,
    })?;
    let body = json!({"encryptedData": minted.encrypted_data, "iv": minted.iv});
    let (status, _, json) = send(Method::POST, "/api/phone", Some(&session), None, Some(body)).await?;
    println!("   wxgate decrypted it with the session key only it holds ({status})");
    show_backend(&json);
    check(
        backend_header(&json, "x-wx-phone-number") == Some("13800138000"),
        "no phone number from encryptedData",
    )?;

    println!("5. The getPhoneNumber button (base library >= 2.21.2):  POST /api/phone {{\"code\": ...}}");
    let body = json!({"code": "phone:13900139000"});
    let (status, _, json) = send(Method::POST, "/api/phone", Some(&session), None, Some(body)).await?;
    println!("   wxgate exchanged the phone code with WeChat ({status})");
    show_backend(&json);
    check(
        backend_header(&json, "x-wx-phone-number") == Some("13900139000"),
        "no phone number from the code",
    )?;

    println!("6. Without a session, the phone route asks for a login:");
    let (status, _, json) = send(Method::POST, "/api/phone", None, None, Some(json!({"code": "phone:1"}))).await?;
    println!("   {status} {json}\n");
    check(status == 401, "the phone route answered without a session")?;

    println!(
        "7. A second mini program, the staff app (path_prefix = \"/staff\"):  POST /staff/api/login {{\"code\": \"bob.1\"}}"
    );
    let (_, staff_session, json) = send(
        Method::POST,
        "/staff/api/login",
        None,
        None,
        Some(json!({"code": "bob.1"})),
    )
    .await?;
    let staff_session = staff_session.ok_or("the staff login answer carries no session header")?;
    println!("   wxgate exchanged the code with the staff app's credentials");
    show_backend(&json);
    check(
        backend_header(&json, "x-wx-appid") == Some(STAFF_APPID),
        "the staff login did not carry the staff app's AppID",
    )?;
    let (_, _, json) = send(Method::GET, "/staff/api/tasks", Some(&staff_session), None, None).await?;
    check(
        backend_header(&json, "x-wx-appid") == Some(STAFF_APPID),
        "the staff session did not give the staff identity",
    )?;

    println!("8. The shop's session on a staff path is not honoured:  GET /staff/api/tasks with alice's session");
    let (_, _, json) = send(Method::GET, "/staff/api/tasks", Some(&session), None, None).await?;
    show_backend(&json);
    check(
        backend_header(&json, "x-wx-openid").is_none(),
        "a shop session opened a staff path",
    )?;

    running.shutdown_now();
    running.stopped().await;
    println!("Done. The backend never saw the AppSecret, a session_key or the session token.");
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), DemoError> {
    if ok { Ok(()) } else { Err(what.into()) }
}

fn backend_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo.get("headers")?.get(name)?.as_str()
}

fn show_backend(echo: &Value) {
    let Some(headers) = echo.get("headers").and_then(Value::as_object) else {
        println!("   (wxgate answered itself: {echo})\n");
        return;
    };
    println!(
        "   the backend received {} {}",
        echo["method"].as_str().unwrap_or("?"),
        echo["uri"].as_str().unwrap_or("?")
    );
    let mut any = false;
    for (k, v) in headers {
        if k.starts_with("x-wx-") {
            println!("     {k}: {}", v.as_str().unwrap_or(""));
            any = true;
        }
    }
    if !any {
        println!("     (no x-wx-* header: an anonymous request)");
    }
    println!();
}
