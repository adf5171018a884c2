//! The measuring sink: one thread, epoll + `recvmmsg` over every sink socket.
//!
//! Per flow it counts unique packets, reordering and duplicates (see `rtp::SeqTracker`); all
//! flows share one latency histogram. The flow is identified by the socket a packet arrived on;
//! the flow index inside the payload is only cross-checked, so a relay that mixes up sessions
//! shows up as `misrouted` instead of as silently "correct" traffic.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rtprelay_benches::rtp::{self, Arrival, SeqTracker};
use rtprelay_benches::sys::{self, BATCH, Epoll, MmsgBatch};
use socket2::Socket;

/// Highest latency the histogram records exactly (60 s); anything above is clamped.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

#[derive(Default, Clone)]
pub struct FlowRx {
    /// Unique packets (duplicates excluded), so `sent - received` is the loss.
    pub received: u64,
    pub reordered: u64,
    pub duplicates: u64,
    seq: SeqTracker,
}

pub struct Received {
    pub flows: Vec<FlowRx>,
    /// One-way latency, nanoseconds, all flows.
    pub latency_ns: Histogram<u64>,
    /// Packets whose payload names another flow than the socket they arrived on.
    pub misrouted: u64,
    /// Packets that are not our RTP test packets.
    pub invalid: u64,
}

pub fn run(
    socks: Vec<Socket>,
    size: usize,
    core: Option<usize>,
    stop: &AtomicBool,
) -> Result<Received> {
    if let Some(core) = core {
        sys::pin_to_core(core)?;
    }
    let epoll = Epoll::new().context("epoll_create1")?;
    for (i, s) in socks.iter().enumerate() {
        epoll.add(s.as_raw_fd(), i as u64).context("epoll_ctl")?;
    }
    let mut rx = Received {
        flows: vec![FlowRx::default(); socks.len()],
        latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("histogram")?,
        misrouted: 0,
        invalid: 0,
    };
    // Room for a larger-than-expected datagram, so it is counted rather than truncated.
    let mut batch = MmsgBatch::new(size.max(2048));
    let mut events = sys::event_buffer(256);
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, 10).context("epoll_wait")?;
        for ev in &events[..n] {
            let idx = sys::event_token(ev) as usize;
            let Some(sock) = socks.get(idx) else { continue };
            loop {
                let got = batch.recv(sock.as_raw_fd()).context("recvmmsg")?;
                let now_ns = sys::monotonic_ns();
                for i in 0..got {
                    account(&mut rx, idx, batch.received(i), now_ns);
                }
                if got < BATCH {
                    break;
                }
            }
        }
    }
    Ok(rx)
}

fn account(rx: &mut Received, idx: usize, pkt: &[u8], now_ns: u64) {
    let Some(p) = rtp::parse_packet(pkt) else {
        rx.invalid += 1;
        return;
    };
    if p.flow as usize != idx {
        rx.misrouted += 1;
        return;
    }
    let flow = &mut rx.flows[idx];
    match flow.seq.observe(p.seq) {
        Arrival::InOrder => flow.received += 1,
        Arrival::Reordered => {
            flow.received += 1;
            flow.reordered += 1;
        }
        Arrival::Duplicate => {
            flow.duplicates += 1;
            return;
        }
    }
    if let Some(lat) = now_ns.checked_sub(p.sent_ns) {
        rx.latency_ns
            .saturating_record(lat.clamp(1, MAX_LATENCY_NS));
    }
}
