//! How wxgate compares header names a client chose, and the values it
//! checks before they become headers.
//!
//! Backends do not agree on what a header name is. CGI-style gateways
//! (lighttpd's CGI, FastCGI and SCGI, many PHP, Perl and Python stacks) turn
//! every character that is not a letter or digit into `_` and upper-case the
//! rest, so `x.wx.openid`, `x+wx+openid`, `X_WX_OPENID` and `x-wx-openid` all
//! arrive as `HTTP_X_WX_OPENID`. So wherever a client's header name is
//! matched against one wxgate owns, both are [`fold`]ed first: ASCII letters
//! and digits only, lower case (`xwxopenid`). Anything that folds to a
//! forbidden name or starts with a forbidden prefix is the same header.

use http::{HeaderMap, HeaderName};

/// Longest folded name or prefix wxgate matches against (config validation
/// refuses longer ones): names compare on a fixed buffer, without allocating.
pub const MAX_FOLDED: usize = 64;

/// `name` folded for comparison: its ASCII letters and digits, lower case.
pub fn fold(name: &str) -> String {
    name.bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

/// Whether `s` is 1 to `max` visible ASCII characters (no space, no control
/// character): what an id, a code or a token must be before wxgate uses it.
pub fn visible_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Header names no client may send: folded names and folded prefixes.
///
/// Matching runs on every header of every forwarded request, so it is
/// built to give up early: the folded name's first two characters must be
/// those of some forbidden name or prefix (`xw`, `xo` by default), which
/// tells `host`, `accept`, and even `x-request-id` or `x-forwarded-for`
/// apart at once. Only a name that passes is folded whole and compared.
#[derive(Debug, Clone)]
pub struct Forbidden {
    prefixes: Vec<Box<[u8]>>,
    names: Vec<Box<[u8]>>,
    /// Names that pass only in their exact spelling (the client-address
    /// headers wxgate sets): any other spelling that folds the same is
    /// removed, so a CGI-style backend never reads two of them.
    exact_only: Vec<(Box<[u8]>, &'static str)>,
    /// Each exact name of `exact_only` (its length first, for a cheap
    /// miss), and whether a prefix or name forbids it anyway.
    exact_fast: Vec<(usize, &'static str, bool)>,
    /// For each first folded character (its [`slot`]), the set of second
    /// folded characters some prefix or name starts with, as bits; bit
    /// [`ANY`] for a one-character prefix or name.
    starts: [u64; SLOTS],
}

/// Folded characters: 26 letters and 10 digits.
const SLOTS: usize = 36;
/// The bit of "any second character" in [`Forbidden::starts`].
const ANY: u32 = 63;

/// Not a folded character, in [`SLOT`].
const NONE: u8 = u8::MAX;

/// Each byte's place among the 36 folded characters, or [`NONE`].
static SLOT: [u8; 256] = {
    let mut t = [NONE; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            b @ b'a'..=b'z' => b - b'a',
            b @ b'A'..=b'Z' => b - b'A',
            b @ b'0'..=b'9' => 26 + (b - b'0'),
            _ => NONE,
        };
        c += 1;
    }
    t
};

/// A folded character's place among the 36 (`None` for anything else).
fn slot(c: u8) -> Option<usize> {
    match SLOT[usize::from(c)] {
        NONE => None,
        s => Some(usize::from(s)),
    }
}

impl Forbidden {
    /// From unfolded names and prefixes (as configured). Empty folded forms
    /// are ignored (validation refuses them).
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a str>, names: impl IntoIterator<Item = &'a str>) -> Self {
        let folded = |s: &str| -> Option<Box<[u8]>> {
            let f = fold(s);
            (!f.is_empty() && f.len() <= MAX_FOLDED).then(|| f.into_bytes().into())
        };
        let prefixes: Vec<Box<[u8]>> = prefixes.into_iter().filter_map(folded).collect();
        let mut names: Vec<Box<[u8]>> = names.into_iter().filter_map(folded).collect();
        names.sort();
        names.dedup();
        let mut starts = [0u64; SLOTS];
        for f in prefixes.iter().chain(&names) {
            // Folded: letters and digits only, so both slots exist.
            if let Some(first) = slot(f[0]) {
                let second = f.get(1).and_then(|&c| slot(c)).map_or(ANY, |s| s as u32);
                starts[first] |= 1 << second;
            }
        }
        Self {
            prefixes,
            names,
            exact_only: Vec::new(),
            exact_fast: Vec::new(),
            starts,
        }
    }

    /// Also removes every spelling of `names` (lower case, as `http` keeps
    /// them) but the exact one.
    pub fn with_exact_only(mut self, names: &[&'static str]) -> Self {
        for &name in names {
            let f = fold(name).into_bytes().into_boxed_slice();
            if let Some(first) = f.first().and_then(|&c| slot(c)) {
                let second = f.get(1).and_then(|&c| slot(c)).map_or(ANY, |s| s as u32);
                self.starts[first] |= 1 << second;
                self.exact_only.push((f, name));
            }
        }
        self.with_known(names)
    }

    /// Names wxgate itself writes on every request: decided once, here,
    /// rather than folded for every request.
    pub fn with_known(mut self, names: &[&'static str]) -> Self {
        for &name in names {
            let forbidden = self.matches_by_folding(name);
            self.exact_fast.push((name.len(), name, forbidden));
        }
        self
    }

    /// Whether a client header called `name` must not reach the backend.
    pub fn matches(&self, name: &str) -> bool {
        // The first folded character, by table: this runs for every header
        // of every request, and most names (`host`, `accept`...) stop here.
        let Some((wanted, i)) = self.wanted(name) else {
            return false;
        };
        // The exact spellings of `exact_only` (which wxgate itself wrote on
        // every request) pass without being folded, unless also forbidden.
        if let Some((_, _, forbidden)) = self
            .exact_fast
            .iter()
            .find(|(len, n, _)| *len == name.len() && *n == name)
        {
            return *forbidden;
        }
        self.matches_folded(i, wanted, name)
    }

    /// Whether `name` must go, by its folded form alone.
    fn matches_by_folding(&self, name: &str) -> bool {
        self.wanted(name)
            .is_some_and(|(wanted, i)| self.matches_folded(i, wanted, name))
    }

    /// The second folded characters wanted after `name`'s first folded one,
    /// and where to look for the second; `None` when no entry starts with
    /// its first.
    fn wanted(&self, name: &str) -> Option<(u64, usize)> {
        let bytes = name.as_bytes();
        let mut i = 0;
        let first = loop {
            let &c = bytes.get(i)?;
            i += 1;
            let s = SLOT[usize::from(c)];
            if s != NONE {
                break usize::from(s);
            }
        };
        let wanted = self.starts[first];
        (wanted != 0).then_some((wanted, i))
    }

    /// The rest of [`Self::matches`], from the second folded character
    /// (at byte `i`) of a name whose first one some entry starts with.
    fn matches_folded(&self, mut i: usize, wanted: u64, name: &str) -> bool {
        let bytes = name.as_bytes();
        let second = loop {
            let Some(&c) = bytes.get(i) else {
                break ANY;
            };
            i += 1;
            let s = SLOT[usize::from(c)];
            if s != NONE {
                break u32::from(s);
            }
        };
        if wanted & (1 << second | 1 << ANY) == 0 {
            return false;
        }
        let mut buf = [0u8; MAX_FOLDED];
        let mut len = 0;
        let mut overflow = false;
        for &c in bytes {
            if !c.is_ascii_alphanumeric() {
                continue;
            }
            if len == MAX_FOLDED {
                overflow = true;
                break;
            }
            buf[len] = c.to_ascii_lowercase();
            len += 1;
        }
        let folded = &buf[..len];
        self.prefixes.iter().any(|p| folded.starts_with(p))
            || (!overflow && self.names.iter().any(|n| **n == *folded))
            || (!overflow
                && self
                    .exact_only
                    .iter()
                    .any(|(f, exact)| **f == *folded && name != *exact))
    }

    /// Removes every forbidden header; returns the names removed.
    pub fn strip(&self, headers: &mut HeaderMap) -> Vec<HeaderName> {
        let mut doomed = Vec::new();
        for name in headers.keys() {
            if self.matches(name.as_str()) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            headers.remove(name);
        }
        doomed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden() -> Forbidden {
        Forbidden::new(["x-wx-"], ["x-original-forwarded-for", "x-user-openid"])
    }

    #[test]
    fn look_alikes_fold_to_the_same_name() {
        let f = forbidden();
        for name in [
            "x-wx-openid",
            "X-WX-OPENID",
            "x_wx_openid",
            "x.wx.openid",
            "x+wx+openid",
            "x~wx~phone~number",
            "xwxanything",
            "x-wx-from-openid",
            "x-wx-cloudbase-access-token",
            "x-original-forwarded-for",
            "X_Original.Forwarded~For",
            "x-user-openid",
            "x__user__openid",
            // The prefix is folded too: anything whose letters start "xwx".
            "x-w-x-anything",
        ] {
            assert!(f.matches(name), "{name}");
        }
        for name in [
            "host",
            "x-request-id",
            "x-user-openidx",
            "x-w",
            "authorization",
            "user-agent",
            "",
        ] {
            assert!(!f.matches(name), "{name}");
        }
    }

    #[test]
    fn short_names_and_prefixes_match_too() {
        let f = Forbidden::new(["x"], ["a", "ab"]);
        assert!(f.matches("x"));
        assert!(f.matches("X-anything"));
        assert!(f.matches("a"));
        assert!(f.matches("A_B"));
        assert!(!f.matches("abc"));
        assert!(!f.matches("b"));
    }

    #[test]
    fn long_names_still_match_prefixes_but_never_names() {
        let f = forbidden();
        assert!(f.matches(&format!("x-wx-{}", "a".repeat(200))));
        assert!(!f.matches(&format!("x-user-openid{}", "a".repeat(200))));
    }

    #[test]
    fn strip_removes_every_copy() {
        let mut h = HeaderMap::new();
        h.append("x-wx-openid", "a".parse().unwrap());
        h.append("x-wx-openid", "b".parse().unwrap());
        h.insert("x.wx.openid", "c".parse().unwrap());
        h.insert("accept", "d".parse().unwrap());
        let removed = forbidden().strip(&mut h);
        assert_eq!(removed.len(), 2);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn folding_and_visible_ascii() {
        assert_eq!(fold("X_WX.Open~ID"), "xwxopenid");
        assert!(visible_ascii("abc", 3));
        assert!(!visible_ascii("abcd", 3));
        assert!(!visible_ascii("a b", 10));
        assert!(!visible_ascii("", 10));
        assert!(!visible_ascii("é", 10));
    }
}
