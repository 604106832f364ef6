//! The logout route (`logout.path`): `POST` with the session header ends the
//! session everywhere (every worker, and every replica with a shared store).
//!
//! Then, as `login.mode` says: `forward` sends the request on to the
//! backend with the identity headers of the session that just ended, so the
//! backend can clean up; `respond` answers 204 itself. A request without a
//! live session has nothing to end: 204, and the backend is not called.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::config::LoginMode;
use crate::error::Error;
use crate::identity::Identity;
use crate::proxy::Proxy;
use crate::session::SessionStore;

pub struct Logout {
    mode: LoginMode,
    store: std::sync::Arc<dyn SessionStore>,
}

impl Logout {
    pub fn new(mode: LoginMode, store: std::sync::Arc<dyn SessionStore>) -> Self {
        Self { mode, store }
    }

    pub async fn handle(&self, req: Request<Body>, proxy: &Proxy) -> Result<Response<Body>, Error> {
        if req.method() != Method::POST {
            return Err(Error::MethodNotAllowed("POST"));
        }
        let Some(token) = req.extensions().get::<Identity>().and_then(|i| i.token) else {
            return Ok(no_content());
        };
        self.store.revoke(&token).await?;
        tracing::info!("logout: session revoked");
        match self.mode {
            LoginMode::Respond => Ok(no_content()),
            LoginMode::Forward => proxy.forward(req).await,
        }
    }
}

fn no_content() -> Response<Body> {
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
