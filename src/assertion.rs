//! Signed identity assertions (`[assertion]`): with each identity it
//! forwards, wxgate sends a short-lived JWT the backend can verify, so that
//! trusting the identity no longer rests on nothing else reaching the
//! backend (the model of Pomerium's `X-Pomerium-Jwt-Assertion` and
//! Cloudflare Access's `Cf-Access-Jwt-Assertion`).
//!
//! - ES256 (ECDSA P-256, SHA-256), JWS compact serialization (RFC 7515),
//!   header `{"alg":"ES256","kid":<RFC 7638 thumbprint>,"typ":"JWT"}`.
//! - Claims: `iss`, `aud`, `sub` (the openid), `appid`, `unionid` when
//!   known, the phone claims when the request carries phone headers, `iat`,
//!   `exp` (`iat` + `[assertion].ttl`), a random `jti`, and the request it
//!   belongs to, as DPoP names them: `htm` (the method) and `htu` (the path
//!   as forwarded, without the query), so an assertion lifted from a log
//!   does not open another route.
//! - The signing key: `[assertion].key_file` (PKCS#8 PEM, the same file on
//!   every replica), or one made at start for a single instance. The JWKS
//!   (`GET /.well-known/jwks.json` on the admin listener, `wxgate jwks`)
//!   publishes it and the `previous_key_files`, for rotations.
//!
//! Signing is ring's ECDSA with the key parsed once (ring is already here
//! for TLS, with its assembly P-256); the JOSE part is three base64url
//! segments joined by dots, the header's encoded once. A signature is made
//! per request (the claims name the request and its time): its cost is in
//! `bench/instructions` (scenario `assert`).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::AssertionConfig;
use crate::session::{PhoneNumber, unix_now};

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file (named) cannot be read.
    #[error("cannot read {0:?}: {1}")]
    Read(String, std::io::Error),
    #[error(
        "is not a PEM PKCS#8 private key (\"-----BEGIN PRIVATE KEY-----\"); make one with `wxgate keygen --out FILE`, \
         or convert an \"EC PRIVATE KEY\" with `openssl pkcs8 -topk8 -nocrypt -in KEY`"
    )]
    /// The file holds no PEM PKCS#8 private key.
    NotPem,
    /// The key is PKCS#8 but not a P-256 (ECDSA) key.
    #[error("is not a P-256 (prime256v1) private key; make one with `wxgate keygen --out FILE`")]
    NotP256,
    /// No key could be made (the system's random source failed).
    #[error("cannot make a key: {0}")]
    Generate(&'static str),
}

/// A P-256 key pair and its public JWK.
pub struct KeyPair {
    pair: EcdsaKeyPair,
    kid: String,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A PKCS#8 PEM private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// A PKCS#8 PEM private key file.
    pub fn from_file(path: &str) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|e| KeyError::Read(path.to_owned(), e))?;
        Self::from_pem(&pem)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
            .map_err(|_| KeyError::NotP256)?;
        // An uncompressed point: 0x04, x, y (32 bytes each).
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        // RFC 7638: the required members, in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        Ok(Self { pair, kid, jwk })
    }

    /// A new key, and its PKCS#8 PEM (for `wxgate keygen`).
    pub fn generate() -> Result<(Self, String), KeyError> {
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| KeyError::Generate("the system's random source failed"))?;
        let pair = Self::from_pkcs8(der.as_ref())?;
        Ok((pair, pem("PRIVATE KEY", der.as_ref())))
    }

    /// The key id: its RFC 7638 thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// DER as PEM (RFC 7468): base64 in lines of 64.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The JWKS publishing `keys` (RFC 7517 §5).
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a KeyPair>) -> String {
    let keys: Vec<&serde_json::Value> = keys.into_iter().map(|k| &k.jwk).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// What an assertion says about one request.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    appid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    unionid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pure_phone_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country_code: Option<&'a str>,
    iat: u64,
    exp: u64,
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
}

