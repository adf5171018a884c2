//! Where a session's two peers are: as signalled until they speak, then as learned (latching).
//!
//! gRPC sessions name a fixed destination and learn only the client. rtpproxy controllers
//! (Kamailio, OpenSIPS) signal both sides' addresses from SDP, which NAT often makes wrong, so
//! both are learned from the first packet (symmetric), or taken as signalled (asymmetric).

use std::net::SocketAddr;

/// How a session learns its peers' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latching {
    /// The client is learned from its first packet; only the destination may answer.
    #[default]
    Strict,
    /// Both sides are learned from their first packet; until then the signalled addresses are
    /// used, and afterwards only the learned addresses may send on the destination side.
    Symmetric,
    /// Addresses stay as signalled (learned only while none is known); anyone may send.
    Asymmetric,
}

/// One side's RTP and RTCP addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
    rtp_learned: bool,
    rtcp_learned: bool,
}

/// A usable peer address: a real IP and a non-zero port (0.0.0.0:0 means "not known yet").
pub fn known(addr: SocketAddr) -> Option<SocketAddr> {
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

/// The RTCP address that goes with RTP address `rtp` when nothing else is signalled: port + 1
/// (RFC 3550); `None` for RTP on port 65535.
pub fn rtcp_beside(rtp: SocketAddr) -> Option<SocketAddr> {
    let mut a = rtp;
    a.set_port(rtp.port().checked_add(1)?);
    Some(a)
}

impl Peer {
    /// A side whose RTP address is `addr` as signalled (RTCP then goes to its port + 1).
    pub fn signalled(addr: Option<SocketAddr>) -> Self {
        Self {
            rtp: addr.and_then(known),
            ..Self::default()
        }
    }

    /// A new signalled address (a re-INVITE): it replaces what was learned, and the next packet
    /// is learned again.
    pub fn resignal(&mut self, addr: SocketAddr) {
        *self = Self::signalled(Some(addr));
    }

    /// The side sent a packet from `from` (on its RTCP socket if `rtcp`); learns it when
    /// `policy` allows.
    pub fn heard(&mut self, rtcp: bool, from: SocketAddr, policy: Latching) {
        let (addr, learned) = if rtcp {
            (&mut self.rtcp, &mut self.rtcp_learned)
        } else {
            (&mut self.rtp, &mut self.rtp_learned)
        };
        let learn = match policy {
            Latching::Strict | Latching::Symmetric => !*learned,
            Latching::Asymmetric => addr.is_none(),
        };
        if learn {
            *addr = Some(from);
            *learned = true;
        }
    }

    /// Whether a packet from `from` may be accepted from this side under `policy`.
    pub fn accepts(&self, rtcp: bool, from: SocketAddr, policy: Latching) -> bool {
        match policy {
            Latching::Asymmetric => true,
            Latching::Symmetric if !self.learned(rtcp) => true,
            Latching::Symmetric | Latching::Strict => self.target(rtcp) == Some(from),
        }
    }

    fn learned(&self, rtcp: bool) -> bool {
        if rtcp {
            self.rtcp_learned
        } else {
            self.rtp_learned
        }
    }

    /// Where to send this side's RTP.
    pub fn rtp(&self) -> Option<SocketAddr> {
        self.rtp
    }

    /// Where to send this side's RTCP: its own RTCP address once known, else RTP port + 1.
    pub fn rtcp(&self) -> Option<SocketAddr> {
        self.rtcp.or_else(|| rtcp_beside(self.rtp?))
    }

    /// The learned RTCP address, if the side has sent RTCP.
    pub fn rtcp_learned(&self) -> Option<SocketAddr> {
        self.rtcp.filter(|_| self.rtcp_learned)
    }

    /// Where to send RTP (`rtcp` false) or RTCP (`rtcp` true).
    pub fn target(&self, rtcp: bool) -> Option<SocketAddr> {
        if rtcp { self.rtcp() } else { self.rtp() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unknown_addresses_are_none() {
        assert_eq!(known(a("0.0.0.0:4000")), None);
        assert_eq!(known(a("10.0.0.1:0")), None);
        assert_eq!(Peer::signalled(Some(a("0.0.0.0:0"))).rtp(), None);
    }

    #[test]
    fn symmetric_learns_once_then_only_accepts_the_learned_address() {
        let mut p = Peer::signalled(Some(a("10.0.0.1:4000")));
        assert_eq!(p.rtcp(), Some(a("10.0.0.1:4001")));
        assert!(
            p.accepts(false, a("192.0.2.9:7000"), Latching::Symmetric),
            "NAT: anyone until learned"
        );
        p.heard(false, a("192.0.2.9:7000"), Latching::Symmetric);
        assert_eq!(p.rtp(), Some(a("192.0.2.9:7000")));
        assert_eq!(p.rtcp(), Some(a("192.0.2.9:7001")));
        assert!(!p.accepts(false, a("192.0.2.9:7002"), Latching::Symmetric));
        p.heard(false, a("192.0.2.9:7002"), Latching::Symmetric);
        assert_eq!(p.rtp(), Some(a("192.0.2.9:7000")), "learned once");
        p.heard(true, a("192.0.2.9:7005"), Latching::Symmetric);
        assert_eq!(p.rtcp(), Some(a("192.0.2.9:7005")));
        p.resignal(a("10.0.0.2:5000"));
        assert_eq!(
            (p.rtp(), p.rtcp_learned()),
            (Some(a("10.0.0.2:5000")), None)
        );
    }

    #[test]
    fn strict_accepts_only_the_target_and_asymmetric_everyone() {
        let p = Peer::signalled(Some(a("10.0.0.1:4000")));
        assert!(p.accepts(false, a("10.0.0.1:4000"), Latching::Strict));
        assert!(!p.accepts(false, a("10.0.0.1:4002"), Latching::Strict));
        assert!(p.accepts(true, a("10.0.0.1:4001"), Latching::Strict));
        assert!(p.accepts(false, a("203.0.113.1:1"), Latching::Asymmetric));
        let mut q = Peer::signalled(Some(a("10.0.0.1:4000")));
        q.heard(false, a("203.0.113.1:1"), Latching::Asymmetric);
        assert_eq!(
            q.rtp(),
            Some(a("10.0.0.1:4000")),
            "asymmetric keeps the signalled address"
        );
        let mut r = Peer::signalled(None);
        r.heard(false, a("203.0.113.1:1"), Latching::Asymmetric);
        assert_eq!(
            r.rtp(),
            Some(a("203.0.113.1:1")),
            "but learns when nothing was signalled"
        );
    }
}
