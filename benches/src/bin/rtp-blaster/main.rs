//! `rtp-blaster`: offers realistic RTP load to a relay and measures what comes out.
//!
//! Sessions come from rtprelay's gRPC API (`--grpc URL --sessions N`: the blaster creates one
//! session per flow pair and removes them afterwards), from the rtpproxy control protocol
//! (`--rtpproxy udp:HOST:PORT --sessions N`: one call per pair set up with `U`/`L` as a SIP
//! proxy does, deleted with `D`; for rtprelay's rtpproxy listener or any relay speaking the
//! protocol) or from a target file for any relay (`--targets FILE`, one `SRC DST SINK
//! [REVERSE]` line per session, e.g. set up in rtpengine).
//! Every flow sends valid RTP from its own source port, paced either per flow (`--pps-per-session
//! 50` = one packet every 20 ms, flows staggered evenly) or as an aggregate rate (`--rate`),
//! forward only or in both directions. The receiving side measures loss, reordering,
//! duplicates, one-way latency (send stamp in the payload, one CLOCK_MONOTONIC on one host) and
//! RFC 3550 jitter per flow. `--ramp` bisects for the highest aggregate rate that still passes
//! the loss/latency criteria; `--phases` runs several aggregate rates back to back on the same
//! sessions and reports each phase apart (e.g. overload, then recovery).
//!
//! The data path (one sender thread, one receiver thread) never allocates or awaits; gRPC runs
//! only between trials, on a small current-thread runtime; rtpproxy commands likewise.

mod grpc;
mod report;
mod rtpproxy;
mod svg;
mod trial;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rtprelay_benches::schedule::Schedule;
use rtprelay_benches::{rtp, sys, targets};
use serde_json::{Value, json};

use crate::grpc::{Grpc, SessionTemplate};
use crate::report::{Criteria, Summary};
use crate::rtpproxy::Rtpp;
use crate::trial::{Load, Settings, Setup};

/// Upper bound of `--seconds`: the blaster must always end on its own.
const MAX_SECONDS: f64 = 3600.0;
/// Upper bound of `--sessions` (two sockets each on our side, four ports on the relay).
const MAX_SESSIONS: usize = 100_000;
/// Upper bound for any rate: far above what one sender thread can do, a typo guard.
const MAX_RATE: f64 = 50_000_000.0;

#[derive(Parser, Debug)]
#[command(
    group(
        clap::ArgGroup::new("sessions_from")
            .required(true)
            .args(["grpc", "rtpproxy", "targets"])
    ),
    about = "Realistic RTP load through a relay: loss, reordering, latency and jitter per flow",
    after_help = "Examples:\n  \
      rtp-blaster --grpc http://127.0.0.1:50051 --sessions 100 --pps-per-session 50 \
      --direction both --seconds 10\n  \
      rtp-blaster --rtpproxy udp:127.0.0.1:7722 --sessions 200 --pps-per-session 50 \
      --direction both --seconds 30\n  \
      rtp-blaster --targets flows.txt --rate 20000 --seconds 30 --json out.json\n  \
      rtp-blaster --grpc 127.0.0.1:50051 --sessions 500 --ramp --ramp-min 10000 \
      --ramp-max 400000 --seconds 5\n  \
      rtp-blaster --grpc 127.0.0.1:50051 --sessions 500 --direction both \
      --phases 50000:3,250000:3,50000:5"
)]
struct Args {
    /// rtprelay's gRPC API (`http://HOST:PORT`): create `--sessions` sessions there.
    #[arg(long, requires = "sessions", conflicts_with_all = ["targets", "rtpproxy"])]
    grpc: Option<String>,
    /// An rtpproxy-protocol control socket (`udp:HOST:PORT`, `udp6:[HOST]:PORT` or
    /// `unix:/PATH`): set up `--sessions` calls there with `U`/`L`, as Kamailio and OpenSIPS
    /// do, and delete them with `D` afterwards.
    #[arg(long, requires = "sessions", conflicts_with = "targets")]
    rtpproxy: Option<String>,
    /// Modifiers for every `U`/`L` command in `--rtpproxy` mode (e.g. `a` for asymmetric,
    /// `ie` to bridge interfaces); `6` is added for IPv6 media by itself.
    #[arg(long, default_value = "", requires = "rtpproxy")]
    rtpproxy_modifiers: String,
    /// Number of sessions to create through `--grpc` or `--rtpproxy`.
    #[arg(long)]
    sessions: Option<usize>,
    /// Sessions set up elsewhere: one `SRC DST SINK [REVERSE]` line (IP:PORT each) per session.
    /// REVERSE is where the sink side sends reverse traffic; without it the address the relay
    /// forwarded the priming packet from is used.
    #[arg(long)]
    targets: Option<PathBuf>,

