//! `bench-forward`: compares the relay's forwarding cost with the reference forwarder.
//!
//! For every repeat, case (flow count) and variant it starts a fresh forwarder, offers the same
//! paced RTP load through it with `loadgen`, and samples the forwarder's utime+stime exactly over
//! the sending window. The key figure is relay CPU microseconds per packet delivered to the sink:
//! unlike throughput it stays meaningful below saturation, and it is what decides how many calls
//! a core can carry. Variants alternate within each repeat (with rotating order) so slow drifts
//! of the machine hit all of them alike; medians of the repeats are reported.
//!
//! Layout (all on 127.0.0.1): sources 40000+2i, sinks 45000+2i, the reference forwarder 30000+
//! (inbound 30000+2i, outbound 30000+2N+2i), rtprelay's media range 20000-29999.

mod procs;
mod relay;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use procs::ChildGuard;
use report::{Measured, Trial};
use rtprelay_benches::sys;
use serde_json::json;

const REF_BASE: u16 = 30000;
const SOURCE_BASE: u16 = 40000;
const SINK_BASE: u16 = 45000;
/// Keeps sources (40000+) clear of sinks (45000+) and the reference (30000..30000+4N) clear of
/// the sources.
const MAX_FLOWS: usize = 2000;

#[derive(Parser, Debug)]
#[command(about = "Relay CPU per packet: reference recvmmsg forwarder vs rtprelay")]
struct Args {
    /// Variants to compare: `ref` (epoll), `ref-uring` (bare io_uring), `ref-uring-msg` (io_uring
    /// with rtprelay's per-packet kernel work: source address, timestamp, unconnected sends)
    /// and/or `rtprelay-N` (N shards; `rtprelay-N:FILE` runs it with `--config FILE`, to compare
    /// configurations in one run). The first is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "ref,rtprelay-1")]
    variants: Vec<String>,
    /// Flow counts (one case each).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    flows: Vec<usize>,
    /// Offered aggregate rate, packets per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Sending time per trial.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Datagram size.
    #[arg(long, default_value_t = 172)]
    size: usize,
    /// Trials per case and variant.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Core for the reference forwarder (rtprelay pins its shards to cores 0.. itself).
    #[arg(long, default_value_t = 0)]
    relay_core: usize,
    /// Core for the load generator's sender and sink threads.
    #[arg(long, default_value_t = 1)]
    loadgen_core: usize,
    /// Directory with `ref-forwarder` and `loadgen` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The relay binary (default: `rtprelay` next to this binary).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Where the JSON results and the processes' log go (default: bench-results/ at the
    /// workspace root).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Before each trial, wait until other processes use less than this percentage of one core
    /// (trials above it are flagged as disturbed).
    #[arg(long, default_value_t = 10.0)]
    quiet_pct: f64,
    /// Give up waiting for a quiet machine after this many seconds and run anyway.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// Pause between trials, letting sockets and caches settle.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
}

#[derive(Debug, Clone)]
enum Variant {
    /// ref-forwarder with epoll + recvmmsg/sendmmsg.
    Ref,
    /// ref-forwarder with its bare io_uring loop.
    RefUring,
    /// ref-forwarder's io_uring loop doing rtprelay's per-packet kernel work.
    RefUringMsg,
    Relay {
        shards: u32,
        /// Given to the relay as `--config`.
        config: Option<PathBuf>,
    },
}

fn parse_variant(name: &str) -> Result<Variant> {
    match name {
        "ref" => return Ok(Variant::Ref),
        "ref-uring" => return Ok(Variant::RefUring),
        "ref-uring-msg" => return Ok(Variant::RefUringMsg),
        _ => {}
    }
    let (relay, config) = match name.split_once(':') {
        Some((relay, file)) => (relay, Some(PathBuf::from(file))),
        None => (name, None),
    };
    if let Some(file) = &config
        && !file.is_file()
    {
        bail!("variant {name:?}: config file {} not found", file.display());
    }
    match relay.strip_prefix("rtprelay-").map(str::parse::<u32>) {
        Some(Ok(shards)) if shards >= 1 => Ok(Variant::Relay { shards, config }),
        _ => bail!(
            "unknown variant {name:?} (expected `ref`, `ref-uring`, `ref-uring-msg`, `rtprelay-N` \
             or `rtprelay-N:CONFIG`)"
        ),
    }
}

