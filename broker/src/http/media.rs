//! Media types and content negotiation (RFC 9110 §8.3.1, §12.5.1): types, subtypes and
//! parameter names compare case-insensitively, and in `Accept` a range with `q=0` means
//! "not this"; a `q` that is not an RFC 9110 weight is refused, not guessed at.

/// A parsed `type/subtype; name=value; …`, lower-cased (parameter values unquoted).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MediaType {
    /// `type/subtype`, lower case.
    pub essence: String,
    /// Parameters in order: lower-case names, unquoted values (case kept).
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses one media type; `None` when there is no `/` in it.
    pub fn parse(text: &str) -> Option<MediaType> {
        let mut parts = text.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let (ty, sub) = essence.split_once('/')?;
        if ty.is_empty() || sub.is_empty() {
            return None;
        }
        let params = parts
            .filter_map(|p| {
                let (name, value) = p.split_once('=')?;
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                Some((name.trim().to_ascii_lowercase(), value.to_owned()))
            })
            .collect();
        Some(MediaType { essence, params })
    }

    /// A parameter's value, by case-insensitive name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The weight `accept` gives `offer` (a lower-case `type/subtype`): the `q` of the most
/// specific range that matches it (exact, then `type/*`, then `*/*`), 0 when none does.
fn weight(accept: &[(MediaType, f32)], offer: &str) -> f32 {
    let ty = offer.split('/').next().unwrap_or_default();
    let mut best: Option<(u8, f32)> = None;
    for (range, q) in accept {
        let specificity = match range.essence.split_once('/') {
            Some(("*", "*")) => 1,
            Some((t, "*")) if t == ty => 2,
            _ if range.essence == offer => 3,
            _ => continue,
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, *q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// The `q` of a range: 1 when missing. RFC 9110 §12.4.2's `qvalue` is `0` to `1` with at
/// most three decimals (`0`, `0.5`, `0.125`, `1.000`, `1.`); anything else (`abc`, `1.5`,
/// `0.1234`, `-0`, `.5`, `1e0`) is an error naming the value.
fn quality(range: &MediaType) -> Result<f32, String> {
    let Some(q) = range.param("q") else {
        return Ok(1.0);
    };
    let (whole, decimals) = match q.split_once('.') {
        Some((w, d)) => (w, d),
        None => (q, ""),
    };
    let valid = decimals.len() <= 3
        && match whole {
            "0" => decimals.bytes().all(|b| b.is_ascii_digit()),
            "1" => decimals.bytes().all(|b| b == b'0'),
            _ => false,
        };
    if !valid {
        return Err(format!(
            "the Accept header's q={q:?} is not a weight from 0 to 1 with at most three \
             decimals (RFC 9110 §12.4.2)"
        ));
    }
    q.parse::<f32>()
        .or_else(|_| format!("{q}0").parse::<f32>())
        .map_err(|e| format!("the Accept header's q={q:?}: {e}"))
}

/// Picks which of `offers` (lower-case `type/subtype`s, the server's preference first) to
/// answer with, given the request's `Accept` header values: the one with the highest
/// weight above 0, the earlier on a tie. No `Accept` (or an empty one) takes the first
/// offer; `Ok(None)` means the client accepts none of them (406); `Err` carries the
/// message for a `q` that is not an RFC 9110 weight (400).
pub(super) fn negotiate<'a>(
    accept: &[&str],
    offers: &[&'a str],
) -> Result<Option<&'a str>, String> {
    let ranges: Vec<(MediaType, f32)> = accept
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(MediaType::parse)
        .map(|m| quality(&m).map(|q| (m, q)))
        .collect::<Result<_, _>>()?;
    if ranges.is_empty() {
        return Ok(offers.first().copied());
    }
    let mut chosen: Option<(&str, f32)> = None;
    for offer in offers {
        let q = weight(&ranges, offer);
        if q > 0.0 && chosen.is_none_or(|(_, best)| q > best) {
            chosen = Some((offer, q));
        }
    }
    Ok(chosen.map(|(o, _)| o))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERS: [&str; 2] = ["application/json", "application/msgpack"];

    #[test]
    fn media_types_compare_case_insensitively() {
        let m = MediaType::parse("APPLICATION/JSON; Charset=\"UTF-8\"").unwrap();
        assert_eq!(m.essence, "application/json");
        assert_eq!(m.param("charset"), Some("UTF-8"));
        assert_eq!(MediaType::parse("json"), None);
        assert_eq!(MediaType::parse("/json"), None);
    }

    #[test]
    fn accept_picks_by_weight_and_q0_means_not_this() {
        let pick = |accept: &[&str]| negotiate(accept, &OFFERS).unwrap();
        assert_eq!(pick(&[]), Some("application/json"));
        assert_eq!(pick(&[""]), Some("application/json"));
        assert_eq!(pick(&["*/*"]), Some("application/json"));
        assert_eq!(pick(&["Application/MsgPack"]), Some("application/msgpack"));
        assert_eq!(
            pick(&["application/msgpack;q=0, application/json"]),
            Some("application/json")
        );
        assert_eq!(
            pick(&["application/msgpack;q=0, */*"]),
            Some("application/json")
        );
        assert_eq!(
            pick(&["application/json;q=0", "*/*"]),
            Some("application/msgpack")
        );
        assert_eq!(
            pick(&["application/json;q=0.4, application/msgpack;q=0.9"]),
            Some("application/msgpack")
        );
        assert_eq!(
            pick(&["application/*;q=0.2, application/msgpack"]),
            Some("application/msgpack")
        );
        assert_eq!(pick(&["application/json; q=0.000"]), None);
        assert_eq!(pick(&["text/html"]), None);
        assert_eq!(pick(&["*/*;q=0"]), None);
    }

    #[test]
    fn q_is_an_rfc_9110_weight() {
        let pick = |accept: &str| negotiate(&[accept], &OFFERS);
        for good in ["0", "0.", "0.5", "0.125", "1", "1.", "1.0", "1.000"] {
            let accept = format!("application/json;q={good}");
            assert!(pick(&accept).is_ok(), "{accept}");
        }
        assert_eq!(pick("application/json;q=0."), Ok(None));
        assert_eq!(
            pick("application/json;q=0.5, application/msgpack;q=0.501"),
            Ok(Some("application/msgpack"))
        );
        for bad in [
            "abc", "1.5", "1.001", "0.1234", "-0", "", ".5", "+1", "1e0", "2", "01", " ", "0.5x",
        ] {
            let accept = format!("application/json;q={bad}");
            let message = pick(&accept).expect_err(&accept);
            assert!(message.contains("Accept"), "{message}");
        }
    }
}