    /// `forward`: source -> relay -> sink. `both`: the sink side also sends back through the
    /// relay to the source, like the two parties of a call.
    #[arg(long, value_enum, default_value_t = Direction::Forward)]
    direction: Direction,
    /// Packets per second of every flow (each direction of each session); 50 = one packet
    /// every 20 ms, flows staggered evenly over the period.
    #[arg(long, conflicts_with_all = ["rate", "ramp"])]
    pps_per_session: Option<f64>,
    /// Aggregate packets per second over all flows (both directions included), spread evenly.
    #[arg(long, conflicts_with = "ramp")]
    rate: Option<f64>,
    /// Sending time of the run (of each trial with `--ramp`), at most 3600.
    #[arg(long, required_unless_present = "phases", conflicts_with = "phases")]
    seconds: Option<f64>,
    /// Aggregate rates run back to back on the same sessions, `PPS:SECONDS[,PPS:SECONDS...]`
    /// (at most 16), each phase measured apart: e.g. half the relay's capacity, then twice it,
    /// then half again shows how it degrades under overload and whether it recovers.
    #[arg(long, conflicts_with_all = ["rate", "pps_per_session", "ramp"])]
    phases: Option<String>,
    /// Datagram size in bytes, RTP header included (172 = 20 ms of PCMU).
    #[arg(long, default_value_t = 172)]
    size: usize,
    /// RTP payload type (0 = PCMU).
    #[arg(long, default_value_t = 0)]
    payload_type: u8,
    /// RTP clock rate of the payload type, Hz: the timestamp advances by interval x clock.
    #[arg(long, default_value_t = 8000)]
    clock_rate: u32,

    /// Search the highest aggregate rate that passes (bisection, fresh sessions per trial).
    #[arg(long)]
    ramp: bool,
    /// Lowest aggregate rate of the search, pps.
    #[arg(long, default_value_t = 1000.0)]
    ramp_min: f64,
    /// Highest aggregate rate of the search, pps.
    #[arg(long, default_value_t = 200_000.0)]
    ramp_max: f64,
    /// Stop bisecting once the bracket is narrower than this percentage of its lower end.
    #[arg(long, default_value_t = 5.0)]
    ramp_precision_pct: f64,
    /// At most this many trials in a ramp.
    #[arg(long, default_value_t = 12)]
    ramp_max_trials: usize,
    /// Pause between ramp trials, so queues and the relay settle, milliseconds.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Pass criterion: loss below this percentage.
    #[arg(long, default_value_t = 0.1)]
    max_loss_pct: f64,
    /// Pass criterion: median one-way latency below this many milliseconds.
    #[arg(long, default_value_t = 10.0)]
    max_p50_ms: f64,

    /// Write the JSON record here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency percentile plot (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Include every flow's counters in the JSON record.
    #[arg(long)]
    per_flow: bool,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Print `@@loadgen send_start` / `@@loadgen send_end` on stderr when sending starts and
    /// ends (after session set-up and priming), so an orchestrator (scripts/bench-all) can
    /// sample the relay's CPU time over exactly the sending window.
    #[arg(long)]
    markers: bool,

