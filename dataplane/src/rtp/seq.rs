//! Per-source sequence-number bookkeeping: RFC 3550 appendix A.1, plus duplicate and late
//! packet detection.
//!
//! The appendix algorithm is followed step by step so the relay's loss figures agree with what
//! the endpoints put in their own receiver reports. Two additions sit on top and change none of
//! its counters: a 128-bit window of recently received sequence numbers, which tells a
//! duplicate from a late (reordered) packet, and totals carried across a restart, so a sender
//! that jumps its sequence numbers does not make the session's cumulative loss go backwards.

/// Sequential packets needed before a new source counts as valid.
pub const MIN_SEQUENTIAL: u8 = 2;
/// Largest forward jump still taken as loss rather than a restart.
pub const MAX_DROPOUT: u16 = 3000;
/// Largest backward step still taken as a late or duplicate packet.
pub const MAX_MISORDER: u16 = 100;
/// Sequence numbers are 16 bits wide.
pub const RTP_SEQ_MOD: u32 = 1 << 16;

/// The width of the duplicate window; it must cover `MAX_MISORDER` so every packet the
/// algorithm accepts as late can be checked against it.
const WINDOW_BITS: u32 = u128::BITS;
const _: () = assert!(MAX_MISORDER as u32 <= WINDOW_BITS);

/// What [`SeqState::update`] made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The source is still on probation; the packet is not counted.
    Probation,
    /// A new highest sequence number (possibly after a gap, possibly after a wrap).
    InOrder,
    /// Older than the highest seen and not seen before.
    Reordered,
    /// Seen before.
    Duplicate,
    /// A large jump, held back until the next packet confirms it; not counted.
    Jump,
    /// The jump was confirmed: counting restarted from this packet.
    Restarted,
}

impl SeqVerdict {
    /// Whether the packet's arrival time says anything about network jitter: packets not
    /// counted and duplicates (whose original already gave its timing) do not.
    pub fn has_timing(self) -> bool {
        !matches!(self, Self::Jump | Self::Duplicate)
    }
}

/// RFC 3550 A.1 `source` state for one SSRC.
///
/// `repr(C)`: the fields every packet updates first (one cache line), the interval and event
/// counters after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct SeqState {
    /// Bit `i` set: extended sequence number `max - i` was received since the last (re)start.
    window: u128,
    received: u64,
    /// Wraps seen, times `RTP_SEQ_MOD`.
    cycles: u64,
    max_seq: u16,
    probation: u8,
    bad_seq: u32,
    base_seq: u64,
    carried_expected: u64,
    carried_received: u64,
    expected_prior: u64,
    received_prior: u64,
    duplicates: u64,
    reordered: u64,
    restarts: u64,
}

impl SeqState {
    /// State for a source first heard with `seq`; call [`update`](Self::update) with that same
    /// packet next, as the appendix does.
    pub fn new(seq: u16) -> Self {
        let mut s = Self {
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
            window: 0,
            carried_expected: 0,
            carried_received: 0,
            expected_prior: 0,
            received_prior: 0,
            duplicates: 0,
            reordered: 0,
            restarts: 0,
        };
        s.init(seq);
        s.max_seq = seq.wrapping_sub(1);
        s
    }

    /// `init_seq()`; the interval priors are not reset because they are kept against the
    /// carried totals, which survive a restart.
    fn init(&mut self, seq: u16) {
        self.base_seq = u64::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.window = 1;
    }

    /// `update_seq()` for one packet.
    pub fn update(&mut self, seq: u16) -> SeqVerdict {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            // The appendix compares against `max_seq + 1` in int arithmetic, which never
            // matches at 65535 -> 0; the wrapping add is what it means.
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    self.received += 1;
                    return SeqVerdict::InOrder;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Probation;
        }
        let verdict = if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += u64::from(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
            if udelta == 0 {
                self.duplicates += 1;
                SeqVerdict::Duplicate
            } else {
                self.window = self.window.checked_shl(u32::from(udelta)).unwrap_or(0) | 1;
                SeqVerdict::InOrder
            }
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) != self.bad_seq {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return SeqVerdict::Jump;
            }
            // Two sequential packets after a jump: the sender restarted.
            self.carried_expected += self.epoch_expected();
            self.carried_received += self.received;
            self.restarts += 1;
            self.init(seq);
            SeqVerdict::Restarted
        } else {
            // Within MAX_MISORDER behind the highest: late or duplicate.
            let bit = 1u128
                .checked_shl(u32::from(0u16.wrapping_sub(udelta)))
                .unwrap_or(0);
            if self.window & bit != 0 {
                self.duplicates += 1;
                SeqVerdict::Duplicate
            } else {
                self.window |= bit;
                self.reordered += 1;
                SeqVerdict::Reordered
            }
        };
        self.received += 1;
        verdict
    }

    /// Whether the source has passed probation.
    pub fn is_valid(&self) -> bool {
        self.probation == 0
    }

    /// The extended highest sequence number received (cycles + max_seq).
    pub fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    fn epoch_expected(&self) -> u64 {
        if self.is_valid() {
            (self.extended_max() + 1).saturating_sub(self.base_seq)
        } else {
            0
        }
    }

    /// Packets expected since the source became valid: extended max - base_seq + 1, summed
    /// over restarts.
    pub fn expected(&self) -> u64 {
        self.carried_expected + self.epoch_expected()
    }

    /// Packets counted, duplicates included (as in RFC 3550).
    pub fn received(&self) -> u64 {
        self.carried_received + self.received
    }

    /// Expected minus received; negative when duplicates outnumber losses.
    pub fn lost(&self) -> i64 {
        to_i64(self.expected()) - to_i64(self.received())
    }

    /// (expected, lost) since the last [`mark_interval`](Self::mark_interval).
    pub fn interval(&self) -> (u64, i64) {
        let expected = self.expected().saturating_sub(self.expected_prior);
        let received = self.received().saturating_sub(self.received_prior);
        (expected, to_i64(expected) - to_i64(received))
    }

    /// Starts a new interval, as a receiver does when it sends a report.
    pub fn mark_interval(&mut self) {
        self.expected_prior = self.expected();
        self.received_prior = self.received();
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Confirmed sequence jumps that restarted counting.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `lost / expected`, clamped to [0, 1] (duplicates can make `lost` negative).
pub fn loss_rate(expected: u64, lost: i64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        (lost as f64 / expected as f64).clamp(0.0, 1.0)
    }
}
