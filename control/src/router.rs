//! Which shard owns a session, and the request/reply plumbing to reach it.
//!
//! A session ID always hashes to the same shard, so uniqueness and lookups need no cross-shard
//! coordination: only the owning shard ever hears of an ID. The hash (FNV-1a) is fixed, not
//! seeded per process, so the mapping is reproducible in logs and tests.

use rtprelay_dataplane::command::{RecordFile, Reply};
use rtprelay_dataplane::{
    Command, CreateError, ForkError, ListPage, ListQuery, SessionSnapshot, SessionSpec, ShardHandle,
};
use tokio::sync::oneshot;

/// The owning shard could not be reached (stopped, or dropped the request while stopping).
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is not available")]
pub struct Unavailable(pub usize);

/// FNV-1a, 64 bit.
pub fn hash_id(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shard index owning `id` among `shards` shards.
pub fn shard_for(id: &str, shards: usize) -> usize {
    (hash_id(id) % shards.max(1) as u64) as usize
}

/// Sends commands to the data plane's shards and awaits their replies.
#[derive(Clone)]
pub struct Router {
    shards: Vec<ShardHandle>,
}

impl Router {
    pub fn new(shards: Vec<ShardHandle>) -> Self {
        assert!(!shards.is_empty(), "the router needs at least one shard");
        Self { shards }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Lost wake-ups the data plane's watchdog repaired, per shard.
    pub fn watchdog_kicks(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(ShardHandle::watchdog_kicks)
            .collect()
    }

    async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = oneshot::channel();
        self.shards[shard]
            .send(make(tx))
            .map_err(|_| Unavailable(shard))?;
        rx.await.map_err(|_| Unavailable(shard))
    }

    pub async fn create(
        &self,
        spec: SessionSpec,
    ) -> Result<Result<SessionSnapshot, CreateError>, Unavailable> {
        let shard = shard_for(&spec.id, self.shards.len());
        self.ask(shard, |reply| Command::Create { spec, reply })
            .await
    }

    pub async fn destroy(&self, id: String) -> Result<Option<SessionSnapshot>, Unavailable> {
        let shard = shard_for(&id, self.shards.len());
        self.ask(shard, |reply| Command::Destroy { id, reply })
            .await
    }

    pub async fn update(
        &self,
        id: String,
        client: Option<std::net::SocketAddr>,
        destination: Option<std::net::SocketAddr>,
    ) -> Result<Option<SessionSnapshot>, Unavailable> {
        let shard = shard_for(&id, self.shards.len());
        self.ask(shard, |reply| Command::Update {
            id,
            client,
            destination,
            reply,
        })
        .await
    }

    /// Starts or stops copying a session's RTP to a UDP target.
    pub async fn set_copy(
        &self,
        id: String,
        target: Option<std::net::SocketAddr>,
    ) -> Result<Result<(), ForkError>, Unavailable> {
        let shard = shard_for(&id, self.shards.len());
        self.ask(shard, |reply| Command::SetCopy { id, target, reply })
            .await
    }

    /// Starts or stops recording a session's RTP into a pcap file.
    pub async fn set_record(
        &self,
        id: String,
        file: Option<RecordFile>,
    ) -> Result<Result<(), ForkError>, Unavailable> {
        let shard = shard_for(&id, self.shards.len());
        self.ask(shard, |reply| Command::SetRecord { id, file, reply })
            .await
    }

    pub async fn get(&self, id: String) -> Result<Option<SessionSnapshot>, Unavailable> {
        let shard = shard_for(&id, self.shards.len());
        self.ask(shard, |reply| Command::Get { id, reply }).await
    }

    /// Asks every shard for its page and returns their answers in shard order.
    pub async fn list_all(&self, query: ListQuery) -> Result<Vec<ListPage>, Unavailable> {
        let mut pending = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (tx, rx) = oneshot::channel();
            let cmd = Command::List {
                query: query.clone(),
                reply: tx,
            };
            self.shards[shard]
                .send(cmd)
                .map_err(|_| Unavailable(shard))?;
            pending.push((shard, rx));
        }
        let mut pages = Vec::with_capacity(pending.len());
        for (shard, rx) in pending {
            pages.push(rx.await.map_err(|_| Unavailable(shard))?);
        }
        Ok(pages)
    }

    /// Stops every shard; each closes its sessions first. Returns when all have stopped.
    pub async fn shutdown(&self) {
        for shard in 0..self.shards.len() {
            if let Err(e) = self.ask(shard, |reply| Command::Shutdown { reply }).await {
                tracing::warn!(error = %e, "shard did not acknowledge shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(hash_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash_id("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn ids_spread_evenly_over_shards() {
        for shards in [2usize, 3, 8] {
            let mut counts = vec![0usize; shards];
            for i in 0..10_000 {
                counts[shard_for(&format!("call-{i}@example.org;1"), shards)] += 1;
            }
            let expected = 10_000 / shards;
            for c in counts {
                assert!(
                    c.abs_diff(expected) < expected / 10,
                    "{shards} shards: {c} vs {expected}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn shard_is_stable_and_in_range(id in ".{0,64}", shards in 1usize..64) {
            let s = shard_for(&id, shards);
            prop_assert!(s < shards);
            prop_assert_eq!(s, shard_for(&id, shards));
        }
    }
}
