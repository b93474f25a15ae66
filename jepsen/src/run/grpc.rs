//! The harness's own calls to the coordinators: budget changes, linearizable balance reads, the
//! cluster's state and each replica's financial log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shared::bucket::Bucket;
use shared::proto::v1 as pb;
use tonic::transport::Channel;

/// A lazily connected channel per coordinator.
#[derive(Clone)]
pub struct Coords {
    /// `(name, channel)`.
    pub nodes: Vec<(String, Channel)>,
}

impl Coords {
    /// Channels to `addrs` (`(name, ip:port)`) over `transport`, each call bounded by
    /// `timeout`.
    pub fn new(
        addrs: &[(String, String)],
        transport: &shared::tls::Transport,
        timeout: Duration,
    ) -> Result<Coords> {
        let mut nodes = Vec::new();
        for (name, addr) in addrs {
            let ch = transport
                .endpoint(addr)?
                .connect_timeout(Duration::from_millis(500))
                .timeout(timeout)
                .connect_lazy();
            nodes.push((name.clone(), ch));
        }
        Ok(Coords { nodes })
    }

    /// The admin client of node `i`.
    pub fn admin(&self, i: usize) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.nodes[i].1.clone())
    }

    /// The audit client of node `i`.
    pub fn audit(&self, i: usize) -> pb::audit_client::AuditClient<Channel> {
        pb::audit_client::AuditClient::new(self.nodes[i].1.clone())
    }

    /// Sets a bucket's budget, trying every node (writes go to the leader) with one
    /// idempotency key until one applies it or `limit` passes.
    pub async fn set_budget(&self, campaign: &str, micros: i64, limit: Duration) -> Result<u64> {
        let key = pb::IdempotencyKey {
            key: fastrand::u128(..).to_be_bytes().to_vec(),
        };
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        let mut i = 0usize;
        while Instant::now() < deadline {
            let r = self
                .admin(i % self.nodes.len())
                .set_budget(pb::SetBudgetRequest {
                    idempotency_key: Some(key.clone()),
                    bucket: Some(lifetime(campaign)),
                    budget_micros: micros,
                })
                .await;
            match r.map(|r| r.into_inner().result) {
                Ok(Some(pb::admin_reply::Result::AppliedAtIndex(index))) => return Ok(index),
                Ok(Some(pb::admin_reply::Result::Refused(why))) => {
                    bail!("set budget of {campaign} refused: {why}")
                }
                Ok(other) => last = format!("{other:?}"),
                Err(s) => last = s.message().to_string(),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("set budget of {campaign}: not applied within {limit:?}: {last}")
    }

    /// Every bucket's balance, read linearizably from whichever node can serve it.
    pub async fn list_buckets(&self, limit: Duration) -> Result<Vec<pb::Balance>> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        let mut i = 0usize;
        while Instant::now() < deadline {
            match self
                .admin(i % self.nodes.len())
                .list_buckets(pb::ListBucketsRequest::default())
                .await
            {
                Ok(r) => return Ok(r.into_inner().balances),
                Err(s) => last = s.message().to_string(),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no node listed the buckets within {limit:?}: {last}")
    }

    /// Node `i`'s log head `(seq + 1 or 0, raft index)`.
    pub async fn head(&self, i: usize) -> Result<(u64, u64)> {
        let h = self
            .audit(i)
            .head(pb::HeadRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let len = if h.hash.is_empty() { 0 } else { h.seq + 1 };
        Ok((len, h.raft_index))
    }

    /// Node `i`'s whole financial log, as stored records.
    pub async fn read_log(&self, i: usize) -> Result<Vec<Vec<u8>>> {
        let (len, _) = self.head(i).await?;
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let mut s = self
                .audit(i)
                .read_log(pb::ReadLogRequest {
                    from_seq: out.len() as u64,
                    max_records: 0,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            let before = out.len();
            while let Some(r) = s
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            {
                out.push(r.record);
            }
            if out.len() == before {
                break;
            }
        }
        Ok(out)
    }
}

/// A campaign's lifetime bucket.
pub fn lifetime(campaign: &str) -> pb::BucketKey {
    pb::BucketKey {
        campaign: campaign.to_string(),
        bucket: Some(pb::Bucket::from(&Bucket::Lifetime)),
    }
}

/// `CAMPAIGN/BUCKET` of a balance.
pub fn bucket_name(b: &pb::Balance) -> Result<String> {
    let k = b.bucket.as_ref().context("a balance without its bucket")?;
    let bucket = Bucket::try_from(k.bucket.as_ref().context("a key without a bucket")?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("{}/{bucket}", k.campaign))
}
