//! Decryption of WeChat's `encryptedData` (the legacy phone-number flow).
//!
//! Pure functions over bytes and strings: no I/O, no networking, no HTTP. The algorithm is
//! WeChat's: base64-decode the 16-byte `session_key`, the 16-byte `iv` and the ciphertext,
//! AES-128-CBC decrypt, remove PKCS#7 padding strictly, then read the UTF-8 JSON object.
//!
//! ```
//! use wxgate::weixin::crypto::{decrypt, encrypt, SessionKey};
//!
//! let key = SessionKey::random();
//! let iv = [7u8; 16];
//! let data = encrypt(&key, &iv, br#"{"purePhoneNumber":"13580006666","countryCode":"86"}"#);
//! let iv_b64 = "BwcHBwcHBwcHBwcHBwcHBw==";
//! let phone = decrypt(&key, iv_b64, &data).unwrap();
//! assert_eq!(phone.pure_phone_number.as_deref(), Some("13580006666"));
//! ```
//!
//! # Two kinds of failure, on purpose
//!
//! [`DecryptError`] separates what the caller can blame on the client's *format* (bad base64,
//! an iv that is not 16 bytes, a ciphertext that is not whole blocks: answered 400) from
//! everything that happens after AES has run. Bad padding, invalid UTF-8 and unparsable JSON
//! all become the single opaque [`DecryptError::Decrypt`]: if they were told apart, the route
//! would be a padding oracle. In practice all three mean the same thing anyway: the data was
//! encrypted under another `session_key` than the one we hold (see `weixin-api.md`, section 4).
//!
//! # Leniency
//!
//! - ASCII whitespace anywhere in the base64 is dropped first (some clients wrap lines), and
//!   the trailing `=` padding may be present or absent.
//! - Unknown JSON fields are ignored; `countryCode` may be a string (`"86"`) or a number (`86`),
//!   because WeChat's own documents show both. A known field of the wrong type is still
//!   [`DecryptError::Decrypt`].
//!
//! PKCS#7 is *not* lenient: the pad is 1..=16 bytes, all equal. Some SDKs strip up to 32
//! bytes unchecked; that only hides a wrong key behind garbage output.

use std::fmt;

use aes::Aes128;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::Rng;
use serde::{Deserialize, Deserializer};

type Aes128CbcDec = cbc::Decryptor<Aes128>;
type Aes128CbcEnc = cbc::Encryptor<Aes128>;

/// AES block size: the iv length and the granularity of the ciphertext.
const BLOCK_LEN: usize = 16;

/// Standard alphabet, padding optional on input. Encoding still pads, like WeChat does.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A user's 16-byte `session_key`, as issued by `code2Session`.
///
/// Its `Debug` never shows the key, so it can sit in structs that get logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionKey([u8; 16]);

impl SessionKey {
    /// Reads the base64 `session_key` WeChat returns. It must decode to exactly 16 bytes.
    pub fn from_base64(b64: &str) -> Result<SessionKey, DecryptError> {
        let bytes = decode_base64(b64).ok_or(DecryptError::SessionKey)?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| DecryptError::SessionKey)?;
        Ok(SessionKey(bytes))
    }

    /// A key from its 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> SessionKey {
        SessionKey(bytes)
    }

    /// The key's 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Standard alphabet with padding, the form WeChat sends.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A fresh key from `rand`'s thread-local CSPRNG (ChaCha, seeded and reseeded from the OS).
    pub fn random() -> SessionKey {
        let mut bytes = [0u8; 16];
        rand::rng().fill(&mut bytes);
        SessionKey(bytes)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

/// Why `encryptedData` could not be read.
///
/// Use [`DecryptError::is_client_format_error`] to choose between 400 (the client sent
/// something malformed) and 401 (well-formed, but not decryptable with the key we hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// `field` ("iv" or "encryptedData") is not base64.
    #[error("{field} is not valid base64")]
    Base64 {
        /// "iv" or "encryptedData".
        field: &'static str,
    },
    /// The iv did not decode to 16 bytes.
    #[error("iv must decode to 16 bytes")]
    IvLength,
    /// The ciphertext is empty or not a whole number of 16-byte blocks.
    #[error("encryptedData must decode to a non-empty multiple of 16 bytes")]
    CiphertextLength,
    /// The `session_key` (from WeChat or our store, never from the client) is not base64 of
    /// 16 bytes.
    #[error("session_key is not base64 of 16 bytes")]
    SessionKey,
    /// Padding, UTF-8 or JSON failed after decryption. Deliberately one variant with no
    /// detail: telling these apart would make the route a padding oracle.
    #[error("encryptedData could not be decrypted with the session key")]
    Decrypt,
}

