//! The one body type that flows through wxgate, both ways.
//!
//! Pass-through bodies stay hyper's [`Incoming`] from end to end: streamed
//! frame by frame, never buffered, so a multi-GB upload or download costs no
//! memory. Bodies wxgate makes or reads itself (errors, login and phone
//! requests) are [`Full`]. A backend's answer that came before the request
//! body was all sent is [`Body::Watched`]: it tells the upload when it has
//! been relayed, so the backend connection can then be closed (see
//! `proxy.rs`, "early answers").

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::config::ServerConfig;
use crate::error::Error;

/// A request or response body (see the module docs).
pub enum Body {
    Incoming(Incoming),
    Full(Full<Bytes>),
    Watched(Incoming, Arc<dyn Fn() + Send + Sync>),
    /// A backend's body whose trailers pass through a filter (the session
    /// header is wxgate's, in trailers too).
    Trailered(Incoming, TrailerFilter),
}

/// What a backend's trailers go through before they reach the client.
pub type TrailerFilter = Arc<dyn Fn(&mut http::HeaderMap) + Send + Sync>;

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

impl Default for Body {
    fn default() -> Self {
        empty()
    }
}

/// A body wxgate wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Full(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Body::Full(Full::new(Bytes::new()))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Incoming(b) => Pin::new(b).poll_frame(cx),
            Body::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Body::Watched(b, done) => {
                let polled = Pin::new(b).poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    done();
                }
                polled
            }
            Body::Trailered(b, filter) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    let mut trailers = frame.into_trailers().unwrap_or_default();
                    filter(&mut trailers);
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                polled => polled,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(b) | Body::Watched(b, _) | Body::Trailered(b, _) => b.is_end_stream(),
            Body::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(b) | Body::Watched(b, _) | Body::Trailered(b, _) => b.size_hint(),
            Body::Full(b) => b.size_hint(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Body::Watched(_, done) = self {
            done();
        }
    }
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
            None => return Err(Error::invalid("Content-Length is not a number")),
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
