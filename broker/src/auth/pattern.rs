//! Namespace patterns, as a token's `publish` and `subscribe` claims list them
//! (`docs/security.md`, "Tokens"):
//!
//! - `*` alone: every namespace;
//! - `P.*`: every namespace whose name starts with `P.` (so `logs.*` takes `logs.a` and
//!   `logs.a.b`, not `logs` itself nor `logsx`: list `logs` beside it for that);
//! - anything else: that one namespace, exactly.
//!
//! A `*` anywhere else, or a name that breaks the namespace rules (`a b`, `orders `, `a..b`;
//! `docs/http-api.md`), makes the pattern, and so the token, invalid: a token that says
//! `lo*` or `orders ` means something rewind does not do, and is refused rather than read
//! otherwise (or as allowing nothing).

use rewind_protocol::validate_namespace;

/// One pattern of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `*`.
    All,
    /// `P.*`, held as `P.`.
    Prefix(String),
    /// A name.
    Exact(String),
}

impl Pattern {
    /// Reads `text`; `Err` with the reason for a `*` other than as `*` or a final `.*`,
    /// or a name (before the `.*`) that is not a valid namespace name.
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::All);
        }
        let (body, prefix) = match text.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (text, false),
        };
        if validate_namespace(body).is_err() || (prefix && body.ends_with('.')) {
            return Err(format!(
                "namespace pattern {:?} is not a name, name.* or *",
                text.chars().take(64).collect::<String>()
            ));
        }
        Ok(if prefix {
            Pattern::Prefix(format!("{body}."))
        } else {
            Pattern::Exact(body.to_owned())
        })
    }

    /// Whether namespace `ns` is one of this pattern's.
    pub(crate) fn matches(&self, ns: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(p) => ns.len() > p.len() && ns.starts_with(p.as_str()),
            Pattern::Exact(name) => ns == name,
        }
    }
}

/// Whether any of `patterns` matches `ns`.
pub(crate) fn any_matches(patterns: &[Pattern], ns: &str) -> bool {
    patterns.iter().any(|p| p.matches(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_takes_names_below_it_only() {
        let p = Pattern::parse("logs.*").unwrap();
        for yes in ["logs.a", "logs.a.b", "logs.-"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["logs", "logsx", "logs.", "xlogs.a", "log.a", ""] {
            assert!(!p.matches(no), "{no}");
        }
    }

    #[test]
    fn exact_and_all() {
        let exact = Pattern::parse("orders").unwrap();
        assert!(exact.matches("orders"));
        assert!(!exact.matches("orders.eu"));
        assert!(!exact.matches("order"));
        let all = Pattern::parse("*").unwrap();
        assert!(all.matches("anything.at.all"));
    }

    #[test]
    fn a_star_elsewhere_is_refused() {
        for bad in ["", ".*", "lo*", "*.logs", "logs.*.x", "a**", "logs*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_breaking_the_namespace_rules_is_refused() {
        let long = "a".repeat(129);
        for bad in [
            "a b",
            "orders ",
            " orders",
            "a..b",
            ".a",
            "a/b",
            "é",
            "a b.*",
            "a..*",
            long.as_str(),
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
