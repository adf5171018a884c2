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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub rtp: PacketCounters,
    pub rtcp: PacketCounters,
    /// Microseconds since the Unix epoch; 0 until the first packet.
    pub first_activity_us: u64,
    /// Microseconds since the Unix epoch; 0 until the first packet.
    pub last_activity_us: u64,
}

/// Time packets spent inside the relay in one direction: from the kernel's receive timestamp to
/// the completion of their send. Kept as an HDR histogram with one significant digit (about 3%
/// resolution), allocated on the first relayed packet, so an idle session costs nothing and a
/// busy one about 1.4 KiB.
#[derive(Debug, Default, Clone)]
pub struct Residence {
    hist: Option<Box<hdrhistogram::Histogram<u32>>>,
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

impl Residence {
    pub fn record(&mut self, us: u64) {
        if self.hist.is_none() {
            // Bounds are constants that hdrhistogram accepts; failure is impossible, and if it
            // ever happened the relay would only lose this statistic.
            self.hist = hdrhistogram::Histogram::new_with_bounds(1, RESIDENCE_MAX_US, 1)
                .ok()
                .map(Box::new);
        }
        if let Some(h) = self.hist.as_mut() {
            h.saturating_record(us.clamp(1, RESIDENCE_MAX_US));
        }
    }

    pub fn summary(&self) -> ResidenceSummary {
        let Some(h) = self.hist.as_ref() else {
            return ResidenceSummary::default();
        };
        ResidenceSummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
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
