//! Plain-data copies of a session's media statistics.
//!
//! Snapshots are taken rarely (on a controller's request or a reporting tick), so unlike the
//! packet path they may allocate; they own all their data so they can leave the shard thread.

/// Media statistics of one session, both directions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaSnapshot {
    /// Client -> destination.
    pub forward: DirectionSnapshot,
    /// Destination -> client.
    pub reverse: DirectionSnapshot,
    /// Round trip between the relay and the client: a reverse SR answered by a forward report.
    pub client_rtt: RttSnapshot,
    /// Round trip between the relay and the destination: a forward SR answered by a reverse
    /// report.
    pub destination_rtt: RttSnapshot,
}

/// What passed through the relay in one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectionSnapshot {
    /// Sources currently tracked, oldest first.
    pub sources: Vec<SourceSnapshot>,
    /// Well-formed RTP packets.
    pub rtp_packets: u64,
    /// Datagrams that were neither well-formed RTP nor well-formed RTCP (includes
    /// `rtcp.malformed`).
    pub non_rtp: u64,
    /// Sources dropped to make room for a newer one.
    pub evicted_sources: u64,
    pub rtcp: RtcpCounters,
}

/// RTCP packets seen in one direction, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpCounters {
    /// Well-formed compound (or reduced-size) RTCP datagrams.
    pub compounds: u64,
    pub sr: u64,
    pub rr: u64,
    pub sdes: u64,
    pub bye: u64,
    pub app: u64,
    /// Feedback, XR and any other packet type.
    pub other: u64,
    /// Datagrams that looked like RTCP but failed validation; none of their content is used.
    pub malformed: u64,
}

/// One SSRC's reception statistics at the relay (the leg from its sender to the relay), plus
/// what the far receiver last reported about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceSnapshot {
    pub ssrc: u32,
    /// Payload type of the latest packet.
    pub payload_type: u8,
    /// Clock rate of that payload type, if known.
    pub clock_rate: Option<u32>,
    /// Packets counted by the RFC 3550 algorithm (duplicates included, probation excluded).
    pub packets_received: u64,
    /// Extended highest sequence number - base + 1, summed over restarts.
    pub expected: u64,
    /// `expected - packets_received`; negative when duplicates outnumber losses.
    pub lost: i64,
    /// `lost / expected`, clamped to [0, 1]; 0 when nothing is expected yet.
    pub loss_rate: f64,
    /// Expected packets since the previous interval mark.
    pub interval_expected: u64,
    /// Lost packets since the previous interval mark (may be negative).
    pub interval_lost: i64,
    /// `interval_lost / interval_expected`, clamped to [0, 1].
    pub interval_loss_rate: f64,
    pub duplicates: u64,
    /// Late packets: older than the highest sequence number seen, not seen before.
    pub reordered: u64,
    /// Large sequence jumps confirmed as a sender restart.
    pub restarts: u64,
    /// RFC 3550 interarrival jitter; `None` while the clock rate is unknown.
    pub jitter_ms: Option<f64>,
    /// The highest and the mean value `jitter_ms` has had (rtpproxy's `Q` reports both).
    pub jitter_max_ms: Option<f64>,
    pub jitter_mean_ms: Option<f64>,
    pub first_seen_us: u64,
    pub last_seen_us: u64,
    /// The latest report block about this source from its receiver.
    pub remote: Option<RemoteReport>,
}

/// A report block about a source, as its receiver sent it: end-to-end figures that, next to the
/// relay's own, tell which leg loses packets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RemoteReport {
    /// SSRC of the receiver that sent the report.
    pub reporter_ssrc: u32,
    /// Fraction lost since the reporter's previous report, 0..=1 (the 8-bit field / 256).
    pub fraction_lost: f64,
    /// Cumulative packets lost (signed 24-bit in the packet).
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter_units: u32,
    /// The same in milliseconds, if the source's clock rate is known.
    pub jitter_ms: Option<f64>,
    /// Relay time the report passed, in microseconds.
    pub received_us: u64,
}

/// Round-trip time of one leg, measured from SR/report-block pairs passing the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttSnapshot {
    pub last_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub samples: u64,
}
