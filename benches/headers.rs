//! Micro-benchmarks of the per-request header handling in `wxgate::hop`: what every proxied
//! request and response pays for hop-by-hop headers, the client's `Connection` header and
//! `X-Forwarded-For`.
//!
//! ```sh
//! cargo bench --bench headers
//! ```
//!
//! These functions mutate the map, so each iteration gets a fresh `HeaderMap`, built outside the
//! timing by `Bencher::with_inputs`; the map is returned from the timed closure, so divan drops
//! it outside the timing too. `baseline` measures that machinery alone, on a map left as it is.
//!
//! The maps: `request` is a small request as a mini program or a browser sends it, with no
//! hop-by-hop header (the common case); `response` is an upstream nginx response with
//! `connection: keep-alive`; `all_hop_by_hop` has every hop-by-hop header, with
//! `connection: keep-alive, x-foo` and an `x-foo` that it names.

use divan::{Bencher, black_box};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use wxgate::hop::{self, HopByHop, X_FORWARDED_FOR};

/// The allocator the `wxgate` binary uses, so that allocations cost here what they cost there.
#[global_allocator]
static GLOBAL: wxgate::alloc::MiMalloc = wxgate::alloc::MiMalloc;

fn main() {
    divan::main();
}

const REQUEST: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
         Mobile/15E148 MicroMessenger/8.0.44(0x18002c2d) NetType/WIFI Language/zh_CN",
    ),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate, br"),
    ("content-type", "application/json"),
    ("content-length", "600"),
    (
        "referer",
        "https://servicewechat.com/wx4f4bc4dec97d474b/12/page-frame.html",
    ),
    ("x-request-id", "0b5c6a1e-3f0e-4c61-9b1f-6f1d2a7c9e10"),
    ("x-wx-session", "q9d2xK7mVb3LwP0sT8yZ4nRf"),
];

const RESPONSE: &[(&str, &str)] = &[
    ("server", "nginx/1.22.1"),
    ("date", "Tue, 25 Nov 2026 00:40:00 GMT"),
    ("content-type", "text/plain"),
    ("content-length", "1024"),
    ("connection", "keep-alive"),
    ("cache-control", "no-store"),
];

const ALL_HOP_BY_HOP: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("user-agent", "curl/7.88.1"),
    ("accept", "*/*"),
    ("connection", "keep-alive, x-foo"),
    ("x-foo", "1"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("te", "trailers"),
    ("trailer", "x-checksum"),
    ("transfer-encoding", "chunked"),
    ("upgrade", "websocket"),
];

/// A map as hyper builds it from the wire: names lower case, in order.
fn header_map(headers: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for &(name, value) in headers {
        map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    map
}

fn with(headers: &[(&'static str, &'static str)], extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = header_map(headers);
    for &(name, value) in extra {
        map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    map
}

/// The harness alone: a fresh map in, the same map out.
#[divan::bench]
fn baseline(bencher: Bencher) {
    bencher
        .with_inputs(|| header_map(REQUEST))
        .bench_local_values(black_box);
}

/// `HopByHop::scan` then `strip`, as the proxy does on each request and response.
mod scan_and_strip {
    use super::*;

    fn bench(bencher: Bencher, headers: &'static [(&'static str, &'static str)], kept: usize) {
        let mut check = header_map(headers);
        HopByHop::scan(&check).strip(&mut check);
        assert_eq!(check.len(), kept, "{check:?}");
        bencher
            .with_inputs(|| header_map(headers))
            .bench_local_values(|mut map| {
                HopByHop::scan(black_box(&map)).strip(&mut map);
                map
            });
    }

    #[divan::bench]
    fn request(bencher: Bencher) {
        bench(bencher, REQUEST, REQUEST.len());
    }

    #[divan::bench]
    fn response(bencher: Bencher) {
        bench(bencher, RESPONSE, RESPONSE.len() - 1);
    }

    #[divan::bench]
    fn all_hop_by_hop(bencher: Bencher) {
        bench(bencher, ALL_HOP_BY_HOP, 3);
    }
}

/// `apply_client_connection_header`, run on every request before any layer.
mod apply_client_connection_header {
    use super::*;

    fn bench(bencher: Bencher, extra: &'static [(&'static str, &'static str)], kept: usize) {
        let mut check = with(REQUEST, extra);
        hop::apply_client_connection_header(&mut check);
        assert_eq!(check.len(), kept, "{check:?}");
        bencher
            .with_inputs(|| with(REQUEST, extra))
            .bench_local_values(|mut map| {
                hop::apply_client_connection_header(black_box(&mut map));
                map
            });
    }

    /// No `Connection` header: one lookup.
    #[divan::bench]
    fn absent(bencher: Bencher) {
        bench(bencher, &[], REQUEST.len());
    }

    /// `Connection: keep-alive`, as HTTP/1.1 clients often send.
    #[divan::bench]
    fn keep_alive(bencher: Bencher) {
        bench(bencher, &[("connection", "keep-alive")], REQUEST.len());
    }

    /// `Connection: keep-alive, x-foo` with an `x-foo` header, which goes.
    #[divan::bench]
    fn names_a_header(bencher: Bencher) {
        bench(
            bencher,
            &[("connection", "keep-alive, x-foo"), ("x-foo", "1")],
            REQUEST.len(),
        );
    }
}

/// `append_forwarded_for`, with the client's address already formatted.
mod append_forwarded_for {
    use super::*;

    fn bench(bencher: Bencher, extra: &'static [(&'static str, &'static str)], want: &str) {
        let ip = hop::forwarded_for_value("198.51.100.23:50412".parse().expect("an address"));
        let mut check = with(REQUEST, extra);
        hop::append_forwarded_for(&mut check, &ip);
        assert_eq!(check[&X_FORWARDED_FOR], want);
        bencher
            .with_inputs(|| with(REQUEST, extra))
            .bench_local_values(|mut map| {
                hop::append_forwarded_for(black_box(&mut map), black_box(&ip));
                map
            });
    }

    /// No `X-Forwarded-For` yet: one insert.
    #[divan::bench]
    fn empty(bencher: Bencher) {
        bench(bencher, &[], "198.51.100.23");
    }

    /// A value from a proxy in front: the two are joined into one header.
    #[divan::bench]
    fn existing(bencher: Bencher) {
        bench(
            bencher,
            &[("x-forwarded-for", "203.0.113.7")],
            "203.0.113.7, 198.51.100.23",
        );
    }
}

/// `forwarded_for_value`: the client's address as text, once per connection (not measured in the others).
///
/// A fixed sample size: divan doubles it until a sample takes over 100 times the timer's
/// precision, and a cold first call here passes that at once, leaving samples of one call each.
#[divan::bench(sample_size = 256)]
fn forwarded_for_value(bencher: Bencher) {
    let addr = "198.51.100.23:50412".parse().expect("an address");
    bencher.bench_local(|| hop::forwarded_for_value(black_box(addr)));
}
