//! Media port allocation: which even port pair a session gets when it asks for port 0.
//!
//! Pure bookkeeping, no sockets: the shard tries to bind each candidate and tells the allocator
//! the outcome. Each shard owns a disjoint slice of the range (pair index modulo shard count), so
//! shards never coordinate and never race for the same port. Candidates advance round-robin
//! instead of reusing the lowest free pair, so a port that was just released is not handed to
//! the next call while stray packets of the old call may still arrive.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// An inclusive media port range, normalised to whole even/odd pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First even port of the range.
    pub first: u16,
    /// Number of (even, odd) pairs in the range.
    pub pairs: u32,
}

/// Why a range cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("media port range {min}-{max} holds no even/odd port pair")]
    Empty { min: u16, max: u16 },
}

impl PortRange {
    /// Normalises `min..=max` to whole pairs: the first even port at or above `min`, up to the last
    /// odd port at or below `max`. Port 0 is never part of a range.
    pub fn new(min: u16, max: u16) -> Result<Self, RangeError> {
        let first = u32::from(min.max(2)).next_multiple_of(2);
        let last_odd = if max % 2 == 1 {
            u32::from(max)
        } else {
            u32::from(max).saturating_sub(1)
        };
        if last_odd < first + 1 {
            return Err(RangeError::Empty { min, max });
        }
        Ok(Self {
            first: first as u16,
            pairs: (last_odd + 1 - first) / 2,
        })
    }

    /// The last port of the range (odd).
    pub fn last(&self) -> u16 {
        (u32::from(self.first) + self.pairs * 2 - 1) as u16
    }

    /// Whether `port` (either half of a pair) lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.first && port <= self.last()
    }

    /// Whether the range shares any port with `lo..=hi` (e.g. the kernel's ephemeral range).
    pub fn overlaps(&self, lo: u16, hi: u16) -> bool {
        self.first <= hi && lo <= self.last()
    }
}

/// One shard's view of the range: the pairs it may hand out and those it has handed out.
#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    shard: u32,
    shards: u32,
    /// Next pair index (within this shard's slice) to try first.
    cursor: u32,
    used: HashMap<IpAddr, HashSet<u16>>,
}

impl PortAllocator {
    /// `shard` of `shards` takes the pairs whose index is congruent to `shard` modulo `shards`.
    pub fn new(range: PortRange, shard: u32, shards: u32) -> Self {
        assert!(shards > 0 && shard < shards, "shard index out of bounds");
        Self {
            range,
            shard,
            shards,
            cursor: 0,
            used: HashMap::new(),
        }
    }

    /// How many pairs this shard's slice holds.
    pub fn slice_len(&self) -> u32 {
        let base = self.range.pairs / self.shards;
        base + u32::from(self.shard < self.range.pairs % self.shards)
    }