    /// Local address of the blaster's sockets in `--grpc` and `--rtpproxy` mode.
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// The sessions' `listen` address (where sources send) in `--grpc` mode.
    #[arg(long, default_value = "127.0.0.1")]
    listen_ip: IpAddr,
    /// The sessions' `connect` address (where the relay sends from) in `--grpc` mode.
    #[arg(long, default_value = "127.0.0.1")]
    connect_ip: IpAddr,
    /// Session ID prefix (default `blast-PID-UNIXTIME`); trial k uses `PREFIX-tk-INDEX`.
    #[arg(long)]
    run_id: Option<String>,
    /// The sessions' idle timeout, ms (default: the relay's). A short one makes the relay
    /// reap sessions of a blaster that was killed outright.
    #[arg(long)]
    idle_timeout_ms: Option<u32>,
    /// Parallel gRPC requests (rtpproxy commands in flight; unix: connections, at most 32)
    /// while creating and removing sessions.
    #[arg(long, default_value_t = 32)]
    grpc_concurrency: usize,
    /// Upper bound for removing a trial's sessions, seconds.
    #[arg(long, default_value_t = 30)]
    cleanup_timeout: u64,

    /// Pin the sender thread to this core.
    #[arg(long)]
    core: Option<usize>,
    /// Pin the receiver thread to this core.
    #[arg(long)]
    recv_core: Option<usize>,
    /// Run the receiver thread under SCHED_FIFO at this priority (1-99, needs root), so that
    /// sharing a core with the sender does not delay receiving: otherwise the sender can hold
    /// the receiver off for milliseconds and the measured latency includes that.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    recv_priority: Option<u8>,
    /// How long the receiver keeps counting after the last packet was sent, milliseconds.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// How long to wait for every session's priming packet (both directions), milliseconds.
    #[arg(long, default_value_t = 3000)]
    prime_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Direction {
    Forward,
    Both,
}

impl Args {
    fn validate(&self) -> Result<()> {
        if let Some(seconds) = self.seconds
            && !(seconds > 0.0 && seconds <= MAX_SECONDS)
        {
            bail!("--seconds must be in (0, {MAX_SECONDS}]");
        }
        if self.size < rtp::MIN_PACKET_LEN || self.size > 65507 {
            bail!("--size must be between {} and 65507", rtp::MIN_PACKET_LEN);
        }
        if self.payload_type > 127 {
            bail!("--payload-type must be 0..=127");
        }
        if self.clock_rate == 0 {
            bail!("--clock-rate must be positive");
        }
        if let Some(n) = self.sessions
            && !(1..=MAX_SESSIONS).contains(&n)
        {
            bail!("--sessions must be in 1..={MAX_SESSIONS}");
        }
        if self.sessions.is_some() && self.targets.is_some() {
            bail!("--sessions goes with --grpc or --rtpproxy; --targets lists its sessions");
        }
        // Modifiers are one word of letters, digits and the punctuation of `c0,8`, `l1.2.3.4`
        // or `z20`; a space would split the command.
        if !self
            .rtpproxy_modifiers
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b",.:[]".contains(&b))
        {
            bail!("--rtpproxy-modifiers must be letters, digits and , . : [ ] only");
        }
        let rate_ok = |r: f64| r > 0.0 && r <= MAX_RATE;
        if self.ramp {
            if !(rate_ok(self.ramp_min) && rate_ok(self.ramp_max) && self.ramp_min < self.ramp_max)
            {
                bail!("need 0 < --ramp-min < --ramp-max <= {MAX_RATE}");
            }
            if self.ramp_precision_pct.is_nan()
                || self.ramp_precision_pct <= 0.0
                || self.ramp_max_trials < 2
            {
                bail!("--ramp-precision-pct must be positive and --ramp-max-trials at least 2");
            }
        } else if let Some(spec) = &self.phases {
            let schedule = Schedule::parse(spec).context("--phases")?;
            if schedule.phases().iter().any(|p| !rate_ok(p.rate)) {
                bail!("every --phases rate must be in (0, {MAX_RATE}]");
            }
            if schedule.duration().as_secs_f64() > MAX_SECONDS {
                bail!("the --phases together must be at most {MAX_SECONDS} s");
            }
        } else {
            match (self.pps_per_session, self.rate) {
                (Some(r), None) | (None, Some(r)) if rate_ok(r) => {}
                (None, None) => bail!("give --pps-per-session, --rate, --phases or --ramp"),
                _ => bail!("the rate must be in (0, {MAX_RATE}]"),
            }
        }
        if !(self.max_loss_pct >= 0.0 && self.max_p50_ms > 0.0) {
            bail!("--max-loss-pct must be >= 0 and --max-p50-ms positive");
        }
        if let Some(id) = &self.run_id
            && (id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!("--run-id must be 1 to 64 printable ASCII characters without spaces");
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.validate()?;
    sys::install_stop_handler().context("signal handlers")?;
    // Two sockets per session: a few thousand sessions exceed the usual soft limit of 1024.
    sys::raise_fd_limit();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("blast-{}-{started}", std::process::id()));

