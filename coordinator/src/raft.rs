//! openraft glue for a region: the type config, what a leader proposes, and the ledger as the
//! `raft-store` machine.

use openraft::{AnyError, BasicNode, LogId};
use raft_store::{Machine, MachineApplied};
use serde::{Deserialize, Serialize};
use shared::RegionId;

use crate::ledger::{Command, Ledger, Params, Reply, Stamp};

openraft::declare_raft_types!(
    /// The region's Raft types: nodes are numbered, reached at a `BasicNode` address.
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = raft_store::SnapshotFile,
        AsyncRuntime = SeededRuntime,
);

/// openraft's Tokio runtime, except for its randomness (the election timeouts): a thread on
/// which [`seed_thread_rng`] was called draws them from that seed, so that the deterministic
/// simulation (`sim`) replays a seed exactly; every other thread draws them from the system's
/// randomness, as openraft's own `TokioRuntime` does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

thread_local! {
    static SEEDED: std::cell::RefCell<Option<fastrand::Rng>> = const { std::cell::RefCell::new(None) };
}

/// From now on, openraft's randomness on this thread comes from `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(fastrand::Rng::with_seed(seed)));
}

/// The thread's generator: seeded by [`seed_thread_rng`], or the system's.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

impl rand::RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(r) => r.u32(..),
            None => fastrand::u32(..),
        })
    }

    fn next_u64(&mut self) -> u64 {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(r) => r.u64(..),
            None => fastrand::u64(..),
        })
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(r) => r.fill(dest),
            None => fastrand::fill(dest),
        });
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl openraft::AsyncRuntime for SeededRuntime {
    type JoinError = <openraft::TokioRuntime as openraft::AsyncRuntime>::JoinError;
    type JoinHandle<T: openraft::OptionalSend + 'static> =
        <openraft::TokioRuntime as openraft::AsyncRuntime>::JoinHandle<T>;
    type Sleep = <openraft::TokioRuntime as openraft::AsyncRuntime>::Sleep;
    type Instant = <openraft::TokioRuntime as openraft::AsyncRuntime>::Instant;
    type TimeoutError = <openraft::TokioRuntime as openraft::AsyncRuntime>::TimeoutError;
    type Timeout<R, T: std::future::Future<Output = R> + openraft::OptionalSend> =
        <openraft::TokioRuntime as openraft::AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: openraft::OptionalSend> =
        <openraft::TokioRuntime as openraft::AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError =
        <openraft::TokioRuntime as openraft::AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: openraft::OptionalSend> =
        <openraft::TokioRuntime as openraft::AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: std::future::Future + openraft::OptionalSend + 'static,
        T::Output: openraft::OptionalSend + 'static,
    {
        openraft::TokioRuntime::spawn(future)
    }

    fn sleep(duration: std::time::Duration) -> Self::Sleep {
        openraft::TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        openraft::TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: std::future::Future<Output = R> + openraft::OptionalSend>(
        duration: std::time::Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        openraft::TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: std::future::Future<Output = R> + openraft::OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        openraft::TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        openraft::TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: openraft::OptionalSend,
    {
        openraft::TokioRuntime::oneshot()
    }
}

/// The index a linearizable read may be served at on `raft`'s node: leadership confirmed with a
/// quorum, and everything committed before the call applied here (openraft's
/// `ensure_linearizable`). What the node's state shows after this returns is linearizable.
///
/// The planted bug `stale-read` (test builds only) skips the confirmation: the node serves
/// whatever it has applied, leader or not, current or not.
pub async fn read_index(raft: &openraft::Raft<TypeConfig>) -> Result<u64, String> {
    if shared::planted::active("stale-read") {
        let applied = raft.metrics().borrow().last_applied;
        return Ok(applied.map_or(0, |l| l.index));
    }
    match raft.ensure_linearizable().await {
        Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
        Err(e) => Err(e.to_string()),
    }
}

/// A command as the leader proposes it: stamped with the leader's wall-clock time, which decides
/// day buckets and guards no money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Microseconds since the Unix epoch on the leader, at proposal.
    pub time_us: i64,
    /// The command.
    pub command: Command,
}

/// The ledger as raft-store applies and persists it.
pub struct LedgerMachine {
    ledger: Ledger,
}

impl LedgerMachine {
    /// An empty ledger of `region`; `StateStore::open` then loads the stored rows into it.
    pub fn new(region: RegionId, params: Params) -> LedgerMachine {
        LedgerMachine {
            ledger: Ledger::new(region, params),
        }
    }

    /// The ledger, for reads.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

impl Machine<TypeConfig> for LedgerMachine {
    fn apply(&mut self, log_id: &LogId<u64>, proposal: &Proposal) -> MachineApplied<Reply> {
        let stamp = Stamp {
            term: log_id.leader_id.term,
            index: log_id.index,
            time_us: proposal.time_us,
        };
        let applied = self.ledger.apply(stamp, &proposal.command);
        let rows = self.ledger.rows(&applied.changes);
        let log_records = applied
            .entries
            .iter()
            .map(|(entry, _)| entry.seq)
            .zip(applied.records)
            .collect();
        MachineApplied {
            reply: applied.reply,
            rows,
            log_records,
        }
    }

    fn no_command_reply(&self) -> Reply {
        Reply::NoCommand
    }

    fn load(&mut self, rows: Vec<(Vec<u8>, Vec<u8>)>, applied: u64) -> Result<(), AnyError> {
        let region = self.ledger.region().clone();
        // Rules recorded in the log come back with the rows; before that, the defaults.
        self.ledger =
            Ledger::load(region, Params::default(), rows).map_err(|e| AnyError::new(&e))?;
        self.ledger.loaded_at(applied);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};
    use raft_store::{StateStore, open_db};
    use shared::bucket::Bucket;
    use shared::log::{SegmentWriter, SpendEvent, Verifier, genesis};
    use shared::{BatchId, Money};

    use super::*;
    use crate::ledger::{CampaignConfig, RequestKey};

    fn entry(index: u64, time_us: i64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Normal(Proposal { time_us, command }),
        }
    }

    fn commands() -> Vec<Command> {
        let key = |n: u8| RequestKey([n; 16]);
        let campaign = "c1".parse().unwrap();
        let config = CampaignConfig {
            zone: "Europe/Berlin".into(),
            bid_cpm: Money::from_micros(1_500_000),
            daily_budget: Some(Money::from_micros(50_000)),
            targeting: Default::default(),
        };
        vec![
            Command::SetParams {
                key: key(9),
                params: Params::default(),
            },
            Command::UpsertCampaign {
                key: key(1),
                campaign: "c1".parse().unwrap(),
                config,
            },
            Command::SetBudget {
                key: key(2),
                campaign,
                bucket: Bucket::Lifetime,
                budget: Money::from_micros(1_000_000),
            },
            Command::GrantLease {
                key: key(3),
                edge: "e1".parse().unwrap(),
                campaign: "c1".parse().unwrap(),
                want: Money::from_micros(5_000),
            },
            Command::ReportSpend {
                batch: BatchId([4; 16]),
                edge: "e1".parse().unwrap(),
                lease: shared::LeaseId(1),
                events: vec![SpendEvent {
                    bid: 1,
                    key: "adx/a1/1".parse().unwrap(),
                    amount: Money::from_micros(1_200),
                }],
                losses: vec![],
                held: vec![],
            },
            Command::ReleaseLease {
                batch: BatchId([5; 16]),
                edge: "e1".parse().unwrap(),
                lease: shared::LeaseId(1),
                unreserved: Money::from_micros(300),
                bids: 2,
                in_doubt: vec![shared::log::entry::DoubtPart {
                    wait_ms: 60_000,
                    amount: Money::from_micros(3_500),
                }],
            },
        ]
    }

    fn machine() -> LedgerMachine {
        LedgerMachine::new("eu-1".parse().unwrap(), Params::default())
    }

    #[tokio::test]
    async fn a_restarted_node_has_the_same_ledger_and_a_log_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let time_us = 1_793_534_400_000_000;
        let head = {
            let mut sm = StateStore::open(
                open_db(&dir.path().join("db")).unwrap(),
                &dir.path().join("snapshots"),
                machine(),
            )
            .unwrap();
            let cmds = commands();
            let (first, rest) = cmds.split_at(4);
            // Two batches, as openraft would hand them over.
            sm.apply(
                first
                    .iter()
                    .enumerate()
                    .map(|(i, c)| entry(i as u64 + 1, time_us, c.clone())),
            )
            .await
            .unwrap();
            let replies = sm
                .apply(
                    rest.iter()
                        .enumerate()
                        .map(|(i, c)| entry(i as u64 + 5, time_us, c.clone())),
                )
                .await
                .unwrap();
            assert!(
                matches!(replies[1], Reply::LeaseClosed { spent, .. } if spent == Money::from_micros(1_200))
            );
            sm.read(|m| m.ledger().chain().head())
        };
        // Reopen, as after a kill -9: the ledger is rebuilt from rows, the chain continues.
        let db = open_db(&dir.path().join("db")).unwrap();
        let sm = StateStore::open(db, &dir.path().join("snapshots"), machine()).unwrap();
        sm.read(|m| {
            m.ledger().validate().unwrap();
            assert_eq!(m.ledger().chain().head(), head);
            assert_eq!(
                m.ledger().chain().next_seq(),
                6,
                "rules, budget, day budget, grant, spend, release"
            );
        });
        // The stored records are a chain from genesis that the auditor's verifier accepts.
        let records = sm.log_records(0, 100).unwrap();
        assert_eq!(records.len(), 6);
        let mut w = SegmentWriter::new(&"eu-1".parse().unwrap(), 0, genesis());
        let mut hash = genesis();
        for (_, rec) in &records {
            hash = w.push_record(rec).unwrap();
        }
        assert_eq!(hash, head);
        let mut v = Verifier::new();
        v.segment("eu-1-00000000000000000000.seg", &w.seal().unwrap())
            .unwrap();
        assert_eq!(v.finish(Some(&head)).unwrap().entries, 6);
    }
}
