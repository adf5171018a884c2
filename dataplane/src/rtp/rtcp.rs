//! RTCP as a middlebox sees it: packet counts, report blocks, and round-trip times.
//!
//! The relay terminates no RTCP, but both directions pass through it, which is enough to time
//! each leg (RFC 3550 section 6.4.1, seen from the middle): when an SR passes towards one side
//! at relay time t1 and that side's report block echoing it (LSR = the SR's middle NTP bits)
//! passes back at t2 with delay DLSR, the leg's round trip is `(t2 - t1) - DLSR`.

use rtcp_types::utils::parser;
use rtcp_types::{
    App, Bye, Compound, ReceiverReport, ReportBlock, RtcpPacketParser, SenderReport, Unknown,
};

use super::snapshot::{RtcpCounters, RttSnapshot};
use super::stream::{RemoteRaw, SourceTable};

const SR: u8 = 200;
const RR: u8 = 201;
const SDES: u8 = 202;
const BYE: u8 = 203;
const APP: u8 = 204;

/// SRs remembered per direction; a few, so a report crossing a newer SR still matches.
const SR_MEMORY: usize = 4;

/// DLSR has 1/65536 s resolution and endpoints round it their own way: a result negative by
/// less than this is a round trip too short to measure and counts as 0; anything more negative
/// means a bogus DLSR and is dropped.
const RTT_SLACK_US: u64 = 1_000;

/// One sub-packet of a compound packet, parsed only as far as the relay needs.
enum Item<'a> {
    Sr(SenderReport<'a>),
    Rr(ReceiverReport<'a>),
    Sdes,
    Bye,
    App,
    Other,
}

/// Parses one sub-packet with the crate's parser for its type.
///
/// SDES goes through `Unknown` (header and length checks only) because `Sdes::parse` collects
/// its chunks into a `Vec`, an allocation per packet the relay has no use for; for the same
/// reason [`Items`] walks the compound itself instead of using `Compound`'s iterator, which
/// calls that parser.
fn parse_item(pkt: &[u8]) -> Option<Item<'_>> {
    let item = match pkt.get(1).copied()? {
        SR => Item::Sr(SenderReport::parse(pkt).ok()?),
        RR => Item::Rr(ReceiverReport::parse(pkt).ok()?),
        SDES => Unknown::parse(pkt).map(|_| Item::Sdes).ok()?,
        BYE => Bye::parse(pkt).map(|_| Item::Bye).ok()?,
        APP => App::parse(pkt).map(|_| Item::App).ok()?,
        _ => Unknown::parse(pkt).map(|_| Item::Other).ok()?,
    };
    Some(item)
}

/// The sub-packets of a compound packet; `None` items are malformed ones.
struct Items<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for Items<'a> {
    type Item = Option<Item<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let len = self.data.get(..4).map_or(usize::MAX, parser::parse_length);
        match (self.data.get(..len), self.data.get(len..)) {
            (Some(pkt), Some(rest)) => {
                self.data = rest;
                Some(parse_item(pkt))
            }
            _ => {
                self.data = &[];
                Some(None)
            }
        }
    }
}

/// Whether `bytes` is a well-formed compound packet: the crate checks the framing (lengths,
/// padding only on the last packet), then each sub-packet gets its own parser, which also
/// checks its version (`Compound::parse` in rtcp-types 0.3 checks only the first packet's).
fn is_valid(bytes: &[u8]) -> bool {
    Compound::parse(bytes).is_ok() && (Items { data: bytes }).all(|item| item.is_some())
}