/// Who and what one assertion is for.
pub struct Subject<'a> {
    /// The user's openid: the `sub` claim.
    pub openid: &'a str,
    /// The AppID of the session's mini program: the `appid` claim.
    pub appid: &'a str,
    /// The user's unionid, when known: the `unionid` claim.
    pub unionid: Option<&'a str>,
    /// The phone number the request carries, if any: the phone claims.
    pub phone: Option<&'a PhoneNumber>,
    /// The request's method: the `htm` claim.
    pub method: &'a str,
    /// The request's path as forwarded, without the query: the `htu` claim.
    pub path: &'a str,
}

/// Signs assertions; one per process, shared by the workers.
pub struct Signer {
    key: KeyPair,
    /// The JOSE header, base64url, with its trailing dot.
    header: String,
    issuer: String,
    audience: String,
    ttl: u64,
    rng: SystemRandom,
    jwks: String,
    name: HeaderName,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.key.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer `[assertion]` describes; `None` when disabled. Without a
    /// key file, a key is made now (and a warning logged: another replica
    /// would sign with another key).
    pub fn new(config: &AssertionConfig) -> Result<Option<Arc<Self>>, (String, KeyError)> {
        if !config.enabled {
            return Ok(None);
        }
        let key = if config.key_file.is_empty() {
            let (key, _) = KeyPair::generate().map_err(|e| ("assertion.key_file".to_owned(), e))?;
            tracing::warn!(
                kid = %key.kid,
                "assertion.key_file is not set: assertions are signed with a key made at start, which no other \
                 replica shares and a restart replaces; for a single instance only (make one with `wxgate keygen`)"
            );
            key
        } else {
            KeyPair::from_file(&config.key_file).map_err(|e| ("assertion.key_file".to_owned(), e))?
        };
        let mut previous = Vec::new();
        for (i, file) in config.previous_key_files.iter().enumerate() {
            previous.push(KeyPair::from_file(file).map_err(|e| (format!("assertion.previous_key_files[{i}]"), e))?);
        }
        let header = serde_json::json!({"alg": "ES256", "kid": key.kid, "typ": "JWT"}).to_string();
        let jwks = jwks(std::iter::once(&key).chain(previous.iter().filter(|p| p.kid != key.kid)));
        Ok(Some(Arc::new(Self {
            header: format!("{}.", URL_SAFE_NO_PAD.encode(header)),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: config.ttl.get().as_secs().max(1),
            rng: SystemRandom::new(),
            jwks,
            // Validated.
            name: HeaderName::from_bytes(config.header.as_bytes()).unwrap_or(HeaderName::from_static("x-wx-assertion")),
            key,
        })))
    }

    /// The header the assertion goes in.
    pub fn header_name(&self) -> &HeaderName {
        &self.name
    }