/// Everything a trial needs besides its own parameters.
struct Ctx {
    args: Args,
    bin_dir: PathBuf,
    relay_bin: PathBuf,
    log: PathBuf,
    out_dir: PathBuf,
    targets_file: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    sys::install_stop_handler().context("signal handlers")?;
    let variants: Vec<(String, Variant)> = args
        .variants
        .iter()
        .map(|v| Ok((v.clone(), parse_variant(v)?)))
        .collect::<Result<_>>()?;
    if variants.is_empty() || args.flows.is_empty() || args.repeats == 0 {
        bail!("need at least one variant, one flow count and one repeat");
    }
    if let Some(bad) = args.flows.iter().find(|&&f| f == 0 || f > MAX_FLOWS) {
        bail!("flow count {bad} outside 1..={MAX_FLOWS}");
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe has no directory")?
        .to_owned();
    let bin_dir = args.bin_dir.clone().unwrap_or(exe_dir);
    for bin in ["ref-forwarder", "loadgen"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} missing; build with cargo build --release -p rtprelay-benches",
                bin_dir.join(bin).display()
            );
        }
    }
    let out_dir = args.out_dir.clone().unwrap_or_else(default_out_dir);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let ctx = Ctx {
        relay_bin: args
            .relay_bin
            .clone()
            .unwrap_or_else(|| bin_dir.join("rtprelay")),
        bin_dir,
        log: out_dir.join(format!("bench-forward-{stamp}.log")),
        targets_file: std::env::temp_dir()
            .join(format!("bench-forward-{}-targets.txt", std::process::id())),
        out_dir,
        args,
    };
    for (name, v) in &variants {
        if let Variant::Relay { shards, .. } = v
            && *shards as usize > ctx.args.loadgen_core
        {
            eprintln!(
                "bench-forward: note: {name} pins shards to cores 0..{shards}, sharing core {} \
                 with the load generator; its figures are not comparable one to one",
                ctx.args.loadgen_core
            );
        }
    }
    let result = run_all(&ctx, &variants, stamp);
    let _ = std::fs::remove_file(&ctx.targets_file);
    result
}

