//! The gRPC services and messages of `proto/budget/v1`, generated at build time, and the
//! conversions between their messages and the domain types. Conversions from the wire validate:
//! a message that holds a bad id, a negative amount or an impossible date is refused with a
//! message naming the field, ready for a `Status::invalid_argument`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Generated code of package `budget.v1`.
pub mod v1 {
    tonic::include_proto!("budget.v1");
}

use crate::bucket::Bucket;
use crate::id::{EventKey, IdError};
use crate::log::SpendEvent;
use crate::money::Money;
use crate::targeting::{Lists, Pacing, Targeting};

/// A wire message that does not hold valid domain values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WireError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn wire(field: &'static str) -> impl Fn(IdError) -> WireError {
    move |e| WireError {
        field,
        problem: e.to_string(),
    }
}

impl From<&Bucket> for v1::Bucket {
    fn from(b: &Bucket) -> Self {
        let kind = match b {
            Bucket::Lifetime => v1::bucket::Kind::Lifetime(v1::Lifetime {}),
            Bucket::Day(d) => v1::bucket::Kind::Day(d.to_string()),
        };
        v1::Bucket { kind: Some(kind) }
    }
}

impl TryFrom<&v1::Bucket> for Bucket {
    type Error = WireError;
    fn try_from(b: &v1::Bucket) -> Result<Bucket, WireError> {
        match &b.kind {
            Some(v1::bucket::Kind::Lifetime(_)) => Ok(Bucket::Lifetime),
            Some(v1::bucket::Kind::Day(d)) => {
                format!("day:{d}")
                    .parse()
                    .map_err(|e: crate::bucket::BucketError| WireError {
                        field: "bucket.day",
                        problem: e.to_string(),
                    })
            }
            None => Err(WireError {
                field: "bucket",
                problem: "neither lifetime nor day".into(),
            }),
        }
    }
}

/// Money from a wire field that must not be negative.
pub fn nonneg_micros(field: &'static str, micros: i64) -> Result<Money, WireError> {
    if micros < 0 {
        return Err(WireError {
            field,
            problem: format!("negative amount {micros}"),
        });
    }
    Ok(Money::from_micros(micros))
}

impl From<&SpendEvent> for v1::SpendEvent {
    fn from(e: &SpendEvent) -> Self {
        v1::SpendEvent {
            key: Some(v1::EventKey {
                exchange: e.key.exchange().to_string(),
                auction_id: e.key.auction_id().to_string(),
                imp_id: e.key.imp_id().to_string(),
            }),
            amount_micros: e.amount.micros(),
            bid: e.bid,
        }
    }
}

impl TryFrom<&v1::SpendEvent> for SpendEvent {
    type Error = WireError;
    fn try_from(e: &v1::SpendEvent) -> Result<SpendEvent, WireError> {
        let k = e.key.as_ref().ok_or(WireError {
            field: "event.key",
            problem: "missing".into(),
        })?;
        let key = EventKey::new(
            k.exchange.parse().map_err(wire("event.key.exchange"))?,
            k.auction_id.clone(),
            k.imp_id.clone(),
        )
        .map_err(wire("event.key"))?;
        if e.bid == 0 {
            return Err(WireError {
                field: "event.bid",
                problem: "bid numbers start at 1".into(),
            });
        }
        Ok(SpendEvent {
            bid: e.bid,
            key,
            amount: nonneg_micros("event.amount_micros", e.amount_micros)?,
        })
    }
}