    let grpc = match &args.grpc {
        Some(url) => Some(Grpc::connect(
            url,
            args.grpc_concurrency,
            Duration::from_secs(args.cleanup_timeout),
        )?),
        None => None,
    };
    let rtpp = match &args.rtpproxy {
        Some(spec) => Some(Rtpp::connect(
            spec,
            args.grpc_concurrency,
            Duration::from_secs(args.cleanup_timeout),
            &args.rtpproxy_modifiers,
        )?),
        None => None,
    };
    let target_list = match &args.targets {
        Some(path) => Some(targets::read(path)?),
        None => None,
    };
    let setup = match (&grpc, &rtpp, &target_list) {
        (Some(grpc), _, _) => Setup::Grpc {
            grpc,
            sessions: args.sessions.unwrap_or(1),
            local_ip: args.local_ip,
            template: SessionTemplate {
                listen_ip: args.listen_ip,
                connect_ip: args.connect_ip,
                idle_timeout_ms: args.idle_timeout_ms,
                payload_type: args.payload_type,
                clock_rate: args.clock_rate,
            },
        },
        (None, Some(rtpp), _) => Setup::Rtpproxy {
            rtpp,
            sessions: args.sessions.unwrap_or(1),
            local_ip: args.local_ip,
        },
        (None, None, Some(t)) => Setup::Targets(t),
        (None, None, None) => bail!("give --grpc or --rtpproxy with --sessions, or --targets"),
    };
    let settings = Settings {
        setup,
        both: args.direction == Direction::Both,
        size: args.size,
        payload_type: args.payload_type,
        clock_rate: args.clock_rate,
        core: args.core,
        recv_core: args.recv_core,
        recv_priority: args.recv_priority,
        drain: Duration::from_millis(args.drain_ms),
        prime_timeout: Duration::from_millis(args.prime_timeout_ms),
        progress: !args.quiet,
        markers: args.markers,
    };
    let criteria = Criteria {
        max_loss_pct: args.max_loss_pct,
        max_p50_ms: args.max_p50_ms,
    };

    let mut doc = json!({
        "tool": "rtp-blaster",
        "format": 1,
        "mode": if args.ramp { "ramp" } else { "run" },
        "run_id": run_id,
        "started_unix": started,
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default().trim(),
        },
        "config": config_json(&args),
        "criteria": { "max_loss_pct": criteria.max_loss_pct, "max_p50_ms": criteria.max_p50_ms },
    });
    let mut curves: Vec<(String, Histogram<u64>)> = Vec::new();
    let outcome = if args.ramp {
        ramp(&args, &settings, &criteria, &run_id, &mut doc, &mut curves)
    } else {
        single(&args, &settings, &criteria, &run_id, &mut doc, &mut curves)
    };
    // A last look for anything of this run left on the relay (the trials already swept).
    if let Some(grpc) = &grpc {
        match grpc.count(&format!("{run_id}-")) {
            Ok(0) => {}
            Ok(n) => {
                eprintln!("rtp-blaster: warning: {n} session(s) of this run are still on the relay")
            }
            Err(e) => eprintln!("rtp-blaster: warning: cannot check for leftover sessions: {e:#}"),
        }
    }
    if let Err(e) = &outcome {
        doc["error"] = json!(format!("{e:#}"));
    }
    // Even a run that failed or was interrupted before measuring leaves a record saying so.
    write_outputs(&args, &doc, &curves)?;
    outcome
}

