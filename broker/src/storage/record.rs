//! The byte layout of one stored event (the value under its big-endian offset key).
//!
//! ```text
//! ts: u64 BE | flags: u8 | name_len: u16 BE | name | [key_len: u16 BE | key] | data
//! ```
//!
//! `flags` bit 0: the payload is bytes (else JSON text); bit 1: a key is present. The
//! timestamp comes first so retention by age reads 8 bytes without decoding the rest.

use rewind_protocol::{Event, NewEvent, Payload};

use super::StoreError;

const FLAG_BYTES: u8 = 1;
const FLAG_KEY: u8 = 2;

/// Encodes an event for storage.
pub fn encode(ev: &NewEvent, ts_ms: u64) -> Vec<u8> {
    let data: &[u8] = match &ev.data {
        Payload::Json(text) => text.as_bytes(),
        Payload::Bytes(bytes) => bytes,
    };
    let key_len = ev.key.as_ref().map_or(0, |k| 2 + k.len());
    let mut out = Vec::with_capacity(11 + ev.event.len() + key_len + data.len());
    out.extend_from_slice(&ts_ms.to_be_bytes());
    let mut flags = 0;
    if matches!(ev.data, Payload::Bytes(_)) {
        flags |= FLAG_BYTES;
    }
    if ev.key.is_some() {
        flags |= FLAG_KEY;
    }
    out.push(flags);
    // Names are at most 128 chars (512 bytes) and keys at most 1024 bytes, so both fit u16.
    out.extend_from_slice(&(ev.event.len() as u16).to_be_bytes());
    out.extend_from_slice(ev.event.as_bytes());
    if let Some(key) = &ev.key {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The timestamp of a stored record.
pub fn ts(record: &[u8]) -> Result<u64, StoreError> {
    record
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("record shorter than its header".into()))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("record ends early".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<usize, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn string(&mut self, n: usize) -> Result<String, StoreError> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| StoreError::Corrupt("text field is not UTF-8".into()))
    }
}

/// Decodes a stored record found under `offset`.
pub fn decode(offset: u64, record: &[u8]) -> Result<Event, StoreError> {
    let ts = ts(record)?;
    let mut cur = Cursor(&record[8..]);
    let flags = cur.take(1)?[0];
    let name_len = cur.u16()?;
    let event = cur.string(name_len)?;
    let key = if flags & FLAG_KEY != 0 {
        let n = cur.u16()?;
        Some(cur.string(n)?)
    } else {
        None
    };
    let rest = cur.0;
    let data = if flags & FLAG_BYTES != 0 {
        Payload::Bytes(rest.to_vec())
    } else {
        Payload::Json(
            String::from_utf8(rest.to_vec())
                .map_err(|_| StoreError::Corrupt("JSON payload is not UTF-8".into()))?,
        )
    };
    Ok(Event {
        offset,
        event,
        ts,
        key,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn new_event() -> impl Strategy<Value = NewEvent> {
        let data = prop_oneof![
            ".{0,40}".prop_map(|s| Payload::Json(serde_json::Value::from(s).to_string())),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Bytes),
        ];
        ("\\PC{1,128}", prop::option::of(".{0,40}"), data).prop_map(|(event, key, data)| NewEvent {
            event,
            key,
            data,
        })
    }

    proptest! {
        #[test]
        fn round_trip(ev in new_event(), ts in any::<u64>(), offset in any::<u64>()) {
            let bytes = encode(&ev, ts);
            let back = decode(offset, &bytes).unwrap();
            prop_assert_eq!(back.offset, offset);
            prop_assert_eq!(back.ts, ts);
            prop_assert_eq!(back.event, ev.event);
            prop_assert_eq!(back.key, ev.key);
            prop_assert_eq!(back.data, ev.data);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(0, &bytes);
        }

        #[test]
        fn truncated_records_are_errors(ev in new_event(), cut in 0usize..11) {
            let bytes = encode(&ev, 1);
            let cut = cut.min(bytes.len());
            prop_assert!(decode(0, &bytes[..cut]).is_err());
        }
    }
}
