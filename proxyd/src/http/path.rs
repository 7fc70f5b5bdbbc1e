//! Request paths as routing sees them: normalized once, so that a route which blocks `/admin`
//! cannot be reached as `/x/../admin`, `/%61dmin`, `//admin` or `/./admin`, and the upstream
//! gets exactly the path that was routed.
//!
//! In order (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded (`%61` → `a`,
//! `%2E` → `.`) and other escapes upper-cased (`%3f` → `%3F`); runs of `/` are merged when the
//! config says so; dot segments are removed (§5.2.4). Refused with 400: an encoded slash (`%2F`,
//! unless kept by `escaped_slashes = "keep"`, then left encoded), a backslash raw or encoded, an
//! encoded NUL, a `%` not followed by two hex digits, and a dot segment with parameters
//! (`/..;/`, `/.;x/`): Tomcat, Jetty and Spring drop the `;…` and resolve it as `..`, so
//! `/public/..;/admin` would reach `/admin` behind a route that blocks it.

use std::borrow::Cow;

use crate::convert::PathRules;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("an encoded slash (%2F) in the path")]
    EncodedSlash,
    #[error("a backslash in the path")]
    Backslash,
    #[error("an encoded NUL (%00) in the path")]
    Nul,
    #[error("a '%' not followed by two hex digits in the path")]
    BadEscape,
    #[error("a dot segment with parameters (..;) in the path")]
    DotSegmentParameters,
    #[error("a dot segment behind an encoded slash (..%2F) in the path")]
    EncodedDotSegment,
}

impl PathError {
    /// The reason a 400 names.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::EncodedSlash => "an encoded slash (%2F) in the path",
            PathError::Backslash => "a backslash in the path",
            PathError::Nul => "an encoded NUL (%00) in the path",
            PathError::BadEscape => "a '%' not followed by two hex digits in the path",
            PathError::DotSegmentParameters => "a dot segment with parameters (..;) in the path",
            PathError::EncodedDotSegment => {
                "a dot segment behind an encoded slash (..%2F) in the path"
            }
        }
    }
}

/// `path` normalized; borrowed when it already was (the common case costs one scan).
pub fn normalize(path: &str, rules: PathRules) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and anything else hyper let through unchanged: routing finds no route.
        return Ok(Cow::Borrowed(path));
    }
    if is_normal(path, rules) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, rules)?;
    let merged = if rules.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    if merged.split('/').any(dot_with_parameters) {
        return Err(PathError::DotSegmentParameters);
    }
    // Kept `%2F`s are separators to an upstream that decodes them: `/x/..%2Fadmin` is
    // `/x/../admin` there, which nothing here would have resolved.
    let resolved = remove_dot_segments(&merged);
    if rules.keep_escaped_slashes && resolved.contains("%2F") && has_dot_segment(&resolved) {
        return Err(PathError::EncodedDotSegment);
    }
    Ok(Cow::Owned(resolved))
}

/// `.;…` or `..;…`: what servlet containers resolve as a dot segment.
fn dot_with_parameters(segment: &str) -> bool {
    segment
        .split_once(';')
        .is_some_and(|(name, _)| name == "." || name == "..")
}

/// The path routing sees when it differs from `path` (`None`: the same): `;` parameters cut
/// off every segment, as Tomcat, Jetty and Spring do before they map a request, and runs of
/// `/` merged, as most servers do.
pub fn routing_view(path: &str) -> Option<String> {
    // A kept `%2F` (`escaped_slashes = "keep"`) is a separator to an upstream that decodes it.
    let decoded = path.contains("%2F").then(|| path.replace("%2F", "/"));
    let path = decoded.as_deref().unwrap_or(path);
    if decoded.is_none() && !path.contains(';') && !path.contains("//") {
        return None;
    }
    let without: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split_once(';').map_or(segment, |(name, _)| name))
        .collect();
    Some(merge_slashes(&without.join("/")))
}

/// Whether `path` has a segment that some server resolves as a dot segment (`.`, `..`, or
/// either with `;` parameters): a rewritten path with one would leave its target.
pub fn has_dot_segment(path: &str) -> bool {
    // A kept `%2F` separates too (normalization leaves it upper-case).
    path.split('/')
        .flat_map(|s| s.split("%2F"))
        .any(|s| s == "." || s == ".." || dot_with_parameters(s))
}

