//! RSS per cached session: fills wxgate's embedded session store
//! ([`MemoryStore`], with the default `[session]` settings) with N sessions
//! and prints the process's RSS before and after, from `/proc/self/status`.
//! The allocator is the one the `wxgate` binary uses (mimalloc).
//!
//! ```text
//! cargo run --release --example session_memory -- 1000000
//! ```
//!
//! Each session is what a login stores: a 28-character openid (the length of
//! WeChat's), no unionid, a random session key, no phone. `bench/run` runs it
//! for BENCHMARKS.md.

use std::time::Instant;

use wxgate::config::SessionConfig;
use wxgate::session::memory::MemoryStore;
use wxgate::session::{Session, SessionStore, SessionToken, unix_now};
use wxgate::weixin::crypto::SessionKey;

#[global_allocator]
static GLOBAL: wxgate::alloc::MiMalloc = wxgate::alloc::MiMalloc;

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 1_000_000,
    };
    let defaults = SessionConfig::default();
    let config = SessionConfig {
        max_entries: defaults.max_entries.max(n),
        ..defaults
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(async {
        let store = MemoryStore::new(&config);
        let before = status_bytes("VmRSS");
        let started = Instant::now();
        let now = unix_now();
        for i in 0..n {
            let session = Session::new(&format!("o{i:027}"), None, SessionKey::random(), now);
            store.insert(&SessionToken::generate(), &session).await?;
        }
        let elapsed = started.elapsed();
        // Settles moka's pending writes before measuring.
        let count = store.count().await.unwrap_or_default();
        let after = status_bytes("VmRSS");
        println!("sessions {n}");
        println!("max_entries {}", config.max_entries);
        println!("entry_count {count}");
        println!("rss_before_bytes {before}");
        println!("rss_after_bytes {after}");
        println!("peak_rss_bytes {}", status_bytes("VmHWM"));
        println!(
            "per_session_bytes {:.0}",
            after.saturating_sub(before) as f64 / n.max(1) as f64
        );
        println!("insert_seconds {:.2}", elapsed.as_secs_f64());
        Ok(())
    })
}