/// One run at the given rate.
fn single(
    args: &Args,
    settings: &Settings,
    criteria: &Criteria,
    run_id: &str,
    doc: &mut Value,
    curves: &mut Vec<(String, Histogram<u64>)>,
) -> Result<()> {
    let seconds = args.seconds.unwrap_or(0.0);
    let load = match (args.pps_per_session, args.rate, &args.phases) {
        (Some(pps), _, _) => Load::PerFlow(pps, seconds),
        (None, Some(rate), _) => {
            Load::Aggregate(Schedule::constant(rate, Duration::from_secs_f64(seconds))?)
        }
        (None, None, Some(spec)) => Load::Aggregate(Schedule::parse(spec)?),
        (None, None, None) => bail!("no rate given"),
    };
    doc["trials"] = json!([]);
    let o = trial::run(settings, &format!("{run_id}-t1"), &load, "")?;
    let s = Summary::new(&o, criteria);
    eprintln!("\nrtp-blaster: {}", describe(settings));
    eprint!("{}", s.human(&o));
    if let Some(trials) = doc["trials"].as_array_mut() {
        trials.push(s.to_json(&o, args.per_flow));
    }
    curves.push(("all flows".into(), o.rx.latency_all()));
    if o.rx.latency_ns.len() > 1 {
        curves.push(("forward".into(), o.rx.latency_ns[0].clone()));
        curves.push(("reverse".into(), o.rx.latency_ns[1].clone()));
    }
    Ok(())
}

/// Bisection for the highest passing aggregate rate: the minimum must pass and the maximum is
/// tried next (it may pass, then it is the answer); then the bracket [highest pass, lowest
/// fail] is halved until it is narrower than the precision or the trial budget is spent.
fn ramp(
    args: &Args,
    settings: &Settings,
    criteria: &Criteria,
    run_id: &str,
    doc: &mut Value,
    curves: &mut Vec<(String, Histogram<u64>)>,
) -> Result<()> {
    doc["trials"] = json!([]);
    let seconds = args.seconds.unwrap_or(0.0);
    let mut pass_hi: Option<f64> = None; // highest rate that passed
    let mut fail_lo: Option<f64> = None; // lowest rate that failed
    let mut table = Vec::new();
    let mut error = None;
    for k in 1..=args.ramp_max_trials {
        let rate = match (pass_hi, fail_lo) {
            (None, None) => args.ramp_min,
            (Some(_), None) => args.ramp_max,
            (Some(lo), Some(hi)) => {
                if hi - lo <= (lo * args.ramp_precision_pct / 100.0).max(1.0) {
                    break;
                }
                ((lo + hi) / 2.0).round()
            }
            (None, Some(_)) => break, // the minimum failed
        };
        if k > 1 && !settle(Duration::from_millis(args.settle_ms)) {
            break;
        }
        let label = format!("[trial {k} @ {rate:.0} pps] ");
        let schedule = Schedule::constant(rate, Duration::from_secs_f64(seconds))?;
        let o = match trial::run(
            settings,
            &format!("{run_id}-t{k}"),
            &Load::Aggregate(schedule),
            &label,
        ) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("rtp-blaster: trial {k} at {rate:.0} pps failed: {e:#}");
                error = Some(e);
                break;
            }
        };
        let s = Summary::new(&o, criteria);
        eprintln!("\nrtp-blaster: trial {k}: {rate:.0} pps");
        eprint!("{}", s.human(&o));
        let mut t = s.to_json(&o, args.per_flow);
        t["trial"] = json!(k);
        if let Some(trials) = doc["trials"].as_array_mut() {
            trials.push(t);
        }
        curves.push((format!("{rate:.0} pps"), o.rx.latency_all()));
        table.push((k, rate, s.pass(), o.interrupted, s));
        if o.interrupted {
            break;
        }
        if table.last().is_some_and(|t| t.2) {
            pass_hi = Some(rate);
            if rate >= args.ramp_max {
                break;
            }
        } else {
            fail_lo = Some(rate);
        }
    }

    eprintln!("\nrtp-blaster: ramp over {}", describe(settings));
    eprintln!("  trial        rate   sent pps   loss %       p50       p99   verdict");
    for (k, rate, pass, interrupted, s) in &table {
        eprintln!(
            "  {k:>5} {rate:>11.0} {:>10.0} {:>8.4} {:>9} {:>9}   {}",
            s.achieved_send_pps,
            s.total.loss_pct(),
            s.latency.map_or("-".into(), |l| report::dur(l.p50)),
            s.latency.map_or("-".into(), |l| report::dur(l.p99)),
            if *interrupted {
                "interrupted".to_owned()
            } else if *pass {
                "pass".to_owned()
            } else {
                format!("FAIL: {}", s.failures.join("; "))
            }
        );
    }
    let interrupted = table.last().is_some_and(|t| t.3) || sys::stop_requested();
    match (pass_hi, fail_lo) {
        (Some(r), _) if r >= args.ramp_max => {
            eprintln!(
                "  result: passes even at --ramp-max {r:.0} pps (raise it to find the limit)"
            );
        }
        (Some(lo), Some(hi)) => {
            eprintln!("  result: highest passing rate {lo:.0} pps (fails at {hi:.0} pps)");
        }
        (Some(lo), None) => eprintln!("  result: highest passing rate so far {lo:.0} pps"),
        (None, Some(_)) => eprintln!(
            "  result: fails already at --ramp-min {:.0} pps",
            args.ramp_min
        ),
        (None, None) => eprintln!("  result: no trial completed"),
    }
    if interrupted {
        eprintln!("  (interrupted: the search is incomplete)");
    }
    doc["result"] = json!({
        "max_passing_pps": pass_hi,
        "min_failing_pps": fail_lo,
        "complete": !interrupted && error.is_none(),
    });
    error.map_or(Ok(()), Err)
}

