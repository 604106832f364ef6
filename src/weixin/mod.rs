//! Everything that talks to WeChat or handles its data. Knows nothing of
//! wxgate's routes.
//!
//! - [`client`]: the HTTP calls and the errcode mapping;
//! - [`token`]: the access-token provider (stable_token, single flight, refresh);
//! - [`crypto`]: decryption of `encryptedData` (pure: no I/O).

pub mod client;
pub mod crypto;
pub mod token;
