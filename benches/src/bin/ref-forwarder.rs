//! `ref-forwarder`: the reference "limit" for a user-space UDP relay.
//!
//! One thread, one level-triggered epoll set, `recvmmsg`/`sendmmsg` in batches of 64 between
//! pre-connected socket pairs, zero per-packet allocation and no per-packet bookkeeping beyond
//! three counters. Whatever a real relay (session lookup, latching, statistics, control plane)
//! costs on top of this is its overhead; the benchmark reports it as a ratio against this.
//!
//! Flow `i` listens on `listen:(base + 2i)` and sends everything it receives from its outbound
//! socket bound to `connect:(base + 2N + 2i)` to `dest_ip:(dest_base + 2i)` (or line `i` of
//! `--dest-file`). With `--sources-file` (line `i`: flow `i`'s source) it is symmetric, like an
//! RTP relay carrying both directions of a call: the inbound socket is connected to the source
//! too, and what the destination sends back to the outbound socket leaves from the inbound one.
//! Runs until SIGINT/SIGTERM or `--seconds`; prints its counters to stderr.
//!
//! `--engine uring` swaps the epoll loop for a bare io_uring one (see
//! `rtprelay_benches::uring_forward`): the best a user-space relay built like rtprelay could do.
//! `--engine uring-msg` is the same loop with the kernel work rtprelay asks for per packet: the
//! source address and arrival time of every datagram, and sends that name their destination
//! from unconnected sockets.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rtprelay_benches::sys::{self, BATCH, Epoll, MmsgBatch};
use rtprelay_benches::uring_forward::Receive;
use socket2::Socket;

