//! Tests of the value rules: hand-picked inputs, and property tests that generate values
//! beyond what either encoding carries and check the rules against an independent
//! statement of what each encoding can carry.

use super::*;
use proptest::prelude::*;
use serde_json::Value;

fn reason(r: Result<(), ProtocolError>) -> (String, String) {
    match r {
        Err(ProtocolError::BadValue { path, reason }) => (path, reason),
        other => panic!("expected a refused value, got {other:?}"),
    }
}

fn nested(depth: usize, leaf: &str) -> String {
    format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn json_refusals_say_what_and_where() {
    let (path, why) = reason(validate_json(r#"{"k":"\ud800"}"#));
    assert_eq!(path, "data.k");
    assert!(why.contains("surrogate"), "{why}");
    let (path, _) = reason(validate_json(r#"{"k":[1,2,3,"x\udc00y"]}"#));
    assert_eq!(path, "data.k[3]");
    let (path, why) = reason(validate_json(r#"{"a b":{"\ud800":1}}"#));
    assert_eq!(path, r#"data["a b"]"#);
    assert!(why.contains("map key"), "{why}");
    let (path, why) = reason(validate_json(r#"{"x":{"a":1,"a":2}}"#));
    assert_eq!(path, "data.x");
    assert!(why.contains("twice"), "{why}");
    let (path, why) = reason(validate_json(r#"[0,18446744073709551616]"#));
    assert_eq!(path, "data[1]");
    assert!(why.contains("64-bit"), "{why}");
    assert!(validate_json("-9223372036854775809").is_err());
    assert!(validate_json("1e400").is_err());
    assert!(validate_json("-1e400").is_err());
    assert!(validate_json("1e-400").is_err());
    let (path, why) = reason(validate_json(&nested(MAX_DATA_DEPTH + 1, "1")));
    assert!(path.starts_with("data[0][0]"), "{path}");
    assert!(why.contains("deeper than 100"), "{why}");
}

#[test]
fn json_edges_that_both_encodings_carry() {
    for ok in [
        "null",
        "0",
        "-0",
        "0.0",
        "1e-300",
        "0e-999",
        "18446744073709551615",
        "-9223372036854775808",
        "1.7976931348623157e308",
        r#""\ud83d\ude00 \u00e9 \\ \" \/ \n""#,
        r#"{"a":1,"b":{"a":2}}"#,
        r#"{"":[{},[],""]}"#,
        r#""\u0000""#,
    ] {
        validate_json(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    validate_json(&nested(MAX_DATA_DEPTH, "{}")).expect_err("101 levels");
    validate_json(&nested(MAX_DATA_DEPTH, "1")).expect("100 levels");
    validate_json(&nested(100_000, "1")).expect_err("deep input refused, not a crash");
}

#[test]
fn names_and_keys_with_lone_surrogates_are_refused_by_serde_json_itself() {
    let limits = crate::publish::PublishLimits {
        max_payload_bytes: 1 << 20,
        max_batch_events: 10,
    };
    for body in [
        r#"{"event":"\ud800","data":1}"#,
        r#"{"event":"e","key":"\udc00","data":1}"#,
    ] {
        let err = crate::publish::parse_json(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::BadFrame, "{body}: {err}");
    }
    let frame = r#"{"t":"publish","id":1,"ns":"n","event":"e","key":"\ud800","data":1}"#;
    assert!(crate::frame::decode_json(frame, 1 << 20).is_err());
}

#[test]
fn json_to_msgpack_keeps_order_and_kinds() {
    let mut out = Vec::new();
    json_to_msgpack(r#"{"b":1,"a":[-1,1.5,"\u00e9",true,null]}"#, &mut out).unwrap();
    assert_eq!(
        out,
        [
            &[0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x95, 0xff, 0xcb][..],
            &1.5f64.to_be_bytes(),
            &[0xa2, 0xc3, 0xa9, 0xc3, 0xc0],
        ]
        .concat()
    );
    assert_eq!(
        msgpack_to_json(&out).unwrap(),
        r#"{"b":1,"a":[-1,1.5,"é",true,null]}"#
    );
    let before = out.clone();
    assert!(json_to_msgpack(r#"["\ud800"]"#, &mut out).is_err());
    assert_eq!(out, before, "a refused value writes nothing");
}

#[test]
fn msgpack_refusals_say_what_and_where() {
    // {"k": [1, bin]}
    let (path, why) =
        reason(msgpack_to_json(&[0x81, 0xa1, b'k', 0x92, 0x01, 0xc4, 0x01, 0x00]).map(drop));
    assert_eq!(path, "data.k[1]");
    assert!(why.contains("bytes"), "{why}");
    // {1: 2}
    let (path, why) = reason(msgpack_to_json(&[0x81, 0x01, 0x02]).map(drop));
    assert_eq!(path, "data");
    assert!(why.contains("not a string"), "{why}");
    // NaN, infinity
    let nan = [&[0xcb][..], &f64::NAN.to_be_bytes()].concat();
    assert!(reason(msgpack_to_json(&nan).map(drop)).1.contains("NaN"));
    let inf = [&[0xca][..], &f32::INFINITY.to_be_bytes()].concat();
    assert!(msgpack_to_json(&inf).is_err());
    // a timestamp extension
    assert!(reason(msgpack_to_json(&[0xd6, 0xff, 0, 0, 0, 0]).map(drop))
        .1
        .contains("extension"));
    // a string that is not UTF-8
    assert!(reason(msgpack_to_json(&[0xa2, 0xc3, 0x28]).map(drop))
        .1
        .contains("UTF-8"));
    // {"a": 1, "a": 2}
    assert!(
        reason(msgpack_to_json(&[0x82, 0xa1, b'a', 1, 0xa1, b'a', 2]).map(drop))
            .1
            .contains("twice")
    );
    // truncated, trailing, and 0xc1
    assert!(msgpack_to_json(&[0x92, 0x01]).is_err());
    assert!(msgpack_to_json(&[0x01, 0x02]).is_err());
    assert!(msgpack_to_json(&[0xc1]).is_err());
    // an array claiming 2³²−1 elements in five bytes
    assert!(msgpack_to_json(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
    // 1,100 nested arrays: refused at 101, with where
    let deep = [vec![0x91; 1_100], vec![0x01]].concat();
    let (path, why) = reason(msgpack_to_json(&deep).map(drop));
    assert!(path.starts_with("data[0]"), "{path}");
    assert!(why.contains("deeper than 100"), "{why}");
    let ok = [vec![0x91; MAX_DATA_DEPTH], vec![0x01]].concat();
    assert_eq!(msgpack_to_json(&ok).unwrap(), nested(MAX_DATA_DEPTH, "1"));
}

/// A MessagePack value, including everything JSON lacks.
#[derive(Debug, Clone)]
enum Mp {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(String),
    BadStr(Vec<u8>),
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    Array(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
}

fn mp_leaf() -> impl Strategy<Value = Mp> {
    prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::Bool),
        any::<u64>().prop_map(Mp::UInt),
        (i64::MIN..0).prop_map(Mp::Int),
        any::<f32>().prop_map(Mp::F32),
        any::<f64>().prop_map(Mp::F64),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)].prop_map(Mp::F64),
        "\\PC{0,8}".prop_map(Mp::Str),
        "[a-c]{1,2}".prop_map(Mp::Str),
        Just(Mp::BadStr(vec![0xff, 0x41])),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(Mp::Bin),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(t, d)| Mp::Ext(t, d)),
    ]
}

fn mp_value() -> impl Strategy<Value = Mp> {
    let shallow = mp_leaf().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Mp::Array),
            prop::collection::vec((inner.clone(), inner), 0..5).prop_map(Mp::Map),
        ]
    });
    prop_oneof![
        4 => shallow.clone(),
        1 => (shallow, MAX_DATA_DEPTH - 3..MAX_DATA_DEPTH + 3, any::<bool>()).prop_map(|(v, depth, map)| {
            (0..depth).fold(v, |v, _| if map { Mp::Map(vec![(Mp::Str("k".into()), v)]) } else { Mp::Array(vec![v]) })
        }),
    ]
}

fn mp_encode(v: &Mp, out: &mut Vec<u8>) {
    match v {
        Mp::Nil => out.push(0xc0),
        Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Mp::UInt(u) => {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
        Mp::Int(i) => write_int(out, *i),
        Mp::F32(f) => {
            out.push(0xca);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Mp::F64(f) => write_f64(out, *f),
        Mp::Str(s) => write_str(out, s),
        Mp::BadStr(b) => {
            out.push(0xa0 | b.len() as u8);
            out.extend_from_slice(b);
        }
        Mp::Bin(b) => write_bin(out, b),
        Mp::Ext(t, d) => {
            out.extend_from_slice(&[0xc7, d.len() as u8, *t as u8]);
            out.extend_from_slice(d);
        }
        Mp::Array(items) => {
            write_len(out, false, items.len());
            items.iter().for_each(|i| mp_encode(i, out));
        }
        Mp::Map(entries) => {
            write_len(out, true, entries.len());
            for (k, v) in entries {
                mp_encode(k, out);
                mp_encode(v, out);
            }
        }
    }
}

/// What JSON makes of a MessagePack value, or `None` when JSON cannot carry it: stated
/// from the two formats, not from the code under test.
fn mp_in_json(v: &Mp, depth: usize) -> Option<Value> {
    Some(match v {
        Mp::Nil => Value::Null,
        Mp::Bool(b) => Value::Bool(*b),
        Mp::UInt(u) => Value::from(*u),
        Mp::Int(i) => Value::from(*i),
        Mp::F32(f) => Value::from(serde_json::Number::from_f64(f64::from(*f))?),
        Mp::F64(f) => Value::from(serde_json::Number::from_f64(*f)?),
        Mp::Str(s) => Value::from(s.clone()),
        Mp::BadStr(_) | Mp::Bin(_) | Mp::Ext(..) => return None,
        Mp::Array(_) | Mp::Map(_) if depth == MAX_DATA_DEPTH => return None,
        Mp::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| mp_in_json(i, depth + 1))
                .collect::<Option<_>>()?,
        ),
        Mp::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let Mp::Str(k) = k else { return None };
                let v = mp_in_json(v, depth + 1)?;
                if map.insert(k.clone(), v).is_some() {
                    return None;
                }
            }
            Value::Object(map)
        }
    })
}

/// A JSON text of any number, string, key and depth, and what MessagePack makes of it
/// (`None` when it cannot carry it).
#[derive(Debug, Clone)]
struct Js {
    text: String,
    value: Option<Value>,
    depth: usize,
}

fn js_leaf() -> impl Strategy<Value = Js> {
    let int = prop_oneof![
        any::<u64>().prop_map(|u| u.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        "-?[1-9][0-9]{18,22}",
    ]
    .prop_map(|text| {
        let value = if text.starts_with('-') {
            text.parse::<i64>().ok().map(Value::from)
        } else {
            text.parse::<u64>().ok().map(Value::from)
        };
        Js {
            text,
            value,
            depth: 0,
        }
    });
    let float = (
        "-?[0-9]\\.[0-9]{1,17}",
        prop_oneof![Just(0i32), -330..330i32],
    )
        .prop_map(|(m, e)| {
            let text = format!("{m}e{e}");
            let f: f64 = text.parse().expect("a float literal");
            let nonzero = m.bytes().any(|b| (b'1'..=b'9').contains(&b));
            let value = (f.is_finite() && (f != 0.0 || !nonzero))
                .then(|| serde_json::Number::from_f64(f).map(Value::from))
                .flatten();
            Js {
                text,
                value,
                depth: 0,
            }
        });
    let string = prop::collection::vec(
        prop_oneof![
            4 => any::<char>().prop_map(|c| { let mut b = [0u16; 2]; c.encode_utf16(&mut b).to_vec() }),
            1 => (0xd800u16..0xe000).prop_map(|u| vec![u]),
        ],
        0..4,
    )
    .prop_map(|units| {
        let units: Vec<u16> = units.concat();
        let text = format!(
            "\"{}\"",
            units.iter().map(|u| format!("\\u{u:04x}")).collect::<String>()
        );
        let value = String::from_utf16(&units).ok().map(Value::from);
        Js { text, value, depth: 0 }
    });
    prop_oneof![
        Just(Js {
            text: "null".into(),
            value: Some(Value::Null),
            depth: 0
        }),
        Just(Js {
            text: "true".into(),
            value: Some(Value::Bool(true)),
            depth: 0
        }),
        int,
        float,
        string,
    ]
}

fn js_container(items: Vec<Js>, keys: Option<Vec<Js>>) -> Js {
    let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
    match keys {
        None => Js {
            text: format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| i.text.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            value: (depth <= MAX_DATA_DEPTH)
                .then(|| {
                    items
                        .iter()
                        .map(|i| i.value.clone())
                        .collect::<Option<Vec<_>>>()
                        .map(Value::Array)
                })
                .flatten(),
            depth,
        },
        Some(keys) => {
            let text = format!(
                "{{{}}}",
                keys.iter()
                    .zip(&items)
                    .map(|(k, v)| format!("{}:{}", k.text, v.text))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let mut map = Some(serde_json::Map::new());
            for (k, v) in keys.iter().zip(&items) {
                map = match (map, &k.value, &v.value) {
                    (Some(mut m), Some(Value::String(k)), Some(v)) => {
                        m.insert(k.clone(), v.clone()).is_none().then_some(m)
                    }
                    _ => None,
                };
            }
            Js {
                text,
                value: map.filter(|_| depth <= MAX_DATA_DEPTH).map(Value::Object),
                depth,
            }
        }
    }
}

fn js_value() -> impl Strategy<Value = Js> {
    let key = prop_oneof![
        3 => "[a-c]{1,2}".prop_map(|k| Js { text: format!("\"{k}\""), value: Some(Value::from(k)), depth: 0 }),
        1 => js_leaf().prop_filter("a string", |k| k.text.starts_with('"')),
    ];
    let shallow = js_leaf().prop_recursive(4, 40, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|i| js_container(i, None)),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|e| {
                let (k, v): (Vec<_>, Vec<_>) = e.into_iter().unzip();
                js_container(v, Some(k))
            }),
        ]
    });
    prop_oneof![
        4 => shallow.clone(),
        1 => (shallow, MAX_DATA_DEPTH - 3..MAX_DATA_DEPTH + 3).prop_map(|(v, depth)| {
            (0..depth).fold(v, |v, _| js_container(vec![v], None))
        }),
    ]
}

/// Text from a user: one value, checked by the same rules, returned without the
/// whitespace around it and otherwise unchanged; any depth gets the depth rule's path.
#[test]
fn json_text_from_users_is_checked_and_kept_as_written() {
    assert_eq!(
        check_json_text(" {\"z\":1, \"a\":1e2}\n"),
        Ok("{\"z\":1, \"a\":1e2}")
    );
    assert_eq!(
        check_json_text("18446744073709551615"),
        Ok("18446744073709551615")
    );
    let refused = |text: &str| check_json_text(text).unwrap_err().to_string();
    assert!(refused(r#"{"a":1,"a":2}"#).starts_with("data: the key \"a\" appears twice"));
    assert!(refused("18446744073709551616").contains("outside the 64-bit range"));
    for levels in [101, 128, 100_000] {
        let deep = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let message = refused(&deep);
        assert!(
            message.starts_with("data[0][0]")
                && message.ends_with("nests deeper than 100 levels of arrays and maps"),
            "{levels}: {message}"
        );
    }
    for broken in ["", "not json", "{\"a\":1} {}", "[1,"] {
        assert!(
            refused(broken).starts_with("malformed input: "),
            "{broken:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Refused MessagePack values are exactly those JSON cannot carry; accepted ones
    /// read back the same from both encodings, with serde_json and rmp-serde as readers.
    #[test]
    fn msgpack_values_are_refused_exactly_when_json_cannot_carry_them(v in mp_value()) {
        let mut bytes = Vec::new();
        mp_encode(&v, &mut bytes);
        let expected = mp_in_json(&v, 0);
        let got = msgpack_to_json(&bytes);
        prop_assert_eq!(got.is_ok(), expected.is_some(), "{:?}", got);
        if let (Ok(json), Some(expected)) = (got, expected) {
            validate_json(&json).expect("what was accepted passes again");
            prop_assert!(serde_json::from_str::<Value>(&json).is_ok(), "serde_json reads {}", json);
            let mut again = Vec::new();
            json_to_msgpack(&json, &mut again).expect("accepted JSON transcodes");
            prop_assert_eq!(rmp_serde::from_slice::<Value>(&again).expect("rmp-serde reads it"), expected);
            prop_assert_eq!(msgpack_to_json(&again).expect("and back"), json);
        }
    }

    /// Refused JSON values are exactly those MessagePack cannot carry; accepted ones read
    /// back the same from both encodings.
    #[test]
    fn json_values_are_refused_exactly_when_msgpack_cannot_carry_them(v in js_value()) {
        let got = validate_json(&v.text);
        prop_assert_eq!(got.is_ok(), v.value.is_some(), "{:?}", got);
        let mut mp = Vec::new();
        let transcoded = json_to_msgpack(&v.text, &mut mp);
        prop_assert_eq!(transcoded.is_ok(), v.value.is_some());
        if let Some(expected) = v.value {
            prop_assert_eq!(rmp_serde::from_slice::<Value>(&mp).expect("rmp-serde reads it"), expected);
            let json = msgpack_to_json(&mp).expect("accepted MessagePack goes back to JSON");
            prop_assert!(serde_json::from_str::<Value>(&json).is_ok(), "serde_json reads {}", json);
            let mut again = Vec::new();
            json_to_msgpack(&json, &mut again).expect("and back again");
            prop_assert_eq!(again, mp);
        } else {
            prop_assert!(mp.is_empty(), "a refused value writes nothing");
        }
    }

    #[test]
    fn walkers_never_panic_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = msgpack_to_json(&bytes);
        let _ = msgpack_value_len(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = validate_json(&text);
        let _ = json_to_msgpack(&text, &mut Vec::new());
    }

    #[test]
    fn walkers_never_panic_on_broken_json(text in "[\\\\\"\\[\\]{}:,0-9eE.+\\-ntuéd8a-f ]{0,64}") {
        let _ = validate_json(&text);
        let _ = json_to_msgpack(&text, &mut Vec::new());
    }
}
