//! Deterministic simulation of a region (issue 23): the coordinator's real ledger and state
//! machine under openraft, on a simulated disk ([`disk`]) and network ([`net`]), in one thread
//! on Tokio's paused clock. Everything random comes from the seed — openraft's election
//! timeouts through the coordinator's `SeededRuntime`, Tokio's own choices through its
//! runtime seed — so a seed is one history, replayed byte for byte.
//!
//! - [`disk`]: writes visible at once, durable at a sync that takes simulated time; a crash
//!   keeps what was synced and fences the dead instance off.
//! - [`store`]: openraft's log and state machine on that disk, with the real store's rules.
//! - [`net`]: delay, loss, duplication (so reordering), cut links, paused nodes.
//! - [`world`]: the region (each node running the coordinator's own reclaim loop), edges that
//!   spend through the real edge's `ActiveLease` (register and check in, lease, bid, report,
//!   take late notices, release with money in doubt), the exchange's bills, a reader of the
//!   balance, the nemesis (among its faults, power lost on every node at once and edges
//!   paused, answers lost, clocks at their own rates), and the checks (I1, I2, I3, I7, I9 by
//!   the harness's checkers; I8 against the true time; settled = billed on every replica;
//!   I4).
//!
//! Needs Tokio's unstable runtime seed: the workspace builds with `--cfg tokio_unstable`
//! (`.cargo/config.toml`).

pub mod disk;
pub mod net;
pub mod store;
pub mod world;

pub use world::{Outcome, Scenario};

/// Runs one seed on a fresh single-threaded runtime whose clock is paused (it jumps to the next
/// timer whenever every task waits) and whose and openraft's randomness come from `seed`.
pub fn run_seed(seed: u64, scenario: &Scenario) -> anyhow::Result<Outcome> {
    coordinator::raft::seed_thread_rng(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()?;
    rt.block_on(world::run(seed, scenario))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short() -> Scenario {
        Scenario {
            secs: 20,
            ..Scenario::default()
        }
    }

    #[test]
    fn one_seed_twice_is_one_history() {
        let a = run_seed(7, &short()).unwrap();
        let b = run_seed(7, &short()).unwrap();
        assert!(a.trace.len() > 50, "{:#?}", a.trace);
        assert!(a.faults > 0, "no fault injected");
        assert_eq!(a.trace, b.trace);
        let c = run_seed(8, &short()).unwrap();
        assert_ne!(
            a.trace, c.trace,
            "two seeds, one history: the seed changes nothing"
        );
    }

    #[test]
    fn a_fixed_set_of_seeds_holds_every_invariant() {
        let (mut installed, mut applies_lost, mut reclaims) = (0, 0, 0);
        // Eight seeds: with leases lasting their window a 20 s run takes a snapshot on every
        // node but rarely needs one installed (seed 8 does).
        for seed in 1..=8 {
            let o = run_seed(seed, &short()).unwrap();
            assert!(o.faults > 0, "seed {seed}: no fault injected");
            assert!(o.billed > 0, "seed {seed}: nothing billed");
            assert!(o.snapshots.0 > 0, "seed {seed}: no snapshot built");
            assert!(o.passed(), "seed {seed}: {:#?}", o.verdicts);
            installed += o.snapshots.1;
            applies_lost += o.applies_lost;
            reclaims += o.reclaims;
        }
        assert!(
            reclaims > 0,
            "no leader of seeds 1..=8 reclaimed a lease: the reclaim loop is untested"
        );
        assert!(installed > 0, "no node of seeds 1..=8 installed a snapshot");
        assert!(
            applies_lost > 0,
            "no crash of seeds 1..=8 lost an unsynced apply: the recovery from the log is untested"
        );
    }
}
