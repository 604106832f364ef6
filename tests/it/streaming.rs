//! Large bodies stream both ways, with flat memory, and stalls are told apart.

use crate::common::*;

// ---------------------------------------------------------------------------
// Large bodies are streamed both ways
// ---------------------------------------------------------------------------

#[test]
fn the_test_pattern_is_i_mod_251() {
    for (offset, len) in [(0u64, 0usize), (0, 1000), (250, 3), (1 << 40, 600)] {
        let expected: Vec<u8> = (0..len as u64).map(|i| ((offset + i) % 251) as u8).collect();
        assert_eq!(pattern(offset, len), expected, "offset {offset}, len {len}");
    }
}

const LARGE: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_streamed_intact() {
    let gate = gate(|_| {}).await;
    let (tx, body) = channel_body();
    let req = Request::post(gate.url("/upload"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap();
    let response = tokio::spawn(streaming_client().request(req));

    let mut expected = Sha256::new();
    let mut sent = 0u64;
    let mut checked_streaming = false;
    while sent < LARGE {
        let chunk = Bytes::from(pattern(sent, CHUNK));
        expected.update(&chunk);
        if tx.send(chunk).await.is_err() {
            let r = response.await;
            panic!("wxgate stopped reading the upload: {r:?}\n{}", logs());
        }
        sent += CHUNK as u64;
        // Half way through, the upstream must already have bytes: wxgate
        // streams rather than buffering the whole body first.
        if !checked_streaming && sent >= LARGE / 2 {
            checked_streaming = true;
            assert!(
                eventually(async || gate.upstream.upload_progress() > 0).await,
                "the upstream saw nothing of a half-sent upload: is the body buffered?"
            );
            assert!(gate.upstream.upload_progress() < LARGE);
        }
    }
    drop(tx);
    let res = tokio::time::timeout(Duration::from_secs(60), response)
        .await
        .expect("upload answered within 60 s")
        .unwrap()
        .expect("upload reached the upstream");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["len"], LARGE);
    assert_eq!(v["sha256"], hex(&expected.finalize()));
    // Chunked from the client, so chunked to the upstream too.
    let r = gate.upstream.last();
    assert_eq!(values(&r.headers, "transfer-encoding"), ["chunked"]);
    assert!(r.headers.get("content-length").is_none());
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pausing_mid_upload_is_not_timed_out() {
    // upstream.timeout is short, the client pauses longer: the upload is
    // waiting on the client, not on the upstream, and must go through.
    let gate = gate(|c| c.upstream.timeout = wxgate::config::HumanDuration(Duration::from_millis(200))).await;
    let (tx, body) = channel_body();
    let req = Request::post(gate.url("/upload")).body(body).unwrap();
    let response = tokio::spawn(streaming_client().request(req));
    let first = Bytes::from(pattern(0, 1024 * 1024));
    tx.send(first.clone()).await.unwrap();
    assert!(eventually(async || gate.upstream.upload_progress() == first.len() as u64).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = Bytes::from(pattern(first.len() as u64, 1024 * 1024));
    tx.send(second.clone()).await.unwrap();
    drop(tx);
    let res = tokio::time::timeout(Duration::from_secs(15), response)
        .await
        .expect("an answer within 15 s")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["sha256"], sha256_hex(&[first, second].concat()));
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_split_around_its_head_arrives_whole_with_its_length() {
    // Whether the body came with its head or after it, it reaches the
    // upstream once, in order, with its declared length (not re-chunked).
    let gate = gate(|_| {}).await;
    let first = pattern(0, 1000);
    let rest = pattern(1000, 3000);
    for (path, pause) in [("/whole", false), ("/split", true)] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 4000\r\n\r\n").into_bytes();
        head.extend_from_slice(&first);
        if !pause {
            head.extend_from_slice(&rest);
        }
        stream.write_all(&head).await.unwrap();
        if pause {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stream.write_all(&rest).await.unwrap();
        }
        assert_next_answer_is_200(&mut stream, path).await;
        let r = gate.upstream.last();
        assert_eq!(r.uri, path);
        assert_eq!(r.body, [first.as_slice(), rest.as_slice()].concat(), "{path}");
        assert_eq!(values(&r.headers, "content-length"), ["4000"], "{path}");
        assert!(r.headers.get("transfer-encoding").is_none(), "{path}");
    }
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_an_upload_is_a_504() {
    // It accepts and then reads nothing: once the socket buffers are full,
    // nothing moves, and upstream.timeout later wxgate gives up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let gate = gate(|c| {
        c.upstream.url = format!("http://{up}");
        c.upstream.timeout = wxgate::config::HumanDuration(Duration::from_millis(500));
    })
    .await;
    let (tx, body) = channel_body();
    let req = Request::post(gate.url("/stall"))
        .header("x-request-id", "stalled-upload-check")
        .body(body)
        .unwrap();
    let response = tokio::spawn(streaming_client().request(req));
    let feeder = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < 1 << 30 {
            if tx.send(Bytes::from(pattern(sent, CHUNK))).await.is_err() {
                break;
            }
            sent += CHUNK as u64;
        }
    });
    // The client may see the 504 or, as wxgate closes a connection whose
    // body it did not read, a reset; the access log says what was answered.
    let answered = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("the stalled upload is answered (or cut) within 20 s")
        .unwrap();
    if let Ok(res) = answered {
        assert_eq!(res.status(), 504);
    }
    let logged = eventually(async || {
        logs()
            .lines()
            .any(|l| l.contains("request_id=stalled-upload-check") && l.contains("status=504"))
    })
    .await;
    assert!(logged, "no 504 access log line for the stalled upload");
    feeder.abort();
    held.abort();
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_is_streamed_intact() {
    let gate = gate(|_| {}).await;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        streaming_client().request(
            Request::get(gate.url(&format!("/download?bytes={LARGE}")))
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap(),
        ),
    )
    .await
    .expect("download head within 30 s")
    .unwrap();
    assert_eq!(res.status(), 200);
    let mut got = Sha256::new();
    let mut expected = Sha256::new();
    let mut len = 0u64;
    let mut stream = BodyStream::new(res.into_body());
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(frame) = stream.next().await {
            let frame = frame.expect("the download body arrives without error");
            if let Some(data) = frame.data_ref() {
                got.update(data);
                expected.update(pattern(len, data.len()));
                len += data.len() as u64;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "download body within 60 s");
    assert_eq!(len, LARGE);
    assert_eq!(hex(&got.finalize()), hex(&expected.finalize()), "download corrupted");
    finish(gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_reaches_the_client_before_the_upstream_finishes() {
    // 1 TiB: a proxy that buffered the body would never answer.
    let gate = gate(|_| {}).await;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        streaming_client().request(
            Request::get(gate.url("/download?bytes=1099511627776"))
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap(),
        ),
    )
    .await
    .expect("the head of an endless download arrives: is the body buffered?")
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::TRANSFER_ENCODING], "chunked");
    let mut stream = BodyStream::new(res.into_body());
    let mut first = Vec::new();
    while first.len() < 1024 * 1024 {
        let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("body data keeps coming")
            .expect("more data")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            first.extend_from_slice(d);
        }
    }
    assert_eq!(first[..1024 * 1024], pattern(0, 1024 * 1024)[..]);
    drop(stream);
    finish(gate).await;
}
