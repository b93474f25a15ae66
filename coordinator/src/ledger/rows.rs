//! The ledger as key-value rows: what the store writes after each apply (only the rows the
//! apply changed), and how a ledger is rebuilt from all of them at start-up or from a snapshot.
//!
//! Keys are a table prefix and the entity's id; values are JSON. Prefixes: `m` meta, `p` the
//! region's rules, `c/` campaign, `b/` bucket, `l/` lease (id big-endian), `r/` request key,
//! `e/` bids one report charged or lost (lease id and list number, big-endian), `v/` velocity,
//! `g/` registered edges, `s` the financial log's seal points.
//!
//! Charged bids, the dedup table, are the bulk of the writes: one row per report (up to 1,000
//! bids), not one per bid, so that a batch costs one RocksDB insert, not a thousand.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use shared::bucket::{BucketKey, CampaignZone};
use shared::log::entry::hex_hash;
use shared::log::{Chain, Hash};
use shared::{CampaignId, EdgeId, LeaseId, Money, RegionId};

use super::{
    BucketState, Campaign, CampaignConfig, Changes, Lease, Ledger, Mark, Params, Reply, RequestKey,
    Witness,
};

/// A row to write (`Some`) or delete (`None`).
pub type RowWrite = (Vec<u8>, Option<Vec<u8>>);

const META: &[u8] = b"m";
const PARAMS: &[u8] = b"p";
/// The financial log's seal points ([`super::Command::SealSegment`]), one row.
const SEAL_POINTS: &[u8] = b"s";

#[derive(Serialize, Deserialize)]
struct MetaRow {
    region: RegionId,
    next_lease: u64,
    chain_next_seq: u64,
    #[serde(with = "hex_hash")]
    chain_head: Hash,
    order_seq: u64,
    #[serde(default)]
    witnessed: BTreeMap<RegionId, Witness>,
}

#[derive(Serialize, Deserialize)]
struct CampaignRow {
    id: CampaignId,
    config: CampaignConfig,
    paused: bool,
    #[serde(default)]
    version: u64,
    /// `None` in rows written before regions synced: the campaign is this region's.
    #[serde(default)]
    home: Option<RegionId>,
    #[serde(default)]
    home_version: u64,
    /// The campaign's latest retired day, as a day bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_through: Option<shared::Bucket>,
}

#[derive(Serialize, Deserialize)]
struct BucketRow {
    key: BucketKey,
    state: BucketState,
}

#[derive(Deserialize)]
struct LeaseRow {
    id: LeaseId,
    lease: Lease,
}

/// [`LeaseRow`] for writing, borrowed: a lease is never cloned to be written.
#[derive(Serialize)]
struct LeaseRowRef<'a> {
    id: LeaseId,
    lease: &'a Lease,
}

#[derive(Serialize, Deserialize)]
struct RequestRow {
    key: RequestKey,
    reply: Reply,
    order: u64,
    lease: Option<LeaseId>,
}

#[derive(Deserialize)]
struct ChargedRow {
    lease: LeaseId,
    bids: Vec<(u64, Mark)>,
}

#[derive(Serialize)]
struct ChargedRowRef<'a> {
    lease: LeaseId,
    bids: &'a [(u64, Mark)],
}

#[derive(Serialize, Deserialize)]
struct EdgeRow {
    edge: EdgeId,
    check: super::EdgeCheck,
}

#[derive(Serialize, Deserialize)]
struct VelocityRow {
    edge: EdgeId,
    campaign: CampaignId,
    spent: Money,
}

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(id);
    k
}

fn campaign_key(id: &CampaignId) -> Vec<u8> {
    key(b"c/", id.as_str().as_bytes())
}

fn bucket_key(k: &BucketKey) -> Vec<u8> {
    // Campaign ids hold no '/', so the split is unambiguous.
    key(b"b/", format!("{}/{}", k.campaign, k.bucket).as_bytes())
}

fn lease_key(id: LeaseId) -> Vec<u8> {
    key(b"l/", &id.0.to_be_bytes())
}

