//! Tests of the RTP module as a whole: hand-worked vectors and property tests.

mod props;
mod rtcp;
mod seq;
mod session;

use rtcp_types::{CompoundBuilder, RtcpPacketWriterExt};

/// A minimal RTP packet: 12-byte header and a 4-byte payload.
pub(super) fn rtp(ssrc: u32, seq: u16, ts: u32, pt: u8) -> Vec<u8> {
    let mut p = vec![0x80, pt & 0x7f];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    p
}

/// Writes an RTCP compound packet built with the `rtcp-types` builders.
pub(super) fn rtcp(compound: CompoundBuilder<'_>) -> Vec<u8> {
    let mut buf = vec![0; 1500];
    let len = compound.write_into(&mut buf).expect("valid test packet");
    buf.truncate(len);
    buf
}
