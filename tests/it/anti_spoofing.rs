//! The product's core promise: an identity or phone header that reaches the
//! backend was established by wxgate. Client copies go in every spelling.

use crate::common::*;

// ---------------------------------------------------------------------------
// Anti-spoofing
// ---------------------------------------------------------------------------

/// Client-sent spellings of every identity, phone and session header.
const SPOOFED: [(&str, &str); 14] = [
    ("x-wx-openid", "spoof-openid-1"),
    ("X-WX-OPENID", "spoof-openid-2"),
    ("x_wx_openid", "spoof-openid-3"),
    ("X_Wx_UnionId", "spoof-unionid"),
    ("x-wx-appid", "wxspoofspoofspoof"),
    ("X-Wx-Phone-Number", "13800000001"),
    ("x_wx_phone_number", "13800000002"),
    ("X-WX-PURE-PHONE-NUMBER", "13800000003"),
    ("x_Wx_Pure_Phone_Number", "13800000004"),
    ("x-wx-country-code", "999"),
    ("X_WX_COUNTRY_CODE", "998"),
    ("x_wx_session", "spoof-session-1"),
    ("X_WX_SESSION", "spoof-session-2"),
    ("x-wx_session", "spoof-session-3"),
];

const DEFAULT_IDENTITY: [&str; 7] = [
    "x-wx-openid",
    "x-wx-unionid",
    "x-wx-appid",
    "x-wx-phone-number",
    "x-wx-pure-phone-number",
    "x-wx-country-code",
    "x-wx-session",
];

