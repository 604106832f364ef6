//! Per-hop header handling: hop-by-hop headers (RFC 9110 §7.6.1), the
//! client's `Connection` header, `X-Forwarded-For`.
//!
//! These run on every request and every response, so each looks the map up
//! as few times as it can: [`HopByHop::scan`] reads the names once (a header
//! map is a short list) and only the headers it found are then looked up and
//! removed. A request with none of them, the common case, costs one pass over
//! its names and no hashing at all.

use std::net::SocketAddr;

use http::HeaderValue;
use http::header::{self, Entry, HeaderMap, HeaderName};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers present in a map, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopByHop(u8);

impl HopByHop {
    const CONNECTION: u8 = 1;
    const UPGRADE: u8 = 1 << 1;
    const KEEP_ALIVE: u8 = 1 << 2;
    const PROXY_CONNECTION: u8 = 1 << 3;
    const TE: u8 = 1 << 4;
    const TRAILER: u8 = 1 << 5;
    const TRANSFER_ENCODING: u8 = 1 << 6;
    /// Those removed whatever `Connection` says.
    const FIXED: [(u8, HeaderName); 5] = [
        (Self::KEEP_ALIVE, KEEP_ALIVE),
        (Self::PROXY_CONNECTION, PROXY_CONNECTION),
        (Self::TE, header::TE),
        (Self::TRAILER, header::TRAILER),
        (Self::TRANSFER_ENCODING, header::TRANSFER_ENCODING),
    ];

    /// One pass over the names: header names in a map are lower case, so a
    /// length switch and a comparison tell each.
    pub fn scan(headers: &HeaderMap) -> Self {
        let mut found = 0;
        for name in headers.keys() {
            let s = name.as_str();
            found |= match s.len() {
                2 if s == "te" => Self::TE,
                7 if s == "upgrade" => Self::UPGRADE,
                7 if s == "trailer" => Self::TRAILER,
                10 if s == "connection" => Self::CONNECTION,
                10 if s == "keep-alive" => Self::KEEP_ALIVE,
                16 if s == "proxy-connection" => Self::PROXY_CONNECTION,
                17 if s == "transfer-encoding" => Self::TRANSFER_ENCODING,
                _ => 0,
            };
        }
        Self(found)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// A transfer coding other than `chunked` (wxgate forwards only what
    /// hyper decodes: chunking).
    pub fn has_transfer_coding_besides_chunked(self, headers: &HeaderMap) -> bool {
        self.has(Self::TRANSFER_ENCODING) && has_transfer_coding_besides_chunked(headers)
    }

    /// An HTTP Upgrade request or response: `Upgrade` and a `Connection`
    /// that lists it.
    pub fn is_upgrade(self, headers: &HeaderMap) -> bool {
        self.has(Self::UPGRADE) && self.has(Self::CONNECTION) && connection_lists(headers, "upgrade")
    }

    /// Removes every hop-by-hop header: those `Connection` names, then
    /// `Connection`, `Upgrade` and the fixed ones.
    pub fn strip(self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        if self.has(Self::CONNECTION) {
            remove_connection_listed(headers, &[]);
            headers.remove(header::CONNECTION);
        }
        if self.has(Self::UPGRADE) {
            headers.remove(header::UPGRADE);
        }
        self.strip_fixed(headers);
    }

    /// Removes the hop-by-hop headers but `Connection` and `Upgrade`: for a
    /// `101 Switching Protocols`, where they are the answer.
    pub fn strip_fixed(self, headers: &mut HeaderMap) {
        for (bit, name) in Self::FIXED {
            if self.has(bit) {
                headers.remove(name);
            }
        }
    }
}

fn has_transfer_coding_besides_chunked(headers: &HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |s| {
            s.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
        })
    })
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_lists(headers, "upgrade")
}

