//! Which protocol a datagram carries, from its first two bytes.
//!
//! This is only the demultiplexing step; the caller then parses the packet with the matching
//! crate (`rtp-types` or `rtcp-types`), which does the full validity checks.

/// What a datagram is, as far as the relay can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketClass {
    /// A well-formed RTP packet.
    Rtp,
    /// A well-formed (compound) RTCP packet.
    Rtcp,
    /// Anything else: STUN, DTLS, another protocol, or a malformed RTP/RTCP packet.
    NotRtp,
}

/// The RTP/RTCP version this module understands (the only one in use).
pub const VERSION: u8 = 2;

/// The second-byte range that marks RTCP when RTP and RTCP share a port (RFC 5761 section 4):
/// RTCP packet types 192-223, i.e. RTP marker + payload types 64-95, which RFC 5761 forbids
/// for RTP on a multiplexed port. It covers SR..APP (200-204, the "PT 72-76" of RFC 5761's
/// first table) as well as RTPFB, PSFB and XR (205-207), which WebRTC endpoints send muxed.
pub const RTCP_TYPES: core::ops::RangeInclusive<u8> = 192..=223;

/// Where a datagram should be sent for parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Demux {
    Rtp,
    Rtcp,
    Neither,
}

/// Demultiplexes on the version bits and the packet-type byte.
///
/// On the RTCP port (RTP port + 1) only RTCP is expected; on the RTP port an RTCP packet type
/// means RFC 5761 multiplexing.
#[inline]
pub(crate) fn demux(rtcp_port: bool, bytes: &[u8]) -> Demux {
    let [b0, b1, ..] = *bytes else {
        return Demux::Neither;
    };
    if b0 >> 6 != VERSION {
        Demux::Neither
    } else if RTCP_TYPES.contains(&b1) {
        Demux::Rtcp
    } else if rtcp_port {
        Demux::Neither
    } else {
        Demux::Rtp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_by_version_and_type() {
        assert_eq!(demux(false, &[]), Demux::Neither);
        assert_eq!(demux(false, &[0x80]), Demux::Neither);
        // Version 2, PT 0 / PT 96 with marker.
        assert_eq!(demux(false, &[0x80, 0x00]), Demux::Rtp);
        assert_eq!(demux(false, &[0x80, 0xe0]), Demux::Rtp);
        // SR and RR, muxed or on the RTCP port.
        assert_eq!(demux(false, &[0x80, 200]), Demux::Rtcp);
        assert_eq!(demux(true, &[0x81, 201]), Demux::Rtcp);
        // PSFB (206) is RTCP too.
        assert_eq!(demux(false, &[0x81, 206]), Demux::Rtcp);
        // An RTP packet type on the RTCP port is not expected there.
        assert_eq!(demux(true, &[0x80, 0x00]), Demux::Neither);
        // STUN binding request (first two bits 00), DTLS handshake (first byte 22).
        assert_eq!(demux(false, &[0x00, 0x01]), Demux::Neither);
        assert_eq!(demux(false, &[22, 0xfe]), Demux::Neither);
        // Version 1 and 3.
        assert_eq!(demux(false, &[0x40, 0x00]), Demux::Neither);
        assert_eq!(demux(false, &[0xc0, 200]), Demux::Neither);
    }
}
