//! The paced sender.
//!
//! Pacing works on the running total: every tick (100 us) it computes how many packets should
//! have left since the start and sends the difference, round-robin over the flows, one
//! `sendmmsg` per flow for the packets due on it. A late wake-up therefore catches up instead of
//! silently lowering the offered rate, and the achieved rate is reported honestly.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Result;
use rtprelay_benches::sys::{self, BATCH, MmsgBatch};
use rtprelay_benches::{MARK_SEND_END, MARK_SEND_START, rtp};
use socket2::Socket;

/// The pacing period: packets are released at least this often.
const TICK: Duration = Duration::from_micros(100);
/// Cap on packets released by one tick, so a long stall does not turn into one huge burst
/// that would overflow every queue on the path (the backlog is still sent over later ticks).
const MAX_BURST: u64 = 1024;

pub struct Config {
    pub rate: u64,
    pub duration: Duration,
    pub size: usize,
    pub core: Option<usize>,
}

/// What the sender managed to hand to the kernel.
pub struct Sent {
    /// Packets accepted by the kernel, per flow.
    pub per_flow: Vec<u64>,
    /// Packets not sent because the socket buffer was full.
    pub dropped: u64,
    /// Packets not sent because of another send error (e.g. ICMP port unreachable).
    pub errors: u64,
    /// From the first to the last packet.
    pub duration: Duration,
}

/// Per-flow RTP state: one SSRC per flow, sequence +1 and timestamp +160 per packet.
struct FlowState {
    sock: Socket,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

pub fn run(sources: Vec<Socket>, cfg: &Config) -> Result<Sent> {
    if let Some(core) = cfg.core {
        sys::pin_to_core(core)?;
    }
    sys::tight_timer_slack();
    let n = sources.len() as u64;
    let mut flows: Vec<FlowState> = sources
        .into_iter()
        .enumerate()
        .map(|(i, sock)| FlowState {
            sock,
            // Distinct, non-trivial values per flow; determinism helps comparing captures.
            ssrc: 0x5eed_0000u32.wrapping_add((i as u32).wrapping_mul(0x9e37_79b9)),
            seq: (i as u16).wrapping_mul(7919),
            timestamp: (i as u32).wrapping_mul(104_729),
        })
        .collect();
    let mut out = Sent {
        per_flow: vec![0; flows.len()],
        dropped: 0,
        errors: 0,
        duration: Duration::ZERO,
    };
    let mut batch = MmsgBatch::new(cfg.size);
    let mut cursor: u64 = 0; // next flow in round-robin order
    let mut released: u64 = 0; // packets handed out so far (sent or not)

    eprintln!("{MARK_SEND_START}");
    let start = Instant::now();
    let mut next_tick = start;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= cfg.duration || sys::stop_requested() {
            break;
        }
        let target = (u128::from(cfg.rate) * elapsed.as_nanos() / 1_000_000_000) as u64;
        let due = target.saturating_sub(released).min(MAX_BURST);
        // Flow `cursor + j` gets due/n packets, plus one for the first due%n of them.
        for j in 0..due.min(n) {
            let idx = ((cursor + j) % n) as usize;
            let count = due / n + u64::from(j < due % n);
            send_flow(&mut flows[idx], idx, count, cfg.size, &mut batch, &mut out);
        }
        cursor = (cursor + due) % n;
        released += due;

        next_tick += TICK;
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        } else if now - next_tick > TICK {
            next_tick = now; // do not accumulate a debt of zero-length sleeps
        }
    }
    out.duration = start.elapsed();
    eprintln!("{MARK_SEND_END}");
    Ok(out)
}

/// Sends `count` packets on one flow in `sendmmsg` batches, stamping them just before the call.
fn send_flow(
    flow: &mut FlowState,
    idx: usize,
    count: u64,
    size: usize,
    batch: &mut MmsgBatch,
    out: &mut Sent,
) {
    let fd = flow.sock.as_raw_fd();
    let mut left = count as usize;
    while left > 0 {
        let chunk = left.min(BATCH);
        let now_ns = sys::monotonic_ns();
        for k in 0..chunk {
            let buf = batch.fill(k, size);
            rtp::write_packet(buf, flow.seq, flow.timestamp, flow.ssrc, now_ns, idx as u32);
            flow.seq = flow.seq.wrapping_add(1);
            flow.timestamp = flow.timestamp.wrapping_add(rtp::TIMESTAMP_STEP);
        }
        let mut done = 0;
        while done < chunk {
            match batch.send(fd, done, chunk - done) {
                Ok(k) if k > 0 => {
                    out.per_flow[idx] += k as u64;
                    done += k;
                }
                Ok(_) => {
                    out.errors += (chunk - done) as u64;
                    done = chunk;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    out.dropped += (chunk - done) as u64;
                    done = chunk;
                }
                Err(_) => {
                    out.errors += 1;
                    done += 1;
                }
            }
        }
        left -= chunk;
    }
}
