//! Shared plumbing for the forwarding benchmarks.
//!
//! The binaries in `src/bin/` measure how cheaply a user-space relay can move RTP packets, so
//! their own hot paths must be as lean as the thing they compare against: no per-packet
//! allocation, batched syscalls, and no async runtime in the data path. The raw Linux calls they
//! share (epoll, `recvmmsg`/`sendmmsg` batches, socket buffers, signals, CPU pinning) live in
//! [`sys`]; the RTP test-packet format and the sequence bookkeeping of the sink live in [`rtp`].

pub mod rtp;
pub mod sys;

/// Line the load generator writes to stderr right before its first packet, so the orchestrator
/// can start measuring the relay's CPU time exactly over the sending window.
pub const MARK_SEND_START: &str = "@@loadgen send_start";
/// Line the load generator writes to stderr right after its last packet.
pub const MARK_SEND_END: &str = "@@loadgen send_end";
/// Line the reference forwarder writes to stdout once every socket is bound.
pub const MARK_READY: &str = "@@ref-forwarder ready";
