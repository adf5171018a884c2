//! Per-session media counters.
//!
//! They live inside the shard that owns the session and are plain integers: only that shard's
//! thread ever writes them, and readers get a copy through a snapshot command, so forwarding pays
//! no atomic operation and no shared cache line for them.

/// Why a received packet was not sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Arrived on the outbound socket from an address other than the destination.
    UnexpectedSource,
    /// Arrived from the destination before the client's address was learned.
    NoClient,
    /// Arrived from the client while the destination is not known yet (rtpproxy, before L).
    NoDestination,
    /// The kernel refused the send.
    SendError,
    /// Larger than the receive buffer.
    Truncated,
    /// Not valid RTP/RTCP, and the session drops such packets.
    NotRtp,
    /// Queued in the kernel longer than the relay's maximum packet age (overload).
    Late,
}

/// Dropped packets by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub unexpected_source: u64,
    pub no_client: u64,
    pub no_destination: u64,
    pub send_error: u64,
    pub truncated: u64,
    pub not_rtp: u64,
    pub late: u64,
}

impl DropCounters {
    pub fn total(&self) -> u64 {
        self.unexpected_source
            + self.no_client
            + self.no_destination
            + self.send_error
            + self.truncated
            + self.not_rtp
            + self.late
    }

    fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::UnexpectedSource => &mut self.unexpected_source,
            DropReason::NoClient => &mut self.no_client,
            DropReason::NoDestination => &mut self.no_destination,
            DropReason::SendError => &mut self.send_error,
            DropReason::Truncated => &mut self.truncated,
            DropReason::NotRtp => &mut self.not_rtp,
            DropReason::Late => &mut self.late,
        };
        *slot += 1;
    }
}

/// Counters of one stream kind (RTP or RTCP) in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub dropped: DropCounters,
}

impl PacketCounters {
    pub fn received(&mut self, len: usize) {
        self.packets_received += 1;
        self.bytes_received += len as u64;
    }

    pub fn sent(&mut self, len: usize) {
        self.packets_sent += 1;
        self.bytes_sent += len as u64;
    }

    pub fn dropped(&mut self, reason: DropReason) {
        self.dropped.count(reason);
    }
}

/// One direction of a session: RTP and RTCP counters and the last time a packet arrived.
///
/// `repr(C)` keeps the fields in this order: the ones every packet touches come first, so a
/// packet touches few cache lines (see `dataplane/benches/packet_path.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DirectionStats {
    /// Microseconds since the Unix epoch; 0 until the first packet.
    pub first_activity_us: u64,
    /// Microseconds since the Unix epoch; 0 until the first packet.
    pub last_activity_us: u64,
    pub rtp: PacketCounters,
    pub rtcp: PacketCounters,
}

impl DirectionStats {
    /// The RTCP or the RTP counters.
    pub fn kind_mut(&mut self, rtcp: bool) -> &mut PacketCounters {
        if rtcp { &mut self.rtcp } else { &mut self.rtp }
    }
}

/// Time packets spent inside the relay in one direction: from the kernel's receive timestamp to
/// the completion of their send, as a log-linear histogram with hdrhistogram's bucketing at one
/// significant digit (values below 32 us exact, then 16 buckets per power of two: about 3%
/// resolution, up to [`RESIDENCE_MAX_US`]).
///
/// Only the buckets between the lowest and the highest value seen are stored, grown on demand:
/// residence times of a session cluster within a few octaves, so a busy session holds about
/// 100-250 counters (0.4-1 KiB) where a full histogram takes 1.4 KiB, and an idle one nothing.
#[derive(Debug, Default, Clone)]
pub struct Residence {
    /// Counters of buckets `lo..lo + counts.len()`; empty until the first record.
    counts: Box<[u32]>,
    lo: u16,
    count: u64,
    max_us: u64,
}

/// Percentiles of a [`Residence`] in microseconds; all 0 when nothing was relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResidenceSummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Longest residence tracked exactly; longer ones count as this (10 s).
const RESIDENCE_MAX_US: u64 = 10_000_000;

/// Values below this are their own bucket.
const LINEAR: u64 = 32;
/// The window grows in steps of this many buckets, so a slowly widening range reallocates
/// rarely.
const GROW: usize = 8;

/// The bucket of `us` (1..=RESIDENCE_MAX_US).
fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // 5.. for us >= 32
    16 * (exp - 3) + ((us >> (exp - 4)) as usize - 16)
}

/// The highest value that falls into bucket `b`, as hdrhistogram reports percentiles.
fn bucket_high(b: usize) -> u64 {
    if b < LINEAR as usize {
        return b as u64;
    }
    let exp = b / 16 + 3;
    let low = ((b % 16 + 16) as u64) << (exp - 4);
    low + (1 << (exp - 4)) - 1
}

