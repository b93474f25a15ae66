//! Conversions between the gRPC messages and the ledger's types: the region's rules, a lease's
//! terms, in-doubt parts and lost bids. Wire values are checked here, once, and refused with
//! `INVALID_ARGUMENT` naming the field.

use shared::Money;
use shared::log::entry::DoubtPart;
use shared::proto::nonneg_micros;
use shared::proto::v1 as pb;
use tonic::Status;

use crate::ledger::{LostBid, Params, Terms};

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

/// Lost bids from the wire.
pub fn losses_from_wire(losses: &[pb::LostBid]) -> Result<Vec<LostBid>, Status> {
    losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l.bid == 0 {
                return Err(bad(format!("losses[{i}].bid: bid numbers start at 1")));
            }
            Ok(LostBid {
                bid: l.bid,
                amount: nonneg_micros("losses.amount_micros", l.amount_micros).map_err(bad)?,
            })
        })
        .collect()
}