impl DecryptError {
    /// True when the client's input was malformed before any decryption happened.
    pub fn is_client_format_error(&self) -> bool {
        match self {
            DecryptError::Base64 { .. } | DecryptError::IvLength | DecryptError::CiphertextLength => true,
            DecryptError::SessionKey | DecryptError::Decrypt => false,
        }
    }
}

/// The fields wxgate reads from a decrypted payload. Every field is optional: phone payloads
/// and user-info payloads share this shape, and absent fields are the caller's to judge.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptedData {
    /// `phoneNumber`: may carry the country code for overseas numbers (`+1...`).
    pub phone_number: Option<String>,
    /// `purePhoneNumber`: never carries the country code.
    pub pure_phone_number: Option<String>,
    /// `countryCode`, normalised to a string whether WeChat sent `"86"` or `86`.
    #[serde(default, deserialize_with = "string_or_integer")]
    pub country_code: Option<String>,
    /// Who made the data, and when: the caller checks both.
    pub watermark: Option<Watermark>,
}

impl fmt::Debug for DecryptedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptedData")
            .field("phone_number", &self.phone_number.as_deref().map(mask_phone))
            .field("pure_phone_number", &self.pure_phone_number.as_deref().map(mask_phone))
            .field("country_code", &self.country_code)
            .field("watermark", &self.watermark)
            .finish()
    }
}

/// Proof of origin WeChat embeds in every encrypted payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Watermark {
    /// The AppID of the mini program the data was produced for.
    pub appid: String,
    /// Unix seconds when WeChat produced the payload.
    pub timestamp: u64,
}

/// Masks a phone number for logs: the first 3 and last 4 characters stay, the rest become
/// `*` (`13580006666` -> `135****6666`). Values of 7 characters or fewer are all stars, since
/// keeping 3 + 4 of them would hide nothing.
pub fn mask_phone(phone: &str) -> String {
    const KEEP_HEAD: usize = 3;
    const KEEP_TAIL: usize = 4;
    let len = phone.chars().count();
    if len <= KEEP_HEAD + KEEP_TAIL {
        return "*".repeat(len);
    }
    phone
        .chars()
        .enumerate()
        .map(|(i, c)| if i < KEEP_HEAD || i >= len - KEEP_TAIL { c } else { '*' })
        .collect()
}

/// Decrypts and parses `encryptedData`. See the module docs for the error contract.
pub fn decrypt(key: &SessionKey, iv_b64: &str, data_b64: &str) -> Result<DecryptedData, DecryptError> {
    let plaintext = decrypt_raw(key, iv_b64, data_b64)?;
    parse_plaintext(&plaintext)
}

/// Decrypts `encryptedData` to its plaintext bytes (padding removed, not yet parsed).
pub fn decrypt_raw(key: &SessionKey, iv_b64: &str, data_b64: &str) -> Result<Vec<u8>, DecryptError> {
    let iv = decode_base64(iv_b64).ok_or(DecryptError::Base64 { field: "iv" })?;
    let iv: [u8; BLOCK_LEN] = iv.try_into().map_err(|_| DecryptError::IvLength)?;
    let mut data = decode_base64(data_b64).ok_or(DecryptError::Base64 { field: "encryptedData" })?;
    if data.is_empty() || data.len() % BLOCK_LEN != 0 {
        return Err(DecryptError::CiphertextLength);
    }
    let plaintext_len = Aes128CbcDec::new(key.as_bytes().into(), (&iv).into())
        .decrypt_padded_mut::<Pkcs7>(&mut data)
        .map_err(|_| DecryptError::Decrypt)?
        .len();
    data.truncate(plaintext_len);
    Ok(data)
}

