//! Request rates per client (`[limits]`), with governor's keyed GCRA
//! limiters: logins per client address, phone requests per session.
//!
//! A limit of `n` per minute allows a burst of `n` and then one request
//! every `60/n` seconds; a refused request gets 429 `rate_limited` with a
//! `Retry-After`. Limits are per wxgate process: with several replicas
//! behind a load balancer a client may get up to that many times the limit.
//! Both are off by default: carrier-grade NAT puts thousands of mobile
//! users behind one address, and a failed phone code is not billed.

use std::hash::Hash;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::Error;

/// A per-key limit, or none.
pub struct Limiter<K: Hash + Eq + Clone> {
    limiter: Option<(DefaultKeyedRateLimiter<K>, DefaultClock)>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `per_minute` requests per minute per key; 0 is no limit.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| {
                (
                    DefaultKeyedRateLimiter::keyed(Quota::per_minute(n)),
                    DefaultClock::default(),
                )
            }),
        }
    }

    /// Counts a request for `key`; refuses it over the limit.
    pub fn check(&self, key: &K) -> Result<(), Error> {
        let Some((limiter, clock)) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(clock.now());
            Error::TooManyRequests {
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Forgets keys that are back to their full allowance (memory stays
    /// bounded by the clients of the last minute).
    pub fn retain_recent(&self) {
        if let Some((limiter, _)) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_passes_then_requests_wait() {
        let limiter = Limiter::per_minute(3);
        for _ in 0..3 {
            limiter.check(&"10.0.0.1").unwrap();
        }
        match limiter.check(&"10.0.0.1") {
            Err(Error::TooManyRequests { retry_after }) => assert!((1..=20).contains(&retry_after), "{retry_after}"),
            other => panic!("{other:?}"),
        }
        limiter
            .check(&"10.0.0.2")
            .expect("another client has its own allowance");
    }

    #[test]
    fn zero_is_no_limit() {
        let limiter = Limiter::per_minute(0);
        for _ in 0..1000 {
            limiter.check(&1u8).unwrap();
        }
    }
}
