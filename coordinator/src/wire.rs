//! Every conversion between the gRPC messages and the domain's types, in one place: keys and
//! ids, the region's rules, a lease's terms, in-doubt parts and lost bids, campaigns' settings,
//! balances, and region sync's counter rows. Wire values are checked here, once, and refused
//! with `INVALID_ARGUMENT` (or, for a peer region's rows, an error) naming the field.

use shared::bucket::{Bucket, BucketKey};
use shared::crdt::CounterRows;
use shared::log::entry::DoubtPart;
use shared::proto::v1 as pb;
use shared::proto::{WireError, nonneg_micros};
use shared::{BatchId, CampaignId, Money, RegionId};
use tonic::Status;

use crate::ledger::{BidPrice, CampaignConfig, Params, RequestKey, Terms};

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A lease's terms, for the edge.
pub fn terms_to_wire(t: &Terms) -> pb::LeaseTerms {
    pb::LeaseTerms {
        duration_ms: t.duration_ms,
        settlement_window_ms: t.settlement_window_ms,
        margin_ms: t.margin_ms,
        late_acceptance_ms: t.late_acceptance_ms,
        default_exp_ms: t.default_exp_ms,
        max_exp_ms: t.max_exp_ms,
        max_tmax_ms: t.max_tmax_ms,
        clock_rate_error_ppm: t.clock_rate_error_ppm,
    }
}

/// The region's rules, for `budgetctl cluster params`.
pub fn params_to_wire(p: &Params, recorded: bool, read_at_index: u64) -> pb::RegionParams {
    pb::RegionParams {
        lease_duration_ms: p.lease_duration_ms,
        settlement_window_ms: p.settlement_window_ms,
        margin_ms: p.margin_ms,
        late_acceptance_ms: p.late_acceptance_ms,
        default_exp_ms: p.default_exp_ms,
        max_exp_ms: p.max_exp_ms,
        max_tmax_ms: p.max_tmax_ms,
        clock_rate_error_ppm: p.clock_rate_error_ppm,
        lease_share_divisor: p.lease_share_divisor,
        lease_min_micros: p.lease_min.micros(),
        closed_leases_retained: p.closed_leases_retained,
        requests_retained: p.requests_retained,
        recorded,
        read_at_index,
    }
}

/// The region's rules from the wire, checked together ([`Params::validate`]).
pub fn params_from_wire(p: &pb::RegionParams) -> Result<Params, Status> {
    let params = Params {
        lease_duration_ms: p.lease_duration_ms,
        settlement_window_ms: p.settlement_window_ms,
        margin_ms: p.margin_ms,
        late_acceptance_ms: p.late_acceptance_ms,
        default_exp_ms: p.default_exp_ms,
        max_exp_ms: p.max_exp_ms,
        max_tmax_ms: p.max_tmax_ms,
        clock_rate_error_ppm: p.clock_rate_error_ppm,
        lease_share_divisor: p.lease_share_divisor,
        lease_min: nonneg_micros("params.lease_min_micros", p.lease_min_micros).map_err(bad)?,
        closed_leases_retained: p.closed_leases_retained,
        requests_retained: p.requests_retained,
    };
    params.validate().map_err(|e| bad(format!("params.{e}")))?;
    Ok(params)
}

/// In-doubt parts, for `budgetctl leases list`.
pub fn parts_to_wire(parts: &[DoubtPart]) -> Vec<pb::DoubtPart> {
    parts
        .iter()
        .map(|p| pb::DoubtPart {
            wait_ms: p.wait_ms,
            amount_micros: p.amount.micros(),
        })
        .collect()
}

/// A release's in-doubt parts from the wire: amounts positive (the ledger checks their order
/// and waits against the lease).
pub fn parts_from_wire(parts: &[pb::DoubtPart]) -> Result<Vec<DoubtPart>, Status> {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.amount_micros <= 0 {
                return Err(bad(format!(
                    "in_doubt[{i}].amount_micros: must be positive, got {}",
                    p.amount_micros
                )));
            }
            Ok(DoubtPart {
                wait_ms: p.wait_ms,
                amount: Money::from_micros(p.amount_micros),
            })
        })
        .collect()
}

/// Bids and their prices from the wire (a report's `losses` or `held`, named by `field`).
pub fn bid_prices_from_wire(
    field: &'static str,
    bids: &[pb::LostBid],
) -> Result<Vec<BidPrice>, Status> {
    bids.iter()
        .enumerate()
        .map(|(i, l)| {
            if l.bid == 0 {
                return Err(bad(format!("{field}[{i}].bid: bid numbers start at 1")));
            }
            let amount = nonneg_micros("amount_micros", l.amount_micros)
                .map_err(|e| bad(format!("{field}[{i}].{e}")))?;
            Ok(BidPrice { bid: l.bid, amount })
        })
        .collect()
}

/// An id refused at `field`.
pub(crate) fn id_err(field: &'static str) -> impl Fn(shared::id::IdError) -> Status {
    move |e| Status::invalid_argument(format!("{field}: {e}"))
}

/// A command's idempotency key (16 bytes).
pub fn request_key(k: Option<&pb::IdempotencyKey>) -> Result<RequestKey, Status> {
    let bytes = k.map(|k| k.key.as_slice()).unwrap_or_default();
    let key: [u8; 16] = bytes
        .try_into()
        .map_err(|_| bad("idempotency_key: must be 16 bytes"))?;
    Ok(RequestKey(key))
}

/// A settlement batch's id (16 bytes).
pub fn batch_id(bytes: &[u8]) -> Result<BatchId, Status> {
    Ok(BatchId(
        bytes
            .try_into()
            .map_err(|_| bad("batch_id: must be 16 bytes"))?,
    ))
}

