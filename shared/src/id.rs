//! Identifiers: campaigns, regions, edges, leases, spend batches, and the key of a spend event.
//!
//! Every id is validated once, where it enters the system; a value of one of these types is
//! known to be well formed.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest name id (campaign, region, edge, exchange), in bytes.
pub const NAME_ID_MAX_BYTES: usize = 64;
/// The longest OpenRTB auction or impression id we accept, in bytes.
pub const OPENRTB_ID_MAX_BYTES: usize = 255;

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which id.
        kind: &'static str,
    },
    /// The id is longer than allowed.
    #[error("{kind} id is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// Which id.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id holds a character that is not allowed.
    #[error("{kind} id {value:?} holds {ch:?}; allowed are {allowed}")]
    BadChar {
        /// Which id.
        kind: &'static str,
        /// The id as given.
        value: String,
        /// The first character refused.
        ch: char,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A numeric or hexadecimal id did not parse.
    #[error("{kind} id {value:?} is not {expected}")]
    Malformed {
        /// Which id.
        kind: &'static str,
        /// The id as given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

const NAME_ALLOWED: &str = "ASCII letters, digits, '.', '_' and '-'";

/// Whether `b` may appear in a name id.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn check_len(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn check_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    check_len(kind, value, NAME_ID_MAX_BYTES)?;
    // Name bytes are ASCII, so the first non-name char starts at the first non-name byte.
    if let Some(ch) = value
        .chars()
        .find(|c| !c.is_ascii() || !is_name_byte(*c as u8))
    {
        return Err(IdError::BadChar {
            kind,
            value: value.to_string(),
            ch,
            allowed: NAME_ALLOWED,
        });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_name($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A campaign, as named by the advertiser's operator.
    CampaignId,
    "campaign"
);
name_id!(
    /// A region: one Raft group of coordinators and the edges it serves.
    RegionId,
    "region"
);
name_id!(
    /// An edge bidder process.
    EdgeId,
    "edge"
);
name_id!(
    /// An exchange that sends bid requests and notices.
    ExchangeId,
    "exchange"
);

/// A lease, numbered by the region's state machine when it grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

impl FromStr for LeaseId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        s.strip_prefix('L')
            .unwrap_or(s)
            .parse()
            .map(LeaseId)
            .map_err(|_| IdError::Malformed {
                kind: "lease",
                value: s.to_string(),
                expected: "a number, optionally prefixed with 'L'",
            })
    }
}

/// A spend batch: 128 random bits chosen by the edge that sends it, so that a retried batch is
/// recognised after an edge restart. Shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub [u8; 16]);

impl BatchId {
    /// A fresh id from `rng`.
    pub fn random(rng: &mut fastrand::Rng) -> BatchId {
        BatchId(rng.u128(..).to_be_bytes())
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchId({self})")
    }
}

impl FromStr for BatchId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::Malformed {
            kind: "batch",
            value: s.to_string(),
            expected: "32 hexadecimal digits",
        })?;
        Ok(BatchId(out))
    }
}

impl Serialize for BatchId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BatchId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An OpenRTB auction (`BidRequest.id`) or impression (`Imp.id`) id: 1 to 255 bytes of UTF-8
/// without control characters.
fn check_openrtb_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    check_len(kind, value, OPENRTB_ID_MAX_BYTES)?;
    // The common case, printable ASCII, needs no decoding.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(ch) = value.chars().find(|c| c.is_control()) {
        return Err(IdError::BadChar {
            kind,
            value: value.to_string(),
            ch,
            allowed: "any character but control characters",
        });
    }
    Ok(())
}

/// The key of a spend event: one impression of one auction on one exchange. A notice for the
/// same key is settled at most once.
///
/// The three parts live in one shared allocation, `EXCHANGE \0 AUCTION \0 IMP`, so that a clone
/// (the ledger keeps a key in its dedup table, its lease and its pending rows) is a reference
/// count, and a comparison is one `memcmp`. No part may hold a control character, so `\0` sorts
/// below every byte of a part and keys order exactly as `(exchange, auction, imp)` tuples do.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey {
    joined: Arc<str>,
    /// Where the auction id starts in `joined`.
    auction_at: u16,
    /// Where the impression id starts.
    imp_at: u16,
}

/// Borrowed from the input where the format allows (postcard, JSON without escapes), so that
/// decoding a key makes one allocation.
#[derive(Deserialize)]
#[serde(rename = "EventKey")]
struct EventKeyParts<'a> {
    #[serde(borrow)]
    exchange: Cow<'a, str>,
    #[serde(borrow)]
    auction_id: Cow<'a, str>,
    #[serde(borrow)]
    imp_id: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename = "EventKey")]
struct EventKeyPartsRef<'a> {
    exchange: &'a str,
    auction_id: &'a str,
    imp_id: &'a str,
}

/// As the struct `{exchange, auction_id, imp_id}`.
impl Serialize for EventKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventKeyPartsRef {
            exchange: self.exchange(),
            auction_id: self.auction_id(),
            imp_id: self.imp_id(),
        }
        .serialize(s)
    }
}

/// From the struct `{exchange, auction_id, imp_id}`, validated.
impl<'de> Deserialize<'de> for EventKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = EventKeyParts::deserialize(d)?;
        EventKey::from_parts(&p.exchange, &p.auction_id, &p.imp_id)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventKey")
            .field("exchange", &self.exchange())
            .field("auction_id", &self.auction_id())
            .field("imp_id", &self.imp_id())
            .finish()
    }
}

