//! Media types and content negotiation (RFC 9110 §8.3.1, §12.5.1): types, subtypes and
//! parameter names compare case-insensitively, and in `Accept` a range with `q=0` means
//! "not this".

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

/// The `q` of a range; a missing or unreadable one counts as 1.
fn quality(range: &MediaType) -> f32 {
    range
        .param("q")
        .and_then(|q| q.parse::<f32>().ok())
        .filter(|q| q.is_finite())
        .map_or(1.0, |q| q.clamp(0.0, 1.0))
}

/// Picks which of `offers` (lower-case `type/subtype`s, the server's preference first) to
/// answer with, given the request's `Accept` header values: the one with the highest
/// weight above 0, the earlier on a tie. No `Accept` (or an empty one) takes the first
/// offer; `None` means the client accepts none of them (406).
pub(super) fn negotiate<'a>(accept: &[&str], offers: &[&'a str]) -> Option<&'a str> {
    let ranges: Vec<(MediaType, f32)> = accept
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(MediaType::parse)
        .map(|m| {
            let q = quality(&m);
            (m, q)
        })
        .collect();
    if ranges.is_empty() {
        return offers.first().copied();
    }
    let mut chosen: Option<(&str, f32)> = None;
    for offer in offers {
        let q = weight(&ranges, offer);
        if q > 0.0 && chosen.is_none_or(|(_, best)| q > best) {
            chosen = Some((offer, q));
        }
    }
    chosen.map(|(o, _)| o)
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
        let pick = |accept: &[&str]| negotiate(accept, &OFFERS);
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
}
