//! Per-hop header handling: hop-by-hop headers (RFC 9110 §7.6.1), the
//! client's `Connection` header, upgrades, and the headers that say where a
//! request came from (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`).
//!
//! Two entry points, one per direction: [`client_request`] when a request
//! arrives (before any layer runs) and [`HopByHop::strip_request`] /
//! [`upstream_response`] when a message crosses to the other side.
//!
//! These run on every request and response, so each reads the names once
//! ([`HopByHop::scan`]: a header map is a short list) and only the headers
//! found are then looked up. A request with none of them, the common case,
//! costs one pass over its names and no hashing.
//!
//! `Trailer` is not hop-by-hop (RFC 9110 §6.6.2 lists the trailer fields a
//! message will carry): a backend's answer keeps it, and its trailers reach
//! clients that accept them (`TE: trailers` is passed on). A client's
//! request trailers are not forwarded at all (its `Trailer` header goes), so
//! no header can reach the backend in a trailer, where wxgate's identity
//! rules would not see it.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, Entry, HeaderMap, HeaderName};
use http::{HeaderValue, Method, Version};

/// `X-Forwarded-For`: the addresses a request came through, client first.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`: the client's address.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// The hop-by-hop and forwarding headers present in a map, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopByHop(u16);

impl HopByHop {
    const CONNECTION: u16 = 1;
    const UPGRADE: u16 = 1 << 1;
    const KEEP_ALIVE: u16 = 1 << 2;
    const PROXY_CONNECTION: u16 = 1 << 3;
    const TE: u16 = 1 << 4;
    const TRANSFER_ENCODING: u16 = 1 << 5;
    const HTTP2_SETTINGS: u16 = 1 << 6;
    const FORWARDED: u16 = 1 << 7;
    const X_FORWARDED_FOR: u16 = 1 << 8;
    const X_FORWARDED_PROTO: u16 = 1 << 9;
    const X_FORWARDED_HOST: u16 = 1 << 10;
    const X_REAL_IP: u16 = 1 << 11;
    const TRAILER: u16 = 1 << 12;
    /// The hop-by-hop headers removed whatever `Connection` says.
    const FIXED: [(u16, HeaderName); 4] = [
        (Self::KEEP_ALIVE, KEEP_ALIVE),
        (Self::PROXY_CONNECTION, PROXY_CONNECTION),
        (Self::TRANSFER_ENCODING, header::TRANSFER_ENCODING),
        (Self::HTTP2_SETTINGS, HTTP2_SETTINGS),
    ];
    const HOP: u16 = Self::CONNECTION
        | Self::UPGRADE
        | Self::KEEP_ALIVE
        | Self::PROXY_CONNECTION
        | Self::TE
        | Self::TRANSFER_ENCODING
        | Self::HTTP2_SETTINGS
        | Self::TRAILER;

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
                9 if s == "forwarded" => Self::FORWARDED,
                9 if s == "x-real-ip" => Self::X_REAL_IP,
                10 if s == "connection" => Self::CONNECTION,
                10 if s == "keep-alive" => Self::KEEP_ALIVE,
                14 if s == "http2-settings" => Self::HTTP2_SETTINGS,
                15 if s == "x-forwarded-for" => Self::X_FORWARDED_FOR,
                16 if s == "proxy-connection" => Self::PROXY_CONNECTION,
                16 if s == "x-forwarded-host" => Self::X_FORWARDED_HOST,
                17 if s == "transfer-encoding" => Self::TRANSFER_ENCODING,
                17 if s == "x-forwarded-proto" => Self::X_FORWARDED_PROTO,
                _ => 0,
            };
        }
        Self(found)
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// A transfer coding other than `chunked` (wxgate forwards only what
    /// hyper decodes: chunking).
    pub fn has_transfer_coding_besides_chunked(self, headers: &HeaderMap) -> bool {
        self.has(Self::TRANSFER_ENCODING) && has_transfer_coding_besides_chunked(headers)
    }

    /// An HTTP Upgrade: `Upgrade` and a `Connection` that lists it.
    pub fn is_upgrade(self, headers: &HeaderMap) -> bool {
        self.has(Self::UPGRADE) && self.has(Self::CONNECTION) && connection_lists(headers, "upgrade")
    }

    /// Removes a request's hop-by-hop headers before it goes upstream:
    /// those `Connection` names, then `Connection`, `Upgrade`, the fixed
    /// ones, `Trailer` (request trailers are not forwarded), and `TE` unless
    /// it asks for trailers (wxgate relays them, so it says `TE: trailers`
    /// itself).
    pub fn strip_request(self, headers: &mut HeaderMap) {
        if self.0 & Self::HOP == 0 {
            return;
        }
        self.strip_connection(headers);
        if self.has(Self::UPGRADE) {
            headers.remove(header::UPGRADE);
        }
        if self.has(Self::TRAILER) {
            headers.remove(header::TRAILER);
        }
        if self.has(Self::TE) {
            let trailers = list_has(headers, &header::TE, "trailers");
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            } else {
                headers.remove(header::TE);
            }
        }
        self.strip_fixed(headers);
    }

    fn strip_connection(self, headers: &mut HeaderMap) {
        if self.has(Self::CONNECTION) && !remove_lone_keep_alive(headers) {
            remove_connection_listed(headers, &[]);
            headers.remove(header::CONNECTION);
        }
    }

    fn strip_fixed(self, headers: &mut HeaderMap) {
        for (bit, name) in Self::FIXED {
            if self.has(bit) {
                headers.remove(name);
            }
        }
    }
}