impl Residence {
    #[inline]
    pub fn record(&mut self, us: u64) {
        let us = us.clamp(1, RESIDENCE_MAX_US);
        let b = bucket(us);
        let lo = usize::from(self.lo);
        if b < lo || b >= lo + self.counts.len() {
            self.grow(b);
        }
        let slot = &mut self.counts[b - usize::from(self.lo)];
        *slot = slot.saturating_add(1);
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Widens the window to include bucket `b`.
    #[cold]
    fn grow(&mut self, b: usize) {
        let (old_lo, old_len) = (usize::from(self.lo), self.counts.len());
        let (lo, hi) = if old_len == 0 {
            (b, b + 1)
        } else {
            (old_lo.min(b), (old_lo + old_len).max(b + 1))
        };
        let lo = lo - lo % GROW;
        let hi = (hi.next_multiple_of(GROW)).min(bucket(RESIDENCE_MAX_US) + 1);
        let mut counts = vec![0u32; hi - lo].into_boxed_slice();
        if old_len > 0 {
            counts[old_lo - lo..old_lo - lo + old_len].copy_from_slice(&self.counts);
        }
        self.counts = counts;
        // Bucket indices stay below 400: u16 holds them.
        self.lo = lo as u16;
    }

    /// The value at quantile `q` (0..=1) as hdrhistogram computes it: the highest value of the
    /// bucket where the cumulative count reaches `ceil(q * count)`.
    fn value_at_quantile(&self, q: f64) -> u64 {
        let want = ((q.min(1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                return bucket_high(usize::from(self.lo) + i).min(self.max_us);
            }
        }
        self.max_us
    }

    pub fn summary(&self) -> ResidenceSummary {
        if self.count == 0 {
            return ResidenceSummary::default();
        }
        ResidenceSummary {
            count: self.count,
            p50_us: self.value_at_quantile(0.5),
            p90_us: self.value_at_quantile(0.9),
            p99_us: self.value_at_quantile(0.99),
            max_us: self.max_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residence_percentiles_within_resolution() {
        let mut r = Residence::default();
        assert_eq!(r.summary(), ResidenceSummary::default());
        for us in 1..=1000 {
            r.record(us);
        }
        r.record(50_000_000); // beyond the tracked range: clamped, not lost
        let s = r.summary();
        assert_eq!(s.count, 1001);
        let close = |got: u64, want: u64| got.abs_diff(want) * 100 <= want * 7;
        assert!(close(s.p50_us, 500), "{s:?}");
        assert!(close(s.p90_us, 900), "{s:?}");
        assert!(close(s.p99_us, 990), "{s:?}");
        assert!(close(s.max_us, RESIDENCE_MAX_US), "{s:?}");
    }

    #[test]
    fn buckets_match_hdrhistogram_at_one_significant_digit() {
        let h = hdrhistogram::Histogram::<u32>::new_with_bounds(1, RESIDENCE_MAX_US, 1).unwrap();
        let mut v = 1;
        while v <= RESIDENCE_MAX_US {
            assert_eq!(bucket_high(bucket(v)), h.highest_equivalent(v), "value {v}");
            assert!(bucket(v) >= bucket(v - 1), "monotonic at {v}");
            v += 1 + v / 50;
        }
        assert!(bucket(RESIDENCE_MAX_US) < 400);
    }

    #[test]
    fn percentiles_match_hdrhistogram() {
        let mut h =
            hdrhistogram::Histogram::<u32>::new_with_bounds(1, RESIDENCE_MAX_US, 1).unwrap();
        let mut r = Residence::default();
        // A skewed spread, recorded in an order that grows the window both ways.
        let mut x = 12345u64;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let us = 40 + (x >> 33) % 300 + if (x >> 20) % 50 == 0 { 20_000 } else { 0 };
            h.record(us).unwrap();
            r.record(us);
        }
        r.record(3);
        h.record(3).unwrap();
        let s = r.summary();
        assert_eq!(s.count, h.len());
        // Same buckets; a percentile in the top bucket is capped at the exact maximum.
        assert_eq!(h.highest_equivalent(s.max_us), h.max());
        for (got, q) in [(s.p50_us, 0.5), (s.p90_us, 0.9), (s.p99_us, 0.99)] {
            assert_eq!(got, h.value_at_quantile(q).min(s.max_us), "quantile {q}");
        }
        assert!(r.counts.len() < 250, "window {} buckets", r.counts.len());
    }

    #[test]
    fn counters_add_up() {
        let mut c = PacketCounters::default();
        c.received(172);
        c.received(1);
        c.sent(172);
        c.dropped(DropReason::NoClient);
        c.dropped(DropReason::SendError);
        assert_eq!((c.packets_received, c.bytes_received), (2, 173));
        assert_eq!((c.packets_sent, c.bytes_sent), (1, 172));
        assert_eq!(c.dropped.total(), 2);
        assert_eq!(c.dropped.no_client, 1);
    }
}
