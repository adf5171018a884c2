//! One trial: sockets and sessions, priming, the paced load with a live progress line, and the
//! raw counts the report is built from.
//!
//! Flow numbering: with N sessions, flow `i < N` is session i's forward direction (source socket
//! -> relay -> sink socket) and flow `N + i` its reverse direction (sink socket -> relay ->
//! source socket). The payload carries the flow number, and each receiving socket gets exactly
//! one flow, so the sink can tell loss from misrouting.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rtprelay_benches::schedule::{Phase, Schedule};
use rtprelay_benches::sender::{self, TxStream};
use rtprelay_benches::sink::{self, RxSocket};
use rtprelay_benches::targets::Target;
use rtprelay_benches::{LiveCounters, rtp, sys};

use crate::grpc::{Grpc, RelayCounters, SessionTemplate, Sessions};
use crate::rtpproxy::{self, QueryTotals, Rtpp};

/// Resend interval for priming packets that have not arrived yet.
const PRIME_RETRY: Duration = Duration::from_millis(200);
/// Priming packets sent per 2 ms round, so priming 10k sessions is not one burst that
/// overflows the relay's queues (and then needs retries itself).
const PRIME_PER_ROUND: usize = 256;

/// How the offered load is specified.
#[derive(Debug, Clone)]
pub enum Load {
    /// Packets per second of every flow (each direction of each session), for seconds.
    PerFlow(f64, f64),
    /// Packets per second over all flows together, one rate or phases of rates.
    Aggregate(Schedule),
}

/// Where the sessions come from.
pub enum Setup<'a> {
    Grpc {
        grpc: &'a Grpc,
        sessions: usize,
        local_ip: IpAddr,
        template: SessionTemplate,
    },
    /// Calls set up with the rtpproxy control protocol (`U`/`L`), deleted with `D`.
    Rtpproxy {
        rtpp: &'a Rtpp,
        sessions: usize,
        local_ip: IpAddr,
    },
    Targets(&'a [Target]),
}

/// A trial's sessions on the relay, whichever protocol created them.
enum Created<'a> {
    Grpc(Sessions<'a>),
    Rtpproxy(rtpproxy::Calls<'a>),
}

/// What removing a trial's sessions reported.
#[derive(Default)]
struct Removed {
    relay: Option<RelayCounters>,
    query: Option<QueryTotals>,
    left: Option<u64>,
    error: Option<String>,
}

impl Created<'_> {
    fn ids(&self) -> Vec<String> {
        match self {
            Created::Grpc(s) => s.ids().to_vec(),
            Created::Rtpproxy(c) => c.ids().to_vec(),
        }
    }

    /// Removes the sessions; a failure is reported with the measurement, not instead of it.
    fn remove(&mut self) -> Removed {
        let result = match self {
            Created::Grpc(s) => s.remove().map(|r| Removed {
                relay: Some(r.counters),
                left: Some(r.left),
                ..Removed::default()
            }),
            Created::Rtpproxy(c) => {
                let r = c.remove();
                Ok(Removed {
                    query: Some(r.totals),
                    left: Some(r.left),
                    ..Removed::default()
                })
            }
        };
        result.unwrap_or_else(|e| {
            eprintln!("rtp-blaster: warning: removing the sessions failed: {e:#}");
            Removed {
                error: Some(format!("{e:#}")),
                ..Removed::default()
            }
        })
    }
}

/// Settings shared by all trials of a run.
pub struct Settings<'a> {
    pub setup: Setup<'a>,
    pub both: bool,
    pub size: usize,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub core: Option<usize>,
    pub recv_core: Option<usize>,
    pub recv_priority: Option<u8>,
    pub drain: Duration,
    pub prime_timeout: Duration,
    pub progress: bool,
    /// Print the send start/end markers on stderr, for an orchestrator sampling the relay's
    /// CPU time exactly over the sending window.
    pub markers: bool,
}