/// Removes a backend answer's hop-by-hop headers. A `101 Switching
/// Protocols` keeps `Connection` and `Upgrade`: they are the answer. Errs
/// on a transfer coding wxgate cannot relay.
pub fn upstream_response(headers: &mut HeaderMap, switching: bool) -> Result<(), &'static str> {
    let hop = HopByHop::scan(headers);
    if hop.has_transfer_coding_besides_chunked(headers) {
        return Err("it used a transfer coding other than chunked");
    }
    if hop.0 & HopByHop::HOP == 0 {
        return Ok(());
    }
    if !switching {
        hop.strip_connection(headers);
        if hop.has(HopByHop::UPGRADE) {
            headers.remove(header::UPGRADE);
        }
    }
    if hop.has(HopByHop::TE) {
        headers.remove(header::TE);
    }
    hop.strip_fixed(headers);
    Ok(())
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

/// Whether a comma-separated header lists `token` (case-insensitively).
fn list_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    list_has(headers, &header::CONNECTION, token)
}

fn list_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|t| t.split(';').next().unwrap_or_default().trim())
        .filter(|t| !t.is_empty())
}

/// Removes `Connection` when it is one field saying only `keep-alive`: what
/// most HTTP/1.1 peers send, naming nothing to remove (one lookup).
fn remove_lone_keep_alive(headers: &mut HeaderMap) -> bool {
    let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) else {
        return false;
    };
    let mut values = entry.iter();
    let lone =
        matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
    if lone {
        entry.remove();
    }
    lone
}

