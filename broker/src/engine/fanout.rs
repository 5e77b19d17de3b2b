//! Live events shared by every subscriber of a namespace: framed once per encoding.
//!
//! After each commit the writer hands the new events of a namespace to that namespace's
//! live ring ([`crate::engine::live`]) — only if someone is subscribed — as runs of consecutive
//! events ([`SharedRun`], at most [`RUN_MAX_EVENTS`] events and about [`RUN_MAX_BYTES`] of
//! payload each). Subscribers that keep up take whole runs from the ring; the first one
//! to need an encoding builds the run's finished WebSocket frames as one buffer, and
//! every subscriber writes a slice of those same bytes: a run of a hundred events costs a
//! subscriber one reference count and one piece of a socket write.
//!
//! A subscriber whose next offset is no longer in the ring (it fell more than the ring
//! behind, or the broker-wide budget let the run go) reads the log instead, at its own
//! pace; one that runs out of credit takes what the ring still holds when credit returns
//! and the rest from the log. The ring's memory is per namespace, never per subscriber:
//! at most `fanout_buffer` runs, and all rings together at most `fanout_memory_bytes`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rewind_protocol::wire::{self, Encoding};
use rewind_protocol::Event;

use crate::engine::live::LiveBudget;

/// Events in one run, at most.
pub const RUN_MAX_EVENTS: usize = 256;

/// Payload bytes in one run, about: a run is closed once it holds this much (a single
/// larger event is a run of its own).
pub const RUN_MAX_BYTES: usize = 4 << 10;

/// Appends the finished frames of an event to `out` ([`wire::push_event`]); an event
/// MessagePack cannot carry is logged here, and an `error` frame stands in its place.
pub fn encode_into(out: &mut Vec<u8>, ns: &str, ev: &Event, encoding: Encoding) {
    if let Err(e) = wire::push_event(out, ns, ev, encoding) {
        tracing::error!(ns, offset = ev.offset, error = %e, "event cannot be encoded in MessagePack");
    }
}

/// A run's frames in one encoding: every event's frames back to back.
#[derive(Debug)]
struct Framed {
    bytes: Bytes,
    /// Where each event's frames end in `bytes`.
    ends: Vec<usize>,
}

/// Consecutive committed events of one namespace on their way to live subscribers.
///
/// Its memory is counted against the broker's [`LiveBudget`] from creation to drop: the
/// events (their structs and the bytes of name, key and payload) and, once built, each
/// encoding's frames.
#[derive(Debug)]
pub struct SharedRun {
    ns: Arc<str>,
    events: Vec<Event>,
    json: OnceLock<Framed>,
    msgpack: OnceLock<Framed>,
    budget: Arc<LiveBudget>,
    /// Bytes counted against `budget`.
    charged: AtomicUsize,
}

impl Drop for SharedRun {
    fn drop(&mut self) {
        self.budget
            .release_run(self.charged.load(Ordering::Acquire));
    }
}

impl SharedRun {
    /// Splits consecutive events (offsets increasing by one) into runs no larger than
    /// [`RUN_MAX_EVENTS`] and about [`RUN_MAX_BYTES`]; nothing is encoded until a
    /// subscriber asks.
    pub fn split(ns: &Arc<str>, events: Vec<Event>, budget: &Arc<LiveBudget>) -> Vec<SharedRun> {
        let mut runs = Vec::new();
        let mut run: Vec<Event> = Vec::new();
        let mut bytes = 0;
        for ev in events {
            if !run.is_empty() && (run.len() == RUN_MAX_EVENTS || bytes >= RUN_MAX_BYTES) {
                runs.push(SharedRun::new(ns, std::mem::take(&mut run), budget));
                bytes = 0;
            }
            bytes += ev.data.len() + ev.event.len();
            run.push(ev);
        }
        if !run.is_empty() {
            runs.push(SharedRun::new(ns, run, budget));
        }
        runs
    }

    fn new(ns: &Arc<str>, events: Vec<Event>, budget: &Arc<LiveBudget>) -> SharedRun {
        let bytes = std::mem::size_of::<SharedRun>()
            + events.capacity() * std::mem::size_of::<Event>()
            + events
                .iter()
                .map(|e| e.event.len() + e.key.as_ref().map_or(0, String::len) + e.data.len())
                .sum::<usize>();
        budget.charge_run(bytes);
        SharedRun {
            ns: Arc::clone(ns),
            events,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            budget: Arc::clone(budget),
            charged: AtomicUsize::new(bytes),
        }
    }

    /// The offset of the first event.
    pub fn first(&self) -> u64 {
        self.events.first().map_or(0, |e| e.offset)
    }

    /// The offset after the last event.
    pub fn end(&self) -> u64 {
        self.events.last().map_or(0, |e| e.offset + 1)
    }

