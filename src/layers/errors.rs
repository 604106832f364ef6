//! Errors become responses here, and are logged here, once.
//!
//! Every layer below returns [`Error`]s with their cause; none logs a
//! failure it returns. This layer turns each into the client's JSON answer
//! ([`Error::into_response`]) and writes the one log line for it, with the
//! request id, the whole cause chain and (for the backend) the address
//! tried: at warn for WeChat's and the backend's failures, at error for
//! wxgate's own, at debug for the client's. The admin listener's errors go
//! through [`Error::into_response`] too. Below this layer the error type is
//! [`Error`]; above it, [`Infallible`].
//!
//! ```text
//! ServiceBuilder::new().layer(ErrorsLayer).service(inner)
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::{Error, Fault};
use crate::layers::request_id::X_REQUEST_ID;

#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsLayer;

impl<S> Layer<S> for ErrorsLayer {
    type Service = Errors<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Errors { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Errors<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Errors<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Error>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The services below hold no capacity: they are always ready.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let id = req.headers().get(X_REQUEST_ID).cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            id,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                log(&e, this.id.as_ref());
                e.into_response()
            }
        }))
    }
}

/// The one log line of a failed request.
pub fn log(e: &Error, id: Option<&HeaderValue>) {
    let request_id = id.and_then(|v| v.to_str().ok()).unwrap_or("-");
    let code = e.code();
    match e.fault() {
        Fault::Internal => tracing::error!(request_id, code, error = %e.chain(), "request failed: wxgate"),
        Fault::Weixin if matches!(e, Error::WeixinConfig { .. }) => {
            tracing::error!(request_id, code, error = %e.chain(), "request failed: WeChat refuses wxgate's appid/secret")
        }
        Fault::Weixin => tracing::warn!(request_id, code, error = %e.chain(), "request failed: WeChat"),
        Fault::Upstream => tracing::warn!(request_id, code, error = %e.chain(), "request failed: upstream"),
        Fault::Store => tracing::warn!(request_id, code, error = %e.chain(), "request failed: session store"),
        Fault::Client => tracing::debug!(request_id, code, error = %e.chain(), "request refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn an_error_below_becomes_its_json_answer() {
        let svc = ServiceBuilder::new()
            .layer(ErrorsLayer)
            .service_fn(|_: Request<()>| async {
                Err::<Response<Body>, _>(Error::upstream_unavailable(
                    &Arc::from("127.0.0.1:1"),
                    std::io::Error::other("refused"),
                ))
            });
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers()["content-type"], "application/json");
    }
}