#[derive(Parser, Debug)]
#[command(about = "Single-thread epoll + recvmmsg/sendmmsg UDP forwarder (benchmark reference)")]
struct Args {
    /// Address the inbound sockets bind to.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Address the outbound sockets bind to.
    #[arg(long, default_value = "127.0.0.1")]
    connect: IpAddr,
    /// Flow i listens on base+2i and sends from base+2N+2i.
    #[arg(long, default_value_t = 30000)]
    base_port: u16,
    /// Number of flows (socket pairs).
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Destination of flow 0 as IP:PORT; flow i goes to PORT+2i.
    #[arg(long, conflicts_with = "dest_file")]
    dest: Option<SocketAddr>,
    /// File with one IP:PORT destination per line, line i for flow i.
    #[arg(long)]
    dest_file: Option<std::path::PathBuf>,
    /// File with one IP:PORT source per line, line i for flow i: relay both directions
    /// (replies to the outbound socket leave from the inbound socket to this source).
    #[arg(long)]
    sources_file: Option<std::path::PathBuf>,
    /// Stop after this many seconds (0 = until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Pin the forwarding thread to this core.
    #[arg(long)]
    core: Option<usize>,
    /// The forwarding loop: epoll + recvmmsg/sendmmsg, bare io_uring, or io_uring with
    /// rtprelay's per-packet kernel work (source address, timestamp, unconnected sends).
    #[arg(long, value_enum, default_value_t = Engine::Epoll)]
    engine: Engine,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Engine {
    Epoll,
    Uring,
    UringMsg,
}

/// One relayed flow: packets read from `inbound` leave through `outbound`, connected to its
/// destination so `sendmmsg` needs no address and the kernel caches the route.
struct Flow {
    inbound: Socket,
    outbound: Socket,
}

#[derive(Default)]
struct Counters {
    received: u64,
    relayed: u64,
    dropped: u64,
    truncated: u64,
}

/// At most this many batches per flow per wake-up, so one busy flow cannot starve the others.
const MAX_BATCHES_PER_WAKEUP: usize = 8;
/// Receive buffer per datagram: the largest UDP payload over IPv4.
const BUF_SIZE: usize = 65536;

fn main() -> Result<()> {
    let args = Args::parse();
    sys::install_stop_handler().context("signal handlers")?;
    if let Some(core) = args.core {
        sys::pin_to_core(core)?;
    }
    let dests = destinations(args.dest_file.as_deref(), args.dest, args.flows)?;
    let sources = match &args.sources_file {
        Some(path) => Some(read_addrs(path, args.flows)?),
        None => None,
    };
    let flows = open_flows(&args, &dests, sources.as_deref())?;
    let uring = match args.engine {
        Engine::Epoll => None,
        Engine::Uring => Some(Receive::Bare),
        Engine::UringMsg => Some(Receive::WithSource),
    };
    if let Some(mode) = uring {
        return forward_uring(&flows, mode, &dests, sources.as_deref(), args.seconds);
    }
    let epoll = Epoll::new().context("epoll_create1")?;
    // Token 2i: flow i's inbound socket (forward); 2i + 1: its outbound socket (replies).
    for (i, flow) in flows.iter().enumerate() {
        epoll
            .add(flow.inbound.as_raw_fd(), 2 * i as u64)
            .context("epoll_ctl")?;
        if sources.is_some() {
            epoll
                .add(flow.outbound.as_raw_fd(), 2 * i as u64 + 1)
                .context("epoll_ctl")?;
        }
    }

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", rtprelay_benches::MARK_READY)?;
    out.flush()?;
    drop(out);

    let deadline = (args.seconds > 0).then(|| Instant::now() + Duration::from_secs(args.seconds));
    let counters = forward(&flows, &epoll, deadline)?;
    eprintln!(
        "ref-forwarder: flows={} received={} relayed={} dropped={} truncated={}",
        flows.len(),
        counters.received,
        counters.relayed,
        counters.dropped,
        counters.truncated
    );
    Ok(())
}

fn forward_uring(
    flows: &[Flow],
    mode: Receive,
    dests: &[SocketAddr],
    sources: Option<&[SocketAddr]>,
    seconds: u64,
) -> Result<()> {
    // Socket 2i: flow i's inbound socket; 2i + 1: its outbound one.
    let sockets: Vec<_> = flows
        .iter()
        .flat_map(|f| [f.inbound.as_raw_fd(), f.outbound.as_raw_fd()])
        .collect();
    let mut routes = Vec::new();
    // Where each route's packets go (needed by `Receive::WithSource` only).
    let mut targets = Vec::new();
    for (i, dest) in dests.iter().enumerate().take(flows.len()) {
        let socket = 2 * i as u32;
        routes.push((socket, socket + 1));
        targets.push(*dest);
        if let Some(src) = sources.and_then(|s| s.get(i)) {
            routes.push((socket + 1, socket));
            targets.push(*src);
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", rtprelay_benches::MARK_READY)?;
    out.flush()?;
    drop(out);
    let deadline = (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds));
    let c = rtprelay_benches::uring_forward::forward(
        &sockets,
        &routes,
        mode,
        &targets,
        deadline,
        sys::stop_requested,
    )?;
    eprintln!(
        "ref-forwarder (io_uring): flows={} received={} relayed={} dropped={}",
        flows.len(),
        c.received,
        c.relayed,
        c.dropped
    );
    Ok(())
}

/// The hot loop. Everything it touches was allocated before the first packet.
fn forward(flows: &[Flow], epoll: &Epoll, deadline: Option<Instant>) -> Result<Counters> {
    let mut batch = MmsgBatch::new(BUF_SIZE);
    let mut events = sys::event_buffer(256);
    let mut c = Counters::default();
    while !sys::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) {
        let n = epoll.wait(&mut events, 100).context("epoll_wait")?;
        for ev in &events[..n] {
            let token = sys::event_token(ev);
            let Some(flow) = flows.get((token / 2) as usize) else {
                continue;
            };
            let (inbound, outbound) = if token % 2 == 0 {
                (flow.inbound.as_raw_fd(), flow.outbound.as_raw_fd())
            } else {
                (flow.outbound.as_raw_fd(), flow.inbound.as_raw_fd())
            };
            for _ in 0..MAX_BATCHES_PER_WAKEUP {
                let got = match batch.recv(inbound) {
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // A connected socket reports an earlier ICMP port unreachable (a source
                    // that went away between trials) once; the next receive goes on.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e).context("recvmmsg"),
                };
                c.received += got as u64;
                c.truncated += (0..got).filter(|&i| batch.truncated(i)).count() as u64;
                batch.echo_lengths(got);
                let mut done = 0;
                while done < got {
                    match batch.send(outbound, done, got - done) {
                        Ok(sent) => {
                            c.relayed += sent as u64;
                            done += sent;
                        }
                        // A full send queue: drop the rest of this batch rather than stall.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            c.dropped += (got - done) as u64;
                            done = got;
                        }
                        // E.g. a queued ECONNREFUSED from an earlier ICMP: skip one and go on.
                        Err(_) => {
                            c.dropped += 1;
                            done += 1;
                        }
                    }
                }
                if got < BATCH {
                    break;
                }
            }
        }
    }
    Ok(c)
}

