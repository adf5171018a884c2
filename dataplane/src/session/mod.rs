//! What a session is, independent of sockets and rings: its endpoints, state, and the pure
//! forwarding decision for each received packet (see [`udp::UdpRelay`]).

pub mod monitor;
pub mod peer;
pub mod udp;

use std::net::SocketAddr;

use crate::stats::{DirectionStats, ResidenceSummary};

/// The transport a session relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

/// A session's life cycle as reported to controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Connecting,
    Forwarding,
    Error,
    Closed,
}

/// Which of a UDP session's four sockets a packet arrived on or leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Leg {
    /// Listen address, RTP port: the client sends here, and reverse RTP leaves from here.
    ListenRtp = 0,
    /// Listen address, RTP port + 1.
    ListenRtcp = 1,
    /// Connect address, RTP port: forward RTP leaves from here, the destination answers here.
    OutRtp = 2,
    /// Connect address, RTP port + 1.
    OutRtcp = 3,
}

impl Leg {
    pub const ALL: [Leg; 4] = [Leg::ListenRtp, Leg::ListenRtcp, Leg::OutRtp, Leg::OutRtcp];

    pub fn from_index(i: u8) -> Option<Leg> {
        Self::ALL.get(usize::from(i)).copied()
    }

    pub fn is_rtcp(self) -> bool {
        matches!(self, Leg::ListenRtcp | Leg::OutRtcp)
    }
}

/// The caller's requested endpoints, before any port is allocated. Port 0 on `listen` or
/// `connect` asks for a free even port from the media range.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    pub id: String,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub connect: SocketAddr,
    pub destination: SocketAddr,
    pub options: SessionOptions,
}

/// Per-session behaviour, with server defaults already applied by the control plane.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionOptions {
    pub monitor: monitor::MonitorConfig,
    /// Clock rates (Hz) of dynamic payload types.
    pub clock_rates: Vec<(u8, u32)>,
    /// Drop packets that are not valid RTP/RTCP instead of relaying them.
    pub drop_non_rtp: bool,
    /// How the peers' addresses are learned (gRPC: strict; rtpproxy: symmetric or asymmetric).
    pub latching: peer::Latching,
    /// The client's address as signalled, before it sends (rtpproxy U); `None` = learn it.
    pub client: Option<SocketAddr>,
    /// TCP sessions only: framing, connect timeout, backoff, client policy.
    pub tcp: crate::tcp::TcpOptions,
}

/// A point-in-time copy of a session, safe to send to another thread.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    pub id: String,
    pub protocol: Protocol,
    pub state: SessionState,
    /// Bound RTP addresses; RTCP is on port + 1.
    pub listen: SocketAddr,
    pub connect: SocketAddr,
    pub destination: SocketAddr,
    pub client: Option<SocketAddr>,
    pub client_rtcp: Option<SocketAddr>,
    /// The most recent error and when it happened (µs since the Unix epoch).
    pub last_error: Option<(String, u64)>,
    /// The addresses peers must use for listen and connect, when configured (NAT).
    pub listen_advertised: Option<std::net::IpAddr>,
    pub connect_advertised: Option<std::net::IpAddr>,
    /// Devices the listen and connect sockets are bound to (SO_BINDTODEVICE), if any.
    pub listen_device: Option<String>,
    pub connect_device: Option<String>,
    pub created_us: u64,
    /// Client -> destination.
    pub forward: DirectionStats,
    /// Destination -> client.
    pub reverse: DirectionStats,
    /// Time packets spent in the relay, per direction.
    pub forward_residence: ResidenceSummary,
    pub reverse_residence: ResidenceSummary,
    /// RTP/RTCP statistics: per-SSRC loss and jitter, RTCP counts, round-trip times.
    pub media: crate::rtp::MediaSnapshot,
    pub shard: u32,
    /// TCP sessions only: framing in use and TCP-specific counters.
    pub tcp: Option<(crate::tcp::TcpFraming, crate::tcp::TcpCounters)>,
    /// Media forking (rtpproxy `C`) and recording (rtpproxy `R`) of a UDP session.
    pub fork: ForkSnapshot,
}

/// Where a session's RTP is copied or recorded, and how that went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForkSnapshot {
    /// The UDP target every relayed RTP packet is also sent to (RTCP: its port + 1), if any.
    pub copy_target: Option<SocketAddr>,
    pub copies_sent: u64,
    /// Copies the kernel refused (e.g. ICMP-unreachable target, full socket buffer).
    pub copies_failed: u64,
    /// Whether RTP and RTCP are being written into a pcap file.
    pub recording: bool,
    /// Packets handed to the pcap writer.
    pub records_queued: u64,
    /// Packets not recorded because the writer's queue was full (forwarding never waits).
    pub records_dropped: u64,
}
