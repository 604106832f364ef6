//! Small pieces of networking every listener and client of wxgate shares:
//! one way to build a worker's runtime, to accept with back-off, and to
//! open a TCP connection within a timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed `accept` (out of file descriptors, say) before the
/// next try, so a listener under pressure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A single-threaded runtime with I/O and timers: what every wxgate thread
/// runs (workers, the admin listener, the signal handler, tools).
pub fn current_thread_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Accepts the next connection. Errors are logged and followed by a short
/// pause, never returned: a listener lives until its owner stops it.
pub async fn accept(listener: &TcpListener, who: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, listener = who, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Opens a TCP connection to `host:port` within `timeout`, with Nagle off.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        )),
    }
}