fn run_all(ctx: &Ctx, variants: &[(String, Variant)], stamp: u64) -> Result<()> {
    let a = &ctx.args;
    let total = a.repeats * a.flows.len() * variants.len();
    let mut trials = Vec::with_capacity(total);
    'outer: for repeat in 0..a.repeats {
        for &flows in &a.flows {
            for k in 0..variants.len() {
                // Rotate the order each repeat so no variant always runs first (or warm).
                let (name, variant) = &variants[(k + repeat) % variants.len()];
                if sys::stop_requested() {
                    eprintln!("bench-forward: interrupted, writing partial results");
                    break 'outer;
                }
                procs::wait_for_quiet(a.quiet_pct, Duration::from_secs(a.quiet_wait));
                let n = trials.len() + 1;
                eprintln!("[{n}/{total}] {name} flows={flows} repeat={}", repeat + 1);
                let outcome = run_trial(ctx, variant, flows, n).map_err(|e| format!("{e:#}"));
                match &outcome {
                    Ok(m) => eprintln!(
                        "    cpu {:.3} us/pkt ({:.1}% of a core), loss {:.3}%, p50 {:.1} us, p99 {:.1} us, sent {:.0} pps, other CPU {:.1}%{}",
                        m.cpu_us_per_pkt(),
                        m.cpu_pct(),
                        m.loss_pct,
                        m.p50_us,
                        m.p99_us,
                        m.achieved_pps,
                        m.background_pct,
                        if m.background_pct > a.quiet_pct {
                            " (DISTURBED by other load)"
                        } else {
                            ""
                        }
                    ),
                    Err(e) => eprintln!("    FAILED: {e}"),
                }
                trials.push(Trial {
                    variant: name.clone(),
                    flows,
                    repeat,
                    outcome,
                });
                std::thread::sleep(Duration::from_millis(a.settle_ms));
            }
        }
    }

    let names: Vec<String> = variants.iter().map(|(n, _)| n.clone()).collect();
    let summaries = report::summarize(&trials, &a.flows, &names);
    println!(
        "\nrate {} pps, {} B, {} s/trial, medians of {} repeats; relay on core {}, loadgen on core {}; \
         other CPU % = what other processes used meanwhile (above {} a trial is disturbed)\n",
        a.rate, a.size, a.seconds, a.repeats, a.relay_core, a.loadgen_core, a.quiet_pct
    );
    println!("{}", report::markdown(&summaries, &names[0]));

    let out = json!({
        "benchmark": "bench-forward",
        "unix_time": stamp,
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
        "config": {
            "variants": names, "flows": a.flows, "rate_pps": a.rate, "size": a.size,
            "seconds": a.seconds, "repeats": a.repeats,
            "relay_core": a.relay_core, "loadgen_core": a.loadgen_core, "quiet_pct": a.quiet_pct,
        },
        "summary": summaries.iter().map(report::summary_json).collect::<Vec<_>>(),
        "trials": trials.iter().map(Trial::to_json).collect::<Vec<_>>(),
    });
    let path = ctx.out_dir.join(format!("bench-forward-{stamp}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!(
        "results: {}\nprocess log: {}",
        path.display(),
        ctx.log.display()
    );
    Ok(())
}

/// `bench-results/` next to the workspace's Cargo.toml (this crate lives one level below it).
fn default_out_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join("bench-results")
}

