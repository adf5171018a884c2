//! `loadgen`: a paced RTP load generator and a measuring sink in one process.
//!
//! Each line of `--targets` is `SRC DST SINK`: flow i sends from a socket bound to SRC to DST,
//! and its packets must come back at a socket bound to SINK (the relay under test forwards DST's
//! traffic there). Sender and sink are separate pinned threads sharing only CLOCK_MONOTONIC, so
//! the one-way latency is measured without any cross-thread traffic per packet. The result is a
//! single JSON object on stdout; progress markers for the orchestrator go to stderr.
//!
//! The sender and the sink are the library's ([`rtprelay_benches::sender`],
//! [`rtprelay_benches::sink`]), shared with `rtp-blaster`; this binary is the bare measuring
//! core the `bench-forward` orchestrator drives.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rtprelay_benches::schedule::Schedule;
use rtprelay_benches::sender::{self, TxStream};
use rtprelay_benches::sink::{self, RxSocket};
use rtprelay_benches::{rtp, sys, targets};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Paced RTP load generator with a loss/reorder/latency measuring sink")]
pub struct Args {
    /// File with one `SRC DST SINK` line (three IP:PORT) per flow.
    #[arg(long)]
    targets: std::path::PathBuf,
    /// Aggregate packets per second, spread round-robin over all flows.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Sending duration.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Datagram size in bytes (RTP header included).
    #[arg(long, default_value_t = 172)]
    size: usize,
    /// Pin the sending thread to this core.
    #[arg(long)]
    core: Option<usize>,
    /// Pin the sink thread to this core.
    #[arg(long)]
    recv_core: Option<usize>,
    /// How long the sink keeps listening after the last packet was sent, in milliseconds.
    #[arg(long, default_value_t = 200)]
    drain_ms: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.size < rtp::MIN_PACKET_LEN || args.size > 65507 {
        bail!("--size must be between {} and 65507", rtp::MIN_PACKET_LEN);
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    if args.rate == 0 {
        bail!("--rate must be positive");
    }
    sys::install_stop_handler().context("signal handlers")?;
    let targets = targets::read(&args.targets)?;

    // Bind every sink before the first packet leaves, or the first ones would bounce.
    let sinks = targets
        .iter()
        .map(|t| sys::udp_socket(t.sink))
        .collect::<Result<Vec<_>>>()?;
    let sources = targets
        .iter()
        .map(|t| {
            let s = sys::udp_socket(t.src)?;
            s.connect(&t.dst.into())
                .with_context(|| format!("connect {}", t.dst))?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    let rx_socks: Vec<RxSocket> = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| RxSocket {
            fd: s.as_raw_fd(),
            flow: i as u32,
            group: 0,
        })
        .collect();
    let mut streams: Vec<TxStream> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| TxStream::new(s.as_raw_fd(), i as u32, 0, f64::from(rtp::TIMESTAMP_STEP)))
        .collect();

    let stop_sink = AtomicBool::new(false);
    let cfg = sender::Config {
        schedule: Schedule::constant(args.rate as f64, Duration::from_secs_f64(args.seconds))?,
        size: args.size,
        core: args.core,
        markers: true,
    };
    // The sockets outlive both threads (scoped), which only use their descriptors.
    let (sent, received) = std::thread::scope(|s| {
        let sink_thread = std::thread::Builder::new()
            .name("loadgen-sink".into())
            .spawn_scoped(s, || {
                sink::run(&rx_socks, 1, 1, args.size, args.recv_core, &stop_sink, None)
            })
            .context("spawn sink thread")?;
        let sender_thread = std::thread::Builder::new()
            .name("loadgen-send".into())
            .spawn_scoped(s, || sender::run(&mut streams, &cfg, None))
            .context("spawn sender thread");
        let sent = match sender_thread {
            Ok(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked")),
            Err(e) => Err(e),
        };
        // Let packets still queued in the relay arrive before the sink stops counting.
        if sent.is_ok() {
            std::thread::sleep(Duration::from_millis(args.drain_ms));
        }
        stop_sink.store(true, Ordering::Relaxed);
        let received = sink_thread
            .join()
            .map_err(|_| anyhow::anyhow!("sink thread panicked"));
        anyhow::Ok((sent??, received??))
    })?;

    println!("{}", report(&sent, &received));
    Ok(())
}

fn report(sent: &sender::Sent, rx: &sink::Received) -> serde_json::Value {
    let total_sent = sent.total();
    let per_stream = sent.per_stream();
    let total_rx: u64 = rx.flows.iter().map(|f| f.received).sum();
    let lost: u64 = per_stream
        .iter()
        .zip(&rx.flows)
        .map(|(s, r)| s.saturating_sub(r.received))
        .sum();
    let secs = sent.duration.as_secs_f64();
    let h = &rx.latency_ns[0];
    let us = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    json!({
        "flows": per_stream.len(),
        "sent": total_sent,
        "received": total_rx,
        "lost": lost,
        "loss_pct": if total_sent == 0 { 0.0 } else { 100.0 * lost as f64 / total_sent as f64 },
        "reordered": rx.flows.iter().map(|f| f.reordered).sum::<u64>(),
        "duplicates": rx.flows.iter().map(|f| f.duplicates).sum::<u64>(),
        "silent_flows": rx.flows.iter().filter(|f| f.received == 0).count(),
        "latency_us": {
            "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999),
            "max": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        },
        "achieved_send_pps": if secs > 0.0 { total_sent as f64 / secs } else { 0.0 },
        "send_seconds": secs,
        "send_dropped": sent.dropped,
        "send_errors": sent.errors,
        "misrouted": rx.misrouted,
        "invalid": rx.invalid,
    })
}