    /// Even ports to try, in order, for a new pair on `ip`: every free pair of this shard's slice
    /// once, starting at the cursor. The caller binds each until one works, then calls
    /// [`PortAllocator::claim`].
    pub fn candidates(&self, ip: IpAddr) -> impl Iterator<Item = u16> + '_ {
        let len = self.slice_len();
        let used = self.used.get(&ip);
        (0..len)
            .map(move |k| self.port_of((self.cursor + k) % len))
            .filter(move |port| used.is_none_or(|u| !u.contains(port)))
    }

    /// Records that the pair starting at the even `port` on `ip` is now bound by this relay.
    /// Ports outside the range (explicitly requested) are not tracked.
    pub fn claim(&mut self, ip: IpAddr, port: u16) {
        if !self.range.contains(port) {
            return;
        }
        self.used.entry(ip).or_default().insert(port);
        if let Some(k) = self.slice_index(port) {
            self.cursor = (k + 1) % self.slice_len().max(1);
        }
    }

    /// Records that the pair starting at `port` on `ip` was closed.
    pub fn release(&mut self, ip: IpAddr, port: u16) {
        if let Some(set) = self.used.get_mut(&ip) {
            set.remove(&port);
            if set.is_empty() {
                self.used.remove(&ip);
            }
        }
    }

    /// Pairs currently claimed on `ip`.
    pub fn in_use(&self, ip: IpAddr) -> usize {
        self.used.get(&ip).map_or(0, HashSet::len)
    }

    fn port_of(&self, k: u32) -> u16 {
        let pair = k * self.shards + self.shard;
        (u32::from(self.range.first) + pair * 2) as u16
    }

    fn slice_index(&self, port: u16) -> Option<u32> {
        let pair = u32::from(port.checked_sub(self.range.first)?) / 2;
        (pair % self.shards == self.shard).then_some(pair / self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn range_is_normalised_to_even_pairs() {
        let r = PortRange::new(16383, 16390).unwrap();
        assert_eq!((r.first, r.pairs, r.last()), (16384, 3, 16389));
        assert_eq!(PortRange::new(0, 3).unwrap().first, 2);
        assert_eq!(
            PortRange::new(10, 10),
            Err(RangeError::Empty { min: 10, max: 10 })
        );
        assert_eq!(
            PortRange::new(11, 12),
            Err(RangeError::Empty { min: 11, max: 12 })
        );
        assert_eq!(PortRange::new(65534, 65535).unwrap().pairs, 1);
    }

    #[test]
    fn overlap_with_ephemeral_range() {
        let r = PortRange::new(16384, 32767).unwrap();
        assert!(!r.overlaps(32768, 60999));
        assert!(r.overlaps(32000, 60999));
        assert!(r.overlaps(1024, 16384));
    }

    #[test]
    fn shards_get_disjoint_slices_covering_the_range() {
        let r = PortRange::new(20000, 20019).unwrap(); // 10 pairs
        let mut all = Vec::new();
        for s in 0..3 {
            let a = PortAllocator::new(r, s, 3);
            all.extend(a.candidates(LO));
        }
        all.sort_unstable();
        assert_eq!(all, (20000..20020).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn claims_advance_round_robin_and_skip_used() {
        let r = PortRange::new(20000, 20007).unwrap(); // 4 pairs, one shard
        let mut a = PortAllocator::new(r, 0, 1);
        assert_eq!(a.candidates(LO).next(), Some(20000));
        a.claim(LO, 20000);
        assert_eq!(
            a.candidates(LO).collect::<Vec<_>>(),
            vec![20002, 20004, 20006]
        );
        a.claim(LO, 20002);
        a.release(LO, 20000);
        // The freed pair comes last, not next.
        assert_eq!(
            a.candidates(LO).collect::<Vec<_>>(),
            vec![20004, 20006, 20000]
        );
        // Another address has its own pool.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(a.candidates(other).count(), 4);
        assert_eq!(a.in_use(LO), 1);
    }

    #[test]
    fn ports_outside_the_range_are_not_tracked() {
        let r = PortRange::new(20000, 20003).unwrap();
        let mut a = PortAllocator::new(r, 0, 1);
        a.claim(LO, 40000);
        assert_eq!(a.in_use(LO), 0);
        assert_eq!(a.candidates(LO).count(), 2);
    }

    proptest! {
        #[test]
        fn candidates_are_even_in_range_and_unclaimed(
            min in 1u16..65000, span in 0u16..400, shards in 1u32..5,
            claims in proptest::collection::vec(0usize..200, 0..50),
        ) {
            let max = min.saturating_add(span);
            let Ok(r) = PortRange::new(min, max) else { return Ok(()) };
            let shard = claims.len() as u32 % shards;
            let mut a = PortAllocator::new(r, shard, shards);
            for c in claims {
                let pick = a.candidates(LO).nth(c % 7);
                if let Some(p) = pick {
                    a.claim(LO, p);
                }
                let cands: Vec<u16> = a.candidates(LO).collect();
                prop_assert_eq!(cands.len() + a.in_use(LO), a.slice_len() as usize);
                for p in cands {
                    prop_assert!(p % 2 == 0 && r.contains(p) && r.contains(p + 1));
                    prop_assert_eq!(((p - r.first) / 2) as u32 % shards, shard);
                }
            }
        }
    }
}
