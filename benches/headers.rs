//! Micro-benchmarks of the per-request header handling in `wxgate::hop` and `wxgate::headers`:
//! what every proxied request and response pays for hop-by-hop headers, the client's
//! `Connection` header, `X-Forwarded-For`/`X-Real-IP`, and the strip of look-alike headers.
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
use http::{Method, Version};
use wxgate::hop::{self, ClientAddr, HopByHop, X_FORWARDED_FOR};

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

/// `HopByHop::scan` then strip, as the proxy does on each request and response.
mod scan_and_strip {
    use super::*;

    fn bench(bencher: Bencher, headers: &'static [(&'static str, &'static str)], kept: usize, request: bool) {
        let strip = move |map: &mut HeaderMap| {
            if request {
                HopByHop::scan(black_box(map)).strip_request(map);
            } else {
                let _ = hop::upstream_response(map, false);
            }
        };
        let mut check = header_map(headers);
        strip(&mut check);
        assert_eq!(check.len(), kept, "{check:?}");
        bencher
            .with_inputs(|| header_map(headers))
            .bench_local_values(|mut map| {
                strip(&mut map);
                map
            });
    }

    #[divan::bench]
    fn request(bencher: Bencher) {
        bench(bencher, REQUEST, REQUEST.len(), true);
    }

    #[divan::bench]
    fn response(bencher: Bencher) {
        bench(bencher, RESPONSE, RESPONSE.len() - 1, false);
    }

    #[divan::bench]
    fn all_hop_by_hop(bencher: Bencher) {
        // host, user-agent, accept, te: trailers
        bench(bencher, ALL_HOP_BY_HOP, 4, true);
    }
}

/// `client_request`, run on every request before any layer: the client's
/// `Connection`, upgrades, `X-Forwarded-For` and `X-Real-IP`.
mod client_request {
    use super::*;

    fn bench(bencher: Bencher, extra: &'static [(&'static str, &'static str)], trusted: bool, want_xff: &'static str) {
        let nets: Vec<ipnet::IpNet> = if trusted {
            vec!["198.51.100.0/24".parse().unwrap()]
        } else {
            Vec::new()
        };
        let client = ClientAddr::new("198.51.100.23:50412".parse().expect("an address"), &nets);
        let run = |map: &mut HeaderMap| {
            hop::client_request(map, &Method::POST, Version::HTTP_11, &client, &nets);
        };
        let mut check = with(REQUEST, extra);
        run(&mut check);
        assert_eq!(check[&X_FORWARDED_FOR], want_xff);
        bencher
            .with_inputs(|| with(REQUEST, extra))
            .bench_local_values(|mut map| {
                run(black_box(&mut map));
                map
            });
    }

    /// No `Connection`, no forwarding headers: a scan and two inserts.
    #[divan::bench]
    fn plain(bencher: Bencher) {
        bench(bencher, &[], false, "198.51.100.23");
    }

    /// `Connection: keep-alive, x-foo` with an `x-foo` header, which goes.
    #[divan::bench]
    fn names_a_header(bencher: Bencher) {
        bench(
            bencher,
            &[("connection", "keep-alive, x-foo"), ("x-foo", "1")],
            false,
            "198.51.100.23",
        );
    }

    /// A trusted load balancer's list, appended to.
    #[divan::bench]
    fn behind_a_trusted_proxy(bencher: Bencher) {
        bench(
            bencher,
            &[("x-forwarded-for", "203.0.113.7")],
            true,
            "203.0.113.7, 198.51.100.23",
        );
    }
}

/// The render step's strip: every client header that folds to one wxgate
/// owns goes (`wxgate::headers::Forbidden`), as on every forwarded request.
mod forbidden_strip {
    use super::*;
    use wxgate::headers::Forbidden;

    fn forbidden() -> Forbidden {
        let names = [
            "x-wx-openid",
            "x-wx-unionid",
            "x-wx-appid",
            "x-wx-phone-number",
            "x-wx-pure-phone-number",
            "x-wx-country-code",
            "x-wx-session",
            "x-original-forwarded-for",
        ];
        Forbidden::new(["x-wx-"], names)
    }

    /// A request with no such header (the session header was taken by then).
    #[divan::bench]
    fn clean(bencher: Bencher) {
        let f = forbidden();
        let request: Vec<_> = REQUEST.iter().copied().filter(|(n, _)| *n != "x-wx-session").collect();
        let request: &'static [(&'static str, &'static str)] = Box::leak(request.into_boxed_slice());
        bencher
            .with_inputs(|| header_map(request))
            .bench_local_values(|mut map| {
                f.strip(black_box(&mut map));
                map
            });
    }

    /// A request with two look-alikes.
    #[divan::bench]
    fn spoofed(bencher: Bencher) {
        let f = forbidden();
        bencher
            .with_inputs(|| with(REQUEST, &[("x.wx.openid", "admin"), ("x_wx_from_appid", "wx1")]))
            .bench_local_values(|mut map| {
                f.strip(black_box(&mut map));
                map
            });
    }
}