fn spoofed_request(path: &str, session: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: spoof.example\r\nConnection: close\r\n");
    for (name, value) in SPOOFED {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(s) = session {
        req.push_str(&format!("x-wx-session: {s}\r\n"));
    }
    req.push_str("x-wx-openidx: in-the-x-wx-family\r\n");
    req.push_str("x-openidx: not-an-identity-header\r\n\r\n");
    req.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let gate = gate(|_| {}).await;

    // Anonymous: none of them arrives, in any spelling.
    let res = raw(gate.addr, &spoofed_request("/anon", None)).await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/anon");
    assert_eq!(
        identity_like(&r.headers, &DEFAULT_IDENTITY),
        vec![],
        "spoofed headers passed"
    );
    assert_eq!(values(&r.headers, "x-openidx"), ["not-an-identity-header"]);
    assert!(
        values(&r.headers, "x-wx-openidx").is_empty(),
        "the x-wx- family is wxgate's"
    );

    // With a live session: only wxgate's own values, once each. alice has
    // no unionid (so none may arrive), unionann has one.
    let token = gate.login("alice.1").await;
    for (user, code, unionid) in [
        ("alice", None, None),
        ("unionann", Some("unionann.1"), Some("UFAKEunionann")),
    ] {
        let token = match code {
            None => token.clone(),
            Some(code) => gate.login(code).await,
        };
        let res = raw(gate.addr, &spoofed_request("/authed", Some(&token))).await;
        assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
        let r = gate.upstream.last();
        assert_eq!(r.uri, "/authed");
        let mut seen: Vec<(String, String)> = identity_like(&r.headers, &DEFAULT_IDENTITY)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        seen.sort();
        let mut expected = vec![
            ("x-wx-appid".to_string(), APPID.to_string()),
            ("x-wx-openid".to_string(), wxgate::fake::FakeWeixin::openid_for(user)),
        ];
        if let Some(u) = unionid {
            expected.push(("x-wx-unionid".to_string(), u.to_string()));
        }
        assert_eq!(
            seen, expected,
            "{user}: the upstream saw more than wxgate's own identity"
        );
    }

    // An unknown or malformed token: anonymous, and the token still stays here.
    for bad in [
        "0000000000000000000000000000000000000000000",
        "not a token",
        &token[..token.len() - 1],
    ] {
        let res = raw(gate.addr, &spoofed_request("/bad-token", Some(bad))).await;
        assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
        let r = gate.upstream.last();
        assert_eq!(
            identity_like(&r.headers, &DEFAULT_IDENTITY),
            vec![],
            "with token {bad:?}"
        );
    }

    // Two session lines: neither goes upstream.
    let res = raw(
        gate.addr,
        format!(
            "GET /two HTTP/1.1\r\nHost: h\r\nx-wx-session: {token}\r\nX-WX-Session: {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert!(
        identity_like(&r.headers, &["x-wx-session"]).is_empty(),
        "{:?}",
        r.headers
    );

    // The token is not echoed back either, nor logged (wxgate logs at trace here).
    assert!(
        !String::from_utf8_lossy(&res).contains(&token),
        "the session token came back from the upstream"
    );
    assert!(!logs().contains(&token), "a session token was logged");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_headers_that_wxgate_sets() {
    let gate = gate(|_| {}).await;
    let token = gate.login("unionbea.1").await;
    // Naming wxgate's own headers as hop-by-hop must not take them away.
    let res = raw(
        gate.addr,
        format!(
            "GET /conn HTTP/1.1\r\nHost: h\r\nx-wx-session: {token}\r\n\
             Connection: close, X-WX-Unionid, x-wx-openid, x-wx-appid, x-request-id, x-forwarded-for, x-forwarded-host, x-forwarded-proto\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("unionbea")]
    );
    assert_eq!(values(&r.headers, "x-wx-unionid"), ["UFAKEunionbea"]);
    assert_eq!(values(&r.headers, "x-wx-appid"), [APPID]);
    assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&r.headers, "x-forwarded-host"), ["h"]);
    assert_eq!(values(&r.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&r.headers, "x-request-id").len(), 1);
    assert!(r.headers.get("connection").is_none());
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_route_strips_spoofed_headers_too() {
    let gate = gate(|_| {}).await;
    let mut req = Request::post(gate.url("/api/login")).header(header::CONTENT_TYPE, "application/json");
    for (name, value) in SPOOFED {
        req = req.header(name, value);
    }
    let a = send(req.body(Full::new(Bytes::from(r#"{"code":"bob.1"}"#))).unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = gate.upstream.last();
    assert_eq!(r.uri, "/api/login");
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("bob")]
    );
    assert_eq!(values(&r.headers, "x-wx-appid"), [APPID]);
    for name in [
        "x-wx-phone-number",
        "x-wx-pure-phone-number",
        "x-wx-country-code",
        "x-wx-session",
    ] {
        assert!(identity_like(&r.headers, &[name]).is_empty(), "{name}: {:?}", r.headers);
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_names_are_stripped_in_every_spelling() {
    let gate = gate(|c| {
        c.headers.openid = "X-User-Id".into();
        c.headers.unionid = "x-union".into();
        c.headers.appid = "x-app".into();
        c.headers.phone_number = "X-Phone".into();
        c.headers.pure_phone_number = "x-phone-pure".into();
        c.headers.country_code = "x-phone-cc".into();
        c.session.header = "X-Token".into();
        // Without the x-wx- family rule, the default names are ordinary headers.
        c.headers.strip_prefixes = vec![];
        c.headers.strip_names = vec![];
    })
    .await;
    let custom = [
        "x-user-id",
        "x-union",
        "x-app",
        "x-phone",
        "x-phone-pure",
        "x-phone-cc",
        "x-token",
    ];
    // Log in under the custom session header.
    let a = gate.post("/api/login", None, json!({"code": "carol.1"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let token = a.headers["x-token"].to_str().unwrap().to_owned();
    assert!(a.headers.get("x-wx-session").is_none());

    for session in [None, Some(token.as_str())] {
        let mut req = String::from("GET /custom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
        for n in [
            "X_USER_ID",
            "x-user-id",
            "X_Union",
            "x_app",
            "x-phone",
            "X_PHONE_PURE",
            "x_phone_cc",
            "x_token",
        ] {
            req.push_str(&format!("{n}: spoof\r\n"));
        }
        if let Some(t) = session {
            req.push_str(&format!("X-Token: {t}\r\n"));
        }
        // The default names are not wxgate's any more: they pass as ordinary headers.
        req.push_str("x-wx-openid: ordinary\r\n\r\n");
        let res = raw(gate.addr, req.as_bytes()).await;
        assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
        let r = gate.upstream.last();
        let seen: Vec<(String, String)> = identity_like(&r.headers, &custom)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        match session {
            None => assert_eq!(seen, vec![], "spoofed custom headers passed"),
            Some(_) => {
                let mut seen = seen;
                seen.sort();
                // carol has no unionid: none may arrive.
                assert_eq!(
                    seen,
                    [
                        ("x-app".to_string(), APPID.to_string()),
                        ("x-user-id".to_string(), wxgate::fake::FakeWeixin::openid_for("carol")),
                    ]
                );
            }
        }
        assert_eq!(values(&r.headers, "x-wx-openid"), ["ordinary"]);
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_header_named_with_underscores_works_and_stays_here() {
    let gate = gate(|c| c.session.header = "X_Session_Token".into()).await;
    let a = gate.post("/api/login", None, json!({"code": "erin.1"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let token = a.headers["x_session_token"].to_str().unwrap().to_owned();
    let res = raw(
        gate.addr,
        format!("GET /u HTTP/1.1\r\nHost: h\r\nX_Session_Token: {token}\r\nx-session-token: spoof\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(RawResponse::parse(&res).unwrap().status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("erin")]
    );
    assert!(
        identity_like(&r.headers, &["x-session-token"]).is_empty(),
        "{:?}",
        r.headers
    );
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_in_trailers_never_reach_the_upstream() {
    let gate = gate(|_| {}).await;
    let request = "POST /trailers HTTP/1.1\r\n\
        Host: h\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: x-wx-openid, x-wx-session, x-checksum\r\n\
        Connection: close\r\n\
        \r\n\
        4\r\nbody\r\n0\r\nx-wx-openid: spoof\r\nx-wx-session: spoof\r\nx-checksum: 1\r\n\r\n";
    let res = RawResponse::parse(&raw(gate.addr, request.as_bytes()).await).expect("an HTTP answer");
    assert_eq!(res.status, 200);
    let r = gate.upstream.last();
    assert_eq!(r.body, "body");
    assert!(
        identity_like(&r.headers, &DEFAULT_IDENTITY).is_empty(),
        "{:?}",
        r.headers
    );
    assert!(
        identity_like(&r.trailers, &DEFAULT_IDENTITY).is_empty(),
        "{:?}",
        r.trailers
    );
    finish(gate).await;
}