/// Removes the headers that `Connection` names, but `host` (a client must
/// not make wxgate forget where a request goes) and those in `keep`.
/// `keep-alive` is skipped without a lookup (its header goes with the fixed
/// ones); for the others, only a header that is there is looked up twice.
fn remove_connection_listed(headers: &mut HeaderMap, keep: &[&str]) {
    let mut listed: Vec<HeaderName> = Vec::new();
    for token in list_tokens(headers, &header::CONNECTION) {
        if token.eq_ignore_ascii_case("keep-alive")
            || token.eq_ignore_ascii_case("host")
            || keep.iter().any(|k| token.eq_ignore_ascii_case(k))
        {
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

/// What a client's request asks of this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade: a plain request (any other upgrade was removed).
    None,
    /// A well-formed RFC 6455 opening handshake: the only upgrade wxgate
    /// forwards.
    WebSocket,
}

/// Where the request came from, as the backend will be told.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The peer's address as an `X-Forwarded-For` entry and `X-Real-IP`.
    pub peer: HeaderValue,
    /// The peer is a trusted proxy: its `X-Forwarded-*` are kept, and the
    /// client is the last untrusted address of `X-Forwarded-For`.
    pub trusted: bool,
}

impl ClientAddr {
    /// The peer at `addr` (an IPv4-mapped IPv6 address read as IPv4), trusted
    /// when it is in one of the `trusted` ranges (`server.trusted_proxies`).
    pub fn new(addr: SocketAddr, trusted: &[ipnet::IpNet]) -> Self {
        let ip = addr.ip().to_canonical();
        Self {
            peer: ip_value(ip),
            trusted: trusted.iter().any(|n| n.contains(&ip)),
        }
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Prepares a client's request before any layer runs:
///
/// - applies its `Connection` header: the headers it names go (so that
///   `Connection: x-wx-unionid` cannot remove wxgate's own header later),
///   but `Host` never does;
/// - keeps an upgrade only when it is a WebSocket opening handshake (GET,
///   HTTP/1.1, `Upgrade: websocket`, `Sec-WebSocket-Key` and
///   `Sec-WebSocket-Version`). Any other token (`h2c`, unknown ones) is
///   removed with `HTTP2-Settings`, and the request goes on as a plain one:
///   nothing but a WebSocket may become a tunnel past wxgate;
/// - says where it came from: `X-Forwarded-For` is the peer's address
///   (appended to the list a trusted proxy sent), `X-Real-IP` the client's
///   (the peer, or behind trusted proxies the last untrusted address of the
///   list), and a client's `Forwarded` is removed; `X-Forwarded-Proto` and
///   `-Host` are kept from trusted proxies only.
pub fn client_request(
    headers: &mut HeaderMap,
    method: &Method,
    version: Version,
    client: &ClientAddr,
    trusted: &[ipnet::IpNet],
) -> Upgrade {
    let hop = HopByHop::scan(headers);
    // wxgate adds up to five headers on the way (X-Forwarded-*, X-Real-IP,
    // X-Request-Id): one growth now, not one per insert.
    headers.reserve(6);
    let mut upgrade = Upgrade::None;
    // A lone `Connection: keep-alive`, what most HTTP/1.1 clients send, has
    // nothing to apply.
    if hop.has(HopByHop::CONNECTION) && !remove_lone_keep_alive(headers) {
        if hop.is_upgrade(headers) && is_websocket_handshake(headers, method, version) {
            upgrade = Upgrade::WebSocket;
            remove_connection_listed(headers, &["upgrade"]);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        } else {
            remove_connection_listed(headers, &[]);
            headers.remove(header::CONNECTION);
        }
    }
    if upgrade == Upgrade::None {
        if hop.has(HopByHop::UPGRADE) {
            headers.remove(header::UPGRADE);
        }
        if hop.has(HopByHop::HTTP2_SETTINGS) {
            headers.remove(HTTP2_SETTINGS);
        }
    }
    if hop.has(HopByHop::FORWARDED) {
        headers.remove(header::FORWARDED);
    }
    if client.trusted {
        let real = if hop.has(HopByHop::X_FORWARDED_FOR) {
            real_client(headers, trusted)
        } else {
            None
        };
        append_forwarded_for(headers, &client.peer, hop.has(HopByHop::X_FORWARDED_FOR));
        headers.insert(X_REAL_IP, real.unwrap_or_else(|| client.peer.clone()));
    } else {
        for (bit, name) in [
            (HopByHop::X_FORWARDED_PROTO, X_FORWARDED_PROTO),
            (HopByHop::X_FORWARDED_HOST, X_FORWARDED_HOST),
        ] {
            if hop.has(bit) {
                headers.remove(name);
            }
        }
        headers.insert(X_FORWARDED_FOR, client.peer.clone());
        headers.insert(X_REAL_IP, client.peer.clone());
    }
    upgrade
}

/// RFC 6455 §4.1: a GET over HTTP/1.1 with `Upgrade: websocket`, a key and a version.
fn is_websocket_handshake(headers: &HeaderMap, method: &Method, version: Version) -> bool {
    *method == Method::GET
        && version == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && headers.get_all(header::UPGRADE).iter().count() == 1
        && headers.get(SEC_WEBSOCKET_KEY).is_some_and(|k| k.len() == 24)
        && headers.contains_key(SEC_WEBSOCKET_VERSION)
}

/// Behind trusted proxies, the client is the last address of
/// `X-Forwarded-For` that is not a trusted proxy itself.
fn real_client(headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Option<HeaderValue> {
    let addresses: Vec<&str> = list_tokens(headers, &X_FORWARDED_FOR).collect();
    addresses
        .iter()
        .rev()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
        .map(ip_value)
}

/// Appends the peer's address to `X-Forwarded-For`, folding the values a
/// trusted proxy sent into one header.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue, present: bool) {
    if !present {
        headers.insert(X_FORWARDED_FOR, ip.clone());
        return;
    }
    if let Entry::Occupied(mut o) = headers.entry(X_FORWARDED_FOR) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn untrusted() -> ClientAddr {
        ClientAddr::new("10.0.0.9:1".parse().unwrap(), &[])
    }

    fn prepare(h: &mut HeaderMap, method: Method, version: Version) -> Upgrade {
        client_request(h, &method, version, &untrusted(), &[])
    }

    fn websocket_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
        h.insert(SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h
    }

    #[test]
    fn hop_by_hop_request_headers_and_the_ones_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret-Hop, close".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert(header::TRAILER, "x-checksum".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(HTTP2_SETTINGS, "AAMAAABkAAQAoAAAAAIAAAAA".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        HopByHop::scan(&h).strip_request(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"], "{h:?}");
    }

    #[test]
    fn a_lone_keep_alive_is_told_apart_from_a_second_connection_field() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        HopByHop::scan(&h).strip_request(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        // A second field may name a header to remove: both orders.
        for fields in [["keep-alive", "x-secret-hop"], ["x-secret-hop", "keep-alive"]] {
            let mut h = HeaderMap::new();
            for f in fields {
                h.append(header::CONNECTION, f.parse().unwrap());
            }
            h.insert("x-secret-hop", "1".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            HopByHop::scan(&h).strip_request(&mut h);
            let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-kept"], "{fields:?}");
        }
    }

    #[test]
    fn te_trailers_is_passed_on() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip, Trailers;q=1".parse().unwrap());
        HopByHop::scan(&h).strip_request(&mut h);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn each_hop_by_hop_header_is_found_alone() {
        for name in [
            "connection",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "http2-settings",
            "trailer",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            HopByHop::scan(&h).strip_request(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
    }

    #[test]
    fn a_101_keeps_connection_and_upgrade_and_trailer_is_end_to_end() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        upstream_response(&mut h, true).unwrap();
        assert_eq!(h.len(), 2, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert(header::TRAILER, "x-sum".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        upstream_response(&mut h, false).unwrap();
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::TRAILER));
    }

    #[test]
    fn only_a_websocket_handshake_keeps_its_upgrade() {
        let mut h = websocket_headers();
        assert_eq!(prepare(&mut h, Method::GET, Version::HTTP_11), Upgrade::WebSocket);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");

        // h2c smuggling: the upgrade goes, the request stays.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade, HTTP2-Settings".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert(HTTP2_SETTINGS, "AAMAAABkAAQAoAAAAAIAAAAA".parse().unwrap());
        assert_eq!(prepare(&mut h, Method::GET, Version::HTTP_11), Upgrade::None);
        assert!(!h.contains_key(header::UPGRADE) && !h.contains_key(HTTP2_SETTINGS));
        assert!(!h.contains_key(header::CONNECTION));

        for (mutate, what) in [
            (
                (|h: &mut HeaderMap| {
                    h.remove(SEC_WEBSOCKET_KEY);
                }) as fn(&mut HeaderMap),
                "no key",
            ),
            (
                |h: &mut HeaderMap| {
                    h.remove(SEC_WEBSOCKET_VERSION);
                },
                "no version",
            ),
            (
                |h: &mut HeaderMap| {
                    h.insert(header::UPGRADE, "websocket, h2c".parse().unwrap());
                },
                "two tokens",
            ),
        ] {
            let mut h = websocket_headers();
            mutate(&mut h);
            assert_eq!(prepare(&mut h, Method::GET, Version::HTTP_11), Upgrade::None, "{what}");
            assert!(!h.contains_key(header::UPGRADE), "{what}");
        }
        let mut h = websocket_headers();
        assert_eq!(prepare(&mut h, Method::POST, Version::HTTP_11), Upgrade::None);
        let mut h = websocket_headers();
        assert_eq!(prepare(&mut h, Method::GET, Version::HTTP_10), Upgrade::None);
    }

    #[test]
    fn connection_cannot_name_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "example.com".parse().unwrap());
        h.insert(header::CONNECTION, "host, x-other".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        prepare(&mut h, Method::GET, Version::HTTP_11);
        assert_eq!(h[header::HOST], "example.com");
        assert!(!h.contains_key("x-other"));
    }

    #[test]
    fn an_untrusted_client_says_only_its_own_address() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(X_FORWARDED_HOST, "evil".parse().unwrap());
        h.insert(X_REAL_IP, "1.2.3.4".parse().unwrap());
        h.insert(header::FORWARDED, "for=1.2.3.4".parse().unwrap());
        prepare(&mut h, Method::GET, Version::HTTP_11);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[X_REAL_IP], "10.0.0.9");
        assert!(!h.contains_key(X_FORWARDED_PROTO));
        assert!(!h.contains_key(X_FORWARDED_HOST));
        assert!(!h.contains_key(header::FORWARDED));
    }

    #[test]
    fn behind_a_trusted_proxy_the_list_is_kept_and_the_client_found() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb = ClientAddr::new("10.0.0.2:1".parse().unwrap(), &trusted);
        assert!(lb.trusted);
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "6.6.6.6, 203.0.113.7".parse().unwrap());
        h.append(X_FORWARDED_FOR, "10.0.0.3".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(X_REAL_IP, "6.6.6.6".parse().unwrap());
        client_request(&mut h, &Method::GET, Version::HTTP_11, &lb, &trusted);
        assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, 203.0.113.7, 10.0.0.3, 10.0.0.2");
        assert_eq!(h[X_REAL_IP], "203.0.113.7");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        let v4_mapped = ClientAddr::new("[::ffff:10.0.0.2]:1".parse().unwrap(), &trusted);
        assert!(v4_mapped.trusted);
        assert_eq!(v4_mapped.peer, "10.0.0.2");
    }

    #[test]
    fn only_chunked_transfer_coding_passes() {
        let te = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::TRANSFER_ENCODING, v.parse().unwrap());
            HopByHop::scan(&h).has_transfer_coding_besides_chunked(&h)
        };
        assert!(!te("chunked"));
        assert!(!te("Chunked"));
        assert!(te("gzip, chunked"));
        assert!(te("identity"));
    }
}