fn request_key(k: &RequestKey) -> Vec<u8> {
    key(b"r/", &k.0)
}

fn charged_key(lease: LeaseId, list: u32) -> Vec<u8> {
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&lease.0.to_be_bytes());
    id[8..].copy_from_slice(&list.to_be_bytes());
    key(b"e/", &id)
}

fn parse_charged_key(k: &[u8]) -> Option<(LeaseId, u32)> {
    let id: &[u8; 12] = k.strip_prefix(b"e/")?.try_into().ok()?;
    let (lease, list) = id.split_at(8);
    Some((
        LeaseId(u64::from_be_bytes(lease.try_into().ok()?)),
        u32::from_be_bytes(list.try_into().ok()?),
    ))
}

fn edge_key(edge: &EdgeId) -> Vec<u8> {
    key(b"g/", edge.to_string().as_bytes())
}

fn velocity_key(edge: &EdgeId, campaign: &CampaignId) -> Vec<u8> {
    key(b"v/", format!("{edge}/{campaign}").as_bytes())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Every row type is plain data (strings, integers, sequences, string-keyed maps): JSON
    // serialization cannot fail.
    serde_json::to_vec(v).unwrap_or_else(|e| panic!("ledger row does not serialize: {e}"))
}

/// Why rows do not make a ledger.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A row's value is not what its table holds.
    #[error("row {key:?}: {source}")]
    Row {
        /// The key, lossily as text.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// A key with no known table.
    #[error("row {0:?} belongs to no table")]
    UnknownTable(String),
    /// A row of charged bids with a malformed key, or that is not its lease's next list.
    #[error("charged bids: {0}")]
    Charged(String),
    /// The meta row is missing.
    #[error("no meta row: not a ledger")]
    NoMeta,
    /// The rows were written by another region's ledger.
    #[error("rows belong to region {found}, not {expected}")]
    WrongRegion {
        /// The region asked for.
        expected: RegionId,
        /// The region in the rows.
        found: RegionId,
    },
    /// A campaign's saved zone is no longer in the time zone database.
    #[error("campaign {campaign}: {problem}")]
    Campaign {
        /// The campaign.
        campaign: CampaignId,
        /// What is wrong.
        problem: String,
    },
}

impl Ledger {
    fn meta_row(&self) -> RowWrite {
        let meta = MetaRow {
            region: self.region.clone(),
            next_lease: self.next_lease,
            chain_next_seq: self.chain.next_seq(),
            chain_head: self.chain.head(),
            order_seq: self.order_seq,
            witnessed: self.witnessed.clone(),
        };
        (META.to_vec(), Some(json(&meta)))
    }

    /// The rows `changes` touched, with their current values (`None`: deleted), plus the meta
    /// row. Written with the apply's log entries in one batch.
    pub fn rows(&self, changes: &Changes) -> Vec<RowWrite> {
        let mut out = vec![self.meta_row()];
        if changes.seal_points {
            out.push((SEAL_POINTS.to_vec(), Some(json(&self.seal_points))));
        }
        if changes.params {
            out.push((PARAMS.to_vec(), Some(json(&self.params))));
        }
        for id in &changes.campaigns {
            let v = self.campaigns.get(id).map(|c| {
                json(&CampaignRow {
                    id: id.clone(),
                    config: c.config.clone(),
                    paused: c.paused,
                    version: c.version,
                    home: Some(c.home.clone()),
                    home_version: c.home_version,
                    retired_through: c.retired_through.map(shared::Bucket::Day),
                })
            });
            out.push((campaign_key(id), v));
        }
        for k in &changes.buckets {
            let v = self.buckets.get(k).map(|s| {
                json(&BucketRow {
                    key: k.clone(),
                    state: s.clone(),
                })
            });
            out.push((bucket_key(k), v));
        }
        for id in &changes.leases {
            let v = self
                .leases
                .get(id)
                .map(|l| json(&LeaseRowRef { id: *id, lease: l }));
            out.push((lease_key(*id), v));
        }
        for k in &changes.requests {
            let v = self.requests.get(k).map(|r| {
                json(&RequestRow {
                    key: *k,
                    reply: r.reply.clone(),
                    order: r.order,
                    lease: r.lease,
                })
            });
            out.push((request_key(k), v));
        }
        for &(lease, i) in &changes.charged {
            // A list charged and forgotten in one command is deleted below.
            let bids = self
                .leases
                .get(&lease)
                .and_then(|l| l.events.get(i as usize));
            if let Some(bids) = bids {
                out.push((
                    charged_key(lease, i),
                    Some(json(&ChargedRowRef { lease, bids })),
                ));
            }
        }
        for &(lease, lists) in &changes.uncharged {
            for i in 0..lists {
                out.push((charged_key(lease, i), None));
            }
        }
        for (edge, campaign) in &changes.velocity {
            let v = self
                .last_spent
                .get(&(edge.clone(), campaign.clone()))
                .map(|spent| {
                    json(&VelocityRow {
                        edge: edge.clone(),
                        campaign: campaign.clone(),
                        spent: *spent,
                    })
                });
            out.push((velocity_key(edge, campaign), v));
        }
        for edge in &changes.edges {
            let v = self.edges.get(edge).map(|check| {
                json(&EdgeRow {
                    edge: edge.clone(),
                    check: *check,
                })
            });
            out.push((edge_key(edge), v));
        }
        out
    }

