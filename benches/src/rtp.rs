//! The benchmark's RTP test packets and the sink's per-flow sequence and jitter bookkeeping.
//!
//! Packets are real RTP v2 (so a relay that inspects headers treats them as media) and carry, at
//! the start of the payload, the sender's CLOCK_MONOTONIC timestamp and the flow index, so the
//! sink can measure one-way latency and detect misrouted packets without any shared state.

/// RTP fixed header length (no CSRCs, no extension).
pub const HEADER_LEN: usize = 12;
/// Header plus the 8-byte send timestamp and the 4-byte flow index.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + 12;
/// RTP timestamp increment per packet: 20 ms of 8 kHz audio (PCMU, payload type 0).
pub const TIMESTAMP_STEP: u32 = 160;
/// Set in the flow-index field of priming packets: the one packet per flow sent before the
/// measurement so that a latching relay learns the client address. Sinks skip such packets, so
/// a late or retried priming packet never counts as traffic (or as a duplicate).
pub const PRIME_FLAG: u32 = 1 << 31;
/// Bits 24-30 of the flow-index field carry the schedule phase the packet was sent in (see
/// [`crate::schedule`]); the flow index proper is below them.
pub const PHASE_SHIFT: u32 = 24;
/// The flow index proper: flows number at most 2^24 (two per session).
pub const FLOW_MASK: u32 = (1 << PHASE_SHIFT) - 1;

/// The bits that mark a packet as sent in schedule phase `phase` (OR them into the flow index).
pub fn phase_tag(phase: usize) -> u32 {
    ((phase as u32) & 0x7f) << PHASE_SHIFT
}

/// Writes the header and the measurement fields into `buf` (at least `MIN_PACKET_LEN` bytes;
/// the rest of the payload is left as is).
pub fn write_packet(
    buf: &mut [u8],
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    sent_ns: u64,
    flow: u32,
) {
    buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
    buf[1] = payload_type & 0x7f; // no marker
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..20].copy_from_slice(&sent_ns.to_be_bytes());
    buf[20..24].copy_from_slice(&flow.to_be_bytes());
}

/// The fields the sink needs from a received test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub seq: u16,
    pub sent_ns: u64,
    /// The flow index, without the phase and priming bits.
    pub flow: u32,
    /// The schedule phase it was sent in.
    pub phase: usize,
    /// A priming packet (see [`PRIME_FLAG`]).
    pub priming: bool,
}

/// Parses a test packet; `None` if it is too short or not RTP v2.
pub fn parse_packet(pkt: &[u8]) -> Option<Parsed> {
    if pkt.len() < MIN_PACKET_LEN || pkt[0] >> 6 != 2 {
        return None;
    }
    let field = u32::from_be_bytes(pkt[20..24].try_into().ok()?);
    Some(Parsed {
        seq: u16::from_be_bytes([pkt[2], pkt[3]]),
        sent_ns: u64::from_be_bytes(pkt[12..20].try_into().ok()?),
        flow: field & FLOW_MASK,
        phase: ((field & !PRIME_FLAG) >> PHASE_SHIFT) as usize,
        priming: field & PRIME_FLAG != 0,
    })
}

/// How a packet relates to what the flow already delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than anything seen so far (gaps allowed).
    InOrder,
    /// Older than the highest sequence number seen, and not seen before.
    Reordered,
    /// Already seen (within the last `WINDOW` sequence numbers).
    Duplicate,
}

/// How far back duplicates are detected; older late packets count as reordered.
const WINDOW: i64 = 1024;

/// Tracks one flow's 16-bit RTP sequence numbers, extended to 64 bits so wrap-around (every
/// 65536 packets, i.e. under a second at 100k pps on one flow) is handled, with a ring bitmap of
/// the last `WINDOW` numbers to tell duplicates from reordering.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    highest: Option<i64>,
    seen: [u64; (WINDOW / 64) as usize],
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self {
            highest: None,
            seen: [0; (WINDOW / 64) as usize],
        }
    }
}

impl SeqTracker {
    /// The extended highest sequence number seen so far (offset by 65536, see `observe`).
    pub fn highest(&self) -> Option<i64> {
        self.highest
    }

