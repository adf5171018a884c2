//! The per-session entry point the shard calls for every datagram.

use rtp_types::RtpPacket;

use super::clock::ClockMap;
use super::packet::{Demux, PacketClass, demux};
use super::rtcp::{self, Opposite, RtcpSide, RttStats};
use super::snapshot::{DirectionSnapshot, MediaSnapshot};
use super::stream::SourceTable;

/// Which way a datagram travels through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client -> destination.
    Forward,
    /// Destination -> client.
    Reverse,
}

impl Direction {
    pub fn opposite(self) -> Self {
        match self {
            Self::Forward => Self::Reverse,
            Self::Reverse => Self::Forward,
        }
    }
}

/// `repr(C)`: the RTP counter beside the first source, the RTCP state (cold for RTP) last.
#[derive(Debug, Clone, Default, PartialEq)]
#[repr(C)]
struct DirectionState {
    rtp_packets: u64,
    non_rtp: u64,
    sources: SourceTable,
    rtcp: RtcpSide,
}

impl DirectionState {
    fn snapshot(&self) -> DirectionSnapshot {
        DirectionSnapshot {
            sources: self.sources.snapshot(),
            rtp_packets: self.rtp_packets,
            non_rtp: self.non_rtp,
            evicted_sources: self.sources.evicted(),
            rtcp: self.rtcp.counters,
        }
    }
}

/// RTP/RTCP awareness of one relayed session.
///
/// Owned by the shard next to the session and fed every datagram in both directions. It never
/// allocates, blocks or calls the OS on the packet path, and its work per packet is bounded
/// (a handful of SSRC slots, one pass over an RTCP compound), so it can sit on the forwarding
/// path without a budget of its own. Time is passed in by the caller, which keeps it
/// deterministic and testable.
#[derive(Debug, Clone, Default, PartialEq)]
#[repr(C)]
pub struct SessionMedia {
    /// Read by every RTP packet, first: `repr(C)` keeps this order.
    clocks: ClockMap,
    forward: DirectionState,
    reverse: DirectionState,
    client_rtt: RttStats,
    destination_rtt: RttStats,
}

impl SessionMedia {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the clock rate signalling negotiated for dynamic payload type `pt` (96-127);
    /// `hz == 0` forgets it. Returns `false` for a static or out-of-range type, whose RFC 3551
    /// rate stays in force. Jitter of that type becomes available from the next packets on.
    pub fn set_clock_rate(&mut self, pt: u8, hz: u32) -> bool {
        self.clocks.set(pt, hz)
    }

    /// The clock rate used for `pt`, if known.
    pub fn clock_rate(&self, pt: u8) -> Option<u32> {
        self.clocks.clock_rate(pt)
    }

    /// Accounts one datagram travelling in `dir` that arrived at relay time `arrival_us`
    /// (microseconds on any clock that does not jump; only differences are used).
    ///
    /// `rtcp_port` says whether it arrived on the RTCP socket (RTP port + 1). On the RTP port
    /// an RTCP packet type (192-223, RFC 5761) marks multiplexed RTCP. The answer is how the
    /// datagram was classified; it is only counted, never changed, whatever it is.
    #[inline]
    pub fn on_packet(
        &mut self,
        dir: Direction,
        rtcp_port: bool,
        bytes: &[u8],
        arrival_us: u64,
    ) -> PacketClass {
        // Reports travelling forward come from the client and echo the destination's SRs,
        // which passed in reverse: they time the client leg, and vice versa.
        let (this, other, rtt) = match dir {
            Direction::Forward => (&mut self.forward, &mut self.reverse, &mut self.client_rtt),
            Direction::Reverse => (
                &mut self.reverse,
                &mut self.forward,
                &mut self.destination_rtt,
            ),
        };
        let class = match demux(rtcp_port, bytes) {
            Demux::Rtp => match RtpPacket::parse(bytes) {
                Ok(p) => {
                    let pt = p.payload_type();
                    let seq = p.sequence_number();
                    let clock = self.clocks.clock_rate(pt);
                    this.rtp_packets += 1;
                    this.sources
                        .get_or_insert(p.ssrc(), seq, arrival_us)
                        .on_rtp(pt, seq, p.timestamp(), clock, arrival_us);
                    PacketClass::Rtp
                }
                Err(_) => PacketClass::NotRtp,
            },
            Demux::Rtcp => {
                let opposite = Opposite {
                    side: &other.rtcp,
                    sources: &mut other.sources,
                    rtt,
                };
                if rtcp::on_rtcp(bytes, arrival_us, &mut this.rtcp, opposite) {
                    PacketClass::Rtcp
                } else {
                    PacketClass::NotRtp
                }
            }
            Demux::Neither => PacketClass::NotRtp,
        };
        if class == PacketClass::NotRtp {
            this.non_rtp += 1;
        }
        class
    }

    /// Cumulative RTP packets expected and received in `dir`, over all its sources, and the
    /// highest current jitter among them. Does not allocate: the shard's supervisor calls it
    /// for every session on every tick.
    pub fn totals(&self, dir: Direction) -> (u64, u64, Option<f64>) {
        let state = match dir {
            Direction::Forward => &self.forward,
            Direction::Reverse => &self.reverse,
        };
        state.sources.iter().fold((0, 0, None), |(e, r, j), s| {
            let jitter = match (j, s.jitter.ms()) {
                (Some(a), Some(b)) => Some(f64::max(a, b)),
                (a, b) => a.or(b),
            };
            (e + s.seq.expected(), r + s.seq.received(), jitter)
        })
    }

    /// A copy of all statistics; allocates, so call it from a reporting path, not per packet.
    pub fn snapshot(&self) -> MediaSnapshot {
        MediaSnapshot {
            forward: self.forward.snapshot(),
            reverse: self.reverse.snapshot(),
            client_rtt: self.client_rtt.snapshot(),
            destination_rtt: self.destination_rtt.snapshot(),
        }
    }

    /// The current snapshot, then starts a new interval: the next snapshot's `interval_*`
    /// figures cover only what happens from now on, as a receiver's report interval would.
    pub fn take_interval(&mut self) -> MediaSnapshot {
        let snapshot = self.snapshot();
        for dir in [&mut self.forward, &mut self.reverse] {
            for source in dir.sources.iter_mut() {
                source.seq.mark_interval();
            }
        }
        snapshot
    }
}