/// Waits between ramp trials; false if a stop was requested meanwhile.
fn settle(pause: Duration) -> bool {
    let end = Instant::now() + pause;
    while Instant::now() < end {
        if sys::stop_requested() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !sys::stop_requested()
}

fn describe(settings: &Settings) -> String {
    let dir = if settings.both {
        "both directions"
    } else {
        "forward only"
    };
    match &settings.setup {
        Setup::Grpc { sessions, .. } => format!("{sessions} gRPC session(s), {dir}"),
        Setup::Rtpproxy { sessions, .. } => format!("{sessions} rtpproxy call(s), {dir}"),
        Setup::Targets(t) => format!("{} target session(s), {dir}", t.len()),
    }
}

fn config_json(a: &Args) -> Value {
    json!({
        "grpc": a.grpc, "rtpproxy": a.rtpproxy, "rtpproxy_modifiers": a.rtpproxy_modifiers,
        "sessions": a.sessions,
        "targets": a.targets.as_ref().map(|p| p.display().to_string()),
        "direction": format!("{:?}", a.direction).to_lowercase(),
        "pps_per_session": a.pps_per_session, "rate": a.rate, "seconds": a.seconds,
        "phases": a.phases,
        "size": a.size, "payload_type": a.payload_type, "clock_rate": a.clock_rate,
        "ramp": a.ramp.then(|| json!({
            "min": a.ramp_min, "max": a.ramp_max, "precision_pct": a.ramp_precision_pct,
            "max_trials": a.ramp_max_trials, "settle_ms": a.settle_ms,
        })),
        "drain_ms": a.drain_ms, "prime_timeout_ms": a.prime_timeout_ms,
        "core": a.core, "recv_core": a.recv_core, "recv_priority": a.recv_priority,
    })
}

fn write_outputs(args: &Args, doc: &Value, curves: &[(String, Histogram<u64>)]) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)?;
    match &args.json {
        Some(path) => {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("write {}", path.display()))?;
            eprintln!("rtp-blaster: JSON record in {}", path.display());
        }
        None => println!("{text}"),
    }
    if let Some(path) = args.svg.as_ref().filter(|_| !curves.is_empty()) {
        std::fs::write(path, svg::latency_plot(curves))
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("rtp-blaster: latency plot in {}", path.display());
    }
    Ok(())
}
