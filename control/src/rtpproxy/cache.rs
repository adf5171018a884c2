//! The retransmission cache. Controllers resend a command under the same cookie until a reply
//! arrives (Kamailio: 5 tries, 1 s apart), so a retransmission must be answered with the first
//! reply instead of being executed again: a second `U` would allocate a second port pair.
//!
//! Entries are keyed by source address and cookie (cookies are only unique per controller),
//! live [`DEFAULT_TTL`] like rtpproxy's, and are evicted oldest first when the cache is full.
//! A command still executing is remembered too, so a retransmission that overtakes its
//! original's reply is dropped rather than run a second time. The clock is an argument, which
//! keeps the cache deterministic under test.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a reply is kept; rtpproxy keeps them ~35 s, longer than any controller retries.
pub const DEFAULT_TTL: Duration = Duration::from_secs(35);

/// Default bound on entries: at 1000 commands/s, 35 s of traffic is 35 000 entries.
pub const DEFAULT_CAPACITY: usize = 65_536;

type Key = (SocketAddr, Box<str>);

#[derive(Debug)]
struct Entry {
    reply: Option<String>,
    since: Instant,
    /// Matches the queue element that owns this entry; stale queue elements are skipped.
    seq: u64,
}

/// What [`ReplyCache::begin`] found for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// First sighting: execute the command, then call [`ReplyCache::finish`].
    New,
    /// The original is still executing: send nothing, its reply will answer both.
    InProgress,
    /// A retransmission: send this reply again, execute nothing.
    Replied(&'a str),
}

/// Replies by (source, cookie), bounded in size and age; lookups and inserts are O(1).
#[derive(Debug)]
pub struct ReplyCache {
    entries: HashMap<Key, Entry>,
    /// Keys in insertion order, for expiry and eviction of the oldest.
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
    capacity: usize,
    ttl: Duration,
}

impl Default for ReplyCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL)
    }
}

impl ReplyCache {
    /// A cache holding at most `capacity` (at least 1) entries, each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expired(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) >= self.ttl
    }

    /// Drops the oldest queue element and its entry, unless a newer insert owns the entry.
    fn pop_oldest(&mut self) {
        if let Some((seq, key)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&key);
            }
        }
    }

    fn purge(&mut self, now: Instant) {
        while let Some((seq, key)) = self.order.front() {
            let stale = self
                .entries
                .get(key)
                .is_none_or(|e| e.seq != *seq || self.expired(e.since, now));
            if !stale {
                break;
            }
            self.pop_oldest();
        }
    }

    fn put(&mut self, key: Key, reply: Option<String>, now: Instant) {
        self.purge(now);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.entries.insert(
            key.clone(),
            Entry {
                reply,
                since: now,
                seq,
            },
        );
        self.order.push_back((seq, key));
        while self.entries.len() > self.capacity {
            self.pop_oldest();
        }
        // Re-stored keys leave stale queue elements behind; dropping them once they outnumber
        // the live ones keeps the queue bounded at amortized O(1) per insert.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(seq, key)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
    }

    /// The cached reply for a command, if one is live.
    pub fn get(&self, src: SocketAddr, cookie: &str, now: Instant) -> Option<&str> {
        let entry = self.entries.get(&(src, Box::from(cookie)))?;
        if self.expired(entry.since, now) {
            return None;
        }
        entry.reply.as_deref()
    }

    /// Looks a command up and, on first sighting, marks it in progress.
    pub fn begin(&mut self, src: SocketAddr, cookie: &str, now: Instant) -> Lookup<'_> {
        let key: Key = (src, Box::from(cookie));
        let live = self
            .entries
            .get(&key)
            .is_some_and(|e| !self.expired(e.since, now));
        if !live {
            self.put(key, None, now);
            return Lookup::New;
        }
        match self.entries.get(&key).and_then(|e| e.reply.as_deref()) {
            Some(reply) => Lookup::Replied(reply),
            None => Lookup::InProgress,
        }
    }

    /// Stores the reply of an executed command. The entry's age counts from `now`, so the
    /// reply stays available for a full TTL however long execution took.
    pub fn finish(&mut self, src: SocketAddr, cookie: &str, reply: String, now: Instant) {
        self.put((src, Box::from(cookie)), Some(reply), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn retransmissions_are_answered_from_the_cache() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::default();
        assert_eq!(cache.begin(src(1), "29816_4", t0), Lookup::New);
        assert_eq!(cache.begin(src(1), "29816_4", t0), Lookup::InProgress);
        assert_eq!(cache.get(src(1), "29816_4", t0), None);
        cache.finish(src(1), "29816_4", "29816_4 35000 192.0.2.1\n".into(), t0);
        let later = t0 + Duration::from_secs(4);
        assert_eq!(
            cache.begin(src(1), "29816_4", later),
            Lookup::Replied("29816_4 35000 192.0.2.1\n")
        );
        // Same cookie from another controller is another command.
        assert_eq!(cache.begin(src(2), "29816_4", later), Lookup::New);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(10, DEFAULT_TTL);
        cache.finish(src(1), "a", "a 0\n".into(), t0);
        let almost = t0 + DEFAULT_TTL - Duration::from_millis(1);
        assert_eq!(cache.get(src(1), "a", almost), Some("a 0\n"));
        let expired = t0 + DEFAULT_TTL;
        assert_eq!(cache.get(src(1), "a", expired), None);
        assert_eq!(cache.begin(src(1), "a", expired), Lookup::New);
        assert_eq!(
            cache.len(),
            1,
            "the expired entry was replaced, not duplicated"
        );
        // A stalled execution does not block its cookie forever.
        assert_eq!(cache.begin(src(1), "a", expired + DEFAULT_TTL), Lookup::New);
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(3, DEFAULT_TTL);
        for (i, cookie) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            cache.finish(src(1), cookie, format!("{cookie} 0\n"), now);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(src(1), "a", t0), None);
        assert_eq!(cache.get(src(1), "d", t0), Some("d 0\n"));
        // Re-storing a key does not let the queue grow past the bound.
        for _ in 0..100 {
            cache.finish(src(1), "d", "d 0\n".into(), t0);
        }
        assert!(cache.order.len() <= 6 && cache.len() == 3);
        assert_eq!(cache.get(src(1), "b", t0), Some("b 0\n"));
        assert_eq!(cache.get(src(1), "d", t0), Some("d 0\n"));
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut cache = ReplyCache::new(2, DEFAULT_TTL);
        cache.finish(src(1), "a", "a 0\n".into(), t0);
        let earlier = t0 - Duration::from_secs(50);
        assert_eq!(cache.get(src(1), "a", earlier), Some("a 0\n"));
        assert_eq!(cache.begin(src(1), "b", earlier), Lookup::New);
    }
}