/// The targeting fields of a campaign message, checked (see [`Targeting::validate`]).
pub fn targeting_from_wire(c: &v1::CampaignConfig) -> Result<Targeting, WireError> {
    fn names<T: std::str::FromStr<Err = String>>(
        field: &'static str,
        values: &[String],
    ) -> Result<Vec<T>, WireError> {
        values
            .iter()
            .map(|v| v.parse().map_err(|problem| WireError { field, problem }))
            .collect()
    }
    let max_cpm = c
        .max_cpm_micros
        .map(|m| nonneg_micros("config.max_cpm_micros", m))
        .transpose()?;
    let device_types = c
        .device_types
        .iter()
        .map(|&d| {
            u8::try_from(d).map_err(|_| WireError {
                field: "config.device_types",
                problem: format!("{d} is not an OpenRTB device type"),
            })
        })
        .collect::<Result<_, _>>()?;
    let pacing = if c.pacing.is_empty() {
        Pacing::Asap
    } else {
        c.pacing.parse().map_err(|problem| WireError {
            field: "config.pacing",
            problem,
        })?
    };
    let t = Targeting {
        max_cpm,
        formats: names("config.formats", &c.formats)?,
        inventory: names("config.inventory", &c.inventory)?,
        countries: c.countries.clone(),
        sizes: c.sizes.clone(),
        domains: Lists {
            allow: c.domains_allow.clone(),
            deny: c.domains_deny.clone(),
        },
        bundles: Lists {
            allow: c.bundles_allow.clone(),
            deny: c.bundles_deny.clone(),
        },
        categories: Lists {
            allow: c.categories_allow.clone(),
            deny: c.categories_deny.clone(),
        },
        device_types,
        deals: c.deals.clone(),
        pacing,
    };
    t.validate(Money::from_micros(c.bid_cpm_micros))
        .map_err(|(field, problem)| WireError {
            field: match field {
                "max_cpm" => "config.max_cpm_micros",
                "countries" => "config.countries",
                "sizes" => "config.sizes",
                "deals" => "config.deals",
                _ => "config",
            },
            problem,
        })?;
    Ok(t)
}

/// Writes a campaign's targeting into its wire message.
pub fn targeting_to_wire(t: &Targeting, c: &mut v1::CampaignConfig) {
    c.max_cpm_micros = t.max_cpm.map(Money::micros);
    c.formats = t.formats.iter().map(|f| f.as_str().to_owned()).collect();
    c.inventory = t.inventory.iter().map(|f| f.as_str().to_owned()).collect();
    c.countries.clone_from(&t.countries);
    c.sizes.clone_from(&t.sizes);
    c.domains_allow.clone_from(&t.domains.allow);
    c.domains_deny.clone_from(&t.domains.deny);
    c.bundles_allow.clone_from(&t.bundles.allow);
    c.bundles_deny.clone_from(&t.bundles.deny);
    c.categories_allow.clone_from(&t.categories.allow);
    c.categories_deny.clone_from(&t.categories.deny);
    c.device_types = t.device_types.iter().map(|&d| u32::from(d)).collect();
    c.deals.clone_from(&t.deals);
    c.pacing = t.pacing.as_str().to_owned();
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn spend_events_cross_the_wire_and_bad_ones_are_named() {
        let event = SpendEvent {
            bid: 4,
            key: "adx/a-1/1".parse().unwrap(),
            amount: Money::from_micros(1500),
        };
        let bytes = v1::SpendEvent::from(&event).encode_to_vec();
        let back = v1::SpendEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(SpendEvent::try_from(&back), Ok(event));
        let mut bad = back.clone();
        bad.amount_micros = -1;
        assert_eq!(
            SpendEvent::try_from(&bad).unwrap_err().field,
            "event.amount_micros"
        );
        let mut bad = back.clone();
        bad.bid = 0;
        assert_eq!(SpendEvent::try_from(&bad).unwrap_err().field, "event.bid");
        let mut bad = back.clone();
        bad.key.as_mut().unwrap().exchange = "a/b".into();
        assert_eq!(
            SpendEvent::try_from(&bad).unwrap_err().field,
            "event.key.exchange"
        );
        let mut bad = back;
        bad.key = None;
        assert_eq!(SpendEvent::try_from(&bad).unwrap_err().field, "event.key");
    }

    #[test]
    fn buckets_cross_the_wire() {
        for b in ["lifetime", "day:2026-11-01"] {
            let bucket: Bucket = b.parse().unwrap();
            assert_eq!(Bucket::try_from(&v1::Bucket::from(&bucket)), Ok(bucket));
        }
        let bad = v1::Bucket {
            kind: Some(v1::bucket::Kind::Day("2026-02-30".into())),
        };
        assert_eq!(Bucket::try_from(&bad).unwrap_err().field, "bucket.day");
        assert!(Bucket::try_from(&v1::Bucket { kind: None }).is_err());
    }

    #[test]
    fn every_service_is_generated() {
        // Naming the generated servers and clients fails to compile if a service is missing.
        fn _servers<A, B, C, D, E>()
        where
            A: v1::raft_transport_server::RaftTransport,
            B: v1::lease_api_server::LeaseApi,
            C: v1::admin_server::Admin,
            D: v1::region_sync_server::RegionSync,
            E: v1::audit_server::Audit,
        {
        }
        let names = [
            <v1::raft_transport_server::RaftTransportServer<()> as tonic::server::NamedService>::NAME,
        ];
        assert_eq!(names, ["budget.v1.RaftTransport"]);
    }
}
