//! What wxgate writes to a shared store, sealed: nothing in it is readable
//! without what only the client (a session token, a login code) or the
//! server (`[redis].secret`) holds.
//!
//! The scheme (oauth2-proxy's ticket design, improved):
//!
//! - From `[redis].secret`, HKDF-SHA256 derives two server keys: one names
//!   keys, one salts the sealing keys ([`Keys::new`]).
//! - **Key names** are `<prefix><kind>:<name>`, where `name` is the first 16
//!   bytes of HMAC-SHA256(naming key, kind || 0 || material), URL-safe
//!   base64: `s` for a session (material: the token), `c` for a login code
//!   (the appid and the code), `k` for a user's key history and `u` for a
//!   user's session index (the appid and the openid), `t` for the token
//!   refresh lock (the appid). A name reveals nothing of its material, and
//!   without the server secret nobody can compute the name of a token or
//!   code they hold either. Names carry no `{`: no Cluster hash tags.
//! - **Values** are AES-256-GCM: a version byte, a random 96-bit nonce, the
//!   ciphertext and its tag. The key is HKDF-SHA256(ikm: the material,
//!   salt: the server sealing key, info: the kind), so a session is sealed
//!   under a key derived from its token: a dump of the store (or a replica,
//!   or `MONITOR`) decrypts nothing without the tokens, and even with the
//!   server secret, nothing without them. Code entries are sealed under the
//!   code, key histories under the openid (with the server secret, as the
//!   client does not hold those). The associated data is the key name: a
//!   value moved under another name does not open.
//! - A value that does not open (a tampered, moved or foreign value, or a
//!   secret that changed) is treated as absent, never as an error the
//!   client sees, and logged.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The format of a sealed value (the first byte), so it can change later.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// What a key holds, and so how it is named and sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A session (`s`); material: its token.
    Session,
    /// A login code's outcome (`c`); material: the appid and the code.
    Code,
    /// A user's recent session keys (`k`); material: the appid and the openid.
    KeyHistory,
    /// A user's session names, for revoking them all (`u`); material: the
    /// appid and the openid.
    UserIndex,
    /// An app's forced access-token refresh lock (`t`); material: the appid.
    RefreshLock,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Session => "s",
            Kind::Code => "c",
            Kind::KeyHistory => "k",
            Kind::UserIndex => "u",
            Kind::RefreshLock => "t",
        }
    }
}

