//! Data-plane values to their gRPC messages.

use std::net::SocketAddr;

use rtprelay_dataplane::rtp::{self, DirectionSnapshot, RttSnapshot, SourceSnapshot};
use rtprelay_dataplane::session::monitor::{AlertKind, Direction};
use rtprelay_dataplane::stats::{DirectionStats, DropCounters, PacketCounters, ResidenceSummary};
use rtprelay_dataplane::tcp::TcpFraming;
use rtprelay_dataplane::{CreateError, Event, EventKind, Protocol, SessionSnapshot, SessionState};
use rtprelay_proto::v1;
use tonic::{Code, Status};

pub fn endpoint(addr: SocketAddr) -> v1::Endpoint {
    v1::Endpoint {
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
    }
}

pub fn state(s: SessionState) -> v1::SessionState {
    match s {
        SessionState::Connecting => v1::SessionState::Connecting,
        SessionState::Forwarding => v1::SessionState::Forwarding,
        SessionState::Error => v1::SessionState::Error,
        SessionState::Closed => v1::SessionState::Closed,
    }
}

fn counters(c: &PacketCounters) -> v1::PacketCounters {
    let DropCounters {
        unexpected_source,
        no_client,
        no_destination,
        send_error,
        truncated,
        not_rtp,
        late,
    } = c.dropped;
    v1::PacketCounters {
        packets_received: c.packets_received,
        bytes_received: c.bytes_received,
        packets_sent: c.packets_sent,
        bytes_sent: c.bytes_sent,
        dropped: Some(v1::DropCounters {
            unexpected_source,
            no_client,
            send_error,
            truncated,
            not_rtp,
            no_destination,
            late,
        }),
    }
}

fn stream(s: &SourceSnapshot) -> v1::RtpStream {
    v1::RtpStream {
        ssrc: s.ssrc,
        payload_type: u32::from(s.payload_type),
        clock_rate: s.clock_rate.unwrap_or(0),
        packets_received: s.packets_received,
        expected: s.expected,
        lost: s.lost,
        loss_rate: s.loss_rate,
        interval_loss_rate: s.interval_loss_rate,
        duplicates: s.duplicates,
        reordered: s.reordered,
        restarts: s.restarts,
        jitter_ms: s.jitter_ms,
        first_seen_unix_us: s.first_seen_us,
        last_seen_unix_us: s.last_seen_us,
        remote: s.remote.as_ref().map(|r| v1::RemoteReport {
            reporter_ssrc: r.reporter_ssrc,
            fraction_lost: r.fraction_lost,
            cumulative_lost: r.cumulative_lost,
            jitter_ms: r.jitter_ms,
            received_unix_us: r.received_us,
        }),
    }
}

fn rtt(r: &RttSnapshot) -> v1::RoundTrip {
    v1::RoundTrip {
        last_ms: r.last_ms,
        avg_ms: r.avg_ms,
        min_ms: r.min_ms,
        max_ms: r.max_ms,
        samples: r.samples,
    }
}

fn direction(
    d: &DirectionStats,
    r: &ResidenceSummary,
    m: &DirectionSnapshot,
) -> v1::DirectionStats {
    let expected: u64 = m.sources.iter().map(|s| s.expected).sum();
    let lost: i64 = m.sources.iter().map(|s| s.lost).sum();
    let c = &m.rtcp;
    v1::DirectionStats {
        streams: m.sources.iter().map(stream).collect(),
        non_rtp_packets: m.non_rtp,
        rtcp_packets: Some(v1::RtcpCounters {
            compounds: c.compounds,
            sr: c.sr,
            rr: c.rr,
            sdes: c.sdes,
            bye: c.bye,
            app: c.app,
            other: c.other,
            malformed: c.malformed,
        }),
        loss_rate: rtp::seq::loss_rate(expected, lost),
        jitter_ms: m
            .sources
            .iter()
            .filter_map(|s| s.jitter_ms)
            .fold(0.0, f64::max),
        rtp: Some(counters(&d.rtp)),
        rtcp: Some(counters(&d.rtcp)),
        last_activity_unix_us: d.last_activity_us,
        first_activity_unix_us: d.first_activity_us,
        residence: Some(v1::Residence {
            count: r.count,
            p50_us: r.p50_us,
            p90_us: r.p90_us,
            p99_us: r.p99_us,
            max_us: r.max_us,
        }),
    }
}