    /// The published keys, as JSON.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// An assertion for `subject`, as a header value; `None` only if the
    /// system's random source fails (the request then goes without one,
    /// and the failure is logged).
    pub fn sign(&self, subject: &Subject<'_>) -> Option<HeaderValue> {
        let now = unix_now();
        let jti: [u8; 16] = rand::random();
        let jti = URL_SAFE_NO_PAD.encode(jti);
        let phone = subject.phone;
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: subject.openid,
            appid: subject.appid,
            unionid: subject.unionid,
            phone_number: phone.map(|p| &*p.phone_number),
            pure_phone_number: phone.map(|p| &*p.pure_phone_number),
            country_code: phone.map(|p| &*p.country_code),
            iat: now,
            exp: now + self.ttl,
            jti: &jti,
            htm: subject.method,
            htu: subject.path,
        };
        let payload = serde_json::to_vec(&claims).ok()?;
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&self.header);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = match self.key.pair.sign(&self.rng, token.as_bytes()) {
            Ok(s) => s,
            Err(_) => {
                tracing::error!("cannot sign an assertion: the system's random source failed");
                return None;
            }
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        HeaderValue::try_from(token).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn config(key_file: &str) -> AssertionConfig {
        AssertionConfig {
            enabled: true,
            audience: "backend".into(),
            key_file: key_file.into(),
            ttl: HumanDuration::secs(120),
            ..AssertionConfig::default()
        }
    }

    fn part(token: &str, i: usize) -> serde_json::Value {
        let seg = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
    }

    #[test]
    fn a_generated_key_round_trips_through_pem_and_keeps_its_thumbprint() {
        let (key, pem) = KeyPair::generate().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let again = KeyPair::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(key.kid().len(), 43, "base64url of a SHA-256");
        let jwks: serde_json::Value = serde_json::from_str(&jwks([&key])).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], key.kid());
        assert_eq!(jwks["keys"][0]["crv"], "P-256");
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638's construction on a known P-256 point: SHA-256 over the
        // canonical JSON, by hand here.
        let (key, _) = KeyPair::generate().unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            key.jwk["x"].as_str().unwrap(),
            key.jwk["y"].as_str().unwrap()
        );
        assert_eq!(key.kid(), URL_SAFE_NO_PAD.encode(Sha256::digest(canonical)));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(KeyPair::from_pem(b"nothing"), Err(KeyError::NotPem)));
        let not_p256 = pem("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(KeyPair::from_pem(not_p256.as_bytes()), Err(KeyError::NotP256)));
        assert!(matches!(
            KeyPair::from_file("/nonexistent/key.pem"),
            Err(KeyError::Read(..))
        ));
    }

    #[test]
    fn assertions_carry_the_claims_and_the_kid() {
        let signer = Signer::new(&config("")).unwrap().unwrap();
        let phone = PhoneNumber {
            phone_number: "13800138000".into(),
            pure_phone_number: "13800138000".into(),
            country_code: "86".into(),
        };
        let token = signer
            .sign(&Subject {
                openid: "o\"quoted\\",
                appid: "wxA",
                unionid: None,
                phone: Some(&phone),
                method: "POST",
                path: "/api/phone",
            })
            .unwrap();
        let token = token.to_str().unwrap();
        assert_eq!(token.split('.').count(), 3);
        let header = part(token, 0);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], signer.key.kid());
        let claims = part(token, 1);
        assert_eq!(claims["sub"], "o\"quoted\\", "escaped, not injected");
        assert_eq!(claims["aud"], "backend");
        assert_eq!(claims["iss"], "wxgate");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "/api/phone");
        assert_eq!(claims["phone_number"], "13800138000");
        assert!(claims.get("unionid").is_none());
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120);
        let sig = URL_SAFE_NO_PAD.decode(token.split('.').nth(2).unwrap()).unwrap();
        assert_eq!(sig.len(), 64, "r || s, as JWS wants");
        // Each assertion is its own.
        let other = signer
            .sign(&Subject {
                openid: "o",
                appid: "wxA",
                unionid: None,
                phone: None,
                method: "GET",
                path: "/",
            })
            .unwrap();
        assert_ne!(part(token, 1)["jti"], part(other.to_str().unwrap(), 1)["jti"]);
    }

    #[test]
    fn disabled_is_none_and_previous_keys_are_published() {
        assert!(Signer::new(&AssertionConfig::default()).unwrap().is_none());
        let dir = std::env::temp_dir().join(format!("wxgate-assertion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, old_pem) = KeyPair::generate().unwrap();
        let (new, new_pem) = KeyPair::generate().unwrap();
        let (old_file, new_file) = (dir.join("old.pem"), dir.join("new.pem"));
        std::fs::write(&old_file, old_pem).unwrap();
        std::fs::write(&new_file, new_pem).unwrap();
        let mut c = config(new_file.to_str().unwrap());
        c.previous_key_files = vec![old_file.to_str().unwrap().into()];
        let signer = Signer::new(&c).unwrap().unwrap();
        let jwks: serde_json::Value = serde_json::from_str(signer.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [new.kid(), old.kid()]);
        c.previous_key_files = vec!["/nonexistent.pem".into()];
        let (key, _) = Signer::new(&c).unwrap_err();
        assert_eq!(key, "assertion.previous_key_files[0]");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
