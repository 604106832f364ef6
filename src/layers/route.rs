//! A route that wxgate answers or enriches itself (login, phone), as one
//! layer type: requests to the handler's path go to the handler, which may
//! call the rest of the stack; every other request passes straight through,
//! without an allocation.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::Error;

/// What a route does with its own requests.
pub trait RouteHandler: Send + Sync + 'static {
    /// The exact path the route owns.
    fn path(&self) -> &str;

    /// Handles a request to [`RouteHandler::path`]; `inner` is the rest of the stack.
    fn handle<S>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Error> + Send + 'static,
        S::Future: Send;
}

pub struct RouteLayer<H> {
    handler: Arc<H>,
}

impl<H> RouteLayer<H> {
    pub fn from_handler(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
        }
    }
}

impl<H> Clone for RouteLayer<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
        }
    }
}

impl<S, H> Layer<S> for RouteLayer<H> {
    type Service = Route<S, H>;
    fn layer(&self, inner: S) -> Self::Service {
        Route {
            inner,
            handler: self.handler.clone(),
        }
    }
}

pub struct Route<S, H> {
    inner: S,
    handler: Arc<H>,
}

impl<S: Clone, H> Clone for Route<S, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            handler: self.handler.clone(),
        }
    }
}

impl<S, H> Service<Request<Body>> for Route<S, H>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    H: RouteHandler,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.uri().path() != self.handler.path() {
            return Either::Left(self.inner.call(req));
        }
        // The ready service goes to the handler; a fresh clone stays here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(self.handler.clone().handle(inner, req)))
    }
}
