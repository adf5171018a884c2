//! The forwarding decision of one UDP session (sans-IO).
//!
//! Given which socket a packet arrived on and from where, decide which socket sends it and to
//! which address, learning the client's address on the way (symmetric latching). The shard's I/O
//! loop calls this once per packet; it allocates nothing and makes no system call.

use std::net::SocketAddr;

use super::Leg;
use super::peer::{Latching, Peer};
use crate::rtp::{self, PacketClass, SessionMedia};
use crate::stats::{DirectionStats, DropReason, PacketCounters, Residence};

/// What to do with a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the packet, unchanged, from the socket `via` to `to`.
    Send { via: Leg, to: SocketAddr },
    /// Drop it; already counted.
    Drop(DropReason),
}

/// Per-session relay state: the endpoints, the learned client addresses and the counters.
///
/// `repr(C)` keeps the fields in this order: the ones every packet touches come first, so a
/// packet touches few cache lines (see `dataplane/benches/packet_path.rs`).
#[derive(Debug, Clone)]
#[repr(C)]
pub struct UdpRelay {
    latching: Latching,
    drop_non_rtp: bool,
    client: Peer,
    destination: Peer,
    pub forward: DirectionStats,
    pub forward_residence: Residence,
    pub reverse: DirectionStats,
    pub reverse_residence: Residence,
    /// RTP/RTCP statistics of the media relayed (or held for want of a client).
    pub media: SessionMedia,
    /// The most recent send failure, and how many there were.
    last_error: Option<SendFailure>,
    send_errors: u64,
    /// Failures that say the destination is unreachable (ICMP errors, failed sends to it).
    destination_errors: u64,
}

/// A send the kernel refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFailure {
    pub via: Leg,
    pub to: SocketAddr,
    pub errno: i32,
    pub at_us: u64,
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let err = std::io::Error::from_raw_os_error(self.errno);
        write!(
            f,
            "sending to {} from the {:?} socket failed: {err}",
            self.to, self.via
        )
    }
}

impl UdpRelay {
    /// A session relaying to `destination` (RTCP to its port + 1; validated by the caller to be
    /// at most 65534) with the gRPC policy: fixed destination, client learned.
    pub fn new(destination: SocketAddr) -> Self {
        Self::with_peers(Latching::Strict, None, Some(destination))
    }

    /// A session with signalled peer addresses (either may be unknown) and a latching policy.
    pub fn with_peers(
        latching: Latching,
        client: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    ) -> Self {
        Self {
            latching,
            client: Peer::signalled(client),
            destination: Peer::signalled(destination),
            forward: DirectionStats::default(),
            reverse: DirectionStats::default(),
            forward_residence: Residence::default(),
            reverse_residence: Residence::default(),
            media: SessionMedia::new(),
            drop_non_rtp: false,
            last_error: None,
            send_errors: 0,
            destination_errors: 0,
        }
    }

    /// Sets the clock rates of dynamic payload types and the non-RTP policy.
    pub fn configure(&mut self, clock_rates: &[(u8, u32)], drop_non_rtp: bool) {
        for &(pt, hz) in clock_rates {
            self.media.set_clock_rate(pt, hz);
        }
        self.drop_non_rtp = drop_non_rtp;
    }

