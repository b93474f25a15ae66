//! The simulated network between a region's nodes: each Raft message, and each reply, is
//! delayed, lost or duplicated as the seed says, and never crosses a cut link. Duplicates
//! arrive later than the original (reordering included); a paused node's messages wait until
//! it resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coordinator::raft::TypeConfig;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, Raft};
use tokio::time::Instant;

type NetErr<E> = RPCError<u64, BasicNode, RaftError<u64, E>>;

/// How the network misbehaves (per message, drawn from the seed).
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    /// One-way delay, µs: `(min, max)`.
    pub delay_us: (u64, u64),
    /// Messages lost, per million.
    pub loss_ppm: u32,
    /// Messages delivered twice, per million.
    pub dup_ppm: u32,
}

impl Weather {
    /// A calm LAN: 50–500 µs, nothing lost.
    pub const CALM: Weather = Weather {
        delay_us: (50, 500),
        loss_ppm: 0,
        dup_ppm: 0,
    };
}

struct Inner {
    /// Each node's running instance: its epoch and its `Raft`.
    nodes: BTreeMap<u64, (u64, Raft<TypeConfig>)>,
    /// Directed links that drop everything: `(from, to)`.
    cut: BTreeSet<(u64, u64)>,
    paused_until: BTreeMap<u64, Instant>,
    weather: Weather,
    rng: fastrand::Rng,
    sent: u64,
    lost: u64,
    duplicated: u64,
}

/// Every node's inbox. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Mutex<Inner>>,
}

/// What became of one leg of a message.
enum Leg {
    Deliver {
        wait: Duration,
        twice: Option<Duration>,
    },
    Drop,
}

impl Router {
    /// A network with no nodes yet.
    pub fn new(seed: u64) -> Router {
        Router {
            inner: Arc::new(Mutex::new(Inner {
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                paused_until: BTreeMap::new(),
                weather: Weather::CALM,
                rng: fastrand::Rng::with_seed(seed),
                sent: 0,
                lost: 0,
                duplicated: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id` answers at `raft` from now on, its instance number `epoch` (a restarted node:
    /// its new instance; what the old one still sends is dropped).
    pub fn attach(&self, id: u64, epoch: u64, raft: Raft<TypeConfig>) {
        self.lock().nodes.insert(id, (epoch, raft));
    }

    /// `id` is down: messages to it fail.
    pub fn detach(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: u64, b: u64) {
        let mut i = self.lock();
        i.cut.insert((a, b));
        i.cut.insert((b, a));
    }

    /// Cuts only `from → to`.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
    }

    /// Every link works again.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Messages to and from `id` wait until `until`.
    pub fn pause(&self, id: u64, until: Instant) {
        self.lock().paused_until.insert(id, until);
    }

    /// Returns once `id` is not paused (at once if it is not).
    pub async fn wait_unpaused(&self, id: u64) {
        let until = self.lock().paused_until.get(&id).copied();
        if let Some(u) = until.filter(|u| *u > Instant::now()) {
            tokio::time::sleep_until(u).await;
        }
    }

    /// From now on, messages meet `w`.
    pub fn set_weather(&self, w: Weather) {
        self.lock().weather = w;
    }

    /// `(messages sent, lost, duplicated)`.
    pub fn counts(&self) -> (u64, u64, u64) {
        let i = self.lock();
        (i.sent, i.lost, i.duplicated)
    }

    fn leg(&self, from: (u64, u64), to: u64) -> Leg {
        let mut i = self.lock();
        i.sent += 1;
        let w = i.weather;
        let lost = w.loss_ppm > 0 && i.rng.u32(..1_000_000) < w.loss_ppm;
        // A dead instance sends nothing.
        let dead = i.nodes.get(&from.0).is_none_or(|(e, _)| *e != from.1);
        let from = from.0;
        if i.cut.contains(&(from, to)) || lost || dead {
            i.lost += 1;
            return Leg::Drop;
        }
        let now = Instant::now();
        let pause = [from, to]
            .iter()
            .filter_map(|n| i.paused_until.get(n))
            .map(|u| u.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        let (lo, hi) = w.delay_us;
        let wait = pause + Duration::from_micros(i.rng.u64(lo..=hi.max(lo)));
        let twice = (w.dup_ppm > 0 && i.rng.u32(..1_000_000) < w.dup_ppm).then(|| {
            let later = i.rng.u64(lo..=hi.max(lo).saturating_mul(4));
            wait + Duration::from_micros(later)
        });
        if twice.is_some() {
            i.duplicated += 1;
        }
        Leg::Deliver { wait, twice }
    }

    fn node(&self, id: u64) -> Option<(u64, Raft<TypeConfig>)> {
        self.lock().nodes.get(&id).cloned()
    }

    /// Carries one request from `from` to `to` and its reply back: `call` hands it to the
    /// target's `Raft`. A lost leg is an unreachable peer (openraft retries); a duplicate is
    /// delivered again later and its reply dropped.
    async fn carry<Req, Resp, E, F, Fut>(
        &self,
        from: (u64, u64),
        to: u64,
        req: Req,
        call: F,
    ) -> Result<Resp, NetErr<E>>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft<TypeConfig>, Req) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = Result<Resp, RaftError<u64, E>>> + Send + 'static,
    {
        let unreachable =
            |why: &str| RPCError::Unreachable(Unreachable::new(&AnyError::error(why)));
        let (wait, twice) = match self.leg(from, to) {
            Leg::Drop => return Err(unreachable("message lost")),
            Leg::Deliver { wait, twice } => (wait, twice),
        };
        if let Some(later) = twice {
            let (router, req, call) = (self.clone(), req.clone(), call.clone());
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                if let Some((_, raft)) = router.node(to) {
                    let _ = call(raft, req).await;
                }
            });
        }
        tokio::time::sleep(wait).await;
        let Some((epoch, raft)) = self.node(to) else {
            return Err(unreachable("node down"));
        };
        let reply = call(raft, req).await;
        match self.leg((to, epoch), from.0) {
            Leg::Drop => Err(unreachable("reply lost")),
            Leg::Deliver { wait, .. } => {
                tokio::time::sleep(wait).await;
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
            }
        }
    }
}

/// The network factory of one node.
pub struct Net {
    router: Router,
    /// The node and its instance.
    me: (u64, u64),
}

impl Net {
    /// Instance `epoch` of node `me`'s side of `router`.
    pub fn new(router: &Router, me: u64, epoch: u64) -> Net {
        Net {
            router: router.clone(),
            me: (me, epoch),
        }
    }
}

/// One node's link to a peer.
pub struct Conn {
    router: Router,
    me: (u64, u64),
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
        Conn {
            router: self.router.clone(),
            me: self.me,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, NetErr<openraft::error::Infallible>> {
        self.router
            .carry(self.me, self.target, rpc, |raft, rpc| async move {
                raft.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, NetErr<InstallSnapshotError>> {
        self.router
            .carry(self.me, self.target, rpc, |raft, rpc| async move {
                raft.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, NetErr<openraft::error::Infallible>> {
        self.router
            .carry(self.me, self.target, rpc, |raft, rpc| async move {
                raft.vote(rpc).await
            })
            .await
    }
}
