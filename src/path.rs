//! Request paths as the backend's framework might read them.
//!
//! wxgate's own routes (login, phone, logout) and its protected paths must
//! not be reachable under another spelling that wxgate passes through but a
//! backend routes to the same handler: ASGI servers percent-decode
//! (`/api/%70hone`), Spring strips `;` parameters (`/api/phone;x`), Express
//! and ASP.NET fold case and trailing slashes (`/API/phone/`), most servers
//! merge `//` and resolve `/./` and `/../`, IIS reads `\` as `/`.
//! [`normalize`] applies all of these at once, so a path that any of them
//! would take for a route compares equal to it:
//!
//! 1. percent-decoding, repeated until nothing changes (`%2570` is `%70` is `p`);
//! 2. `\` read as `/`;
//! 3. `;` parameters dropped from every segment;
//! 4. empty and `.` segments dropped, `..` removes the segment before it;
//! 5. no trailing `/` (but for the root);
//! 6. ASCII lower case.
//!
//! Normalising errs towards matching too much: a path that merely looks
//! like a route is treated as one (refused, or protected), never the reverse.
//!
//! Most paths are plain (lower case, no `%`, `;`, `\`, `//` or dot segment);
//! for those [`normalize`] returns the path itself after one scan, without
//! allocating.

use std::borrow::Cow;

/// How many rounds of percent-decoding at most: more than any backend does.
const DECODE_ROUNDS: usize = 4;

/// The normalised form of a request path (see the module docs).
#[inline]
pub fn normalize(path: &str) -> Cow<'_, str> {
    normalize_with(path, true)
}

/// [`normalize`], but with `..` kept as a segment: what a backend that does
/// not resolve dot segments (Express, most prefix checks) routes on. A
/// protected prefix is checked against both forms, so `/api/orders/../x`
/// stays under `/api/orders`.
pub fn normalize_keeping_dots(path: &str) -> Cow<'_, str> {
    normalize_with(path, false)
}

/// The path without its last segment's suffix: from the segment's first
/// `.` on (Rails' `(.:format)`, Spring's suffix matching: `/api/phone.json`
/// is `/api/phone`), and without trailing spaces, tabs or NULs.
pub fn stem(path: &str) -> Option<&str> {
    let b = path.as_bytes();
    // One pass back over the last segment: its first '.', and whether it
    // ends in junk. Most paths have neither, and stop here.
    let mut start = b.len();
    let mut dot = None;
    while start > 0 && b[start - 1] != b'/' {
        start -= 1;
        if b[start] == b'.' {
            dot = Some(start);
        }
    }
    let junk = |c: &u8| matches!(c, b' ' | b'\t' | 0);
    if dot.is_none() && !b.last().is_some_and(junk) {
        return None;
    }
    let mut end = match dot {
        Some(d) if d > start => d,
        _ => b.len(),
    };
    while end > start && junk(&b[end - 1]) {
        end -= 1;
    }
    (end < b.len() && end > start).then(|| &path[..end])
}

#[inline]
fn normalize_with(path: &str, resolve_dots: bool) -> Cow<'_, str> {
    if is_plain(path) {
        return Cow::Borrowed(path);
    }
    normalize_slow(path, resolve_dots)
}

fn normalize_slow(path: &str, resolve_dots: bool) -> Cow<'_, str> {
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..DECODE_ROUNDS {
        match percent_decode(&bytes) {
            Some(decoded) => bytes = decoded,
            None => break,
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in bytes.split(|&b| b == b'/' || b == b'\\') {
        let segment = match segment.iter().position(|&b| b == b';') {
            Some(i) => &segment[..i],
            None => segment,
        };
        match segment {
            b"" | b"." => {}
            b".." if resolve_dots => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(bytes.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend(s.iter().map(u8::to_ascii_lowercase));
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A path that [`normalize`] would return unchanged.
fn is_plain(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || (b.len() > 1 && b.ends_with(b"/")) {
        return false;
    }
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b';' | b'\\' | b'A'..=b'Z' => return false,
            b'/' if prev == b'/' => return false,
            // A dot segment: "/." followed by the end, "/" or "./".
            b'.' if prev == b'/' => {
                let rest = &b[i + 1..];
                if rest.is_empty() || rest[0] == b'/' || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/')) {
                    return false;
                }
            }
            _ => {}
        }
        prev = c;
    }
    true
}

/// One round of percent-decoding; `None` when there was nothing to decode.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    if !input.contains(&b'%') {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && i + 2 < input.len()
            && let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            changed = true;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` (normalised) is `prefix` (normalised) or under it. A
/// prefix ending in `/` matches what is under it only; one without matches
/// itself and what is under it (`/api/orders` covers `/api/orders/7`, not
/// `/api/ordersx`).
pub fn under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix.trim_end_matches('/')) {
        Some("") => !prefix.ends_with('/'),
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_drop_suffixes_and_trailing_junk() {
        assert_eq!(stem("/api/phone.json"), Some("/api/phone"));
        assert_eq!(stem("/api/phone."), Some("/api/phone"));
        assert_eq!(stem("/api/phone \0"), Some("/api/phone"));
        assert_eq!(stem("/v1.2/orders"), None, "only the last segment");
        assert_eq!(stem("/api/.hidden"), None);
        assert_eq!(stem("/api/phone"), None);
        assert_eq!(stem("/"), None);
    }

    #[test]
    fn dot_segments_can_be_kept() {
        assert_eq!(normalize("/api/orders/../../x"), "/x");
        assert_eq!(normalize_keeping_dots("/api/orders/../../x"), "/api/orders/../../x");
        assert_eq!(normalize_keeping_dots("/API/orders/..;/./x"), "/api/orders/../x");
        assert_eq!(normalize_keeping_dots("/api/orders"), "/api/orders");
    }

    #[test]
    fn every_spelling_of_a_route_normalizes_to_it() {
        for spelling in [
            "/api/phone",
            "/api/%70hone",
            "/api/phon%65",
            "/api%2fphone",
            "/api%2Fphone",
            "/api/phone/",
            "/API/phone",
            "/Api/PHONE",
            "/api/phone;x",
            "/api;jsessionid=1/phone",
            "/api//phone",
            "//api/phone",
            "/api/./phone",
            "/api/x/../phone",
            "/api/%2e/phone",
            "/api/%2E%2E/api/phone",
            "/api/%2570hone",
            "/api\\phone",
            "/api/phone%3bx",
            "/api/phone/.",
        ] {
            assert_eq!(normalize(spelling), "/api/phone", "{spelling}");
        }
    }

    #[test]
    fn plain_paths_are_returned_as_they_are() {
        for plain in ["/", "/api/orders", "/a/b.c/d", "/a/.hidden", "/a/..b", "/x-y_z~"] {
            assert!(matches!(normalize(plain), Cow::Borrowed(_)), "{plain}");
            assert_eq!(normalize(plain), plain);
        }
        assert_eq!(normalize("/a/b/"), "/a/b");
        assert_eq!(normalize("/.."), "/");
        assert_eq!(normalize("/a/%zz"), "/a/%zz");
        assert_eq!(normalize("/a/%"), "/a/%");
        assert_eq!(normalize("/%ff"), "/\u{fffd}");
    }

    #[test]
    fn prefixes_cover_their_subtree_only() {
        assert!(under("/api/orders", "/api/orders"));
        assert!(under("/api/orders/7", "/api/orders"));
        assert!(!under("/api/ordersx", "/api/orders"));
        assert!(under("/api/user/1", "/api/user/"));
        assert!(!under("/api/user", "/api/user/"));
        assert!(under("/anything", "/"));
    }
}
