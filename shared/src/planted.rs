//! Deliberate bugs, compiled in only with the `planted-bugs` feature, so that the test harness
//! can show it catches real mistakes (a checker that has never caught anything proves nothing).
//!
//! With the feature, the environment variable [`ENV`] names the one bug a process runs with;
//! without it, [`active`] is a constant `false` and every bug site compiles away. The bugs:
//!
//! - `reclaim-early` (coordinator): the leader reclaims a lease halfway through its duration,
//!   without waiting for the edge's window, `W` and the margin, and puts nothing in doubt for
//!   late notices.
//! - `reclaim-no-restart` (coordinator): a new leader does not restart the reclaim waits of
//!   the leases it inherits; it counts them from its own process's start, so a node elected
//!   long after it started reclaims every open lease at once.
//! - `dedup-by-exchange-ids` (coordinator ledger): spend is deduplicated by the exchange's
//!   ids (exchange, auction, impression) instead of by our bid, as the ledger once did: a new
//!   bid that carries an auction id seen before is dropped as a duplicate though the exchange
//!   billed it. Only an exchange that reuses its ids (as real ones do) shows it.
//! - `release-returns-held` (coordinator ledger): a lease's release returns the reservations
//!   still within their bids' deadlines at once, as if no notice could come for them; only an
//!   exchange whose notices come late within a long `exp` shows it.
//! - `ack-before-commit` (edge): a billing notice is acknowledged before its spend batch is
//!   committed, so a crash loses charges the exchange was told were recorded.
//! - `merge-lowers-own-rows` (coordinator, region sync): a peer's state replaces this region's
//!   own counter rows even where they are lower, which every peer's lagging copy is: settled
//!   spend and transfers are forgotten and their rights spent again.
//! - `return-before-check-in` (coordinator ledger): in-doubt money returns when its wait is
//!   over on the leader's clock, without waiting for the edges to check in: notices an edge
//!   accepted while cut off from the region find their money spent again.
//! - `reserve-short` (edge): the reservation lets a bid through when a little less than its
//!   price is left (up to a tenth short), so the lease's last bid takes money the lease never had.
//! - `window-from-retry` (edge): a grant whose answer was lost and that was sent again
//!   measures its spending window from the attempt that was answered instead of the first:
//!   when the grant was applied at the first, the edge bids past the window the leader
//!   reclaims by.
//! - `batch-id-reuse` (edge): a new spend batch of a lease takes the id of one of the lease's
//!   batches still unanswered; the region answers it as the retry it seems to be, and its
//!   charges are acknowledged and never settled.
//! - `release-counts-held` (edge): a lease's release counts the money its longest-`exp` bids
//!   hold as never reserved too, so the region gets back more than the edge left unreserved
//!   and those bids' bills find nothing held for them.
//! - `grant-retry-applied-twice` (coordinator ledger): a lease grant proposed again with the
//!   same idempotency key (its first answer was lost, or its leader stepped down after
//!   appending it) is applied again: a second lease that no edge knows holds the money until
//!   a reclaim returns it. Only a retry of a grant that was in fact applied shows it, which
//!   real processes rarely meet; the simulation (`sim`) retries under every fault.
//! - `ack-before-sync` (coordinator's Raft log store, and the simulation's store that mirrors
//!   it): an append is written without a sync and acknowledged (the node's next synced write,
//!   its state machine's, makes it durable), so a follower counts toward a commit with the
//!   entry still in its page cache. A killed process loses nothing by it; a region that loses
//!   power loses entries it acknowledged to clients.

//! - `stale-read` (coordinator): a balance read is served from the node's own state without
//!   confirming its leadership with a quorum or waiting for what was committed: a follower
//!   behind, or a leader cut off and already replaced, answers with a balance the region has
//!   moved past (I7).

/// The variable that names the active bug.
pub const ENV: &str = "PLANTED_BUG";

/// Every bug there is.
pub const BUGS: [&str; 14] = [
    "reclaim-early",
    "reclaim-no-restart",
    "dedup-by-exchange-ids",
    "release-returns-held",
    "ack-before-commit",
    "merge-lowers-own-rows",
    "return-before-check-in",
    "reserve-short",
    "window-from-retry",
    "batch-id-reuse",
    "release-counts-held",
    "grant-retry-applied-twice",
    "ack-before-sync",
    "stale-read",
];

/// Builds the binaries of `packages` (workspace at `root`) with the planted bugs, with the
/// `cargo` at `cargo`, into `root/target/planted`, a target directory of their own so that the
/// normal binaries are never replaced by buggy ones, and returns where the binaries are. For
/// the harnesses' planted-bug tests.
pub fn build_binaries(
    cargo: &str,
    root: &std::path::Path,
    packages: &[&str],
) -> Result<std::path::PathBuf, String> {
    let target = root.join("target/planted");
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root)
        // A one-off build: incremental artifacts would only take disk.
        .env("CARGO_INCREMENTAL", "0")
        .args([
            "build",
            "--locked",
            "-q",
            "--features",
            "shared/planted-bugs",
        ]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd
        .arg("--bins")
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building {packages:?} with the planted bugs failed: {status}"
        ));
    }
    Ok(target.join("debug"))
}

/// True if this process runs with the bug `name`.
#[cfg(feature = "planted-bugs")]
pub fn active(name: &str) -> bool {
    static BUG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BUG.get_or_init(|| {
        let bug = std::env::var(ENV).ok().filter(|b| !b.is_empty());
        if let Some(b) = &bug {
            eprintln!("PLANTED BUG ACTIVE: {b} (a test build; never run this in production)");
        }
        bug
    })
    .as_deref()
        == Some(name)
}

/// True if this process runs with the bug `name`: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
