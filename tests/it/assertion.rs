//! Signed identity assertions, verified as a backend would: with an
//! independent JWT library (jsonwebtoken on RustCrypto's P-256; wxgate signs
//! with ring) against the JWKS fetched from the admin port.

use std::path::PathBuf;
use std::process::Command;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

use crate::common::*;

const AUDIENCE: &str = "shop-backend";

/// A fresh key file (the library's keygen, as `wxgate keygen` writes it).
fn key_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wxgate-it-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pem"));
    let (_, pem) = wxgate::assertion::KeyPair::generate().unwrap();
    std::fs::write(&path, pem).unwrap();
    path
}

fn signing(key: Option<&PathBuf>, previous: &[&PathBuf]) -> impl FnOnce(&mut wxgate::Config) + use<> {
    let key = key.map(|k| k.to_str().unwrap().to_owned()).unwrap_or_default();
    let previous: Vec<String> = previous.iter().map(|p| p.to_str().unwrap().to_owned()).collect();
    move |c| {
        c.assertion.enabled = true;
        c.assertion.audience = AUDIENCE.into();
        c.assertion.key_file = key;
        c.assertion.previous_key_files = previous;
    }
}

async fn jwks_of(gate: &Gate) -> JwkSet {
    let a = gate.admin_get("/.well-known/jwks.json").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/jwk-set+json");
    serde_json::from_slice(&a.body).unwrap()
}

fn assertion_of(r: &Received) -> Option<String> {
    let all = values(&r.headers, "x-wx-assertion");
    assert!(all.len() <= 1, "one assertion at most: {all:?}");
    all.into_iter().next()
}

