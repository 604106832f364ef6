//! Micro-benchmarks of the phone-number decryptor, `wxgate::weixin::crypto`: what the
//! encryptedData route spends on the crypto itself, apart from the proxying around it.
//!
//! ```sh
//! cargo bench --bench decrypt
//! ```
//!
//! The input is WeChat's official demo vector (`weixin-api.md`, section 4; also in the unit tests
//! of `src/weixin/crypto.rs`): a 393-byte user-info payload, 400 bytes of ciphertext. A phone
//! payload is shorter, so one more case decrypts the phone JSON of the same section (146 bytes,
//! 160 of ciphertext), encrypted under the demo key and iv. Each step of `decrypt` is measured on its own too
//! (`SessionKey::from_base64`, `decrypt_raw`, `parse_plaintext`), and so is the error path of a
//! wrong key, which is what a client whose key was refreshed meanwhile costs.
//!
//! Every benchmark takes samples of 64 calls. Left to itself, divan doubles the sample size until
//! a sample takes over 100 times the timer's precision (2 µs here), and a cold first call of these
//! microsecond functions passes that at once, leaving samples of a single call.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use divan::{Bencher, black_box};
use wxgate::weixin::crypto::{DecryptError, SessionKey, decrypt, decrypt_raw, encrypt, parse_plaintext};

const DEMO_APPID: &str = "wx4f4bc4dec97d474b";
const DEMO_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
const DEMO_IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
const DEMO_DATA: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";
const DEMO_PLAINTEXT: &str = r#"{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA","watermark":{"timestamp":1477314187,"appid":"wx4f4bc4dec97d474b"}}"#;
/// The phone payload of `weixin-api.md`, section 4, with the demo appid.
const PHONE_PLAINTEXT: &str = r#"{"phoneNumber":"13580006666","purePhoneNumber":"13580006666","countryCode":"86","watermark":{"appid":"wx4f4bc4dec97d474b","timestamp":1477314187}}"#;
/// Not the demo key: AES runs, then the padding check fails.
const WRONG_KEY: [u8; 16] = *b"0123456789abcdef";

/// The allocator the `wxgate` binary uses, so that allocations cost here what they cost there.
#[global_allocator]
static GLOBAL: wxgate::alloc::MiMalloc = wxgate::alloc::MiMalloc;

fn main() {
    divan::main();
}

fn demo_key() -> SessionKey {
    SessionKey::from_base64(DEMO_KEY).expect("the demo key is base64 of 16 bytes")
}

fn demo_iv() -> [u8; 16] {
    let iv = STANDARD.decode(DEMO_IV).expect("the demo iv is base64");
    iv.try_into().expect("the demo iv is 16 bytes")
}

/// The whole of `decrypt` on the demo vector: base64, AES-128-CBC, padding, JSON.
#[divan::bench(sample_size = 64)]
fn decrypt_demo_vector(bencher: Bencher) {
    let key = demo_key();
    let data = decrypt(&key, DEMO_IV, DEMO_DATA).expect("the demo vector decrypts");
    assert_eq!(data.watermark.as_ref().map(|w| w.appid.as_str()), Some(DEMO_APPID));
    bencher.bench_local(|| decrypt(black_box(&key), black_box(DEMO_IV), black_box(DEMO_DATA)));
}

/// The whole of `decrypt` on a phone payload (the phone route's usual input).
#[divan::bench(sample_size = 64)]
fn decrypt_phone_payload(bencher: Bencher) {
    let key = demo_key();
    let data_b64 = encrypt(&key, &demo_iv(), PHONE_PLAINTEXT.as_bytes());
    let data = decrypt(&key, DEMO_IV, &data_b64).expect("the phone payload decrypts");
    assert_eq!(data.pure_phone_number.as_deref(), Some("13580006666"));
    assert_eq!(data.watermark.as_ref().map(|w| w.appid.as_str()), Some(DEMO_APPID));
    bencher.bench_local(|| decrypt(black_box(&key), black_box(DEMO_IV), black_box(&data_b64)));
}

/// `decrypt` with a key that is not the one the data was encrypted under: the opaque error.
#[divan::bench(sample_size = 64)]
fn decrypt_wrong_key(bencher: Bencher) {
    let key = SessionKey::from_bytes(WRONG_KEY);
    assert_eq!(decrypt(&key, DEMO_IV, DEMO_DATA), Err(DecryptError::Decrypt));
    bencher.bench_local(|| decrypt(black_box(&key), black_box(DEMO_IV), black_box(DEMO_DATA)));
}

/// Base64, AES-128-CBC and padding, without the JSON.
#[divan::bench(sample_size = 64)]
fn decrypt_raw_demo_vector(bencher: Bencher) {
    let key = demo_key();
    let plaintext = decrypt_raw(&key, DEMO_IV, DEMO_DATA).expect("the demo vector decrypts");
    assert_eq!(plaintext, DEMO_PLAINTEXT.as_bytes());
    bencher.bench_local(|| decrypt_raw(black_box(&key), black_box(DEMO_IV), black_box(DEMO_DATA)));
}

/// The JSON alone: UTF-8 check, a map, then the struct.
#[divan::bench(sample_size = 64)]
fn parse_plaintext_demo_vector(bencher: Bencher) {
    let data = parse_plaintext(DEMO_PLAINTEXT.as_bytes()).expect("the demo plaintext parses");
    assert!(data.watermark.is_some());
    bencher.bench_local(|| parse_plaintext(black_box(DEMO_PLAINTEXT.as_bytes())));
}

/// The JSON alone, on the phone payload.
#[divan::bench(sample_size = 64)]
fn parse_plaintext_phone_payload(bencher: Bencher) {
    let data = parse_plaintext(PHONE_PLAINTEXT.as_bytes()).expect("the phone plaintext parses");
    assert_eq!(data.country_code.as_deref(), Some("86"));
    bencher.bench_local(|| parse_plaintext(black_box(PHONE_PLAINTEXT.as_bytes())));
}

/// Reading the stored base64 `session_key`.
#[divan::bench(sample_size = 64)]
fn session_key_from_base64(bencher: Bencher) {
    assert_eq!(demo_key().to_base64(), DEMO_KEY);
    bencher.bench_local(|| SessionKey::from_base64(black_box(DEMO_KEY)));
}