/// A bucket's key.
pub fn bucket_key(k: Option<&pb::BucketKey>) -> Result<BucketKey, Status> {
    let k = k.ok_or_else(|| bad("bucket: missing"))?;
    let campaign: CampaignId = k.campaign.parse().map_err(id_err("bucket.campaign"))?;
    let bucket = k
        .bucket
        .as_ref()
        .ok_or_else(|| bad("bucket.bucket: missing"))?;
    let bucket = Bucket::try_from(bucket).map_err(|e: WireError| bad(e))?;
    Ok(BucketKey { campaign, bucket })
}

/// One bucket's figures in this region, read at Raft index `read_at`.
pub fn balance(
    region: &shared::RegionId,
    key: &BucketKey,
    b: &crate::ledger::BucketState,
    read_at: u64,
) -> pb::Balance {
    let rights =
        i128::from(b.counter.available().micros()) + i128::from(b.counter.state().settled(region));
    pb::Balance {
        bucket: Some(pb::BucketKey {
            campaign: key.campaign.to_string(),
            bucket: Some(pb::Bucket::from(&key.bucket)),
        }),
        budget_micros: b.budget.micros(),
        rights_micros: i64::try_from(rights).unwrap_or(i64::MAX),
        settled_micros: b.settled().micros(),
        leased_micros: b.leased.micros(),
        in_doubt_micros: b.in_doubt.micros(),
        available_micros: b.available().micros(),
        read_at_index: read_at,
    }
}

/// A campaign's settings from the wire.
pub fn campaign_config(c: &pb::CampaignConfig) -> Result<(CampaignId, CampaignConfig), Status> {
    let id: CampaignId = c.campaign.parse().map_err(id_err("config.campaign"))?;
    let daily_budget = c
        .daily_budget_micros
        .map(|m| nonneg_micros("config.daily_budget_micros", m))
        .transpose()
        .map_err(bad)?;
    let targeting = shared::proto::targeting_from_wire(c).map_err(bad)?;
    let config = CampaignConfig {
        zone: c.time_zone.clone(),
        bid_cpm: Money::from_micros(c.bid_cpm_micros),
        daily_budget,
        targeting: Box::new(targeting),
    };
    Ok((id, config))
}

/// A campaign's settings on the wire.
pub fn campaign_to_wire(id: &CampaignId, c: &crate::ledger::Campaign) -> pb::CampaignConfig {
    let mut w = pb::CampaignConfig {
        campaign: id.to_string(),
        time_zone: c.config.zone.clone(),
        bid_cpm_micros: c.config.bid_cpm.micros(),
        paused: c.paused,
        daily_budget_micros: c.config.daily_budget.map(Money::micros),
        ..Default::default()
    };
    shared::proto::targeting_to_wire(&c.config.targeting, &mut w);
    w
}

/// The rows of one bucket on the wire.
pub fn counter_to_wire(
    key: &BucketKey,
    rows: &CounterRows,
    leased: i64,
    in_doubt: i64,
) -> pb::BucketCounter {
    let row = |(r, n): &(RegionId, u64)| pb::RegionRow {
        region: r.to_string(),
        micros: *n,
    };
    pb::BucketCounter {
        bucket: Some(pb::BucketKey {
            campaign: key.campaign.to_string(),
            bucket: Some(pb::Bucket::from(&key.bucket)),
        }),
        created: rows.created.iter().map(row).collect(),
        transferred: transfer_rows(rows),
        settled: rows.settled.iter().map(row).collect(),
        burned: rows.burned.iter().map(row).collect(),
        leased_micros: leased,
        in_doubt_micros: in_doubt,
    }
}

/// The transfer rows on the wire.
pub fn transfer_rows(rows: &CounterRows) -> Vec<pb::TransferRow> {
    rows.transferred
        .iter()
        .map(|(a, b, n)| pb::TransferRow {
            from_region: a.to_string(),
            to_region: b.to_string(),
            micros: *n,
        })
        .collect()
}

/// A bucket's rows from the wire; the error names the field.
pub fn counter_from_wire(b: &pb::BucketCounter) -> Result<(BucketKey, CounterRows), String> {
    let key = bucket_key(b.bucket.as_ref()).map_err(|s| s.message().to_string())?;
    let region = |field: &str, r: &str| -> Result<RegionId, String> {
        r.parse().map_err(|e| format!("{field}: {e}"))
    };
    let mut rows = CounterRows::default();
    for r in &b.created {
        rows.created
            .push((region("created.region", &r.region)?, r.micros));
    }
    for r in &b.transferred {
        rows.transferred.push((
            region("transferred.from_region", &r.from_region)?,
            region("transferred.to_region", &r.to_region)?,
            r.micros,
        ));
    }
    for r in &b.settled {
        rows.settled
            .push((region("settled.region", &r.region)?, r.micros));
    }
    for r in &b.burned {
        rows.burned
            .push((region("burned.region", &r.region)?, r.micros));
    }
    // Rows travel as u64 micros; a row past i64::MAX is no money at all.
    let too_big = rows
        .created
        .iter()
        .map(|r| r.1)
        .chain(rows.transferred.iter().map(|r| r.2))
        .chain(rows.settled.iter().map(|r| r.1))
        .chain(rows.burned.iter().map(|r| r.1))
        .any(|n| i64::try_from(n).is_err());
    if too_big {
        return Err(format!("{key}: a row exceeds the largest amount of money"));
    }
    Ok((key, rows))
}