    /// The wire bytes of the events from offset `from` (inclusive) to `to` (exclusive),
    /// clamped to the run; built by the first caller in `encoding`, shared after.
    pub fn frames(&self, encoding: Encoding, from: u64, to: u64) -> Bytes {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::Msgpack => &self.msgpack,
        };
        let framed = cell.get_or_init(|| {
            let mut out = Vec::with_capacity(
                self.events
                    .iter()
                    .map(|e| e.data.len() + e.event.len() + 96)
                    .sum(),
            );
            let mut ends = Vec::with_capacity(self.events.len());
            for ev in &self.events {
                encode_into(&mut out, &self.ns, ev, encoding);
                ends.push(out.len());
            }
            let bytes = out.len() + ends.len() * std::mem::size_of::<usize>();
            self.charged.fetch_add(bytes, Ordering::AcqRel);
            self.budget.charge(bytes);
            Framed {
                bytes: Bytes::from(out),
                ends,
            }
        });
        let first = self.first();
        let index = |offset: u64| offset.saturating_sub(first).min(self.events.len() as u64);
        let (i, j) = (index(from) as usize, index(to) as usize);
        if i >= j {
            return Bytes::new();
        }
        let start = if i == 0 { 0 } else { framed.ends[i - 1] };
        framed.bytes.slice(start..framed.ends[j - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_protocol::frame::{decode_server_json, ServerMessage};
    use rewind_protocol::Payload;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    fn event(offset: u64, data_len: usize) -> Event {
        Event {
            offset,
            event: "e".into(),
            ts: 1,
            key: None,
            data: Payload::Json(format!("\"{}\"", "x".repeat(data_len))),
        }
    }

    /// The offsets of the JSON event frames in `wire`; a `bin: true` header must be
    /// followed by its binary payload frame, which is checked against `payload`.
    fn offsets(mut wire: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut frame = || -> Option<(OpCode, Vec<u8>)> {
            if wire.is_empty() {
                return None;
            }
            let mut cursor = std::io::Cursor::new(wire);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("a header")
                .expect("a whole header");
            let start = cursor.position() as usize;
            let end = start + len as usize;
            let body = wire[start..end].to_vec();
            wire = &wire[end..];
            Some((header.opcode, body))
        };
        while let Some((op, body)) = frame() {
            assert_eq!(op, OpCode::Data(Data::Text));
            let text = std::str::from_utf8(&body).expect("UTF-8");
            match decode_server_json(text) {
                Ok(ServerMessage::Event(e)) => {
                    if e.bin {
                        let (op, bytes) = frame().expect("the payload frame");
                        assert_eq!(op, OpCode::Data(Data::Binary));
                        assert_eq!(bytes, payload(e.event.offset));
                    }
                    out.push(e.event.offset)
                }
                other => panic!("not an event: {other:?}"),
            }
        }
        out
    }

    fn payload(offset: u64) -> Vec<u8> {
        vec![offset as u8; 3]
    }

    #[test]
    fn a_slice_keeps_each_binary_payload_behind_its_header() {
        let ns: Arc<str> = Arc::from("n");
        let events: Vec<Event> = (0..6)
            .map(|o| match o % 2 {
                0 => event(o, 5),
                _ => Event {
                    data: Payload::Bytes(payload(o)),
                    ..event(o, 0)
                },
            })
            .collect();
        let runs = SharedRun::split(&ns, events, &LiveBudget::new(u64::MAX));
        assert_eq!(runs.len(), 1);
        assert_eq!(
            offsets(&runs[0].frames(Encoding::Json, 1, 4)),
            vec![1, 2, 3]
        );
        assert_eq!(
            offsets(&runs[0].frames(Encoding::Json, 0, 6)),
            (0..6).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_event_messagepack_cannot_carry_is_an_error_with_its_offset_in_its_place() {
        use rewind_protocol::frame::{decode_server_msgpack, ServerFrame};
        let ns: Arc<str> = Arc::from("n");
        let mut events: Vec<Event> = (0..3).map(|o| event(o, 1)).collect();
        // Stored before the value rules: a lone surrogate.
        events[1].data = Payload::Json(r#"{"k":"\ud800"}"#.into());
        let runs = SharedRun::split(&ns, events, &LiveBudget::new(u64::MAX));
        let mut wire: &[u8] = &runs[0].frames(Encoding::Msgpack, 0, 3);
        let mut got = Vec::new();
        while !wire.is_empty() {
            let mut cursor = std::io::Cursor::new(wire);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("a header")
                .expect("a whole header");
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            let start = cursor.position() as usize;
            let body = &wire[start..start + len as usize];
            assert!(!body.is_empty(), "never an empty frame");
            got.push(match decode_server_msgpack(body).expect("a frame") {
                ServerMessage::Event(e) => format!("event {}", e.event.offset),
                ServerMessage::Frame(ServerFrame::Error {
                    code,
                    ns,
                    offset: Some(o),
                    ..
                }) => format!("{code} {} {o}", ns.unwrap_or_default()),
                other => panic!("{other:?}"),
            });
            wire = &wire[start + len as usize..];
        }
        assert_eq!(got, ["event 0", "internal n 1", "event 2"]);
        // JSON carries the payload as stored.
        assert_eq!(
            offsets(&runs[0].frames(Encoding::Json, 0, 3)),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn runs_split_by_count_and_size_and_slice_by_offset() {
        let ns: Arc<str> = Arc::from("n");
        let small: Vec<Event> = (10..10 + 600).map(|o| event(o, 10)).collect();
        let runs = SharedRun::split(&ns, small, &LiveBudget::new(u64::MAX));
        let lens: Vec<u64> = runs.iter().map(|r| r.end() - r.first()).collect();
        assert_eq!(lens, vec![256, 256, 88]);
        assert_eq!(runs[1].first(), 266);

        let big: Vec<Event> = (0..5).map(|o| event(o, 2_500)).collect();
        let lens: Vec<u64> = SharedRun::split(&ns, big, &LiveBudget::new(u64::MAX))
            .iter()
            .map(|r| r.end() - r.first())
            .collect();
        assert_eq!(lens, vec![2, 2, 1]);

        let run = &runs[0];
        assert_eq!(
            offsets(&run.frames(Encoding::Json, 10, 266)),
            (10..266).collect::<Vec<_>>()
        );
        assert_eq!(
            offsets(&run.frames(Encoding::Json, 20, 23)),
            vec![20, 21, 22]
        );
        assert_eq!(offsets(&run.frames(Encoding::Json, 0, 12)), vec![10, 11]);
        assert!(run.frames(Encoding::Json, 300, 400).is_empty());
    }
}