fn port(base: u16, i: usize) -> u16 {
    // Callers keep `i < MAX_FLOWS`, so this stays below 65536 for every base used here.
    base + 2 * i as u16
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn run_trial(ctx: &Ctx, variant: &Variant, flows: usize, trial: usize) -> Result<Measured> {
    let sinks: Vec<SocketAddr> = (0..flows).map(|i| loopback(port(SINK_BASE, i))).collect();
    match variant {
        Variant::Ref | Variant::RefUring | Variant::RefUringMsg => {
            let a = &ctx.args;
            let mut cmd = Command::new(ctx.bin_dir.join("ref-forwarder"));
            let engine = match variant {
                Variant::RefUring => "uring",
                Variant::RefUringMsg => "uring-msg",
                _ => "epoll",
            };
            cmd.args(["--engine", engine]);
            cmd.args(["--listen", "127.0.0.1", "--connect", "127.0.0.1"])
                .args([
                    "--base-port",
                    &REF_BASE.to_string(),
                    "--flows",
                    &flows.to_string(),
                ])
                .args(["--dest", &loopback(SINK_BASE).to_string()])
                .args(["--core", &a.relay_core.to_string()])
                // A safety bound in case we die without our destructors running.
                .args(["--seconds", &(a.seconds.ceil() as u64 + 120).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file(&ctx.log)?);
            let mut fwd = ChildGuard::spawn("ref-forwarder", &mut cmd)?;
            procs::wait_for_line(
                &mut fwd,
                rtprelay_benches::MARK_READY,
                Duration::from_secs(10),
            )?;
            let dsts: Vec<SocketAddr> = (0..flows).map(|i| loopback(port(REF_BASE, i))).collect();
            let m = load(ctx, &dsts, &sinks, fwd.pid())?;
            fwd.stop(Duration::from_secs(3));
            Ok(m)
        }
        Variant::Relay { shards, config } => {
            let grpc_port = relay::free_tcp_port()?;
            let mut relay = relay::start(
                &ctx.relay_bin,
                *shards,
                config.as_deref(),
                grpc_port,
                &ctx.log,
            )?;
            // Declared after `relay`, so on any error the client and its runtime are dropped
            // (closing the gRPC connection) before the relay is stopped.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let prefix = format!("bench{trial}");
            let mut client = bounded(&rt, 10, "gRPC connect", relay::connect(grpc_port))?;
            let dsts = bounded(
                &rt,
                60,
                "creating sessions",
                relay::create_sessions(&mut client, &prefix, &sinks),
            )?;
            relay.check_alive()?;
            let mut m = load(ctx, &dsts, &sinks, relay.pid())?;
            let destroy = relay::destroy_sessions(&mut client, &prefix, flows);
            match bounded(&rt, 60, "destroying sessions", destroy) {
                Ok(c) => m.relay_counters = Some(c),
                Err(e) => eprintln!("    warning: {e:#}"),
            }
            // An open gRPC connection would hold up the relay's graceful shutdown.
            drop(client);
            drop(rt);
            relay.stop(Duration::from_secs(5));
            Ok(m)
        }
    }
}

/// Writes the targets file and runs the load generator through `dsts`, measuring `relay_pid`.
fn load(ctx: &Ctx, dsts: &[SocketAddr], sinks: &[SocketAddr], relay_pid: u32) -> Result<Measured> {
    let a = &ctx.args;
    let mut text = String::new();
    for (i, (dst, sink)) in dsts.iter().zip(sinks).enumerate() {
        text.push_str(&format!(
            "{} {dst} {sink}\n",
            loopback(port(SOURCE_BASE, i))
        ));
    }
    std::fs::write(&ctx.targets_file, text)
        .with_context(|| format!("write {}", ctx.targets_file.display()))?;
    let mut cmd = Command::new(ctx.bin_dir.join("loadgen"));
    cmd.arg("--targets")
        .arg(&ctx.targets_file)
        .args([
            "--rate",
            &a.rate.to_string(),
            "--seconds",
            &a.seconds.to_string(),
        ])
        .args(["--size", &a.size.to_string()])
        .args([
            "--core",
            &a.loadgen_core.to_string(),
            "--recv-core",
            &a.loadgen_core.to_string(),
        ])
        .stdin(Stdio::null());
    let timeout = Duration::from_secs_f64(a.seconds + 30.0);
    let run = procs::run_loadgen(cmd, relay_pid, timeout)?;
    let mut m = Measured::from_loadgen(
        run.relay_cpu_us,
        run.window.as_secs_f64(),
        run.background_cpu_us,
        run.report,
    );
    m.relay_threads_pct = json!(run.relay_threads_pct);
    Ok(m)
}

/// Runs one async gRPC step on the trial's runtime, bounded in time.
fn bounded<T>(
    rt: &tokio::runtime::Runtime,
    secs: u64,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(secs), fut).await })
        .map_err(|_| anyhow::anyhow!("{what} took longer than {secs} s"))?
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_with_and_without_a_config() {
        assert!(matches!(parse_variant("ref"), Ok(Variant::Ref)));
        assert!(matches!(
            parse_variant("ref-uring-msg"),
            Ok(Variant::RefUringMsg)
        ));
        assert!(matches!(
            parse_variant("rtprelay-2"),
            Ok(Variant::Relay {
                shards: 2,
                config: None
            })
        ));
        let file = std::env::temp_dir().join(format!("bench-forward-{}.toml", std::process::id()));
        std::fs::write(&file, "[media]\n").unwrap();
        let name = format!("rtprelay-1:{}", file.display());
        let parsed = parse_variant(&name);
        let _ = std::fs::remove_file(&file);
        match parsed {
            Ok(Variant::Relay {
                shards: 1,
                config: Some(c),
            }) => assert_eq!(c, file),
            other => panic!("{name}: {other:?}"),
        }
        for bad in [
            "rtprelay-0",
            "rtprelay-x",
            "bogus",
            "rtprelay-1:/nonexistent/rtprelay.toml",
        ] {
            assert!(parse_variant(bad).is_err(), "{bad} was accepted");
        }
    }
}