/// Whether a `Connection` header lists `token`.
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that `Connection` names, but those in `keep`.
/// `keep-alive` is skipped without a lookup (its header goes with the fixed
/// ones); for the others, only a header that is there is looked up twice.
fn remove_connection_listed(headers: &mut HeaderMap, keep: &[&str]) {
    let mut listed: Vec<HeaderName> = Vec::new();
    for token in connection_tokens(headers) {
        if token.eq_ignore_ascii_case("keep-alive") || keep.iter().any(|k| token.eq_ignore_ascii_case(k)) {
            continue;
        }
        if headers.contains_key(token)
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
        {
            listed.push(name);
        }
    }
    for name in listed {
        headers.remove(name);
    }
}

/// Applies the client's `Connection` header to its request before any layer
/// runs: the headers it names go (so that `Connection: x-wx-unionid` cannot
/// remove wxgate's own header later), and so does `Connection` itself, but
/// for an upgrade, which keeps `Connection: upgrade`.
pub fn apply_client_connection_header(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let upgrade = is_upgrade(headers);
    remove_connection_listed(headers, &["upgrade"]);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
    }
}

/// Appends the client's address to `X-Forwarded-For`, folding the values a
/// client sent into one header.
pub fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(v) => {
            v.insert(ip.clone());
        }
        Entry::Occupied(mut o) => {
            let ip = ip.to_str().unwrap_or_default();
            let value = o
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .chain([ip])
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&value) {
                o.insert(v);
            }
        }
    }
}

/// A client's address as an `X-Forwarded-For` entry.
pub fn forwarded_for_value(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.ip().to_canonical().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret-Hop, close".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::TRAILER, "x-checksum".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        HopByHop::scan(&h).strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn each_hop_by_hop_header_is_found_alone() {
        for name in [
            "connection",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            let found = HopByHop::scan(&h);
            assert!(!found.is_empty(), "{name}");
            found.strip(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert("x-te", "1".parse().unwrap());
        h.insert("connections", "1".parse().unwrap());
        assert!(HopByHop::scan(&h).is_empty());
    }

    #[test]
    fn a_101_keeps_connection_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        let found = HopByHop::scan(&h);
        assert!(found.is_upgrade(&h));
        found.strip_fixed(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn the_client_connection_header_is_applied_keeping_only_upgrade() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Upgrade, X-WX-Unionid, close".parse().unwrap());
        h.append(header::CONNECTION, "x-other".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-wx-unionid", "client".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        apply_client_connection_header(&mut h);
        assert!(is_upgrade(&h));
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, upgrade".parse().unwrap());
        apply_client_connection_header(&mut h);
        assert!(h.is_empty(), "no Upgrade header: no upgrade, {h:?}");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &forwarded_for_value("10.0.0.1:1".parse().unwrap()));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        append_forwarded_for(&mut h, &forwarded_for_value("[::ffff:10.0.0.2]:1".parse().unwrap()));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2");
        h.append(X_FORWARDED_FOR, " 10.0.0.3 ".parse().unwrap());
        h.append(X_FORWARDED_FOR, "".parse().unwrap());
        append_forwarded_for(&mut h, &forwarded_for_value("10.0.0.4:1".parse().unwrap()));
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4");
    }

    #[test]
    fn only_chunked_transfer_coding_passes() {
        let te = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::TRANSFER_ENCODING, v.parse().unwrap());
            assert_eq!(
                HopByHop::scan(&h).has_transfer_coding_besides_chunked(&h),
                has_transfer_coding_besides_chunked(&h)
            );
            has_transfer_coding_besides_chunked(&h)
        };
        assert!(!has_transfer_coding_besides_chunked(&HeaderMap::new()));
        assert!(!te("chunked"));
        assert!(!te("Chunked"));
        assert!(te("gzip, chunked"));
        assert!(te("identity"));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_upgrade(&h));
        assert!(!HopByHop::scan(&h).is_upgrade(&h));
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade(&h));
        assert!(HopByHop::scan(&h).is_upgrade(&h));
    }
}