impl EventKey {
    /// Validates the auction and impression ids.
    pub fn new(
        exchange: ExchangeId,
        auction_id: impl AsRef<str>,
        imp_id: impl AsRef<str>,
    ) -> Result<EventKey, IdError> {
        EventKey::from_parts(exchange.as_str(), auction_id.as_ref(), imp_id.as_ref())
    }

    /// Validates all three parts (the exchange as an [`ExchangeId`]).
    pub fn from_parts(exchange: &str, auction_id: &str, imp_id: &str) -> Result<EventKey, IdError> {
        check_name("exchange", exchange)?;
        check_openrtb_id("auction", auction_id)?;
        check_openrtb_id("impression", imp_id)?;
        let mut joined =
            String::with_capacity(exchange.len() + auction_id.len() + imp_id.len() + 2);
        joined.push_str(exchange);
        joined.push('\0');
        // Exchange names are at most 64 bytes and ids at most 255: the offsets fit in u16.
        let auction_at = u16::try_from(joined.len()).unwrap_or(u16::MAX);
        joined.push_str(auction_id);
        joined.push('\0');
        let imp_at = u16::try_from(joined.len()).unwrap_or(u16::MAX);
        joined.push_str(imp_id);
        Ok(EventKey {
            joined: joined.into(),
            auction_at,
            imp_at,
        })
    }

    /// The exchange's name.
    pub fn exchange(&self) -> &str {
        &self.joined[..usize::from(self.auction_at) - 1]
    }

    /// The auction id (`BidRequest.id`).
    pub fn auction_id(&self) -> &str {
        &self.joined[usize::from(self.auction_at)..usize::from(self.imp_at) - 1]
    }

    /// The impression id (`Imp.id`).
    pub fn imp_id(&self) -> &str {
        &self.joined[usize::from(self.imp_at)..]
    }
}

/// `EXCHANGE/AUCTION/IMP`.
impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.exchange(),
            self.auction_id(),
            self.imp_id()
        )
    }
}

/// Reads `EXCHANGE/AUCTION/IMP`. The exchange id cannot hold `/`; the impression id is taken
/// after the last `/`, so an auction id may hold `/` but an impression id may not (build such a
/// key with [`EventKey::new`] instead).
impl FromStr for EventKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let malformed = || IdError::Malformed {
            kind: "event",
            value: s.to_string(),
            expected: "EXCHANGE/AUCTION/IMP",
        };
        let (exchange, rest) = s.split_once('/').ok_or_else(malformed)?;
        let (auction, imp) = rest.rsplit_once('/').ok_or_else(malformed)?;
        EventKey::new(exchange.parse()?, auction, imp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_ids_are_validated() {
        assert!(CampaignId::new("cmp-2026.spring_1").is_ok());
        assert_eq!(RegionId::new(""), Err(IdError::Empty { kind: "region" }));
        assert!(matches!(
            EdgeId::new("a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            CampaignId::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            CampaignId::new("naïve"),
            Err(IdError::BadChar { ch: 'ï', .. })
        ));
        let json = serde_json::to_string(&RegionId::new("eu-1").unwrap()).unwrap();
        assert_eq!(json, "\"eu-1\"");
        assert!(serde_json::from_str::<RegionId>("\"eu 1\"").is_err());
    }

    #[test]
    fn event_keys_parse_and_print() {
        let key: EventKey = "adx/9f1c-aa/1".parse().unwrap();
        assert_eq!(key.exchange(), "adx");
        assert_eq!(key.auction_id(), "9f1c-aa");
        assert_eq!(key.imp_id(), "1");
        assert_eq!(key.to_string(), "adx/9f1c-aa/1");
        let slashed: EventKey = "adx/a/b/c/2".parse().unwrap();
        assert_eq!(slashed.auction_id(), "a/b/c");
        assert_eq!(slashed.imp_id(), "2");
        for bad in ["adx", "adx/1", "/a/1", "adx//1", "adx/a/", "adx/a\n/1"] {
            assert!(bad.parse::<EventKey>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<EventKey>(&json).unwrap(), key);
        assert!(
            serde_json::from_str::<EventKey>(r#"{"exchange":"adx","auction_id":"","imp_id":"1"}"#)
                .is_err()
        );
    }

    proptest::proptest! {
        /// Keys order, compare and round-trip exactly as their `(exchange, auction, imp)` parts.
        #[test]
        fn event_keys_behave_as_their_parts(
            a in ("[a-c]{1,3}", "[ a-c/é]{1,4}", "[ a-c]{1,3}"),
            b in ("[a-c]{1,3}", "[ a-c/é]{1,4}", "[ a-c]{1,3}"),
        ) {
            let key = |(x, y, z): &(String, String, String)| {
                EventKey::new(x.parse().unwrap(), y, z).unwrap()
            };
            let (ka, kb) = (key(&a), key(&b));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka == kb, a == b);
            proptest::prop_assert_eq!(
                (ka.exchange(), ka.auction_id(), ka.imp_id()),
                (a.0.as_str(), a.1.as_str(), a.2.as_str())
            );
            let json = serde_json::to_string(&ka).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<EventKey>(&json).unwrap(), ka);
        }
    }

    #[test]
    fn lease_and_batch_ids_round_trip() {
        assert_eq!("L42".parse::<LeaseId>(), Ok(LeaseId(42)));
        assert_eq!("42".parse::<LeaseId>(), Ok(LeaseId(42)));
        assert!("L-1".parse::<LeaseId>().is_err());
        let mut rng = fastrand::Rng::with_seed(1);
        let b = BatchId::random(&mut rng);
        assert_eq!(b.to_string().parse::<BatchId>(), Ok(b));
        assert!("abc".parse::<BatchId>().is_err());
    }
}
