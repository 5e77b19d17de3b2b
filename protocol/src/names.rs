//! Naming rules for namespaces and events (spec §2).

use crate::ProtocolError;

/// Longest namespace or event name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Checks a namespace name: 1–128 characters of `A-Z a-z 0-9 _ - .`, not starting with `.`,
/// and no `..`.
pub fn validate_namespace(name: &str) -> Result<(), ProtocolError> {
    let fail = |reason| {
        let mut shown = name.to_owned();
        if shown.len() > 200 {
            let mut cut = 200;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
        }
        Err(ProtocolError::BadNamespace {
            name: shown,
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_NAME_CHARS {
        return fail("longer than 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return fail("only A-Z a-z 0-9 _ - . are allowed");
    }
    if name.starts_with('.') {
        return fail("must not start with '.'");
    }
    if name.contains("..") {
        return fail("must not contain '..'");
    }
    Ok(())
}

/// Event names starting with this are the broker's own: Server-Sent Events name its
/// messages `rewind.opened`, `rewind.truncated`, `rewind.closed` and `rewind.error` in the
/// same `event:` field as the events, so a published `rewind.closed` would pass for the
/// broker's (spec §2: a value is accepted only if every encoding can carry it).
pub const RESERVED_EVENT_PREFIX: &str = "rewind.";

/// Checks an event name: 1–128 characters of UTF-8 with no control characters, not
/// starting with [`RESERVED_EVENT_PREFIX`].
pub fn validate_event_name(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::BadEventName("must not be empty"));
    }
    if name.starts_with(RESERVED_EVENT_PREFIX) {
        return Err(ProtocolError::BadEventName(
            "must not start with \"rewind.\" (reserved for the broker's own SSE messages)",
        ));
    }
    let mut chars = 0usize;
    for c in name.chars() {
        if c.is_control() {
            return Err(ProtocolError::BadEventName(
                "must not contain control characters",
            ));
        }
        chars += 1;
        if chars > MAX_NAME_CHARS {
            return Err(ProtocolError::BadEventName("longer than 128 characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        for ok in [
            "a",
            "logs.api",
            "state.orders-v2",
            "A_b-9",
            &"x".repeat(128),
        ] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a..b",
            "sp ace",
            "slash/x",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_names() {
        for ok in [
            "created",
            "über ereignis",
            "a.b/c",
            &"é".repeat(128),
            "rewind",
            "Rewind.closed",
            "my.rewind.closed",
        ] {
            assert!(validate_event_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "tab\there",
            "nl\n",
            "\u{7f}",
            &"é".repeat(129),
            "rewind.closed",
            "rewind.",
        ] {
            assert!(validate_event_name(bad).is_err(), "{bad:?}");
        }
    }
}