/// The middle 32 bits of a 64-bit NTP timestamp: what a report block echoes as LSR.
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Round trip in microseconds from an SR passing at `t1_us`, its echo passing at `t2_us`, and
/// the echo's DLSR (1/65536 s units).
pub fn rtt_us(t1_us: u64, t2_us: u64, dlsr: u32) -> Option<u64> {
    let elapsed = t2_us.checked_sub(t1_us)?;
    let dlsr_us = (u64::from(dlsr) * 1_000_000 + (1 << 15)) >> 16;
    match elapsed.checked_sub(dlsr_us) {
        Some(rtt) => Some(rtt),
        None if dlsr_us - elapsed <= RTT_SLACK_US => Some(0),
        None => None,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SentSr {
    ssrc: u32,
    /// 0 marks an empty entry, as LSR 0 means "no SR received".
    lsr: u32,
    at_us: u64,
}

/// RTCP state of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RtcpSide {
    pub counters: RtcpCounters,
    srs: [SentSr; SR_MEMORY],
    next_sr: usize,
}

impl RtcpSide {
    fn remember_sr(&mut self, ssrc: u32, lsr: u32, at_us: u64) {
        if let Some(slot) = self.srs.get_mut(self.next_sr % SR_MEMORY) {
            *slot = SentSr { ssrc, lsr, at_us };
        }
        self.next_sr = (self.next_sr + 1) % SR_MEMORY;
    }

    fn sr_time(&self, ssrc: u32, lsr: u32) -> Option<u64> {
        if lsr == 0 {
            return None;
        }
        self.srs
            .iter()
            .find(|s| s.ssrc == ssrc && s.lsr == lsr)
            .map(|s| s.at_us)
    }
}

/// Round-trip samples of one leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RttStats {
    last_us: u64,
    min_us: u64,
    max_us: u64,
    sum_us: u64,
    samples: u64,
}

impl RttStats {
    fn add(&mut self, rtt_us: u64) {
        self.min_us = if self.samples == 0 {
            rtt_us
        } else {
            self.min_us.min(rtt_us)
        };
        self.max_us = self.max_us.max(rtt_us);
        self.last_us = rtt_us;
        self.sum_us = self.sum_us.saturating_add(rtt_us);
        self.samples += 1;
    }

    pub fn snapshot(&self) -> RttSnapshot {
        let ms = |us: u64| (self.samples > 0).then(|| us as f64 / 1e3);
        RttSnapshot {
            last_ms: ms(self.last_us),
            avg_ms: ms(self.sum_us).map(|sum| sum / self.samples as f64),
            min_ms: ms(self.min_us),
            max_ms: ms(self.max_us),
            samples: self.samples,
        }
    }
}

/// What RTCP in one direction may touch besides its own side: the opposite direction's SRs
/// (which its report blocks echo) and sources (which its report blocks describe), and the
/// round trip of the leg its reports come from.
pub(crate) struct Opposite<'a> {
    pub side: &'a RtcpSide,
    pub sources: &'a mut SourceTable,
    pub rtt: &'a mut RttStats,
}

/// Accounts one RTCP datagram; `false` (and only the malformed counter changed) if it is not
/// well-formed.
pub(crate) fn on_rtcp(bytes: &[u8], now_us: u64, this: &mut RtcpSide, opp: Opposite<'_>) -> bool {
    if !is_valid(bytes) {
        this.counters.malformed += 1;
        return false;
    }
    this.counters.compounds += 1;
    for item in (Items { data: bytes }).flatten() {
        match item {
            Item::Sr(sr) => {
                this.counters.sr += 1;
                this.remember_sr(sr.ssrc(), ntp_middle(sr.ntp_timestamp()), now_us);
                for block in sr.report_blocks() {
                    on_block(&block, sr.ssrc(), now_us, opp.side, opp.sources, opp.rtt);
                }
            }
            Item::Rr(rr) => {
                this.counters.rr += 1;
                for block in rr.report_blocks() {
                    on_block(&block, rr.ssrc(), now_us, opp.side, opp.sources, opp.rtt);
                }
            }
            Item::Sdes => this.counters.sdes += 1,
            Item::Bye => this.counters.bye += 1,
            Item::App => this.counters.app += 1,
            Item::Other => this.counters.other += 1,
        }
    }
    true
}

fn on_block(
    block: &ReportBlock<'_>,
    reporter_ssrc: u32,
    now_us: u64,
    srs: &RtcpSide,
    sources: &mut SourceTable,
    rtt: &mut RttStats,
) {
    let lsr = block.last_sender_report_timestamp();
    if let Some(t1) = srs.sr_time(block.ssrc(), lsr) {
        let dlsr = block.delay_since_last_sender_report_timestamp();
        if let Some(sample) = rtt_us(t1, now_us, dlsr) {
            rtt.add(sample);
        }
    }
    if let Some(source) = sources.get_mut(block.ssrc()) {
        source.remote = Some(RemoteRaw {
            reporter_ssrc,
            fraction_lost: block.fraction_lost(),
            // A signed 24-bit field: shift it to the top and back to sign-extend.
            cumulative_lost: ((block.cumulative_lost() << 8) as i32) >> 8,
            extended_highest_seq: block.extended_sequence_number(),
            jitter: block.interarrival_jitter(),
            received_us: now_us,
        });
    }
}