    /// The client's RTP address: learned, or as signalled.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client.rtp()
    }

    /// The client's RTCP address, once it has sent RTCP.
    pub fn client_rtcp(&self) -> Option<SocketAddr> {
        self.client.rtcp_learned()
    }

    /// The destination's RTP address: as signalled or learned; `None` while unknown.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.destination.rtp()
    }

    /// New signalled addresses (an rtpproxy U/L for a re-INVITE); each is learned again.
    pub fn resignal(&mut self, client: Option<SocketAddr>, destination: Option<SocketAddr>) {
        if let Some(c) = client.and_then(super::peer::known) {
            self.client.resignal(c);
        }
        if let Some(d) = destination.and_then(super::peer::known) {
            self.destination.resignal(d);
        }
    }

    /// Decides the fate of a packet of `len` bytes that arrived on `leg` from `from` at `now_us`.
    ///
    /// Latching: the first packet on a listen socket fixes the client's address for that stream;
    /// later packets from other addresses are still forwarded (a phone behind a NAT that
    /// rebinds keeps sending) but do not move the latch. On the outbound sockets only the
    /// destination is accepted. Reverse RTCP goes to the client's RTCP address, or to its RTP
    /// port + 1 until the client has sent RTCP itself.
    ///
    /// Media statistics see every packet that is genuine media of this session (sent on, or
    /// held for want of a client); a stranger's packets would corrupt them and are not looked at.
    /// A packet that is not valid RTP/RTCP is relayed unless the session drops non-RTP.
    pub fn on_receive(
        &mut self,
        leg: Leg,
        from: SocketAddr,
        payload: &[u8],
        truncated: bool,
        now_us: u64,
    ) -> Verdict {
        let len = payload.len();
        let mut verdict = if truncated {
            Verdict::Drop(DropReason::Truncated)
        } else {
            self.route(leg, from)
        };
        if matches!(
            verdict,
            Verdict::Send { .. } | Verdict::Drop(DropReason::NoClient | DropReason::NoDestination)
        ) {
            let dir = match leg {
                Leg::ListenRtp | Leg::ListenRtcp => rtp::Direction::Forward,
                Leg::OutRtp | Leg::OutRtcp => rtp::Direction::Reverse,
            };
            let class = self.media.on_packet(dir, leg.is_rtcp(), payload, now_us);
            if class == PacketClass::NotRtp && self.drop_non_rtp {
                verdict = Verdict::Drop(DropReason::NotRtp);
            }
        }
        let stats = self.direction_mut(leg);
        if stats.first_activity_us == 0 {
            stats.first_activity_us = now_us;
        }
        stats.last_activity_us = now_us;
        let counters = stats.kind_mut(leg.is_rtcp());
        counters.received(len);
        if let Verdict::Drop(reason) = verdict {
            counters.dropped(reason);
        }
        verdict
    }

    /// Turns a packet [`UdpRelay::on_receive`] wanted sent into a drop because it waited too
    /// long in the kernel before the shard got to it; it was received, counted and looked at.
    pub fn drop_late(&mut self, leg: Leg) {
        self.direction_mut(leg)
            .kind_mut(leg.is_rtcp())
            .dropped(DropReason::Late);
    }

    /// The statistics of the direction a packet received on `leg` travels.
    fn direction_mut(&mut self, leg: Leg) -> &mut DirectionStats {
        match leg {
            Leg::ListenRtp | Leg::ListenRtcp => &mut self.forward,
            Leg::OutRtp | Leg::OutRtcp => &mut self.reverse,
        }
    }

    fn route(&mut self, leg: Leg, from: SocketAddr) -> Verdict {
        let rtcp = leg.is_rtcp();
        let policy = self.latching;
        match leg {
            Leg::ListenRtp | Leg::ListenRtcp => {
                // Anything sent to the listen port is forwarded (a NATed phone may rebind); the
                // client's address is learned per the policy.
                self.client.heard(rtcp, from, policy);
                let via = if rtcp { Leg::OutRtcp } else { Leg::OutRtp };
                match self.destination.target(rtcp) {
                    Some(to) => Verdict::Send { via, to },
                    None => Verdict::Drop(DropReason::NoDestination),
                }
            }
            Leg::OutRtp | Leg::OutRtcp => {
                if !self.destination.accepts(rtcp, from, policy) {
                    return Verdict::Drop(DropReason::UnexpectedSource);
                }
                if policy != Latching::Strict {
                    self.destination.heard(rtcp, from, policy);
                }
                let via = if rtcp {
                    Leg::ListenRtcp
                } else {
                    Leg::ListenRtp
                };
                match self.client.target(rtcp) {
                    Some(to) => Verdict::Send { via, to },
                    None => Verdict::Drop(DropReason::NoClient),
                }
            }
        }
    }

    /// Records a send of `len` bytes from `via` (as returned by `on_receive`) handed to the
    /// kernel, and the packet's residence time in the relay when known. A send that then fails
    /// is taken back by [`UdpRelay::on_send_failed`]; its residence stays recorded.
    pub fn on_sent(&mut self, via: Leg, len: usize, residence_us: Option<u64>) {
        self.sender_counters(via).sent(len);
        if let Some(us) = residence_us {
            match via {
                Leg::OutRtp | Leg::OutRtcp => self.forward_residence.record(us),
                Leg::ListenRtp | Leg::ListenRtcp => self.reverse_residence.record(us),
            }
        }
    }

    /// Records that a send of `len` bytes from `via`, counted by [`UdpRelay::on_sent`], was
    /// refused by the kernel with `errno` at `now_us`: it counts as dropped instead.
    pub fn on_send_failed(&mut self, via: Leg, len: usize, errno: i32, now_us: u64) {
        let counters = self.sender_counters(via);
        counters.packets_sent = counters.packets_sent.saturating_sub(1);
        counters.bytes_sent = counters.bytes_sent.saturating_sub(len as u64);
        counters.dropped(DropReason::SendError);
        let to = match via {
            Leg::OutRtp | Leg::OutRtcp => self.destination.target(via.is_rtcp()),
            Leg::ListenRtp | Leg::ListenRtcp => self.client.target(via.is_rtcp()),
        };
        if let Some(to) = to {
            self.last_error = Some(SendFailure {
                via,
                to,
                errno,
                at_us: now_us,
            });
        }
        self.send_errors += 1;
        if matches!(via, Leg::OutRtp | Leg::OutRtcp) {
            self.destination_errors += 1;
        }
    }

    /// An ICMP error reported on the socket of `leg` at `now_us`: its peer is unreachable.
    pub fn on_socket_error(&mut self, leg: Leg, errno: i32, now_us: u64) {
        let to = match leg {
            Leg::OutRtp | Leg::OutRtcp => self.destination.target(leg.is_rtcp()),
            Leg::ListenRtp | Leg::ListenRtcp => self.client.target(leg.is_rtcp()),
        };
        if let Some(to) = to {
            self.last_error = Some(SendFailure {
                via: leg,
                to,
                errno,
                at_us: now_us,
            });
        }
        if matches!(leg, Leg::OutRtp | Leg::OutRtcp) {
            self.destination_errors += 1;
        }
    }

    /// The most recent send failure.
    pub fn last_error(&self) -> Option<SendFailure> {
        self.last_error
    }

    /// What the session's supervisor needs: RTP packets expected and received (RFC 3550) and
    /// the current jitter, per direction.
    pub fn observe(&self) -> super::monitor::Observed {
        let (fe, fr, fj) = self.media.totals(rtp::Direction::Forward);
        let (re, rr, rj) = self.media.totals(rtp::Direction::Reverse);
        super::monitor::Observed {
            expected: [fe, re],
            received: [fr, rr],
            jitter_ms: [fj, rj],
            send_errors: self.send_errors,
            destination_errors: self.destination_errors,
            last_error: self.last_error.map(|e| (e.errno, e.at_us)),
            destination_heard_us: self.reverse.last_activity_us,
            ..Default::default()
        }
    }

    fn sender_counters(&mut self, via: Leg) -> &mut PacketCounters {
        match via {
            Leg::OutRtp => &mut self.forward.rtp,
            Leg::OutRtcp => &mut self.forward.rtcp,
            Leg::ListenRtp => &mut self.reverse.rtp,
            Leg::ListenRtcp => &mut self.reverse.rtcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const DEST: &str = "10.0.0.9:4000";

    #[test]
    fn forward_goes_to_destination_and_latches_client() {
        let mut r = UdpRelay::new(addr(DEST));
        let v = r.on_receive(
            Leg::ListenRtp,
            addr("192.0.2.1:5000"),
            &[0u8; 172],
            false,
            7,
        );
        assert_eq!(
            v,
            Verdict::Send {
                via: Leg::OutRtp,
                to: addr(DEST)
            }
        );
        assert_eq!(r.client(), Some(addr("192.0.2.1:5000")));
        // A second source does not move the latch but is still forwarded.
        let v = r.on_receive(Leg::ListenRtp, addr("192.0.2.2:6000"), &[0u8; 10], false, 8);
        assert_eq!(
            v,
            Verdict::Send {
                via: Leg::OutRtp,
                to: addr(DEST)
            }
        );
        assert_eq!(r.client(), Some(addr("192.0.2.1:5000")));
        assert_eq!(r.forward.rtp.packets_received, 2);
        assert_eq!(r.forward.rtp.bytes_received, 182);
        assert_eq!(r.forward.last_activity_us, 8);
    }

    #[test]
    fn a_late_packet_counts_as_received_and_dropped_late() {
        let mut r = UdpRelay::new(addr(DEST));
        let v = r.on_receive(
            Leg::ListenRtp,
            addr("192.0.2.1:5000"),
            &[0u8; 172],
            false,
            1,
        );
        assert!(matches!(v, Verdict::Send { .. }));
        r.drop_late(Leg::ListenRtp);
        let c = r.forward.rtp;
        assert_eq!(
            (c.packets_received, c.dropped.late, c.dropped.total()),
            (1, 1, 1)
        );
        assert_eq!(
            r.forward.rtcp.dropped.total(),
            0,
            "only the packet's own stream"
        );
        assert_eq!(r.reverse.rtp.dropped.total(), 0);
    }

    #[test]
    fn reverse_before_latch_is_dropped_then_flows() {
        let mut r = UdpRelay::new(addr(DEST));
        let v = r.on_receive(Leg::OutRtp, addr(DEST), &[0u8; 100], false, 1);
        assert_eq!(v, Verdict::Drop(DropReason::NoClient));
        r.on_receive(
            Leg::ListenRtp,
            addr("192.0.2.1:5000"),
            &[0u8; 100],
            false,
            2,
        );
        let v = r.on_receive(Leg::OutRtp, addr(DEST), &[0u8; 100], false, 3);
        assert_eq!(
            v,
            Verdict::Send {
                via: Leg::ListenRtp,
                to: addr("192.0.2.1:5000")
            }
        );
        assert_eq!(r.reverse.rtp.dropped.no_client, 1);
        assert_eq!(r.reverse.rtp.packets_received, 2);
    }

    #[test]
    fn reverse_from_stranger_is_dropped() {
        let mut r = UdpRelay::new(addr(DEST));
        r.on_receive(Leg::ListenRtp, addr("192.0.2.1:5000"), &[0u8; 1], false, 1);
        let v = r.on_receive(Leg::OutRtp, addr("10.0.0.9:4002"), &[0u8; 1], false, 2);
        assert_eq!(v, Verdict::Drop(DropReason::UnexpectedSource));
        let v = r.on_receive(Leg::OutRtcp, addr(DEST), &[0u8; 1], false, 2);
        assert_eq!(
            v,
            Verdict::Drop(DropReason::UnexpectedSource),
            "RTCP must come from port+1"
        );
        assert_eq!(r.reverse.rtp.dropped.unexpected_source, 1);
        assert_eq!(r.reverse.rtcp.dropped.unexpected_source, 1);
    }

    #[test]
    fn rtcp_pairs_with_port_plus_one() {
        let mut r = UdpRelay::new(addr(DEST));
        let v = r.on_receive(
            Leg::ListenRtcp,
            addr("192.0.2.1:5001"),
            &[0u8; 60],
            false,
            1,
        );
        assert_eq!(
            v,
            Verdict::Send {
                via: Leg::OutRtcp,
                to: addr("10.0.0.9:4001")
            }
        );
        let v = r.on_receive(Leg::OutRtcp, addr("10.0.0.9:4001"), &[0u8; 60], false, 2);
        assert_eq!(
            v,
            Verdict::Send {
                via: Leg::ListenRtcp,
                to: addr("192.0.2.1:5001")
            }
        );
    }

    #[test]
    fn reverse_rtcp_falls_back_to_client_rtp_port_plus_one() {
        let mut r = UdpRelay::new(addr(DEST));
        r.on_receive(Leg::ListenRtp, addr("192.0.2.1:7000"), &[0u8; 1], false, 1);
        let v = r.on_receive(Leg::OutRtcp, addr("10.0.0.9:4001"), &[0u8; 1], false, 2);
        assert_eq!(
            v,
            Verdict::Send {
                via: Leg::ListenRtcp,
                to: addr("192.0.2.1:7001")
            }
        );
        // A client on port 65535 has no port + 1.
        let mut r = UdpRelay::new(addr(DEST));
        r.on_receive(Leg::ListenRtp, addr("192.0.2.1:65535"), &[0u8; 1], false, 1);
        let v = r.on_receive(Leg::OutRtcp, addr("10.0.0.9:4001"), &[0u8; 1], false, 2);
        assert_eq!(v, Verdict::Drop(DropReason::NoClient));
    }

    #[test]
    fn truncated_packets_are_dropped_and_counted() {
        let mut r = UdpRelay::new(addr(DEST));
        let v = r.on_receive(
            Leg::ListenRtp,
            addr("192.0.2.1:5000"),
            &[0u8; 2048],
            true,
            1,
        );
        assert_eq!(v, Verdict::Drop(DropReason::Truncated));
        assert_eq!(r.forward.rtp.dropped.truncated, 1);
        assert_eq!(r.client(), None, "a truncated packet does not latch");
    }

    #[test]
    fn sends_are_counted_on_the_right_direction() {
        let mut r = UdpRelay::new(addr(DEST));
        r.on_sent(Leg::OutRtp, 172, Some(40));
        r.on_sent(Leg::OutRtcp, 80, Some(60));
        r.on_sent(Leg::ListenRtp, 100, Some(30));
        r.on_send_failed(Leg::ListenRtp, 100, libc::ECONNREFUSED, 9);
        assert_eq!(r.forward.rtp.bytes_sent, 172);
        assert_eq!(r.forward.rtcp.packets_sent, 1);
        assert_eq!(
            (r.reverse.rtp.packets_sent, r.reverse.rtp.bytes_sent),
            (0, 0),
            "a failed send is taken back"
        );
        assert_eq!(r.reverse.rtp.dropped.send_error, 1);
        assert_eq!(r.forward_residence.summary().count, 2);
        assert_eq!(r.reverse_residence.summary().count, 1);
        // No client yet: the failure is counted but names no target.
        assert_eq!(r.last_error(), None);
        r.on_receive(Leg::ListenRtp, addr("192.0.2.1:5000"), &[0u8; 4], false, 10);
        r.on_sent(Leg::ListenRtp, 4, None);
        r.on_send_failed(Leg::ListenRtp, 4, libc::ECONNREFUSED, 11);
        let e = r.last_error().unwrap();
        assert_eq!((e.to, e.at_us), (addr("192.0.2.1:5000"), 11));
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert_eq!(r.observe().send_errors, 2);
    }

    #[test]
    fn non_rtp_is_relayed_by_default_and_dropped_on_request() {
        let client = addr("192.0.2.1:5000");
        let mut r = UdpRelay::new(addr(DEST));
        let v = r.on_receive(Leg::ListenRtp, client, b"hello", false, 1);
        assert!(matches!(v, Verdict::Send { .. }));
        r.configure(&[(111, 48000)], true);
        let v = r.on_receive(Leg::ListenRtp, client, b"hello", false, 2);
        assert_eq!(v, Verdict::Drop(DropReason::NotRtp));
        // Valid RTP (version 2, PT 111, seq 1, SSRC 1) still flows and is tracked.
        let rtp = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa];
        let v = r.on_receive(Leg::ListenRtp, client, &rtp, false, 3);
        assert!(matches!(v, Verdict::Send { .. }));
        assert_eq!(r.forward.rtp.dropped.not_rtp, 1);
        assert_eq!(r.media.clock_rate(111), Some(48000));
        let snapshot = r.media.snapshot();
        assert_eq!(snapshot.forward.rtp_packets, 1);
        assert_eq!(snapshot.forward.non_rtp, 2);
        assert_eq!(snapshot.forward.sources[0].ssrc, 1);
    }

    #[test]
    fn strangers_do_not_reach_media_statistics() {
        let mut r = UdpRelay::new(addr(DEST));
        let rtp = [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        r.on_receive(Leg::OutRtp, addr("10.0.0.9:4002"), &rtp, false, 1);
        assert_eq!(r.media.snapshot().reverse.rtp_packets, 0);
        r.on_receive(Leg::OutRtp, addr(DEST), &rtp, false, 2);
        let held = r.media.snapshot().reverse.rtp_packets;
        assert_eq!(held, 1, "held for want of a client, still media");
    }

    #[test]
    fn observe_reports_rfc3550_loss_and_jitter() {
        let mut r = UdpRelay::new(addr(DEST));
        let client = addr("192.0.2.1:5000");
        for seq in (1..=200u16).filter(|s| s % 20 != 0) {
            let mut p = vec![0x80u8, 0];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            p.extend_from_slice(&1u32.to_be_bytes());
            p.resize(172, 0);
            r.on_receive(Leg::ListenRtp, client, &p, false, u64::from(seq) * 20_000);
        }
        let o = r.observe();
        // Probation consumes the first packet; 2..=199 are expected, 9 of them never sent.
        assert_eq!((o.expected[0], o.received[0]), (198, 189));
        assert_eq!((o.expected[1], o.received[1]), (0, 0));
        let jitter = o.jitter_ms[0].expect("PCMU has a known clock");
        assert!(
            jitter.abs() < 1e-9,
            "perfect pacing has no jitter, gaps or not: {o:?}"
        );
    }

    proptest! {
        /// Every received packet is either sent on (pending its completion) or counted as dropped,
        /// and a send always leaves from the opposite side to where it arrived.
        #[test]
        fn received_equals_sent_plus_dropped(
            packets in proptest::collection::vec((0u8..4, 0u8..3, 1usize..1500, any::<bool>()), 0..200)
        ) {
            let mut r = UdpRelay::new(addr(DEST));
            let sources = [addr("192.0.2.1:5000"), addr(DEST), addr("10.0.0.9:4001")];
            for (leg, src, len, ok) in packets {
                let leg = Leg::from_index(leg).unwrap();
                match r.on_receive(leg, sources[usize::from(src)], &vec![0u8; len], false, 1) {
                    Verdict::Send { via, .. } => {
                        let listen = matches!(leg, Leg::ListenRtp | Leg::ListenRtcp);
                        prop_assert_eq!(listen, matches!(via, Leg::OutRtp | Leg::OutRtcp));
                        prop_assert_eq!(leg.is_rtcp(), via.is_rtcp());
                        r.on_sent(via, len, None);
                        if !ok {
                            r.on_send_failed(via, len, libc::ENOBUFS, 1);
                        }
                    }
                    Verdict::Drop(_) => {}
                }
            }
            for c in [r.forward.rtp, r.forward.rtcp, r.reverse.rtp, r.reverse.rtcp] {
                prop_assert_eq!(c.packets_received, c.packets_sent + c.dropped.total());
            }
        }
    }
}