    pub fn observe(&mut self, seq: u16) -> Arrival {
        let Some(highest) = self.highest else {
            // Start well above zero so early reordered packets never go negative.
            let ext = i64::from(seq) + (1 << 16);
            self.highest = Some(ext);
            self.mark(ext);
            return Arrival::InOrder;
        };
        let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
        let ext = highest + delta;
        if delta > 0 {
            if delta >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                for skipped in highest + 1..ext {
                    self.clear(skipped);
                }
            }
            self.highest = Some(ext);
            self.mark(ext);
            Arrival::InOrder
        } else if delta == 0 {
            Arrival::Duplicate
        } else if -delta >= WINDOW {
            Arrival::Reordered
        } else if self.is_marked(ext) {
            Arrival::Duplicate
        } else {
            self.mark(ext);
            Arrival::Reordered
        }
    }

    fn slot(ext: i64) -> (usize, u64) {
        let bit = ext.rem_euclid(WINDOW) as usize;
        (bit / 64, 1u64 << (bit % 64))
    }

    fn mark(&mut self, ext: i64) {
        let (word, mask) = Self::slot(ext);
        self.seen[word] |= mask;
    }

    fn clear(&mut self, ext: i64) {
        let (word, mask) = Self::slot(ext);
        self.seen[word] &= !mask;
    }

    fn is_marked(&self, ext: i64) -> bool {
        let (word, mask) = Self::slot(ext);
        self.seen[word] & mask != 0
    }
}

/// RFC 3550 (section 6.4.1, appendix A.8) interarrival jitter of one flow: the smoothed mean
/// deviation of the difference in transit time between consecutive arrivals,
/// `J += (|D| - J) / 16`.
///
/// The sending time is the exact CLOCK_MONOTONIC stamp in the payload rather than the RTP
/// timestamp, in nanoseconds rather than clock ticks: the RTP timestamp is only the nominal
/// sending time, so using it would add the sender's own pacing error (and 125 us of
/// quantisation at 8 kHz) to what is meant to be the path's jitter.
#[derive(Debug, Default, Clone, Copy)]
pub struct Jitter {
    last_transit: Option<i64>,
    jitter_ns: f64,
    /// Transit differences folded into the estimate.
    samples: u64,
}

impl Jitter {
    pub fn observe(&mut self, sent_ns: u64, arrival_ns: u64) {
        // Both are CLOCK_MONOTONIC readings far below 2^63, so the difference fits.
        let transit = arrival_ns.wrapping_sub(sent_ns) as i64;
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
            self.samples += 1;
        }
        self.last_transit = Some(transit);
    }

    /// The current estimate in nanoseconds; `None` before the second packet.
    pub fn value_ns(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.jitter_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_round_trip() {
        let mut buf = [0u8; 172];
        write_packet(&mut buf, 8, 65535, 160, 0xdead_beef, 123_456_789, 42);
        assert_eq!(buf[1], 8);
        let p = parse_packet(&buf).expect("valid packet");
        assert_eq!(
            p,
            Parsed {
                seq: 65535,
                sent_ns: 123_456_789,
                flow: 42,
                phase: 0,
                priming: false,
            }
        );
        write_packet(&mut buf, 8, 1, 160, 1, 2, FLOW_MASK | phase_tag(15));
        let p = parse_packet(&buf).expect("valid packet");
        assert_eq!((p.flow, p.phase, p.priming), (FLOW_MASK, 15, false));
        write_packet(&mut buf, 8, 1, 160, 1, 2, 7 | PRIME_FLAG);
        let p = parse_packet(&buf).expect("valid packet");
        assert_eq!((p.flow, p.phase, p.priming), (7, 0, true));
        assert!(parse_packet(&buf[..20]).is_none());
    }

    #[test]
    fn wraparound_is_in_order() {
        let mut t = SeqTracker::default();
        for i in 0..200_000u32 {
            assert_eq!(t.observe((i % 65536) as u16), Arrival::InOrder);
        }
    }

    #[test]
    fn detects_reorder_and_duplicates() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(65534), Arrival::InOrder);
        assert_eq!(t.observe(1), Arrival::InOrder); // gap across the wrap
        assert_eq!(t.observe(65535), Arrival::Reordered);
        assert_eq!(t.observe(65535), Arrival::Duplicate);
        assert_eq!(t.observe(0), Arrival::Reordered);
        assert_eq!(t.observe(1), Arrival::Duplicate);
        assert_eq!(t.observe(2), Arrival::InOrder);
        // A slot reused after the window moved on is not mistaken for a duplicate.
        assert_eq!(t.observe(2 + 1024), Arrival::InOrder);
        assert_eq!(t.observe(2 + 1023), Arrival::Reordered);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut j = Jitter::default();
        j.observe(0, 1_000);
        assert_eq!(j.value_ns(), None);
        // Constant transit time: no jitter at all.
        for k in 1..100u64 {
            j.observe(k * 20_000_000, k * 20_000_000 + 1_000);
        }
        assert_eq!(j.value_ns(), Some(0.0));
        // Transit alternating by 1.6 ms converges to 1.6 ms.
        for k in 100..2000u64 {
            let extra = if k % 2 == 0 { 1_600_000 } else { 0 };
            j.observe(k * 20_000_000, k * 20_000_000 + 1_000 + extra);
        }
        let v = j.value_ns().expect("estimate");
        assert!((v - 1_600_000.0).abs() < 1.0, "{v}");
    }
}