/// Parses decrypted bytes: UTF-8, a JSON object, the known fields of the right types.
pub fn parse_plaintext(plaintext: &[u8]) -> Result<DecryptedData, DecryptError> {
    let text = std::str::from_utf8(plaintext).map_err(|_| DecryptError::Decrypt)?;
    // An object only: serde's derived struct visitor would also accept a JSON
    // array of the fields in order. Parsed straight into the struct, the
    // fields wxgate does not read are skipped, not built.
    if !text.trim_start().starts_with('{') {
        return Err(DecryptError::Decrypt);
    }
    serde_json::from_str(text).map_err(|_| DecryptError::Decrypt)
}

/// Encrypts `plaintext` the way WeChat does (AES-128-CBC, PKCS#7) and returns standard padded
/// base64. The fake WeChat and the tests mint `encryptedData` with it.
pub fn encrypt(key: &SessionKey, iv: &[u8; 16], plaintext: &[u8]) -> String {
    // PKCS#7 always adds 1..=16 bytes, so this buffer is exactly the ciphertext's size.
    let mut buf = vec![0u8; (plaintext.len() / BLOCK_LEN + 1) * BLOCK_LEN];
    buf[..plaintext.len()].copy_from_slice(plaintext);
    let ciphertext = Aes128CbcEnc::new(key.as_bytes().into(), iv.into())
        .encrypt_padded_mut::<Pkcs7>(&mut buf, plaintext.len())
        // Cannot fail (the only error is a buffer too small for the padding). An empty string
        // is never valid encryptedData, so even then nothing could decrypt by accident.
        .unwrap_or_default();
    STANDARD.encode(ciphertext)
}

/// Lenient base64: ASCII whitespace dropped, padding optional. `None` when not base64.
fn decode_base64(input: &str) -> Option<Vec<u8>> {
    // The usual case first: no whitespace, nothing to drop or copy. Only
    // input that does not decode as it is gets looked at for whitespace.
    if let Ok(bytes) = LENIENT_BASE64.decode(input) {
        return Some(bytes);
    }
    if !input.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let compact: Vec<u8> = input.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT_BASE64.decode(compact).ok()
}

