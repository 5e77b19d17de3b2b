//! Decoding a request's path segments and query parameters (RFC 3986 §2.1, and the
//! `application/x-www-form-urlencoded` rules for the query: `+` is a space).
//!
//! Decoding is strict: a name or value that is not UTF-8 once percent-decoded is refused,
//! never patched with U+FFFD (which would store an event name or key the client never
//! sent). A `%` not followed by two hex digits is kept as it is, as the WHATWG URL
//! standard's decoder keeps it.

use std::borrow::Cow;

use hyper::StatusCode;
use percent_encoding::percent_decode;
use rewind_protocol::ErrorCode;

use super::response::ApiError;

/// A query string split into parameters, each still encoded; a parameter is decoded when
/// it is asked for, so that the error names it and carries the code of its mistake.
pub(super) struct Query<'a> {
    pairs: Vec<(Cow<'a, [u8]>, &'a [u8])>,
}

/// `+` as a space, then percent-decoding.
fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.contains(&b'+') {
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        Cow::Owned(percent_decode(&spaced).collect())
    } else {
        percent_decode(raw).into()
    }
}

impl<'a> Query<'a> {
    /// Splits `query` (the part after `?`, if any) at `&`; empty parts are skipped.
    pub fn parse(query: Option<&'a str>) -> Query<'a> {
        let pairs = query
            .unwrap_or_default()
            .as_bytes()
            .split(|&b| b == b'&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (name, value) = match part.iter().position(|&b| b == b'=') {
                    Some(i) => (&part[..i], &part[i + 1..]),
                    None => (part, &b""[..]),
                };
                (decode(name), value)
            })
            .collect();
        Query { pairs }
    }

    /// The value of parameter `name`, decoded; `None` when it is not given. A value that
    /// is not UTF-8 once decoded, or a parameter given more than once (`?event=a&event=b`:
    /// which one was meant cannot be told), is refused with `code` (400), naming `name`.
    pub fn get(&self, name: &str, code: ErrorCode) -> Result<Option<String>, ApiError> {
        let mut found = self
            .pairs
            .iter()
            .filter(|(n, _)| n.as_ref() == name.as_bytes());
        let Some((_, raw)) = found.next() else {
            return Ok(None);
        };
        if found.next().is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("the query parameter {name} is given more than once; give it once"),
            ));
        }
        match String::from_utf8(decode(raw).into_owned()) {
            Ok(value) => Ok(Some(value)),
            Err(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code,
                format!(
                    "the query parameter {name} is not UTF-8 once percent-decoded ({name}={})",
                    String::from_utf8_lossy(raw)
                ),
            )),
        }
    }
}

/// `path` with each `%XX` that encodes an unreserved character (`A-Z a-z 0-9 - . _ ~`)
/// decoded, which RFC 3986 §6.2.2.2 says changes nothing it identifies; every other escape
/// (`%2F`, `%25`, a byte over 127) is kept as sent.
pub(super) fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match escaped {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                // Not an unreserved escape: copied through up to the next `%`.
                let next = bytes[i + 1..]
                    .iter()
                    .position(|&b| b == b'%')
                    .map_or(bytes.len(), |p| i + 1 + p);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

/// One path segment, percent-decoded; `None` when the result is not UTF-8.
pub(super) fn segment(raw: &str) -> Option<String> {
    percent_decode(raw.as_bytes())
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded_strictly() {
        let q = Query::parse(Some(
            "event=a%2Eb+c&key=%FF&k2=%ED%A0%80&from=&x=%zz&&e=%C3%A9",
        ));
        let get = |n| q.get(n, ErrorCode::BadFrame);
        assert_eq!(get("event").unwrap().as_deref(), Some("a.b c"));
        assert_eq!(get("from").unwrap().as_deref(), Some(""));
        assert_eq!(get("x").unwrap().as_deref(), Some("%zz"));
        assert_eq!(get("e").unwrap().as_deref(), Some("é"));
        assert_eq!(get("missing").unwrap(), None);
        for bad in ["key", "k2"] {
            let err = get(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadFrame);
            assert!(err.message.contains(bad), "{}", err.message);
        }
        assert_eq!(
            Query::parse(None)
                .get("event", ErrorCode::BadFrame)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_parameter_given_twice_is_refused_with_its_code() {
        let q = Query::parse(Some("from=1&fr%6Fm=2&event=a"));
        let err = q.get("from", ErrorCode::BadPosition).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadPosition);
        assert!(err.message.contains("from"), "{}", err.message);
        assert!(q.get("event", ErrorCode::BadFrame).is_ok());
    }

    #[test]
    fn only_unreserved_escapes_are_decoded_before_routing() {
        assert_eq!(decode_unreserved("/v1/n%61mespaces"), "/v1/namespaces");
        assert_eq!(decode_unreserved("/a%2eb/%65vents"), "/a.b/events");
        assert_eq!(decode_unreserved("/%7E%5F%2D"), "/~_-");
        for kept in [
            "/a%2Fb", "/%25", "/x%FFy", "/%C3%A9", "/%zz", "/%", "/a%2", "é%",
        ] {
            assert_eq!(decode_unreserved(kept), kept);
        }
    }

    #[test]
    fn segments_decode_strictly() {
        assert_eq!(segment("a%2Eb").as_deref(), Some("a.b"));
        assert_eq!(segment("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(segment("a%FFb"), None);
    }
}
