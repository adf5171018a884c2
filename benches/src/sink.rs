//! The measuring sink shared by `loadgen` and `rtp-blaster`: one thread, epoll + `recvmmsg`
//! over every receiving socket.
//!
//! Each socket receives exactly one flow. Per flow it counts unique packets, reordering and
//! duplicates (see [`rtp::SeqTracker`]) and the RFC 3550 jitter (see [`rtp::Jitter`]); one-way
//! latency goes into one histogram per group (e.g. per direction). The flow is identified by the
//! socket a packet arrived on; the flow index inside the payload is only cross-checked, so a
//! relay that mixes up sessions shows up as `misrouted` instead of as silently "correct"
//! traffic. Packets also carry the schedule phase they were sent in; each phase gets its own
//! per-flow counts and latency histogram, so a run of overload and recovery is measured per
//! phase.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::LiveCounters;
use crate::rtp::{self, Arrival, Jitter, SeqTracker};
use crate::sys::{self, BATCH, Epoll, MmsgBatch};

/// Highest latency the histograms record exactly (60 s); anything above is clamped.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// One receiving socket.
#[derive(Debug, Clone, Copy)]
pub struct RxSocket {
    pub fd: RawFd,
    /// The flow index its packets must carry.
    pub flow: u32,
    /// Which latency histogram its packets go into (`0..groups`).
    pub group: usize,
}

#[derive(Default, Clone)]
pub struct FlowRx {
    /// Unique packets (duplicates excluded), so `sent - received` is the loss.
    pub received: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub jitter: Jitter,
    seq: SeqTracker,
}

pub struct Received {
    /// Per receiving socket, in the order given.
    pub flows: Vec<FlowRx>,
    /// One-way latency in nanoseconds, one histogram per group.
    pub latency_ns: Vec<Histogram<u64>>,
    /// Unique packets per flow and schedule phase: `[flow_index * phases + phase]`, where
    /// `flow_index` is the position of the flow's socket (counted only with 2 or more phases).
    pub per_flow_phase: Vec<u64>,
    /// One-way latency per schedule phase (all groups), nanoseconds (only with 2 or more).
    pub phase_latency_ns: Vec<Histogram<u64>>,
    /// Packets whose payload names another flow than the socket they arrived on.
    pub misrouted: u64,
    /// Packets that are not our RTP test packets.
    pub invalid: u64,
    /// Priming packets that arrived during the measurement (retries, late ones); ignored.
    pub priming: u64,
    /// Receive errors, e.g. a queued ICMP port unreachable on a connected socket.
    pub errors: u64,
}

impl Received {
    /// All groups' latencies in one histogram.
    pub fn latency_all(&self) -> Histogram<u64> {
        let mut all = self.latency_ns[0].clone();
        for h in &self.latency_ns[1..] {
            // Same bounds and precision, so adding cannot fail.
            let _ = all.add(h);
        }
        all
    }
}

/// An empty latency histogram (1 ns to `MAX_LATENCY_NS`, 3 significant digits).
pub fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("histogram")
}

/// Receives until `stop` is set. `groups` and `phases` are at least 1 (less counts as 1).
pub fn run(
    socks: &[RxSocket],
    groups: usize,
    phases: usize,
    size: usize,
    core: Option<usize>,
    stop: &AtomicBool,
    live: Option<&LiveCounters>,
) -> Result<Received> {
    if let Some(core) = core {
        sys::pin_to_core(core)?;
    }
    let epoll = Epoll::new().context("epoll_create1")?;
    for (i, s) in socks.iter().enumerate() {
        epoll.add(s.fd, i as u64).context("epoll_ctl")?;
    }
    let mut rx = Received {
        flows: vec![FlowRx::default(); socks.len()],
        latency_ns: (0..groups.max(1))
            .map(|_| latency_histogram())
            .collect::<Result<_>>()?,
        per_flow_phase: vec![0; socks.len() * phases.max(1)],
        phase_latency_ns: (0..phases.max(1))
            .map(|_| latency_histogram())
            .collect::<Result<_>>()?,
        misrouted: 0,
        invalid: 0,
        priming: 0,
        errors: 0,
    };
    let (mut received, mut gap_lost) = (0u64, 0u64);
    // Room for a larger-than-expected datagram, so it is counted rather than truncated.
    let mut batch = MmsgBatch::new(size.max(2048));
    let mut events = sys::event_buffer(256);
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, 10).context("epoll_wait")?;
        for ev in &events[..n] {
            let idx = sys::event_token(ev) as usize;
            let Some(sock) = socks.get(idx) else { continue };
            loop {
                let got = match batch.recv(sock.fd) {
                    Ok(got) => got,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // Connected sockets report ICMP errors of earlier sends here; the socket
                    // stays usable, so count and move on.
                    Err(_) => {
                        rx.errors += 1;
                        break;
                    }
                };
                let now_ns = sys::monotonic_ns();
                for i in 0..got {
                    account(
                        &mut rx,
                        sock,
                        idx,
                        batch.received(i),
                        now_ns,
                        &mut received,
                        &mut gap_lost,
                    );
                }
                if got < BATCH {
                    break;
                }
            }
        }
        if let Some(live) = live {
            live.received.store(received, Ordering::Relaxed);
            live.gap_lost.store(gap_lost, Ordering::Relaxed);
        }
    }
    Ok(rx)
}

fn account(
    rx: &mut Received,
    sock: &RxSocket,
    idx: usize,
    pkt: &[u8],
    now_ns: u64,
    received: &mut u64,
    gap_lost: &mut u64,
) {
    let Some(p) = rtp::parse_packet(pkt) else {
        rx.invalid += 1;
        return;
    };
    if p.priming {
        rx.priming += 1;
        return;
    }
    if p.flow != sock.flow {
        rx.misrouted += 1;
        return;
    }
    let flow = &mut rx.flows[idx];
    let before = flow.seq.highest();
    match flow.seq.observe(p.seq) {
        Arrival::InOrder => {
            flow.received += 1;
            if let (Some(before), Some(after)) = (before, flow.seq.highest()) {
                *gap_lost += (after - before - 1).max(0) as u64;
            }
        }
        Arrival::Reordered => {
            flow.received += 1;
            flow.reordered += 1;
            *gap_lost = gap_lost.saturating_sub(1);
        }
        Arrival::Duplicate => {
            flow.duplicates += 1;
            return;
        }
    }
    *received += 1;
    flow.jitter.observe(p.sent_ns, now_ns);
    // Per-phase figures only for a run of several phases: one phase is the run itself, and
    // the receiver must not spend its time per packet on a copy of it.
    let phases = rx.phase_latency_ns.len();
    let phase = p.phase.min(phases - 1);
    if phases > 1 {
        rx.per_flow_phase[idx * phases + phase] += 1;
    }
    if let Some(lat) = now_ns.checked_sub(p.sent_ns) {
        let lat = lat.clamp(1, MAX_LATENCY_NS);
        let group = sock.group.min(rx.latency_ns.len() - 1);
        rx.latency_ns[group].saturating_record(lat);
        if phases > 1 {
            rx.phase_latency_ns[phase].saturating_record(lat);
        }
    }
}