/// `countryCode` as WeChat sends it: `"86"` or `86`. A visitor rather than an
/// untagged enum, which would first buffer the value to try each variant.
fn string_or_integer<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct StringOrInteger;

    impl<'de> serde::de::Visitor<'de> for StringOrInteger {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a non-negative integer")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    deserializer.deserialize_any(StringOrInteger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbc::cipher::block_padding::NoPadding;
    use proptest::prelude::*;
    use serde_json::json;

    // WeChat's published demo vector (weixin-api.md, section 4).
    const DEMO_APPID: &str = "wx4f4bc4dec97d474b";
    const DEMO_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
    const DEMO_IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
    const DEMO_DATA: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";
    const DEMO_PLAINTEXT: &str = r#"{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA","watermark":{"timestamp":1477314187,"appid":"wx4f4bc4dec97d474b"}}"#;

    const IV: [u8; 16] = *b"0123456789abcdef";

    fn demo_key() -> SessionKey {
        SessionKey::from_base64(DEMO_KEY).unwrap()
    }

    fn iv_b64() -> String {
        STANDARD.encode(IV)
    }

    /// Encrypts whole blocks with no padding added, to hand-craft bad padding.
    fn encrypt_unpadded(key: &SessionKey, plaintext: &[u8]) -> String {
        assert_eq!(plaintext.len() % BLOCK_LEN, 0);
        let mut buf = plaintext.to_vec();
        let len = buf.len();
        let ciphertext = Aes128CbcEnc::new(key.as_bytes().into(), (&IV).into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, len)
            .unwrap();
        STANDARD.encode(ciphertext)
    }

    #[test]
    fn official_demo_vector_decrypts_to_the_published_user_info() {
        let raw = decrypt_raw(&demo_key(), DEMO_IV, DEMO_DATA).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let want: serde_json::Value = serde_json::from_str(DEMO_PLAINTEXT).unwrap();
        assert_eq!(got, want);

        let data = decrypt(&demo_key(), DEMO_IV, DEMO_DATA).unwrap();
        assert_eq!(
            data,
            DecryptedData {
                phone_number: None,
                pure_phone_number: None,
                country_code: None,
                watermark: Some(Watermark {
                    appid: DEMO_APPID.to_owned(),
                    timestamp: 1_477_314_187,
                }),
            }
        );
    }

    #[test]
    fn session_key_base64_round_trips_and_checks_length() {
        let key = demo_key();
        assert_eq!(key.to_base64(), DEMO_KEY);
        assert_eq!(SessionKey::from_bytes(*key.as_bytes()), key);
        assert_eq!(
            SessionKey::from_base64("tiihtNczf5v6AKRyjwEU"),
            Err(DecryptError::SessionKey)
        );
        assert_eq!(SessionKey::from_base64("not base64!"), Err(DecryptError::SessionKey));
        assert_ne!(SessionKey::random(), SessionKey::random());
    }

    #[test]
    fn session_key_debug_is_redacted() {
        assert_eq!(format!("{:?}", demo_key()), "SessionKey([redacted])");
    }

    #[test]
    fn round_trip_phone_payload() {
        let key = SessionKey::random();
        let plaintext = json!({
            "phoneNumber": "+12025550123",
            "purePhoneNumber": "2025550123",
            "countryCode": "1",
            "watermark": {"appid": "wxabc", "timestamp": 1_700_000_000u64},
        });
        let data = encrypt(&key, &IV, plaintext.to_string().as_bytes());
        let got = decrypt(&key, &iv_b64(), &data).unwrap();
        assert_eq!(got.phone_number.as_deref(), Some("+12025550123"));
        assert_eq!(got.pure_phone_number.as_deref(), Some("2025550123"));
        assert_eq!(got.country_code.as_deref(), Some("1"));
        assert_eq!(
            got.watermark,
            Some(Watermark {
                appid: "wxabc".to_owned(),
                timestamp: 1_700_000_000
            })
        );
    }

    #[test]
    fn whitespace_and_missing_padding_in_base64_are_tolerated() {
        let wrapped: String = DEMO_DATA
            .as_bytes()
            .chunks(60)
            .map(|line| format!("{}\r\n", std::str::from_utf8(line).unwrap()))
            .collect();
        let iv = " r7BXXKkLb8qrSNn05n0qiA\n\t";
        let data = decrypt(&demo_key(), iv, &format!("\n {wrapped}")).unwrap();
        assert_eq!(data.watermark.map(|w| w.appid).as_deref(), Some(DEMO_APPID));
        let unpadded = DEMO_DATA.trim_end_matches('=');
        assert!(decrypt(&demo_key(), DEMO_IV, unpadded).is_ok());
    }

    #[test]
    fn wrong_key_is_the_opaque_error() {
        // A wrong key almost always breaks the padding; when it does not, JSON fails.
        for _ in 0..32 {
            let err = decrypt(&SessionKey::random(), DEMO_IV, DEMO_DATA).unwrap_err();
            assert_eq!(err, DecryptError::Decrypt);
            assert!(!err.is_client_format_error());
        }
    }

    #[test]
    fn bad_base64_names_the_field() {
        let key = demo_key();
        let err = decrypt(&key, "r7BXXKkLb8qrSNn05n0qiA==!", DEMO_DATA).unwrap_err();
        assert_eq!(err, DecryptError::Base64 { field: "iv" });
        assert!(err.is_client_format_error());
        // '+' turned into ' ' by URL decoding would be dropped as whitespace, hence '-' here.
        let err = decrypt(&key, DEMO_IV, "CiyL-1Aw").unwrap_err();
        assert_eq!(err, DecryptError::Base64 { field: "encryptedData" });
        assert!(err.is_client_format_error());
        assert_eq!(
            decrypt(&key, DEMO_IV, "A").unwrap_err(),
            DecryptError::Base64 { field: "encryptedData" }
        );
    }

    #[test]
    fn iv_must_be_16_bytes() {
        let key = demo_key();
        let iv12 = STANDARD.encode([1u8; 12]);
        let iv17 = STANDARD.encode([1u8; 17]);
        for iv in [iv12.as_str(), iv17.as_str(), ""] {
            let err = decrypt(&key, iv, DEMO_DATA).unwrap_err();
            assert_eq!(err, DecryptError::IvLength);
            assert!(err.is_client_format_error());
        }
    }

    #[test]
    fn ciphertext_must_be_whole_blocks() {
        let key = demo_key();
        for len in [0usize, 15, 17, 31] {
            let data = STANDARD.encode(vec![0u8; len]);
            let err = decrypt(&key, DEMO_IV, &data).unwrap_err();
            assert_eq!(err, DecryptError::CiphertextLength, "len {len}");
            assert!(err.is_client_format_error());
        }
    }

    #[test]
    fn every_valid_pad_length_is_removed() {
        let key = SessionKey::random();
        for len in 0..=48 {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let data = encrypt(&key, &IV, &plaintext);
            assert_eq!(decrypt_raw(&key, &iv_b64(), &data).unwrap(), plaintext);
        }
    }

    #[test]
    fn padding_is_strict() {
        let key = SessionKey::random();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Last byte 0x11: a pad longer than a block (some SDKs strip up to 32 bytes).
        cases.push([vec![b'{'; 16], vec![0x11; 16]].concat());
        // Last byte 0x00: a pad of zero.
        let mut zero = vec![b'{'; 16];
        zero[15] = 0;
        cases.push(zero);
        // Last byte says 3 but the three pad bytes differ.
        let mut unequal = vec![b'{'; 16];
        unequal[13..].copy_from_slice(&[0x01, 0x03, 0x03]);
        cases.push(unequal);
        // A full block of 0x10 with one byte off.
        let mut full = vec![0x10; 32];
        full[16] = 0x0f;
        cases.push(full);
        for plaintext in cases {
            let data = encrypt_unpadded(&key, &plaintext);
            assert_eq!(
                decrypt_raw(&key, &iv_b64(), &data),
                Err(DecryptError::Decrypt),
                "{plaintext:02x?}"
            );
        }
        // The same construction with correct padding decrypts, so the cases above fail for
        // their padding alone.
        let mut good = br#"{"countryCode":1}"#.to_vec();
        good.extend(std::iter::repeat_n(15u8, 15));
        let data = encrypt_unpadded(&key, &good);
        let got = decrypt(&key, &iv_b64(), &data).unwrap();
        assert_eq!(got.country_code.as_deref(), Some("1"));
    }

    #[test]
    fn country_code_is_a_string_or_a_number() {
        for (value, want) in [(json!("86"), "86"), (json!(86), "86"), (json!(1), "1")] {
            let plaintext = json!({"purePhoneNumber": "13580006666", "countryCode": value});
            let got = parse_plaintext(plaintext.to_string().as_bytes()).unwrap();
            assert_eq!(got.country_code.as_deref(), Some(want));
        }
        let got = parse_plaintext(br#"{"countryCode":null}"#).unwrap();
        assert_eq!(got.country_code, None);
    }

    #[test]
    fn fields_of_the_wrong_type_are_the_opaque_error() {
        for plaintext in [
            r#"{"phoneNumber":13580006666}"#,
            r#"{"purePhoneNumber":["1"]}"#,
            r#"{"countryCode":8.6}"#,
            r#"{"countryCode":-86}"#,
            r#"{"watermark":"wx4f4bc4dec97d474b"}"#,
            r#"{"watermark":{"appid":"wx","timestamp":"1477314187"}}"#,
            r#"{"watermark":{"appid":"wx","timestamp":-1}}"#,
        ] {
            assert_eq!(
                parse_plaintext(plaintext.as_bytes()),
                Err(DecryptError::Decrypt),
                "{plaintext}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let got = parse_plaintext(br#"{"purePhoneNumber":"1","extra":{"a":[1,2]}}"#).unwrap();
        assert_eq!(got.pure_phone_number.as_deref(), Some("1"));
    }

    #[test]
    fn non_json_or_non_utf8_plaintext_is_the_opaque_error() {
        let key = SessionKey::random();
        for plaintext in [
            &b"not json"[..],
            b"[null,null,null,null,null]",
            b"\"a string\"",
            b"",
            b"{\"phoneNumber\":\"\xff\xfe\"}",
            b"\xc3\x28",
        ] {
            let data = encrypt(&key, &IV, plaintext);
            assert_eq!(
                decrypt(&key, &iv_b64(), &data),
                Err(DecryptError::Decrypt),
                "{plaintext:?}"
            );
        }
    }

    #[test]
    fn mask_phone_keeps_head_and_tail() {
        assert_eq!(mask_phone("13580006666"), "135****6666");
        assert_eq!(mask_phone("+8613580006666"), "+86*******6666");
        assert_eq!(mask_phone("12345678"), "123*5678");
        assert_eq!(mask_phone("1234567"), "*******");
        assert_eq!(mask_phone("123"), "***");
        assert_eq!(mask_phone(""), "");
        assert_eq!(mask_phone("一二三四五六七八"), "一二三*五六七八");
    }

    #[test]
    fn decrypted_data_debug_masks_phone_numbers() {
        let data = DecryptedData {
            phone_number: Some("13580006666".to_owned()),
            pure_phone_number: Some("13580006666".to_owned()),
            country_code: Some("86".to_owned()),
            ..DecryptedData::default()
        };
        let debug = format!("{data:?}");
        assert!(!debug.contains("13580006666"), "{debug}");
        assert!(debug.contains("135****6666"), "{debug}");
    }

    /// Base64-looking text, so the fuzzing reaches past the decoder now and then.
    fn base64ish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[A-Za-z0-9+/= \n]{0,120}",
            prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| STANDARD.encode(b)),
        ]
    }

    proptest! {
        #[test]
        fn decrypt_never_panics(
            key in any::<[u8; 16]>(),
            iv in base64ish(),
            data in base64ish(),
        ) {
            let _ = decrypt(&SessionKey::from_bytes(key), &iv, &data);
        }

        #[test]
        fn decrypt_of_whole_blocks_is_ok_or_opaque(
            key in any::<[u8; 16]>(),
            iv in any::<[u8; 16]>(),
            blocks in prop::collection::vec(any::<[u8; 16]>(), 1..6),
        ) {
            let data = STANDARD.encode(blocks.concat());
            let result = decrypt(&SessionKey::from_bytes(key), &STANDARD.encode(iv), &data);
            prop_assert!(matches!(result, Ok(_) | Err(DecryptError::Decrypt)));
        }

        #[test]
        fn encrypt_then_decrypt_round_trips_phone_json(
            key in any::<[u8; 16]>(),
            iv in any::<[u8; 16]>(),
            phone in any::<String>(),
            pure in "[0-9]{0,20}",
            country_code in 0u64..100_000,
            code_as_string in any::<bool>(),
            appid in any::<String>(),
            timestamp in any::<u64>(),
        ) {
            let key = SessionKey::from_bytes(key);
            let cc = if code_as_string { json!(country_code.to_string()) } else { json!(country_code) };
            let plaintext = json!({
                "phoneNumber": phone,
                "purePhoneNumber": pure,
                "countryCode": cc,
                "watermark": {"appid": appid, "timestamp": timestamp},
            });
            let data = encrypt(&key, &iv, plaintext.to_string().as_bytes());
            let got = decrypt(&key, &STANDARD.encode(iv), &data).unwrap();
            prop_assert_eq!(got, DecryptedData {
                phone_number: Some(phone),
                pure_phone_number: Some(pure),
                country_code: Some(country_code.to_string()),
                watermark: Some(Watermark { appid, timestamp }),
            });
        }
    }
}
