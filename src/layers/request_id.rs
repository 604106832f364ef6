//! `x-request-id`, first on every request: a client's value is kept when it
//! is 1 to 128 visible ASCII characters, otherwise wxgate makes one. It goes
//! upstream, comes back on the answer, and is on every log line about the
//! request.
//!
//! Made ids are 32 hex digits that look random (two bijective mixes of a
//! per-worker counter under per-worker random keys): unique per worker by
//! construction, and unlike a bare counter they do not look broken in a log
//! or collide across workers and restarts. Making one costs a few
//! multiplications, not a call to a CSPRNG.
//!
//! ```text
//! ServiceBuilder::new().layer(RequestIdLayer::new()).service(inner)
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::header::Entry;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::headers::visible_ascii;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes request ids; one per worker thread, so its counter is never shared.
#[derive(Debug)]
struct Ids {
    keys: [u64; 2],
    counter: AtomicU64,
}

impl Ids {
    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        request_id(self.keys, n)
    }
}

/// `n` under `keys` as 32 hex digits, without a detour through `format!`.
fn request_id(keys: [u64; 2], n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let halves = [mix(n ^ keys[0]), mix(n.wrapping_add(keys[1]))];
    let mut buf = [0u8; 32];
    for (i, byte) in halves[0]
        .to_be_bytes()
        .iter()
        .chain(halves[1].to_be_bytes().iter())
        .enumerate()
    {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

/// SplitMix64's finaliser: a bijection on u64 that scatters every bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id a client may choose: short visible ASCII.
fn valid(v: &HeaderValue) -> bool {
    v.to_str().is_ok_and(|s| visible_ascii(s, 128))
}

#[derive(Debug, Clone)]
pub struct RequestIdLayer {
    ids: Arc<Ids>,
}

impl RequestIdLayer {
    /// One per worker thread.
    pub fn new() -> Self {
        Self {
            ids: Arc::new(Ids {
                keys: rand::random(),
                counter: AtomicU64::new(0),
            }),
        }
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId {
            inner,
            ids: self.ids.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    ids: Arc<Ids>,
}

impl<S, B, R> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // One lookup: keep a valid id, replace an invalid one, add a missing one.
        let id = match req.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(o) if valid(o.get()) => o.get().clone(),
            Entry::Occupied(mut o) => {
                let v = self.ids.next();
                o.insert(v.clone());
                v
            }
            Entry::Vacant(e) => e.insert(self.ids.next()).clone(),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// Puts the request id on the answer.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    #[test]
    fn ids_are_32_hex_digits_distinct_and_random_looking() {
        let keys = [0x0123_4567_89ab_cdef, 42];
        let ids: Vec<String> = (0..1000)
            .map(|n| request_id(keys, n).to_str().unwrap().to_owned())
            .collect();
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
        // Consecutive ids share no long run of digits, unlike a counter's.
        assert_ne!(ids[0][..16], ids[1][..16]);
        assert_ne!(ids[0][16..], ids[1][16..]);
        assert!(!ids[1].contains("0000000000"), "{}", ids[1]);
    }

    #[tokio::test]
    async fn a_sane_client_id_is_kept_and_a_bad_one_replaced() {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service_fn(|req: Request<()>| async move {
                let seen = req.headers()[X_REQUEST_ID].clone();
                Ok::<_, Infallible>(Response::new(seen))
            });
        let res = svc
            .clone()
            .oneshot(Request::builder().header("x-request-id", "abc-123").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.headers()[X_REQUEST_ID], "abc-123");
        assert_eq!(res.body(), "abc-123", "the same id went upstream");
        let long = "x".repeat(129);
        for bad in [long.as_str(), "has space", ""] {
            let req = Request::builder().header("x-request-id", bad).body(()).unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            let id = res.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
            assert_eq!(id.len(), 32, "{bad:?} replaced");
            assert_eq!(res.body(), &id);
        }
    }
}
