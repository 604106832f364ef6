//! WebSocket tunnels: the only upgrade wxgate forwards, spliced only on a
//! proper WebSocket 101, closed when idle or at the end of the shutdown grace.

use crate::common::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let gate = gate(|_| {}).await;
    let token = gate.login("dave.1").await;
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let mut request = format!("ws://{}/ws?room=1", gate.addr).into_client_request().unwrap();
    request.headers_mut().insert("x-wx-session", token.parse().unwrap());
    request.headers_mut().insert("x_wx_openid", "spoof".parse().unwrap());
    let (mut ws, res) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("handshake within 15 s")
    .expect("the WebSocket handshake succeeds through wxgate");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        res.headers()[header::UPGRADE]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );

    let r = gate.upstream.last();
    assert_eq!(r.uri, "/ws?room=1");
    assert!(r.headers.get("sec-websocket-key").is_some());
    assert!(r.headers["upgrade"].to_str().unwrap().eq_ignore_ascii_case("websocket"));
    assert!(
        identity_like(&r.headers, &["x-wx-session"]).is_empty(),
        "{:?}",
        r.headers
    );
    assert_eq!(
        values(&r.headers, "x-wx-openid"),
        [wxgate::fake::FakeWeixin::openid_for("dave")]
    );
    assert!(r.headers.get("x_wx_openid").is_none());
    assert_eq!(values(&r.headers, "x-forwarded-for"), ["127.0.0.1"]);

    let echo = async |ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, msg: Message| {
        ws.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("echo within 15 s")
            .expect("the tunnel is open")
            .unwrap();
        assert_eq!(back, msg);
    };
    echo(&mut ws, Message::text("你好, wxgate")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 0xff, 0xfe])).await;
    echo(&mut ws, Message::binary(pattern(7, 1024 * 1024))).await;
    echo(&mut ws, Message::text("again")).await;
    ws.close(None).await.unwrap();
    // The upstream ends the tunnel; the client sees the end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the tunnel stayed open after the close handshake");
    drop(ws);
    finish(gate).await;
}

// ---------------------------------------------------------------------------
// WebSocket tunnels and shutdown
// ---------------------------------------------------------------------------

async fn open_ws(gate: &Gate) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async(format!("ws://{}/ws", gate.addr), stream),
    )
    .await
    .expect("handshake within 15 s")
    .expect("handshake");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_working_during_the_drain() {
    let mut gate = gate(|_| {}).await;
    let mut ws = open_ws(&gate).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let running = gate.running.take().unwrap();
    running.shutdown();
    let addr = gate.addr;
    assert!(eventually(async || TcpStream::connect(addr).await.is_err()).await);
    // Shutdown has begun and no new connection is accepted, but the tunnel
    // is in flight: it still works until the client is done with it.
    ws.send(Message::text("during")).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("echo within 15 s")
        .expect("the tunnel is still open during the drain")
        .unwrap();
    assert_eq!(back, Message::text("during"));
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns once the tunnel is closed");
    assert_no_wxgate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_ends_an_open_websocket() {
    let mut gate = gate(|c| c.server.shutdown_grace = wxgate::config::HumanDuration(Duration::from_millis(500))).await;
    let mut ws = open_ws(&gate).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let running = gate.running.take().unwrap();
    running.shutdown();
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped() returns after shutdown_grace with a tunnel open");
    // The tunnel is gone: the client sees the end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel outlived wxgate");
    assert_no_wxgate_panic();
}

/// A tunnel with no byte either way for `upstream.websocket_idle_timeout`
/// is closed; one in use is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed() {
    let gate = gate(|c| c.upstream.websocket_idle_timeout = HumanDuration(Duration::from_secs(1))).await;
    let mut busy = open_ws(&gate).await;
    let mut quiet = open_ws(&gate).await;
    for i in 0..6 {
        busy.send(Message::text(format!("ping {i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), busy.next()).await.unwrap();
        assert!(back.is_some_and(|m| m.is_ok()), "the busy tunnel was closed");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(15), quiet.next())
        .await
        .expect("the quiet tunnel is closed within 15 s");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    finish(gate).await;
}

/// A tunnel keeps its client connection's place in `server.max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_as_a_client_connection() {
    let gate = gate(|c| {
        c.server.workers = 1;
        c.server.max_connections = 1;
    })
    .await;
    let ws = open_ws(&gate).await;
    let mut refused = TcpStream::connect(gate.addr).await.unwrap();
    let _ = refused.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(
        read_rest(&mut refused).await.is_empty(),
        "a second connection was served"
    );
    drop(ws);
    finish(gate).await;
}