pub fn session(s: &SessionSnapshot) -> v1::SessionInfo {
    v1::SessionInfo {
        session_id: s.id.clone(),
        protocol: match s.protocol {
            Protocol::Udp => v1::Protocol::Udp,
            Protocol::Tcp => v1::Protocol::Tcp,
        } as i32,
        state: state(s.state) as i32,
        listen: Some(endpoint(s.listen)),
        connect: Some(endpoint(s.connect)),
        destination: Some(endpoint(s.destination)),
        client: s.client.map(endpoint),
        client_rtcp: s.client_rtcp.map(endpoint),
        created_unix_us: s.created_us,
        forward: Some(direction(
            &s.forward,
            &s.forward_residence,
            &s.media.forward,
        )),
        reverse: Some(direction(
            &s.reverse,
            &s.reverse_residence,
            &s.media.reverse,
        )),
        shard: s.shard,
        last_error: s
            .last_error
            .as_ref()
            .map(|e| e.0.clone())
            .unwrap_or_default(),
        last_error_unix_us: s.last_error.as_ref().map_or(0, |e| e.1),
        listen_advertised: s
            .listen_advertised
            .map(|a| a.to_string())
            .unwrap_or_default(),
        connect_advertised: s
            .connect_advertised
            .map(|a| a.to_string())
            .unwrap_or_default(),
        listen_device: s.listen_device.clone().unwrap_or_default(),
        connect_device: s.connect_device.clone().unwrap_or_default(),
        client_rtt: Some(rtt(&s.media.client_rtt)),
        destination_rtt: Some(rtt(&s.media.destination_rtt)),
        tcp: s.tcp.map(|(framing, c)| v1::TcpInfo {
            framing: match framing {
                TcpFraming::Rfc4571 => v1::TcpFraming::Rfc4571,
                TcpFraming::Interleaved => v1::TcpFraming::Interleaved,
                TcpFraming::None => v1::TcpFraming::None,
            } as i32,
            framing_errors_forward: c.framing_errors[0],
            framing_errors_reverse: c.framing_errors[1],
            clients_rejected: c.clients_rejected,
            clients_accepted: c.clients_accepted,
            connect_attempts: c.connect_attempts,
            connect_failures: c.connect_failures,
        }),
        fork: Some(v1::MediaFork {
            copy_target: s
                .fork
                .copy_target
                .map(|t| t.to_string())
                .unwrap_or_default(),
            copies_sent: s.fork.copies_sent,
            copies_failed: s.fork.copies_failed,
            recording: s.fork.recording,
            records_queued: s.fork.records_queued,
            records_dropped: s.fork.records_dropped,
        }),
    }
}

pub fn event(e: &Event) -> v1::SessionEvent {
    use v1::session_event::Kind;
    let kind = match &e.kind {
        EventKind::Created(s) => Kind::Created(v1::Created {
            session: Some(session(s)),
        }),
        EventKind::StateChanged { from, to, reason } => Kind::StateChanged(v1::StateChanged {
            from: state(*from) as i32,
            to: state(*to) as i32,
            reason: reason.clone(),
        }),
        EventKind::StatsUpdate(s) => Kind::StatsUpdate(v1::StatsUpdate {
            session: Some(session(s)),
        }),
        EventKind::Alert {
            kind,
            direction,
            active,
            value,
            threshold,
        } => Kind::Alert(v1::Alert {
            kind: match kind {
                AlertKind::HighLoss => v1::AlertKind::HighLoss,
                AlertKind::HighJitter => v1::AlertKind::HighJitter,
                AlertKind::NoMedia => v1::AlertKind::NoMedia,
            } as i32,
            direction: match direction {
                Direction::Forward => v1::Direction::Forward,
                Direction::Reverse => v1::Direction::Reverse,
                Direction::Both => v1::Direction::Both,
            } as i32,
            active: *active,
            value: *value,
            threshold: *threshold,
        }),
        EventKind::Error(message) => Kind::Error(v1::ErrorEvent {
            message: message.clone(),
        }),
        EventKind::Closed { reason, session: s } => Kind::Closed(v1::Closed {
            reason: reason.as_str().to_owned(),
            session: Some(session(s)),
        }),
    };
    v1::SessionEvent {
        session_id: e.session_id.clone(),
        timestamp_unix_us: e.at_us,
        kind: Some(kind),
    }
}

/// The gRPC status for a refused create: the code says what kind of problem, the message which
/// field and why.
pub fn create_error(e: &CreateError) -> Status {
    let code = match e {
        CreateError::AlreadyExists(_) | CreateError::PortInUse { .. } => Code::AlreadyExists,
        CreateError::NotLocal { .. } => Code::InvalidArgument,
        CreateError::PortsExhausted { .. } | CreateError::TooManySockets => Code::ResourceExhausted,
        CreateError::Unsupported { .. } => Code::Unimplemented,
        CreateError::ShuttingDown => Code::Unavailable,
        CreateError::Socket { source, .. } => match source.raw_os_error() {
            Some(
                libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM,
            ) => Code::ResourceExhausted,
            Some(libc_errno::EACCES | libc_errno::EPERM) => Code::PermissionDenied,
            _ => Code::Internal,
        },
    };
    Status::new(code, e.to_string())
}

/// The few errno values the control plane distinguishes (kept here so this crate needs no libc).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}
