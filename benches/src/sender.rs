//! The paced sender shared by `loadgen` and `rtp-blaster`.
//!
//! Pacing works on the running total: packet `m` of the run is due when the [`Schedule`]
//! reaches it (`m / rate` seconds at one rate) and goes to stream `m mod n`, so every stream
//! sends at `rate / n` and the streams are staggered evenly across each period (with 50 pps per stream, every stream sends every 20 ms, and stream
//! `k` sends `k / rate` seconds after stream 0). The thread wakes when the next packet is due,
//! but at most every `TICK`: above 10k pps it releases whatever fell due in the last 100 us,
//! one `sendmmsg` per stream. A late wake-up therefore catches up instead of silently lowering
//! the offered rate, and the achieved rate is reported honestly. Every packet carries the index
//! of the schedule phase it was released in, so the sink can count phases apart.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::schedule::Schedule;
use crate::sys::{self, BATCH, MmsgBatch};
use crate::{LiveCounters, MARK_SEND_END, MARK_SEND_START, rtp};

/// The coarsest pacing granularity: packets are released at least this often.
pub const TICK: Duration = Duration::from_micros(100);
/// Cap on packets released by one wake-up, so a long stall does not turn into one huge burst
/// that would overflow every queue on the path (the backlog is still sent over later ticks).
const MAX_BURST: u64 = 1024;
/// Longest single sleep, so a stop request is honoured promptly even at a few packets/s.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Packets of a phase that ended longer ago than this and are still unsent are skipped (see
/// [`Sent::skipped`]); within it, an on-time sender just releases the last tick of the phase.
const PHASE_GRACE: Duration = Duration::from_millis(10);

pub struct Config {
    /// Aggregate packets per second over all streams, over time.
    pub schedule: Schedule,
    /// Datagram size, RTP header included.
    pub size: usize,
    pub core: Option<usize>,
    /// Print `MARK_SEND_START`/`MARK_SEND_END` on stderr (for the bench orchestrator).
    pub markers: bool,
}

/// One RTP stream: its own SSRC, sequence +1 and timestamp +`ts_step` per packet.
#[derive(Debug, Clone)]
pub struct TxStream {
    /// A socket connected to the stream's destination (`sendmmsg` needs no addresses then).
    pub fd: RawFd,
    /// Written into every payload; the sink checks it against the socket it arrived on.
    pub id: u32,
    pub payload_type: u8,
    pub ssrc: u32,
    /// Sequence number of the next packet.
    pub seq: u16,
    /// RTP timestamp of the first measured packet.
    pub ts_base: u32,
    /// RTP timestamp units per packet: ptime x clock rate. Fractional so that a stream whose
    /// packet interval is not a whole number of clock ticks does not drift.
    pub ts_step: f64,
    /// Packets released on this stream so far (sent or not): the RTP timestamp follows it.
    pub released: u64,
}

impl TxStream {
    /// A stream with deterministic, distinct per-stream SSRC and start values (deterministic so
    /// captures of two runs compare easily).
    pub fn new(fd: RawFd, id: u32, payload_type: u8, ts_step: f64) -> Self {
        Self {
            fd,
            id,
            payload_type,
            ssrc: 0x5eed_0000u32.wrapping_add(id.wrapping_mul(0x9e37_79b9)),
            seq: (id as u16).wrapping_mul(7919),
            ts_base: id.wrapping_mul(104_729),
            ts_step,
            released: 0,
        }
    }

    /// The RTP timestamp of the next packet.
    fn timestamp(&self) -> u32 {
        // Truncating to 32 bits is the RTP timestamp's own wrap-around.
        self.ts_base
            .wrapping_add((self.released as f64 * self.ts_step) as u64 as u32)
    }

    /// Writes the stream's next packet into `buf` and advances sequence and timestamp.
    pub fn write_next(&mut self, buf: &mut [u8], sent_ns: u64, flags: u32) {
        rtp::write_packet(
            buf,
            self.payload_type,
            self.seq,
            self.timestamp(),
            self.ssrc,
            sent_ns,
            self.id | flags,
        );
        self.seq = self.seq.wrapping_add(1);
        self.released += 1;
    }
}

/// What the sender managed to hand to the kernel.
pub struct Sent {
    /// Packets accepted by the kernel per stream (in the order of the `streams` argument) and
    /// schedule phase: `[stream * phases + k]`.
    pub per_stream_phase: Vec<u64>,
    /// Phases of the schedule.
    pub phases: usize,
    /// Packets not sent because the socket buffer was full.
    pub dropped: u64,
    /// Packets not sent because of another send error (e.g. ICMP port unreachable).
    pub errors: u64,
    /// Packets of a phase the sender was still behind with when the next phase began: not
    /// sent, so that each phase is offered at its own rate (the shortfall shows in the phase's
    /// sent count and the achieved rate).
    pub skipped: u64,
    /// From the first to the last packet.
    pub duration: Duration,
}