/// Everything a trial measured, before any summarising.
pub struct Outcome {
    pub sessions: usize,
    pub flows: usize,
    /// Aggregate rate the sender was asked for.
    pub offered_pps: f64,
    /// Rate of each sending flow (in the first phase).
    pub per_flow_pps: f64,
    pub seconds: f64,
    /// The schedule's phases (one for a single rate).
    pub phases: Vec<Phase>,
    /// Packets the kernel accepted per flow and phase: `[flow * phases.len() + k]`.
    pub sent_per_phase: Vec<u64>,
    pub interrupted: bool,
    /// Packets the kernel accepted per flow (0 for flows that did not send).
    pub sent: Vec<u64>,
    pub send_dropped: u64,
    pub send_errors: u64,
    /// Packets of a phase skipped because the sender was still behind with it when the next
    /// phase began.
    pub send_skipped: u64,
    pub send_duration: Duration,
    /// Per flow, index = flow number.
    pub rx: sink::Received,
    /// Sessions whose priming packet never reached the sink (both directions only).
    pub unprimed: Vec<usize>,
    /// Sessions whose priming packet came from another address than the session's `connect`.
    pub reverse_mismatch: usize,
    pub session_ids: Vec<String>,
    pub relay: Option<RelayCounters>,
    /// The relay's own counters from `Q` (rtpproxy mode).
    pub relay_query: Option<QueryTotals>,
    /// Sessions still on the relay after removal (gRPC and rtpproxy modes; `None` if unknown).
    pub sessions_left: Option<u64>,
    /// Why removing the sessions failed, if it did.
    pub cleanup_error: Option<String>,
}

/// One session's sockets and addresses.
struct Flow {
    /// Sends the forward flow (connected to `dst`), receives the reverse one.
    src: UdpSocket,
    /// Receives the forward flow; sends the reverse one (connected once its peer is known).
    sink: UdpSocket,
    dst: SocketAddr,
    /// Where reverse traffic goes, if known before priming.
    reverse: Option<SocketAddr>,
}

