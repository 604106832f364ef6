//! WebSocket tunnels: the only connection wxgate lets become a raw byte
//! stream past it.
//!
//! An upgrade reaches the backend only as an RFC 6455 opening handshake
//! (`hop::client_request` removes every other `Upgrade`), and a tunnel is
//! spliced only when the backend agrees in kind: `101` with `Upgrade:
//! websocket` and the `Sec-WebSocket-Accept` computed from the client's key
//! ([`accepts`]). Anything else that says `101` is refused, so a backend
//! that switches to something else (h2c) or answers a bare `101` cannot open
//! a channel that skips wxgate's identity checks.
//!
//! A spliced tunnel is closed after `upstream.websocket_idle_timeout` with
//! no byte either way ([`splice`]), and counts as an open connection on both
//! sides while it lives (its owner holds the places).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// RFC 6455 §1.3: appended to the client's key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    STANDARD.encode(sha.finalize())
}

/// Whether a `101` answer accepts the client's WebSocket handshake: its
/// `Upgrade` is `websocket` and its `Sec-WebSocket-Accept` matches `key`.
pub fn accepts(response: &HeaderMap, key: &HeaderValue) -> bool {
    let upgrade = response
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let accept = response
        .get("sec-websocket-accept")
        .is_some_and(|v| v.as_bytes() == accept_key(key.as_bytes()).as_bytes());
    upgrade && accept
}

/// Copies both ways until either side closes, or nothing moved for `idle`.
pub async fn splice<A, B>(client: A, upstream: B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Counted {
        inner: client,
        moved: moved.clone(),
    };
    let mut upstream = Counted {
        inner: upstream,
        moved: moved.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    // Checked a few times per timeout: a quiet tunnel is closed between
    // `idle` and `idle` plus a quarter of it.
    let period = (idle / 4).max(Duration::from_millis(10));
    let mut seen = 0;
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            done = &mut copy => return done.map(|_| ()),
            () = tokio::time::sleep(period) => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen {
                    quiet += period;
                    if quiet >= idle {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "websocket idle timeout"));
                    }
                } else {
                    seen = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

/// An I/O object that counts the reads that brought bytes.
struct Counted<T> {
    inner: T,
    moved: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_rfc_6455_example_key_is_accepted() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap());
        assert!(accepts(&h, &key));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!accepts(&h, &key), "another protocol");
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("sec-websocket-accept", "wrong".parse().unwrap());
        assert!(!accepts(&h, &key), "a wrong accept");
        h.remove("sec-websocket-accept");
        assert!(!accepts(&h, &key), "a bare 101");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_is_closed_and_a_busy_one_is_not() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(splice(client, upstream, Duration::from_secs(10)));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            upstream_peer.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
        assert!(!tunnel.is_finished(), "30 s of traffic every 6 s keeps it open");
        tokio::time::sleep(Duration::from_secs(13)).await;
        let err = tunnel.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