/// What a backend does: the key by `kid`, ES256 only, `aud`, `iss`,
/// `exp` (no leeway here), then the request the assertion names.
fn verify(token: &str, jwks: &JwkSet, audience: &str, method: &str, path: &str) -> Result<Value, String> {
    let kid = decode_header(token).map_err(|e| e.to_string())?.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[audience]);
    v.set_issuer(&["wxgate"]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    v.leeway = 0;
    let claims = decode::<Value>(token, &key, &v)
        .map_err(|e| format!("{:?}", e.kind()))?
        .claims;
    if claims["htm"] != method || claims["htu"] != path {
        return Err(format!("an assertion for {} {}", claims["htm"], claims["htu"]));
    }
    Ok(claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_verifies_each_identity_with_the_published_keys() {
    let key = key_file("main");
    let mut gate = gate(signing(Some(&key), &[])).await;
    let jwks = jwks_of(&gate).await;

    // The login itself goes upstream with its identity, and an assertion.
    let token = gate.login("union_amy.1").await;
    let login = assertion_of(&gate.upstream.last()).expect("the login carries an assertion");
    let claims = verify(&login, &jwks, AUDIENCE, "POST", "/api/login").unwrap();
    assert_eq!(claims["sub"], FakeWeixin::openid_for("union_amy"));
    assert_eq!(claims["appid"], APPID);
    assert!(claims["unionid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(claims.get("phone_number").is_none());
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // A later request: its own method and path as forwarded (no query).
    gate.get("/orders/7?page=2", Some(&token)).await;
    let a = assertion_of(&gate.upstream.last()).unwrap();
    verify(&a, &jwks, AUDIENCE, "GET", "/orders/7").unwrap();
    // Lifted and replayed on another route, or with another method: refused.
    assert!(verify(&a, &jwks, AUDIENCE, "GET", "/admin/delete").is_err());
    assert!(verify(&a, &jwks, AUDIENCE, "DELETE", "/orders/7").is_err());

    // The phone route: the phone claims come with the phone headers.
    let a = gate
        .post("/api/phone", Some(&token), json!({"code": "phone:13800138000"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = assertion_of(&gate.upstream.last()).unwrap();
    let claims = verify(&a, &jwks, AUDIENCE, "POST", "/api/phone").unwrap();
    assert_eq!(claims["phone_number"], "13800138000");
    assert_eq!(claims["country_code"], "86");

    // No identity, no assertion; a client's own is removed in any spelling.
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    for name in ["x-wx-assertion", "X_WX_ASSERTION", "x.wx.assertion"] {
        let req = Request::get(gate.url("/orders"))
            .header(name, forged)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(req).await.status, 200);
        let last = gate.upstream.last();
        assert!(identity_like(&last.headers, &["x-wx-assertion"]).is_empty(), "{name}");
        let req = Request::get(gate.url("/orders"))
            .header(name, forged)
            .header("x-wx-session", &token)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(req).await;
        let a = assertion_of(&gate.upstream.last()).unwrap();
        assert_ne!(a, forged);
        verify(&a, &jwks, AUDIENCE, "GET", "/orders").unwrap();
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_tampered_wrong_key_and_expired_assertions_are_refused() {
    let key = key_file("refusals");
    let mut gate = gate(|c| {
        signing(Some(&key), &[])(c);
        c.assertion.ttl = HumanDuration(Duration::from_secs(1));
    })
    .await;
    let jwks = jwks_of(&gate).await;
    let token = gate.login("ben.1").await;
    gate.get("/me", Some(&token)).await;
    let a = assertion_of(&gate.upstream.last()).unwrap();
    verify(&a, &jwks, AUDIENCE, "GET", "/me").unwrap();

    assert_eq!(
        verify(&a, &jwks, "another-backend", "GET", "/me").unwrap_err(),
        "InvalidAudience"
    );
    // Claims changed after signing: the signature no longer matches.
    let mut parts: Vec<String> = a.split('.').map(str::to_owned).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("oFAKEadmin");
    parts[1] = b64.encode(claims.to_string());
    assert_eq!(
        verify(&parts.join("."), &jwks, AUDIENCE, "GET", "/me").unwrap_err(),
        "InvalidSignature"
    );
    // Another key: unknown kid, and with the kid forged, a bad signature.
    let other = key_file("other");
    let mut other_gate = gate_with_key(&other).await;
    let other_jwks = jwks_of(&other_gate).await;
    assert_eq!(
        verify(&a, &other_jwks, AUDIENCE, "GET", "/me").unwrap_err(),
        "unknown kid"
    );
    let other_key = DecodingKey::from_jwk(&other_jwks.keys[0]).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[AUDIENCE]);
    assert!(matches!(
        decode::<Value>(&a, &other_key, &v).unwrap_err().kind(),
        jsonwebtoken::errors::ErrorKind::InvalidSignature
    ));
    // Past `exp` (ttl 1 s, no leeway).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        verify(&a, &jwks, AUDIENCE, "GET", "/me").unwrap_err(),
        "ExpiredSignature"
    );
    other_gate.stop().await;
    gate.stop().await;
}

async fn gate_with_key(key: &PathBuf) -> Gate {
    gate(signing(Some(key), &[])).await
}

/// Rotation: the new key signs, the old one stays published; replicas with
/// one key file are verified with one JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_replicas_sharing_a_key_file() {
    let (old, new) = (key_file("old"), key_file("new"));
    let mut before = gate(signing(Some(&old), &[])).await;
    let mut replica = replica_of(&before, signing(Some(&old), &[])).await;
    let mut after = replica_of(&before, signing(Some(&new), &[&old])).await;
    let mut assertions = Vec::new();
    for (i, g) in [&before, &replica, &after].into_iter().enumerate() {
        // Each its own memory store: a login each.
        let token = g.login(&format!("cat.{i}")).await;
        g.get("/me", Some(&token)).await;
        assertions.push(assertion_of(&g.upstream.last()).unwrap());
    }
    // The rotated JWKS verifies all three: old-key assertions still in
    // flight during the overlap, new-key ones.
    let rotated = jwks_of(&after).await;
    assert_eq!(rotated.keys.len(), 2);
    for a in &assertions {
        verify(a, &rotated, AUDIENCE, "GET", "/me").unwrap();
    }
    // One instance's JWKS verifies its replica (same key file), not the new key.
    let old_only = jwks_of(&before).await;
    assert_eq!(old_only.keys.len(), 1);
    verify(&assertions[1], &old_only, AUDIENCE, "GET", "/me").unwrap();
    assert!(verify(&assertions[2], &old_only, AUDIENCE, "GET", "/me").is_err());
    for g in [&mut before, &mut replica, &mut after] {
        g.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_file_an_ephemeral_key_signs_and_is_published() {
    let mut gate = gate(signing(None, &[])).await;
    let jwks = jwks_of(&gate).await;
    let token = gate.login("dan.1").await;
    gate.get("/me", Some(&token)).await;
    verify(
        &assertion_of(&gate.upstream.last()).unwrap(),
        &jwks,
        AUDIENCE,
        "GET",
        "/me",
    )
    .unwrap();
    assert!(
        logs().contains("assertion.key_file is not set"),
        "the warning is logged"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_off_change_nothing_but_still_strip_client_copies() {
    // A header name outside the x-wx- family, so only its own rule strips it.
    let mut gate = gate(|c| c.assertion.header = "x-identity-jwt".into()).await;
    gate.admin_get("/.well-known/jwks.json")
        .await
        .assert_error(404, "not_found");
    let token = gate.login("eli.1").await;
    let req = Request::get(gate.url("/me"))
        .header("x-wx-session", &token)
        .header("X_Identity.JWT", "forged")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(req).await;
    let last = gate.upstream.last();
    assert!(last.headers.get("x-wx-openid").is_some());
    assert!(
        identity_like(&last.headers, &["x-identity-jwt"]).is_empty(),
        "{:?}",
        last.headers
    );
    gate.stop().await;
}

/// `wxgate keygen` writes a 0600 key; `wxgate jwks` prints what the admin
/// port serves for it; `wxgate check` names a bad key file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_and_jwks_commands_match_the_admin_endpoint() {
    use std::os::unix::fs::PermissionsExt;
    let bin = env!("CARGO_BIN_EXE_wxgate");
    let dir = std::env::temp_dir().join(format!("wxgate-it-keygen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("assertion.pem");
    let _ = std::fs::remove_file(&key);
    let out = Command::new(bin).args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // Never overwritten.
    let again = Command::new(bin).args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!again.status.success());

    let printed = Command::new(bin)
        .args(["jwks", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    let mut gate = gate(signing(Some(&key), &[])).await;
    let served: Value = gate.admin_get("/.well-known/jwks.json").await.json();
    assert_eq!(printed, served);
    gate.stop().await;

    let config = dir.join("wxgate.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[weixin]\nappid = \"{APPID}\"\nsecret = \"s\"\n[assertion]\nenabled = true\nkey_file = \"{}\"\n",
            dir.join("missing.pem").display()
        ),
    )
    .unwrap();
    let check = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        stderr.contains("assertion.key_file") && stderr.contains("assertion.audience"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
