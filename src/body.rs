//! The one body type that flows through wxgate, both ways.
//!
//! Pass-through bodies stay hyper's [`Incoming`] from end to end: streamed
//! frame by frame, never buffered, so a multi-GB upload or download costs no
//! memory. Bodies wxgate makes or reads itself (errors, login and phone
//! requests) are a [`Full`]. An `Either` of the two needs no allocation.

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderMap;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use crate::config::ServerConfig;
use crate::error::Error;

pub type Body = Either<Incoming, Full<Bytes>>;

/// A body wxgate wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}

/// How much of a body wxgate reads itself (login and phone routes), and how
/// long it waits for it: `server.max_body_bytes`, `server.body_read_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            max_bytes: config.max_body_bytes,
            timeout: config.body_read_timeout.get(),
        }
    }
}

/// Reads a body of at most `limits.max_bytes` within `limits.timeout`. A
/// declared Content-Length over the limit is refused before anything is read.
pub async fn read_limited(headers: &HeaderMap, body: Body, limits: Limits) -> Result<Bytes, Error> {
    let Limits {
        max_bytes: limit,
        timeout,
    } = limits;
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) if n > limit => return Err(Error::BodyTooLarge { limit }),
            Some(_) => {}
            None => return Err(Error::InvalidRequest("Content-Length is not a number".into())),
        }
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    // A small body usually came with its head: no timer for it then.
    let collect = Limited::new(body, limit_usize).collect();
    tokio::pin!(collect);
    let collected = match (&mut collect).now_or_never() {
        Some(collected) => collected,
        None => tokio::time::timeout(timeout, collect)
            .await
            .map_err(|_| Error::ClientTimeout)?,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge { limit }),
        Err(_) => Err(Error::ClientBody),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn limits_are_enforced_with_and_without_content_length() {
        let mut h = HeaderMap::new();
        assert_eq!(read_limited(&h, full("hello"), limits(5)).await.unwrap(), "hello");
        assert!(matches!(
            read_limited(&h, full("hello!"), limits(5)).await,
            Err(Error::BodyTooLarge { limit: 5 })
        ));
        h.insert(http::header::CONTENT_LENGTH, "100".parse().unwrap());
        assert!(matches!(
            read_limited(&h, full("x"), limits(5)).await,
            Err(Error::BodyTooLarge { .. })
        ));
        h.insert(http::header::CONTENT_LENGTH, "x".parse().unwrap());
        assert!(matches!(
            read_limited(&h, full("x"), limits(5)).await,
            Err(Error::InvalidRequest(_))
        ));
    }
}
