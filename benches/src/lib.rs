//! Shared plumbing for the forwarding benchmarks and the RTP blaster.
//!
//! The binaries in `src/bin/` measure how cheaply (and how well) a relay moves RTP packets, so
//! their own hot paths must be as lean as the thing they measure: no per-packet allocation,
//! batched syscalls, and no async runtime in the data path. The raw Linux calls they share
//! (epoll, `recvmmsg`/`sendmmsg` batches, socket buffers, signals, CPU pinning) live in [`sys`];
//! the RTP test-packet format, sequence and jitter bookkeeping in [`rtp`]; when each packet is due
//! (one rate or phases of rates) in [`schedule`]; the paced sender and
//! the measuring sink used by both `loadgen` and `rtp-blaster` in [`sender`] and [`sink`]; the
//! `SRC DST SINK` target files in [`targets`].

use std::sync::atomic::{AtomicU64, Ordering};

pub mod hold;
pub mod rtp;
pub mod schedule;
pub mod sender;
pub mod sink;
pub mod sys;
pub mod targets;
pub mod uring_forward;

/// Line the load generator writes to stderr right before its first packet, so the orchestrator
/// can start measuring the relay's CPU time exactly over the sending window.
pub const MARK_SEND_START: &str = "@@loadgen send_start";
/// Line the load generator writes to stderr right after its last packet.
pub const MARK_SEND_END: &str = "@@loadgen send_end";
/// Line the reference forwarder writes to stdout once every socket is bound.
pub const MARK_READY: &str = "@@ref-forwarder ready";

/// Running totals the sender and the sink publish for a live progress display.
///
/// Each side is the only writer of its fields and stores them once per tick or per received
/// batch (not per packet), so publishing costs nothing measurable; readers only need a
/// snapshot, hence relaxed ordering throughout.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Packets the kernel accepted from the sender.
    pub sent: AtomicU64,
    /// Unique test packets the sink counted (duplicates and priming packets excluded).
    pub received: AtomicU64,
    /// Sequence-number gaps the sink has seen so far, minus late packets that filled them
    /// (RFC 3550 "cumulative lost"): loss without counting packets still in flight.
    pub gap_lost: AtomicU64,
}

impl LiveCounters {
    /// (sent, received, gap_lost) right now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.gap_lost.load(Ordering::Relaxed),
        )
    }
}