pub fn run(settings: &Settings, prefix: &str, load: &Load, label: &str) -> Result<Outcome> {
    let (flows, mut sessions) = open(settings, prefix)?;
    let n = flows.len();
    let both = settings.both;
    // Forward streams first, then reverse ones: round-robin over this order puts each session's
    // reverse packets half a period after its forward ones.
    let mut streams: Vec<TxStream> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| TxStream::new(f.src.as_raw_fd(), i as u32, settings.payload_type, 0.0))
        .collect();

    let mut unprimed = Vec::new();
    let mut reverse_mismatch = 0;
    if both {
        let learned = prime(&flows, &mut streams, settings.size, settings.prime_timeout);
        for (i, (f, seen)) in flows.iter().zip(&learned).enumerate() {
            if seen.is_none() {
                unprimed.push(i);
            }
            if let (Some(known), Some(seen)) = (f.reverse, seen)
                && known != *seen
            {
                reverse_mismatch += 1;
            }
            // What the configuration says wins; otherwise what the relay actually used.
            let Some(peer) = f.reverse.or(*seen) else {
                continue;
            };
            f.sink
                .connect(peer)
                .with_context(|| format!("connect sink of session {i} to {peer}"))?;
            streams.push(TxStream::new(
                f.sink.as_raw_fd(),
                (n + i) as u32,
                settings.payload_type,
                0.0,
            ));
        }
        if !unprimed.is_empty() {
            eprintln!(
                "rtp-blaster: warning: {} of {n} session(s) did not pass their priming packet \
                 within {} ms (e.g. session {})",
                unprimed.len(),
                settings.prime_timeout.as_millis(),
                unprimed[0]
            );
        }
        if reverse_mismatch > 0 {
            eprintln!(
                "rtp-blaster: warning: {reverse_mismatch} session(s) forwarded from another \
                 address than the configured reverse one (which is used regardless)"
            );
        }
    }
    if sys::stop_requested() {
        bail!("interrupted before the measurement started");
    }

    let flow_count = if both { 2 * n } else { n };
    let schedule = match load {
        Load::PerFlow(pps, seconds) => Schedule::constant(
            pps * streams.len() as f64,
            Duration::from_secs_f64(*seconds),
        )?,
        Load::Aggregate(schedule) => schedule.clone(),
    };
    let seconds = schedule.duration().as_secs_f64();
    // The mean over the phases (the one rate without phases).
    let rate = schedule.total() as f64 / seconds;
    let phases = schedule.phases().to_vec();
    let per_flow_pps = phases[0].rate / streams.len().max(1) as f64;
    // ptime x clock: the RTP timestamp advances by one packet interval per packet (of the
    // first phase: a phase at another rate is a change of pace, not of the media's clock).
    let ts_step = f64::from(settings.clock_rate) / per_flow_pps;
    for s in &mut streams {
        s.ts_step = ts_step;
    }
    let mut rx_socks: Vec<RxSocket> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| RxSocket {
            fd: f.sink.as_raw_fd(),
            flow: i as u32,
            group: 0,
        })
        .collect();
    if both {
        rx_socks.extend(flows.iter().enumerate().map(|(i, f)| RxSocket {
            fd: f.src.as_raw_fd(),
            flow: (n + i) as u32,
            group: 1,
        }));
    }

    let cfg = sender::Config {
        schedule,
        size: settings.size,
        core: settings.core,
        markers: settings.markers,
    };
    let live = LiveCounters::default();
    let stop_rx = AtomicBool::new(false);
    let groups = if both { 2 } else { 1 };
    let (sent, rx) = std::thread::scope(|s| {
        let receiver = std::thread::Builder::new()
            .name("blaster-rx".into())
            .spawn_scoped(s, || {
                if let Some(priority) = settings.recv_priority {
                    sys::realtime(priority)?;
                }
                sink::run(
                    &rx_socks,
                    groups,
                    phases.len(),
                    settings.size,
                    settings.recv_core,
                    &stop_rx,
                    Some(&live),
                )
            })
            .context("spawn receiver thread")?;
        let sender = std::thread::Builder::new()
            .name("blaster-tx".into())
            .spawn_scoped(s, || sender::run(&mut streams, &cfg, Some(&live)));
        let sent = match sender {
            Ok(sender) => {
                if settings.progress {
                    show_progress(&live, label, || sender.is_finished());
                }
                let sent = sender.join().map_err(|_| anyhow!("sender thread panicked"));
                // Packets still inside the relay get this long to arrive before counting ends.
                std::thread::sleep(settings.drain);
                sent
            }
            Err(e) => Err(anyhow::Error::from(e).context("spawn sender thread")),
        };
        stop_rx.store(true, Ordering::Relaxed);
        let rx = receiver
            .join()
            .map_err(|_| anyhow!("receiver thread panicked"));
        anyhow::Ok((sent??, rx??))
    })?;
    let interrupted = sys::stop_requested();

    let mut per_flow = vec![0u64; flow_count];
    let n_phases = phases.len();
    let mut sent_per_phase = vec![0u64; flow_count * n_phases];
    for (stream, counts) in streams.iter().zip(sent.per_stream_phase.chunks(n_phases)) {
        let flow = stream.id as usize;
        if let Some(slot) = per_flow.get_mut(flow) {
            *slot = counts.iter().sum();
        }
        if let Some(slots) = sent_per_phase.get_mut(flow * n_phases..(flow + 1) * n_phases) {
            slots.copy_from_slice(counts);
        }
    }
    let session_ids = sessions.as_ref().map(Created::ids).unwrap_or_default();
    // The media sockets stay open until the sessions are gone, so the relay never sends into
    // closed ports (ICMP errors would show up in its counters as send errors).
    let t0 = Instant::now();
    let removed = sessions.as_mut().map(Created::remove).unwrap_or_default();
    if settings.progress && sessions.is_some() {
        eprintln!(
            "rtp-blaster: removed the sessions in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
    drop(flows);
    Ok(Outcome {
        sessions: n,
        flows: flow_count,
        offered_pps: rate,
        per_flow_pps,
        seconds,
        phases,
        sent_per_phase,
        interrupted,
        sent: per_flow,
        send_dropped: sent.dropped,
        send_errors: sent.errors,
        send_skipped: sent.skipped,
        send_duration: sent.duration,
        rx,
        unprimed,
        reverse_mismatch,
        session_ids,
        relay: removed.relay,
        relay_query: removed.query,
        sessions_left: removed.left,
        cleanup_error: removed.error,
    })
}

/// Binds the sockets and, in gRPC and rtpproxy mode, creates the sessions.
fn open<'a>(settings: &Settings<'a>, prefix: &str) -> Result<(Vec<Flow>, Option<Created<'a>>)> {
    match &settings.setup {
        Setup::Targets(targets) => {
            let flows = targets
                .iter()
                .map(|t| {
                    // Sinks first: nothing may be sent before the receiving side exists.
                    let sink = bind(t.sink)?;
                    let src = bind(t.src)?;
                    Ok(Flow {
                        src,
                        sink,
                        dst: t.dst,
                        reverse: t.reverse,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            connect_sources(&flows)?;
            Ok((flows, None))
        }
        Setup::Grpc {
            grpc,
            sessions,
            local_ip,
            template,
        } => {
            let (sinks, sink_addrs) = bind_media(*local_ip, *sessions)?;
            let t0 = Instant::now();
            let (guard, addrs) = grpc.create(prefix, template, &sink_addrs)?;
            if settings.progress {
                eprintln!(
                    "rtp-blaster: created {} session(s) in {:.2} s",
                    addrs.len(),
                    t0.elapsed().as_secs_f64()
                );
            }
            let flows = sinks
                .into_iter()
                .zip(addrs)
                .map(|(sink, a)| {
                    Ok(Flow {
                        src: bind(SocketAddr::new(*local_ip, 0))?,
                        sink,
                        dst: a.listen,
                        reverse: Some(a.connect),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            connect_sources(&flows)?;
            Ok((flows, Some(Created::Grpc(guard))))
        }
        Setup::Rtpproxy {
            rtpp,
            sessions,
            local_ip,
        } => {
            // Both ends exist before the call does: U names the caller, L the callee.
            let (sinks, sink_addrs) = bind_media(*local_ip, *sessions)?;
            let (srcs, src_addrs) = bind_media(*local_ip, *sessions)?;
            let pairs: Vec<(SocketAddr, SocketAddr)> =
                src_addrs.into_iter().zip(sink_addrs).collect();
            let t0 = Instant::now();
            let (guard, addrs) = rtpp.create(prefix, &pairs)?;
            if settings.progress {
                eprintln!(
                    "rtp-blaster: set up {} call(s) in {:.2} s",
                    addrs.len(),
                    t0.elapsed().as_secs_f64()
                );
            }
            let flows: Vec<Flow> = srcs
                .into_iter()
                .zip(sinks)
                .zip(addrs)
                .map(|((src, sink), a)| Flow {
                    src,
                    sink,
                    dst: a.to_callee,
                    reverse: Some(a.to_caller),
                })
                .collect();
            connect_sources(&flows)?;
            Ok((flows, Some(Created::Rtpproxy(guard))))
        }
    }
}

/// Binds `n` media sockets on `ip` and returns them with their addresses.
fn bind_media(ip: IpAddr, n: usize) -> Result<(Vec<UdpSocket>, Vec<SocketAddr>)> {
    let mut socks = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    while socks.len() < n {
        let s = bind(SocketAddr::new(ip, 0))?;
        let addr = s.local_addr()?;
        // RTCP would go to port + 1, so relays refuse 65535 as a media port.
        if addr.port() == u16::MAX {
            continue;
        }
        socks.push(s);
        addrs.push(addr);
    }
    Ok((socks, addrs))
}

fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    Ok(UdpSocket::from(sys::udp_socket(addr)?))
}

fn connect_sources(flows: &[Flow]) -> Result<()> {
    for f in flows {
        f.src
            .connect(f.dst)
            .with_context(|| format!("connect source to {}", f.dst))?;
    }
    Ok(())
}

/// Sends one priming packet per session through the relay (retrying every `PRIME_RETRY`) until
/// each arrived at its sink or `timeout` passed, so a latching relay knows every client before
/// reverse traffic starts. Returns, per session, the address the primed packet came from.
fn prime(
    flows: &[Flow],
    streams: &mut [TxStream],
    size: usize,
    timeout: Duration,
) -> Vec<Option<SocketAddr>> {
    let mut seen: Vec<Option<SocketAddr>> = vec![None; flows.len()];
    let mut last_sent: Vec<Option<Instant>> = vec![None; flows.len()];
    let mut waiting = flows.len();
    let mut buf = vec![0u8; size.max(2048)];
    let deadline = Instant::now() + timeout;
    while waiting > 0 && Instant::now() < deadline && !sys::stop_requested() {
        let mut budget = PRIME_PER_ROUND;
        for (i, f) in flows.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if seen[i].is_some() || last_sent[i].is_some_and(|t| t.elapsed() < PRIME_RETRY) {
                continue;
            }
            let len = size;
            streams[i].write_next(&mut buf[..len], sys::monotonic_ns(), rtp::PRIME_FLAG);
            // A failed send is just retried later; the timeout bounds the whole thing.
            let _ = f.src.send(&buf[..len]);
            last_sent[i] = Some(Instant::now());
            budget -= 1;
        }
        std::thread::sleep(Duration::from_millis(2));
        for (i, f) in flows.iter().enumerate() {
            if seen[i].is_some() || last_sent[i].is_none() {
                continue;
            }
            while let Ok((len, from)) = f.sink.recv_from(&mut buf) {
                let ok =
                    rtp::parse_packet(&buf[..len]).is_some_and(|p| p.priming && p.flow == i as u32);
                if ok && seen[i].is_none() {
                    seen[i] = Some(from);
                    waiting -= 1;
                }
            }
        }
    }
    seen
}

/// Prints a progress line once a second until `done()`; on a terminal it rewrites one line.
fn show_progress(live: &LiveCounters, label: &str, done: impl Fn() -> bool) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut next = start + Duration::from_secs(1);
    let (mut last_sent, mut last_rx, mut last_t) = (0u64, 0u64, start);
    let mut printed = false;
    while !done() {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += Duration::from_secs(1);
        let (sent, rx, gap_lost) = live.snapshot();
        // Gaps in the sequence numbers show loss at once but not a flow that went silent; what
        // was sent over a second ago and still has not arrived does.
        let lost = gap_lost.max(last_sent.saturating_sub(rx));
        let dt = (now - last_t).as_secs_f64().max(1e-3);
        let loss_pct = if rx + lost == 0 {
            0.0
        } else {
            100.0 * lost as f64 / (rx + lost) as f64
        };
        let line = format!(
            "{label}{:>4.0}s  sent {:>9.0} pps  recv {:>9.0} pps  lost {lost} ({loss_pct:.3}%)",
            (now - start).as_secs_f64(),
            (sent - last_sent.min(sent)) as f64 / dt,
            (rx - last_rx.min(rx)) as f64 / dt,
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        printed = true;
        (last_sent, last_rx, last_t) = (sent, rx, now);
    }
    if tty && printed {
        eprintln!();
    }
}