impl Sent {
    /// Packets accepted by the kernel per stream, all phases together.
    pub fn per_stream(&self) -> Vec<u64> {
        self.per_stream_phase
            .chunks(self.phases.max(1))
            .map(|c| c.iter().sum())
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.per_stream_phase.iter().sum()
    }
}

/// Sends round-robin over `streams` at the rates of `cfg.schedule`, or until a stop signal (see
/// [`sys::stop_requested`]).
pub fn run(streams: &mut [TxStream], cfg: &Config, live: Option<&LiveCounters>) -> Result<Sent> {
    if let Some(core) = cfg.core {
        sys::pin_to_core(core)?;
    }
    sys::tight_timer_slack();
    let schedule = &cfg.schedule;
    let phases = schedule.phases().len();
    let mut out = Sent {
        per_stream_phase: vec![0; streams.len() * phases],
        phases,
        dropped: 0,
        errors: 0,
        skipped: 0,
        duration: Duration::ZERO,
    };
    let n = streams.len() as u64;
    if n == 0 {
        return Ok(out);
    }
    let mut batch = MmsgBatch::new(cfg.size);
    let mut cursor: u64 = 0; // next stream in round-robin order
    let mut released: u64 = 0; // packets handed out so far (sent or not)
    let mut sent_total: u64 = 0;

    if cfg.markers {
        eprintln!("{MARK_SEND_START}");
    }
    let start = Instant::now();
    let end = start + schedule.duration();
    let mut wake = start;
    loop {
        let now = Instant::now();
        if now >= end || sys::stop_requested() {
            break;
        }
        let floor = schedule.first_of_phase_at((now - start).saturating_sub(PHASE_GRACE));
        if released < floor {
            out.skipped += floor - released;
            released = floor;
        }
        let mut due = schedule
            .due_by(now - start)
            .saturating_sub(released)
            .min(MAX_BURST);
        while due > 0 {
            // Packets of one phase at a time, so each carries the phase it is due in.
            let phase = schedule.phase_of(released);
            let chunk = due.min(schedule.phase_end(phase) - released);
            // Stream `cursor + j` gets chunk/n packets, plus one for the first chunk%n of them.
            for j in 0..chunk.min(n) {
                let idx = ((cursor + j) % n) as usize;
                let count = chunk / n + u64::from(j < chunk % n);
                let accepted = send_stream(
                    &mut streams[idx],
                    count,
                    phase,
                    cfg.size,
                    &mut batch,
                    &mut out,
                );
                out.per_stream_phase[idx * phases + phase] += accepted;
                sent_total += accepted;
            }
            cursor = (cursor + chunk) % n;
            released += chunk;
            due -= chunk;
        }
        if let Some(live) = live {
            live.sent.store(sent_total, Ordering::Relaxed);
        }

        // Next wake-up: when the next packet is due, but no sooner than one tick after the
        // previous wake-up (so bursts are released every TICK at high rates).
        let next_due = start + schedule.time_of(released);
        wake = (wake + TICK).max(next_due).min(end);
        let now = Instant::now();
        if wake > now {
            std::thread::sleep((wake - now).min(MAX_SLEEP));
            if wake > Instant::now() {
                // Cut short by MAX_SLEEP: keep the schedule, just re-check the stop flag.
                wake = wake.checked_sub(TICK).unwrap_or(wake);
            }
        } else if now - wake > TICK {
            wake = now; // do not accumulate a debt of zero-length sleeps
        }
    }
    out.duration = start.elapsed();
    if cfg.markers {
        eprintln!("{MARK_SEND_END}");
    }
    Ok(out)
}

/// Sends `count` packets of schedule phase `phase` on one stream in `sendmmsg` batches,
/// stamping them just before the call. Returns how many the kernel accepted.
fn send_stream(
    stream: &mut TxStream,
    count: u64,
    phase: usize,
    size: usize,
    batch: &mut MmsgBatch,
    out: &mut Sent,
) -> u64 {
    let mut accepted = 0;
    let mut left = count as usize;
    while left > 0 {
        let chunk = left.min(BATCH);
        let now_ns = sys::monotonic_ns();
        for k in 0..chunk {
            stream.write_next(batch.fill(k, size), now_ns, rtp::phase_tag(phase));
        }
        let mut done = 0;
        while done < chunk {
            match batch.send(stream.fd, done, chunk - done) {
                Ok(k) if k > 0 => {
                    accepted += k as u64;
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
    accepted
}
