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
    /// The kernel refused the send.
    SendError,
    /// Larger than the receive buffer.
    Truncated,
}

/// Dropped packets by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub unexpected_source: u64,
    pub no_client: u64,
    pub send_error: u64,
    pub truncated: u64,
}

impl DropCounters {
    pub fn total(&self) -> u64 {
        self.unexpected_source + self.no_client + self.send_error + self.truncated
    }

    fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::UnexpectedSource => &mut self.unexpected_source,
            DropReason::NoClient => &mut self.no_client,
            DropReason::SendError => &mut self.send_error,
            DropReason::Truncated => &mut self.truncated,
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
    pub last_activity_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