/// The server's keys, derived from `[redis].secret`.
#[derive(Clone)]
pub struct Keys {
    prefix: String,
    naming: Hmac<Sha256>,
    sealing_salt: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

/// A sealed value that does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stored value does not open (tampered, moved, or sealed under another secret)")]
pub struct Unsealable;

impl Keys {
    /// The keys derived from `secret` (`[redis].secret`), naming keys under
    /// `prefix` (`[redis].key_prefix`).
    pub fn new(secret: &[u8], prefix: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"wxgate redis v1"), secret);
        let mut naming = [0u8; 32];
        let mut sealing_salt = [0u8; 32];
        // 32-byte outputs of SHA-256 HKDF cannot fail.
        let _ = hk.expand(b"naming", &mut naming);
        let _ = hk.expand(b"sealing", &mut sealing_salt);
        let naming = <Hmac<Sha256> as Mac>::new_from_slice(&naming).expect("HMAC takes keys of any length");
        Self {
            prefix: prefix.to_owned(),
            naming,
            sealing_salt,
        }
    }

    /// The key name for `material` of `kind`.
    pub fn name(&self, kind: Kind, material: &[&[u8]]) -> String {
        self.name_of(kind, &self.digest(kind, material))
    }

    /// The 16 bytes that make a key's name (the in-process cache's key).
    pub fn digest(&self, kind: Kind, material: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.naming.clone();
        mac.update(kind.tag().as_bytes());
        for part in material {
            mac.update(&[0]);
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        digest
    }

    /// The key name of a digest.
    pub fn name_of(&self, kind: Kind, digest: &[u8; 16]) -> String {
        format!("{}{}:{}", self.prefix, kind.tag(), URL_SAFE_NO_PAD.encode(digest))
    }

    /// The digest of a session's key name (from a revocation message).
    pub fn digest_of(&self, name: &str) -> Option<[u8; 16]> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix("s:")?;
        let mut digest = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(rest, &mut digest) {
            Ok(16) => Some(digest),
            _ => None,
        }
    }

    /// The key prefix, as configured.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn cipher(&self, kind: Kind, material: &[&[u8]]) -> Aes256Gcm {
        let mut ikm = Vec::new();
        for part in material {
            ikm.extend_from_slice(&(part.len() as u32).to_be_bytes());
            ikm.extend_from_slice(part);
        }
        let hk = Hkdf::<Sha256>::new(Some(&self.sealing_salt), &ikm);
        let mut key = [0u8; 32];
        let _ = hk.expand(kind.tag().as_bytes(), &mut key);
        Aes256Gcm::new(&key.into())
    }

    /// Seals `plain` for the key `name`, under a key derived from `material`.
    pub fn seal(&self, kind: Kind, material: &[&[u8]], name: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher(kind, material)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: name.as_bytes(),
                },
            )
            // AES-GCM fails only past 64 GiB of plaintext.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed by [`Keys::seal`] for the same name and material.
    pub fn open(&self, kind: Kind, material: &[&[u8]], name: &str, sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(Unsealable);
        }
        let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
        self.cipher(kind, material)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(b"a server secret of enough length!", "wxgate:")
    }

    #[test]
    fn names_are_keyed_hashes_that_reveal_nothing() {
        let k = keys();
        let token = [7u8; 16];
        let name = k.name(Kind::Session, &[&token]);
        assert!(name.starts_with("wxgate:s:"), "{name}");
        assert_eq!(name.len(), "wxgate:s:".len() + 22);
        assert!(!name.contains('{'), "no Cluster hash tags");
        assert_eq!(name, k.name(Kind::Session, &[&token]), "stable");
        assert_ne!(name, k.name(Kind::Session, &[&[8u8; 16]]));
        assert_ne!(name, k.name(Kind::Code, &[&token]), "kinds differ");
        let other = Keys::new(b"another server secret, as long...", "wxgate:");
        assert_ne!(name, other.name(Kind::Session, &[&token]), "the secret is in the name");
        assert_eq!(k.digest_of(&name), Some(k.digest(Kind::Session, &[&token])));
        assert_eq!(k.digest_of("wxgate:c:xyz"), None);
        assert_eq!(k.digest_of("other:s:AAAAAAAAAAAAAAAAAAAAAA"), None);
        // Parts are separated: ("ab","c") is not ("a","bc").
        assert_ne!(k.name(Kind::Code, &[b"ab", b"c"]), k.name(Kind::Code, &[b"a", b"bc"]));
    }

    #[test]
    fn values_open_only_with_their_material_and_under_their_name() {
        let k = keys();
        let token = [7u8; 16];
        let name = k.name(Kind::Session, &[&token]);
        let sealed = k.seal(Kind::Session, &[&token], &name, b"the session");
        assert!(!sealed.windows(11).any(|w| w == b"the session"));
        assert_eq!(
            k.open(Kind::Session, &[&token], &name, &sealed).unwrap(),
            b"the session"
        );
        // Another token, another name, another kind, another secret: nothing.
        assert_eq!(k.open(Kind::Session, &[&[8u8; 16]], &name, &sealed), Err(Unsealable));
        let moved = k.name(Kind::Session, &[&[8u8; 16]]);
        assert_eq!(k.open(Kind::Session, &[&token], &moved, &sealed), Err(Unsealable));
        assert_eq!(k.open(Kind::Code, &[&token], &name, &sealed), Err(Unsealable));
        let other = Keys::new(b"another server secret, as long...", "wxgate:");
        assert_eq!(other.open(Kind::Session, &[&token], &name, &sealed), Err(Unsealable));
        // Tampering and garbage.
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(k.open(Kind::Session, &[&token], &name, &tampered), Err(Unsealable));
        for garbage in [&b""[..], b"P", b"\x01short", &[2u8; 64]] {
            assert_eq!(k.open(Kind::Session, &[&token], &name, garbage), Err(Unsealable));
        }
        // Two seals of one value differ (a fresh nonce each).
        assert_ne!(sealed, k.seal(Kind::Session, &[&token], &name, b"the session"));
    }
}