fn destinations(
    dest_file: Option<&std::path::Path>,
    dest: Option<SocketAddr>,
    flows: usize,
) -> Result<Vec<SocketAddr>> {
    if let Some(path) = dest_file {
        return read_addrs(path, flows);
    }
    let Some(dest) = dest else {
        bail!("one of --dest or --dest-file is required")
    };
    (0..flows)
        .map(|i| {
            Ok(SocketAddr::new(
                dest.ip(),
                port_at(dest.port(), i, 0, flows)?,
            ))
        })
        .collect()
}

/// The first `flows` addresses of a file with one IP:PORT per line (`#` comments allowed).
fn read_addrs(path: &std::path::Path, flows: usize) -> Result<Vec<SocketAddr>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut addrs = Vec::with_capacity(flows);
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        addrs.push(
            line.parse()
                .with_context(|| format!("bad address {line:?} in {}", path.display()))?,
        );
    }
    if addrs.len() < flows {
        bail!(
            "{} lists {} addresses for {} flows",
            path.display(),
            addrs.len(),
            flows
        );
    }
    addrs.truncate(flows);
    Ok(addrs)
}

fn open_flows(
    args: &Args,
    dests: &[SocketAddr],
    sources: Option<&[SocketAddr]>,
) -> Result<Vec<Flow>> {
    if args.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let n = args.flows;
    dests
        .iter()
        .enumerate()
        .map(|(i, dest)| {
            let inbound = SocketAddr::new(args.listen, port_at(args.base_port, i, 0, n)?);
            let outbound = SocketAddr::new(args.connect, port_at(args.base_port, i, n, n)?);
            let inbound = sys::udp_socket(inbound)?;
            let outbound = sys::udp_socket(outbound)?;
            if let Engine::UringMsg = args.engine {
                // As rtprelay's media sockets: stamped on arrival, never connected.
                sys::enable_rx_timestamps(&inbound)?;
                sys::enable_rx_timestamps(&outbound)?;
                return Ok(Flow { inbound, outbound });
            }
            outbound
                .connect(&(*dest).into())
                .with_context(|| format!("connect {dest}"))?;
            if let Some(src) = sources.and_then(|s| s.get(i)) {
                inbound
                    .connect(&(*src).into())
                    .with_context(|| format!("connect {src}"))?;
            }
            Ok(Flow { inbound, outbound })
        })
        .collect()
}

/// `base + 2 * (offset + i)`, checked to stay a valid port for all `n` flows.
fn port_at(base: u16, i: usize, offset: usize, n: usize) -> Result<u16> {
    let port = usize::from(base) + 2 * (offset + i);
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => bail!("port {port} out of range (base {base}, {n} flows)"),
    }
}
