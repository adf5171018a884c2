//! `wake-latency`: what waking a thread on another core costs on this machine, the floor under
//! any relay's added latency.
//!
//! A client thread sends a datagram to an echo thread over loopback UDP and waits for the reply,
//! one round trip every `--interval-us`. Three placements run alternately, `--rounds` times:
//! the echo on the client's own core (no cross-core wake-up), on the other core blocking in
//! `recv` (two wake-ups of an idle core per round trip, as a sleeping relay gets) and on the
//! other core spinning on a non-blocking socket (as a busy-polling relay). The difference
//! between the first two is what a relay on its own core pays before doing any work of its own.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rtprelay_benches::sys;

#[derive(Parser, Debug)]
#[command(about = "Round-trip cost of waking a thread on another core, over loopback UDP")]
struct Args {
    /// Core of the client thread.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// The other core, for the echo thread in the cross-core cases.
    #[arg(long, default_value_t = 0)]
    other_core: usize,
    /// Round trips per case and round.
    #[arg(long, default_value_t = 5000)]
    count: u32,
    /// Pause between round trips, microseconds: long enough for a core to go idle.
    #[arg(long, default_value_t = 200)]
    interval_us: u64,
    /// Rounds; each runs every case once, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Datagram size.
    #[arg(long, default_value_t = 172)]
    size: usize,
}

#[derive(Clone, Copy)]
enum Case {
    SameCore,
    OtherCoreBlocking,
    OtherCoreSpinning,
}

impl Case {
    const ALL: [Case; 3] = [
        Case::SameCore,
        Case::OtherCoreBlocking,
        Case::OtherCoreSpinning,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::SameCore => "echo on the same core",
            Case::OtherCoreBlocking => "echo on the other core, blocking",
            Case::OtherCoreSpinning => "echo on the other core, spinning",
        }
    }
}

/// Round-trip times of one case, in nanoseconds.
fn run_case(args: &Args, case: Case) -> Result<Histogram<u64>> {
    let client = UdpSocket::bind("127.0.0.1:0").context("bind the client socket")?;
    let echo = UdpSocket::bind("127.0.0.1:0").context("bind the echo socket")?;
    client.connect(echo.local_addr()?)?;
    echo.connect(client.local_addr()?)?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let echo_core = match case {
        Case::SameCore => args.client_core,
        _ => args.other_core,
    };
    let spin = matches!(case, Case::OtherCoreSpinning);
    echo.set_nonblocking(spin)?;
    if !spin {
        echo.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    let count = args.count;
    let echo_thread = std::thread::spawn(move || -> Result<()> {
        sys::pin_to_core(echo_core)?;
        let mut buf = [0u8; 2048];
        // Bounded: the client stops after `count` round trips, and a spinning echo gives up
        // after 10 s without a datagram.
        for _ in 0..count {
            let started = Instant::now();
            let n = loop {
                match echo.recv(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if started.elapsed() > Duration::from_secs(10) {
                            bail!("echo: no datagram for 10 s");
                        }
                        std::hint::spin_loop();
                    }
                    Err(e) => return Err(e).context("echo: receive"),
                }
            };
            echo.send(&buf[..n]).context("echo: send")?;
        }
        Ok(())
    });
    sys::pin_to_core(args.client_core)?;
    sys::tight_timer_slack();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let payload = vec![0u8; args.size];
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        let t0 = Instant::now();
        client.send(&payload).context("client: send")?;
        client
            .recv(&mut buf)
            .context("client: no reply within 2 s")?;
        hist.saturating_record(t0.elapsed().as_nanos() as u64);
        std::thread::sleep(Duration::from_micros(args.interval_us));
    }
    echo_thread
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(hist)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.count > 1_000_000 || args.rounds == 0 || args.rounds > 100 {
        bail!("--count must be 1..=1000000 and --rounds 1..=100");
    }
    if args.interval_us > 1_000_000 || args.size == 0 || args.size > 1500 {
        bail!("--interval-us must be at most 1000000 and --size 1..=1500");
    }
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); Case::ALL.len()];
    for round in 1..=args.rounds {
        for (i, case) in Case::ALL.iter().enumerate() {
            let h = run_case(&args, *case)?;
            let p50 = us(h.value_at_quantile(0.5));
            p50s[i].push(p50);
            println!(
                "round {round} {:34} RTT p50 {p50:8.1} us  p90 {:8.1}  p99 {:8.1}",
                case.name(),
                us(h.value_at_quantile(0.9)),
                us(h.value_at_quantile(0.99)),
            );
        }
    }
    println!(
        "median p50 over {} rounds ({} round trips each, one every {} us):",
        args.rounds, args.count, args.interval_us
    );
    for (i, case) in Case::ALL.iter().enumerate() {
        let v = &mut p50s[i];
        v.sort_by(f64::total_cmp);
        println!("  {:34} {:8.1} us", case.name(), v[v.len() / 2]);
    }
    Ok(())
}
