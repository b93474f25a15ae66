//! One stored record back into an [`Entry`]: for tools that read a live log (`ReadLog`) and want
//! its meaning rather than its bytes, such as the test harness that checks a run's ledger.
//!
//! Decoding checks the framing and the body's structure, not the hash chain: run a
//! [`crate::log::Verifier`] over the same records for that.

use super::Hash;
use super::entry::{BodyRef, Entry, Payload, SpendEvent};
use super::segment::{Item, read_item};

/// Splits a spend batch's events section into the encoded events (each `u16` length-prefixed).
/// Stops at the first event whose length runs past the end.
pub fn split_events(mut section: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    while let Some((len, tail)) = section.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        let Some((bytes, tail)) = tail.split_at_checked(len) else {
            break;
        };
        events.push(bytes);
        section = tail;
    }
    events
}

/// Decodes one record (as `ReadLog` serves it) into its entry and its stored hash.
pub fn decode(record: &[u8]) -> Result<(Entry, Hash), String> {
    let r = match read_item(record, 0) {
        Ok(Item::Record(r)) if r.end == record.len() => r,
        Ok(_) => return Err("not exactly one record".into()),
        Err(e) => return Err(e.to_string()),
    };
    let body = BodyRef::parse(r.body).map_err(|e| e.to_string())?;
    let (mut payload, _) = Payload::decode(body.kind, body.payload).map_err(|e| e.to_string())?;
    if let Payload::SpendBatch(b) = &mut payload {
        for bytes in split_events(r.events) {
            b.events
                .push(SpendEvent::decode(bytes).map_err(|e| e.to_string())?);
        }
    }
    let prev_hash: Hash = r
        .prev_hash
        .try_into()
        .map_err(|_| "prev_hash is not 32 bytes".to_string())?;
    let hash: Hash = r
        .hash
        .try_into()
        .map_err(|_| "hash is not 32 bytes".to_string())?;
    Ok((
        Entry {
            seq: body.seq,
            prev_hash,
            raft_term: body.raft_term,
            raft_index: body.raft_index,
            time_us: body.time_us,
            payload,
        },
        hash,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Chain;
    use crate::log::entry::{Anomaly, AnomalyKind, SpendBatch};
    use crate::{BatchId, EventKey, LeaseId, Money};

    fn event(auction: &str, micros: i64) -> SpendEvent {
        SpendEvent {
            bid: 1,
            key: EventKey::from_parts("x", auction, "1").unwrap(),
            amount: Money::from_micros(micros),
        }
    }

    #[test]
    fn records_decode_to_the_entries_that_made_them() {
        let mut chain = Chain::new();
        let payloads = [
            Payload::SpendBatch(SpendBatch {
                lease: LeaseId(4),
                batch: BatchId([7; 16]),
                edge: "edge-1".parse().unwrap(),
                events: vec![event("a", 1_500), event("b", 20)],
            }),
            Payload::Anomaly(Anomaly {
                rule: AnomalyKind::LateSpend,
                lease: LeaseId(4),
                event: event("c", 3),
            }),
        ];
        for (i, p) in payloads.into_iter().enumerate() {
            let (entry, hash, record) = chain.append_record(2, 10 + i as u64, 99, p).unwrap();
            assert_eq!(decode(&record).unwrap(), (entry, hash));
            assert!(decode(&record[..record.len() - 1]).is_err());
        }
    }
}