    /// Every row of the ledger (for snapshots and tests).
    pub fn all_rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let everything = Changes {
            campaigns: self.campaigns.keys().cloned().collect(),
            buckets: self.buckets.keys().cloned().collect(),
            leases: self.leases.keys().copied().collect(),
            requests: self.requests.keys().copied().collect(),
            charged: self
                .leases
                .iter()
                .flat_map(|(id, l)| {
                    (0..l.events.len()).map(|i| (*id, u32::try_from(i).unwrap_or(u32::MAX)))
                })
                .collect(),
            uncharged: Vec::new(),
            velocity: self.last_spent.keys().cloned().collect(),
            edges: self.edges.keys().cloned().collect(),
            params: self.params_recorded,
            seal_points: !self.seal_points.is_empty(),
        };
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .rows(&everything)
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        rows.sort();
        rows
    }

    /// Rebuilds a ledger of `region` from all its rows (in any order). An empty set of rows is
    /// a new, empty ledger with `params`; a ledger whose rules were set has them in its rows.
    pub fn load(
        region: RegionId,
        params: Params,
        rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Ledger, LoadError> {
        let mut l = Ledger::new(region.clone(), params);
        let mut saw_meta = false;
        let mut any = false;
        let mut requests: Vec<(u64, RequestKey)> = Vec::new();
        let mut retired: Vec<(u64, LeaseId)> = Vec::new();
        // A lease's charged bids, one row per batch: (lease, batch, its marks).
        type ChargedBatch = (LeaseId, u32, Vec<(u64, Mark)>);
        let mut charged: Vec<ChargedBatch> = Vec::new();
        for (k, v) in rows {
            any = true;
            let bad = |source| LoadError::Row {
                key: String::from_utf8_lossy(&k).into_owned(),
                source,
            };
            if k == META {
                let m: MetaRow = serde_json::from_slice(&v).map_err(bad)?;
                if m.region != region {
                    return Err(LoadError::WrongRegion {
                        expected: region,
                        found: m.region,
                    });
                }
                l.next_lease = m.next_lease;
                l.chain = Chain::resume(m.chain_next_seq, m.chain_head);
                l.order_seq = m.order_seq;
                l.witnessed = m.witnessed;
                saw_meta = true;
            } else if k == PARAMS {
                l.params = serde_json::from_slice(&v).map_err(bad)?;
                l.params_recorded = true;
            } else if k == SEAL_POINTS {
                l.seal_points = serde_json::from_slice(&v).map_err(bad)?;
            } else if k.starts_with(b"c/") {
                let r: CampaignRow = serde_json::from_slice(&v).map_err(bad)?;
                let zone = CampaignZone::new(&r.config.zone).map_err(|e| LoadError::Campaign {
                    campaign: r.id.clone(),
                    problem: e.to_string(),
                })?;
                l.campaigns_version = l.campaigns_version.max(r.version);
                l.campaigns.insert(
                    r.id,
                    Campaign {
                        config: r.config,
                        zone,
                        paused: r.paused,
                        version: r.version,
                        home: r.home.unwrap_or_else(|| region.clone()),
                        home_version: if r.home_version == 0 {
                            r.version
                        } else {
                            r.home_version
                        },
                        retired_through: match r.retired_through {
                            Some(shared::Bucket::Day(d)) => Some(d),
                            _ => None,
                        },
                    },
                );
            } else if k.starts_with(b"b/") {
                let r: BucketRow = serde_json::from_slice(&v).map_err(bad)?;
                l.buckets.insert(r.key, r.state);
            } else if k.starts_with(b"l/") {
                let r: LeaseRow = serde_json::from_slice(&v).map_err(bad)?;
                if let Some(order) = r.lease.retired {
                    retired.push((order, r.id));
                }
                l.leases.insert(r.id, r.lease);
            } else if k.starts_with(b"r/") {
                let r: RequestRow = serde_json::from_slice(&v).map_err(bad)?;
                requests.push((r.order, r.key));
                l.requests.insert(
                    r.key,
                    super::Remembered {
                        reply: r.reply,
                        order: r.order,
                        lease: r.lease,
                    },
                );
            } else if k.starts_with(b"e/") {
                let r: ChargedRow = serde_json::from_slice(&v).map_err(bad)?;
                let (lease, i) = parse_charged_key(&k)
                    .filter(|(lease, _)| *lease == r.lease)
                    .ok_or_else(|| LoadError::Charged(String::from_utf8_lossy(&k).into_owned()))?;
                charged.push((lease, i, r.bids));
            } else if k.starts_with(b"v/") {
                let r: VelocityRow = serde_json::from_slice(&v).map_err(bad)?;
                l.last_spent.insert((r.edge, r.campaign), r.spent);
            } else if k.starts_with(b"g/") {
                let r: EdgeRow = serde_json::from_slice(&v).map_err(bad)?;
                l.edges.insert(r.edge, r.check);
            } else {
                return Err(LoadError::UnknownTable(
                    String::from_utf8_lossy(&k).into_owned(),
                ));
            }
        }
        if any && !saw_meta {
            return Err(LoadError::NoMeta);
        }
        // Each lease's lists of bids and request keys are not in its row (they would make every
        // write of a busy lease grow with its history); rebuild them from the rows that name
        // the lease. Bid lists come back in their numbered order, one per row, so that the rows
        // they make again are the rows that were written and a bid marked twice keeps its last
        // mark; the order of request keys does not matter (they are only ever removed as a
        // whole).
        charged.sort_by_key(|(lease, i, _)| (*lease, *i));
        for (id, i, bids) in charged {
            // A lease's lists are numbered from 0 with no gap, and die with the lease.
            let lease = l
                .leases
                .get_mut(&id)
                .filter(|lease| lease.events.len() == i as usize)
                .ok_or_else(|| {
                    LoadError::Charged(format!("list {i} of lease {id} does not follow its others"))
                })?;
            for (bid, mark) in &bids {
                l.charged.insert((id, *bid), *mark);
            }
            lease.events.push(bids);
        }
        for (_, key) in &requests {
            let lease = l.requests.get(key).and_then(|r| r.lease);
            if let Some(lease) = lease.and_then(|id| l.leases.get_mut(&id)) {
                lease.requests.push(*key);
            }
        }
        requests.sort();
        retired.sort();
        l.request_order = requests.into_iter().collect::<VecDeque<_>>();
        l.closed = retired
            .into_iter()
            .map(|(_, id)| id)
            .collect::<VecDeque<_>>();
        Ok(l)
    }
}

/// Applies row writes to an in-memory table (what the store does to RocksDB), for tests.
pub fn apply_writes(table: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: Vec<RowWrite>) {
    for (k, v) in writes {
        match v {
            Some(v) => {
                table.insert(k, v);
            }
            None => {
                table.remove(&k);
            }
        }
    }
}