/// No escape, no backslash, no dot segment and (when merging) no `//`.
fn is_normal(path: &str, rules: PathRules) -> bool {
    let bytes = path.as_bytes();
    if bytes.iter().any(|b| *b == b'%' || *b == b'\\') {
        return false;
    }
    if rules.merge_slashes && path.contains("//") {
        return false;
    }
    !has_dot_segment(path)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode(path: &str, rules: PathRules) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi * 16 + lo;
                match value {
                    b'/' if rules.keep_escaped_slashes => out.push_str("%2F"),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    v if unreserved(v) => out.push(char::from(v)),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            _ => {
                // Multi-byte UTF-8 cannot be here (hyper accepts only visible ASCII in a
                // path); copy byte runs as text either way.
                let start = i;
                while i < bytes.len() && bytes[i] != b'%' && bytes[i] != b'\\' {
                    i += 1;
                }
                out.push_str(&path[start..i]);
            }
        }
    }
    Ok(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the segment before it
/// (never above the root); a path ending in one keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERGE: PathRules = PathRules {
        merge_slashes: true,
        keep_escaped_slashes: false,
    };

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path, MERGE).map(Cow::into_owned)
    }

    #[test]
    fn tricks_that_aim_at_a_blocked_prefix_all_land_on_it() {
        for trick in [
            "/admin",
            "/x/../admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "/./admin",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/a/b/../../admin",
            "/../admin",
            "///admin",
        ] {
            assert_eq!(n(trick).unwrap(), "/admin", "{trick}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        assert_eq!(n("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a..b/.c").unwrap(), "/a..b/.c", "only whole segments");
    }

    #[test]
    fn escapes_other_than_unreserved_stay_encoded_in_upper_case() {
        assert_eq!(n("/a%3fb%20c").unwrap(), "/a%3Fb%20c");
        assert_eq!(n("/%7e%41").unwrap(), "/~A");
    }

    #[test]
    fn refused_paths() {
        assert_eq!(n("/admin%2fx"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(n("/a%00"), Err(PathError::Nul));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
    }

    #[test]
    fn the_config_can_keep_slashes_and_encoded_slashes() {
        let keep = PathRules {
            merge_slashes: false,
            keep_escaped_slashes: true,
        };
        assert_eq!(normalize("/a//b", keep).unwrap(), "/a//b");
        assert_eq!(normalize("/a%2fb/../c", keep).unwrap(), "/c");
        assert_eq!(normalize("/x/a%2fb", keep).unwrap(), "/x/a%2Fb");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/items", MERGE),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("*", MERGE), Ok(Cow::Borrowed("*"))));
    }

    /// Issue 19 #2: `..;` is `..` to Tomcat, Jetty and Spring.
    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in [
            "/public/..;/admin",
            "/public/.;/admin",
            "/a/..;x=1/b",
            "/%2e%2e;/admin",
            "/..;",
        ] {
            assert_eq!(n(path), Err(PathError::DotSegmentParameters), "{path}");
        }
        assert_eq!(
            n("/a;b/c").unwrap(),
            "/a;b/c",
            "parameters on other segments stay"
        );
        assert_eq!(n("/a/...;x").unwrap(), "/a/...;x");
    }

    /// Review of issue 19 #2: any `;` parameter, not only on dot segments, hid a blocked
    /// prefix from routing (`/private;x/secret`), and so did `//` with merging off.
    #[test]
    fn routing_sees_the_path_without_parameters_and_merged() {
        assert_eq!(routing_view("/a/b"), None);
        assert_eq!(
            routing_view("/private;x/secret").as_deref(),
            Some("/private/secret")
        );
        assert_eq!(
            routing_view("/private;/secret").as_deref(),
            Some("/private/secret")
        );
        assert_eq!(routing_view("/;/admin").as_deref(), Some("/admin"));
        assert_eq!(routing_view("//admin").as_deref(), Some("/admin"));
        assert_eq!(routing_view("/a;b=c;d/e;f").as_deref(), Some("/a/e"));
    }

    /// Review of issue 19: with `escaped_slashes = "keep"`, `%2F` is a separator to an
    /// upstream that decodes it.
    #[test]
    fn kept_encoded_slashes_cannot_hide_dot_segments_or_prefixes() {
        let keep = PathRules {
            merge_slashes: true,
            keep_escaped_slashes: true,
        };
        assert_eq!(
            normalize("/x/..%2Fadmin", keep),
            Err(PathError::EncodedDotSegment)
        );
        assert_eq!(
            normalize("/x/%2e%2e%2fadmin", keep),
            Err(PathError::EncodedDotSegment)
        );
        assert_eq!(normalize("/a%2Fb", keep).unwrap(), "/a%2Fb");
        assert!(has_dot_segment("/v2/..%2Fadmin"));
        assert_eq!(
            routing_view("/admin%2Fsecret").as_deref(),
            Some("/admin/secret")
        );
    }
}
