//! Web origins as text (RFC 6454): the grammar the `allowed_origins` option
//! ([`crate::config`]) and the origin check before routing (`http::cors`) share, so an
//! entry and a request's `Origin` are normalised the same way.

/// `text` as a serialised origin (RFC 6454 §6.2), normalised: `scheme://host` with
/// `:port` unless it is the scheme's default (80 for `http`, 443 for `https`), scheme and
/// host in lower case. `None` for anything else: a path (even `/`), a query, a fragment,
/// userinfo (`@`), a port that is not a number from 0 to 65535, characters a host cannot
/// have, or non-ASCII (browsers send hosts in punycode). `null` and `*` are not origins
/// here: the caller handles them.
pub(crate) fn normalise(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (inside, after) = v6.split_once(']')?;
            let ok = !inside.is_empty()
                && inside
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'));
            if !ok {
                return None;
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{inside}]"), port)
        }
        None => {
            let (host, port) = match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            let ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return None;
            }
            (host.to_owned(), port)
        }
    };
    let host = host.to_ascii_lowercase();
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    let default = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match port {
        Some(p) if Some(p) != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// An `allowed_origins` entry as the option reads it: `*`, `null`, or an origin, which is
/// normalised ([`normalise`]) after one trailing `/` is dropped (an address copied from
/// the browser's bar); `Err` saying why not.
pub(crate) fn entry(text: &str) -> Result<String, String> {
    match text {
        "*" => return Ok("*".to_owned()),
        t if t.eq_ignore_ascii_case("null") => return Ok("null".to_owned()),
        _ => {}
    }
    let origin = text.strip_suffix('/').unwrap_or(text);
    normalise(origin).ok_or_else(|| {
        format!(
            "{text:?} is not an origin: expected scheme://host or scheme://host:port \
             (no path, user or query), `*` or `null`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_anything_else_is_none() {
        for (text, want) in [
            ("HTTP://LOCALHOST:7070", "http://localhost:7070"),
            ("http://localhost:80", "http://localhost"),
            ("https://Example.COM:443", "https://example.com"),
            ("https://example.com:80", "https://example.com:80"),
            ("http://[::1]:7070", "http://[::1]:7070"),
            ("http://[::1]", "http://[::1]"),
            ("chrome-extension://abcdef", "chrome-extension://abcdef"),
            ("http://127.0.0.1:07070", "http://127.0.0.1:7070"),
        ] {
            assert_eq!(normalise(text).as_deref(), Some(want), "{text}");
        }
        for bad in [
            "",
            "localhost:7070",
            "http://",
            "http://localhost:7070/",
            "http://localhost:7070/path",
            "http://127.0.0.1:7070.evil.example",
            "http://127.0.0.1:7070@evil.example",
            "http://user:pw@127.0.0.1:7070",
            "http://evil.example#@127.0.0.1:7070",
            "http://evil.example?x=127.0.0.1:7070",
            "http://localhost:",
            "http://localhost:65536",
            "http://localhost:-1",
            "http://[::1",
            "http://[::1]x",
            "http://[evil.example]:7070",
            "http://ex ample",
            "http://exämple.com",
            "1http://localhost",
            "*",
            "null",
        ] {
            assert_eq!(normalise(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_entry_is_an_origin_star_or_null() {
        assert_eq!(entry("HTTPS://A.example/").unwrap(), "https://a.example");
        assert_eq!(entry("Null").unwrap(), "null");
        assert_eq!(entry("*").unwrap(), "*");
        for bad in [
            "a.example",
            "https://a.example/x",
            "https://u@a.example",
            "**",
        ] {
            assert!(
                entry(bad).unwrap_err().contains("is not an origin"),
                "{bad}"
            );
        }
    }
}
