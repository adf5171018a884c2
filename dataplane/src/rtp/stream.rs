//! Per-SSRC state of one direction, in a small table.
//!
//! A call rarely carries more than an audio and a video source per direction (plus, briefly,
//! the old and new SSRC of a re-INVITE), so a fixed array searched linearly beats any map: no
//! hashing, and the table sits in a few cache lines. The first source is kept inline, the
//! others in a block allocated when a second source appears: most calls have one source per
//! direction, and a session's memory (the bar is 4 KiB with 10,000 sessions) should not carry
//! room for three more. When a further source appears, the least recently seen one is evicted.

use super::jitter::Jitter;
use super::seq::{self, SeqState};
use super::snapshot::{RemoteReport, SourceSnapshot};

/// Sources tracked per direction.
pub const MAX_SOURCES: usize = 4;

/// The fields of a received report block, kept raw until a snapshot needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoteRaw {
    pub reporter_ssrc: u32,
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    pub jitter: u32,
    pub received_us: u64,
}

/// One SSRC seen in one direction.
///
/// `repr(C)`: what every packet reads and writes (identity, jitter, then the sequence state,
/// whose own hot fields come first) in the first two cache lines, the rest after.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub(crate) struct SourceState {
    pub ssrc: u32,
    pub payload_type: u8,
    pub clock_rate: Option<u32>,
    pub last_seen_us: u64,
    pub jitter: Jitter,
    pub seq: SeqState,
    pub first_seen_us: u64,
    pub remote: Option<RemoteRaw>,
}

impl SourceState {
    fn new(ssrc: u32, seq: u16, now_us: u64) -> Self {
        Self {
            ssrc,
            payload_type: 0,
            clock_rate: None,
            seq: SeqState::new(seq),
            jitter: Jitter::default(),
            first_seen_us: now_us,
            last_seen_us: now_us,
            remote: None,
        }
    }

    /// Accounts one RTP packet of this source.
    #[inline]
    pub fn on_rtp(&mut self, pt: u8, seq: u16, ts: u32, clock: Option<u32>, now_us: u64) {
        self.payload_type = pt;
        self.clock_rate = clock;
        self.last_seen_us = now_us;
        let verdict = self.seq.update(seq);
        if verdict == seq::SeqVerdict::Restarted {
            self.jitter.reset_baseline();
        }
        if verdict.has_timing() {
            self.jitter.update(now_us, ts, clock);
        }
    }

    pub fn snapshot(&self) -> SourceSnapshot {
        let s = &self.seq;
        let lost = s.lost();
        let (interval_expected, interval_lost) = s.interval();
        SourceSnapshot {
            ssrc: self.ssrc,
            payload_type: self.payload_type,
            clock_rate: self.clock_rate,
            packets_received: s.received(),
            expected: s.expected(),
            lost,
            loss_rate: seq::loss_rate(s.expected(), lost),
            interval_expected,
            interval_lost,
            interval_loss_rate: seq::loss_rate(interval_expected, interval_lost),
            duplicates: s.duplicates(),
            reordered: s.reordered(),
            restarts: s.restarts(),
            jitter_ms: self.jitter.ms(),
            jitter_max_ms: self.jitter.max_ms(),
            jitter_mean_ms: self.jitter.mean_ms(),
            first_seen_us: self.first_seen_us,
            last_seen_us: self.last_seen_us,
            remote: self.remote.map(|r| RemoteReport {
                reporter_ssrc: r.reporter_ssrc,
                fraction_lost: f64::from(r.fraction_lost) / 256.0,
                cumulative_lost: r.cumulative_lost,
                extended_highest_seq: r.extended_highest_seq,
                jitter_units: r.jitter,
                jitter_ms: self
                    .clock_rate
                    .filter(|&hz| hz > 0)
                    .map(|hz| f64::from(r.jitter) * 1e3 / f64::from(hz)),
                received_us: r.received_us,
            }),
        }
    }
}

/// The sources of one direction.
#[derive(Debug, Clone, Default, PartialEq)]
#[repr(C)]
pub(crate) struct SourceTable {
    first: Option<SourceState>,
    /// Slots 1.. of the table, allocated when a second source appears.
    more: Option<Box<[Option<SourceState>; MAX_SOURCES - 1]>>,
    evicted: u64,
}

impl SourceTable {
    /// Every slot, the first one first; the block's slots only once it exists.
    fn slots(&self) -> impl Iterator<Item = &Option<SourceState>> {
        std::iter::once(&self.first).chain(self.more.iter().flat_map(|m| m.iter()))
    }

    fn slots_mut(&mut self) -> impl Iterator<Item = &mut Option<SourceState>> {
        std::iter::once(&mut self.first).chain(self.more.iter_mut().flat_map(|m| m.iter_mut()))
    }

    /// Slot `i` of the table (0 is the inline one), allocating the block if `i` needs it.
    fn slot_mut(&mut self, i: usize) -> &mut Option<SourceState> {
        match i {
            0 => &mut self.first,
            _ => &mut self.more.get_or_insert_with(Default::default)[i - 1],
        }
    }

    /// The state of `ssrc`, if tracked.
    #[inline]
    pub fn get_mut(&mut self, ssrc: u32) -> Option<&mut SourceState> {
        self.slots_mut().flatten().find(|s| s.ssrc == ssrc)
    }

    /// The state of `ssrc`, created (first packet `seq` at `now_us`) if new, evicting the
    /// least recently seen source when the table is full.
    #[inline]
    pub fn get_or_insert(&mut self, ssrc: u32, seq: u16, now_us: u64) -> &mut SourceState {
        // The common case, one source per direction, touches only the inline slot.
        let found = if self.first.as_ref().is_some_and(|s| s.ssrc == ssrc) {
            Some(0)
        } else {
            self.slots()
                .position(|s| s.as_ref().is_some_and(|s| s.ssrc == ssrc))
        };
        let index = match found {
            Some(i) => i,
            None => {
                // Empty slots (key `None`) sort before any source; slots of a block not yet
                // allocated are empty too.
                let allocated = 1 + self.more.as_ref().map_or(0, |m| m.len());
                let victim = self
                    .slots()
                    .enumerate()
                    .min_by_key(|(_, s)| s.as_ref().map(|s| s.last_seen_us))
                    .filter(|(_, s)| s.is_none() || allocated == MAX_SOURCES)
                    .map_or(allocated, |(i, _)| i);
                if self.slot_mut(victim).take().is_some() {
                    self.evicted += 1;
                }
                victim
            }
        };
        self.slot_mut(index)
            .get_or_insert_with(|| SourceState::new(ssrc, seq, now_us))
    }

    pub fn iter(&self) -> impl Iterator<Item = &SourceState> {
        self.slots().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut SourceState> {
        self.slots_mut().flatten()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Snapshots of all tracked sources, oldest first.
    pub fn snapshot(&self) -> Vec<SourceSnapshot> {
        let mut v: Vec<SourceSnapshot> = self.iter().map(SourceState::snapshot).collect();
        v.sort_by_key(|s| (s.first_seen_us, s.ssrc));
        v
    }
}
