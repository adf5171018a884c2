//! `grpc-churn`: how many CreateSession + DestroySession pairs per second a running relay
//! sustains, the control-plane figure a SIP controller's call rate depends on; and, with
//! `--hold N`, how much memory N concurrent sessions cost the relay.
//!
//! Churn: `--clients` concurrent callers loop create -> destroy for `--seconds` with their own
//! session IDs, ports allocated by the relay. They share `--connections` HTTP/2 connections
//! (default: one each), so the client's own cost can be kept off the figure. Prints pairs per
//! second and the latency percentiles of each call kind as JSON.
//!
//! Hold: creates N sessions, relays `--packets` RTP packets each way through every one of them
//! (so media statistics exist as in a real call), reads the relay's resident memory
//! (`--relay-pid`) before, with the sessions up and after the traffic, then destroys them all.
//! Traffic uses one client and one destination socket for all sessions, so the tool itself
//! needs no more descriptors for 10,000 sessions than for one.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rtprelay_benches::{rtp, sys};
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use serde_json::json;
use tonic::transport::Channel;

/// Upper bound of `--hold`: ports and descriptors run out long before.
const MAX_HOLD: usize = 200_000;

#[derive(Parser, Debug)]
#[command(about = "CreateSession+DestroySession pairs per second, or the memory of N sessions")]
struct Args {
    /// The relay's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// HTTP/2 connections the callers share (0 = one per caller).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// How long to run the churn (bounded: at most 600 s).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Local media address for the sessions.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Local address of the sessions' connect side (default: `--address`); another loopback
    /// address doubles the ports available to `--hold`, as ports are allocated per address.
    #[arg(long)]
    connect_address: Option<String>,
    /// Instead of churning: create this many sessions, measure, destroy them.
    #[arg(long)]
    hold: Option<usize>,
    /// With `--hold`: RTP packets relayed each way through every session before measuring.
    #[arg(long, default_value_t = 3)]
    packets: u16,
    /// With `--hold`: the relay's process ID, whose memory is read from /proc.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// With `--hold`: seconds to keep the sessions up after measuring (e.g. for a profiler).
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
}

struct ClientResult {
    pairs: u64,
    errors: u64,
    create_us: Histogram<u64>,
    destroy_us: Histogram<u64>,
}

fn endpoint(address: &str, port: u32) -> Option<v1::Endpoint> {
    Some(v1::Endpoint {
        address: address.to_owned(),
        port,
    })
}

fn create_request(args: &Args, id: String, destination: u16) -> v1::CreateSessionRequest {
    let address = &args.address;
    v1::CreateSessionRequest {
        session_id: id,
        listen: endpoint(address, 0),
        connect: endpoint(args.connect_address.as_ref().unwrap_or(address), 0),
        destination: endpoint(address, u32::from(destination)),
        protocol: v1::Protocol::Udp as i32,
        options: None,
    }
}

async fn connections(args: &Args, want: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(want);
    for _ in 0..want {
        let ch = Channel::from_shared(args.grpc.clone())
            .context("the gRPC address")?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.grpc))?;
        out.push(ch);
    }
    Ok(out)
}

async fn churn_client(
    args: &Args,
    channel: Channel,
    index: usize,
    until: Instant,
) -> Result<ClientResult> {
    let mut c = RelayClient::new(channel);
    let mut r = ClientResult {
        pairs: 0,
        errors: 0,
        create_us: Histogram::new(3)?,
        destroy_us: Histogram::new(3)?,
    };
    let mut n = 0u64;
    while Instant::now() < until {
        let id = format!("churn-{}-{index}-{n}", std::process::id());
        n += 1;
        let t = Instant::now();
        if c.create_session(create_request(args, id.clone(), 9))
            .await
            .is_err()
        {
            r.errors += 1;
            continue;
        }
        r.create_us.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        match c
            .destroy_session(v1::DestroySessionRequest { session_id: id })
            .await
        {
            Ok(_) => {
                r.destroy_us.record(t.elapsed().as_micros() as u64)?;
                r.pairs += 1;
            }
            Err(_) => r.errors += 1,
        }
    }
    Ok(r)
}

async fn churn(args: std::sync::Arc<Args>) -> Result<()> {
    let conns = match args.connections {
        0 => args.clients,
        n => n.min(args.clients),
    };
    let channels = connections(&args, conns).await?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let args = args.clone();
        let ch = channels[i % conns].clone();
        tasks.push(tokio::spawn(async move {
            churn_client(&args, ch, i, until).await
        }));
    }
    let (mut pairs, mut errors) = (0, 0);
    let mut create = Histogram::<u64>::new(3)?;
    let mut destroy = Histogram::<u64>::new(3)?;
    for t in tasks {
        let r = t.await.context("client task")??;
        pairs += r.pairs;
        errors += r.errors;
        create.add(&r.create_us)?;
        destroy.add(&r.destroy_us)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    println!(
        "{}",
        json!({
            "clients": args.clients,
            "connections": conns,
            "seconds": secs,
            "pairs": pairs,
            "pairs_per_second": pairs as f64 / secs,
            "errors": errors,
            "create_us": {"p50": q(&create, 0.5), "p99": q(&create, 0.99), "max": create.max()},
            "destroy_us": {"p50": q(&destroy, 0.5), "p99": q(&destroy, 0.99), "max": destroy.max()},
        })
    );
    Ok(())
}

/// Resident memory of `pid` in KiB: (VmRSS, RssAnon).
fn memory_kib(pid: Option<u32>) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// Sends one RTP packet per session from `from` to each session's port in `to`, draining
/// `sink` as it goes so its buffer never overflows; returns the packets the sink received.
fn relay_round(
    from: &UdpSocket,
    sink: &UdpSocket,
    to: &[SocketAddr],
    seq: u16,
    ssrc_base: u32,
) -> Result<u64> {
    let mut pkt = [0u8; 172];
    let mut buf = [0u8; 2048];
    let mut got = 0u64;
    let mut drain = |got: &mut u64| {
        while sink.recv_from(&mut buf).is_ok() {
            *got += 1;
        }
    };
    for (i, addr) in to.iter().enumerate() {
        let ssrc = ssrc_base + i as u32;
        let ts = u32::from(seq) * rtp::TIMESTAMP_STEP;
        rtp::write_packet(&mut pkt, 0, seq, ts, ssrc, sys::monotonic_ns(), i as u32);
        // A full send buffer is waited out; a lost packet only lowers the count below.
        let _ = from.send_to(&pkt, addr);
        if i % 64 == 63 {
            drain(&mut got);
        }
    }
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end && got < to.len() as u64 {
        drain(&mut got);
        std::thread::sleep(Duration::from_millis(5));
    }
    drain(&mut got);
    Ok(got)
}

type Made = Vec<(usize, u16, u16)>;

/// Creates sessions `PREFIX-0..n` over the shared connections; returns (index, listen port,
/// connect port) of each one created, and the first errors.
async fn create_all(
    args: &std::sync::Arc<Args>,
    channels: &[Channel],
    prefix: &str,
    n: usize,
    destination: u16,
) -> Result<(Made, Vec<String>)> {
    let mut tasks = Vec::new();
    for k in 0..args.clients {
        let (args, ch) = (args.clone(), channels[k % channels.len()].clone());
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = RelayClient::new(ch);
            let mut made = Vec::new();
            let mut errors = Vec::new();
            for i in (k..n).step_by(args.clients) {
                let req = create_request(&args, format!("{prefix}-{i}"), destination);
                match c.create_session(req).await {
                    Ok(r) => {
                        let s = r.into_inner().session.unwrap_or_default();
                        let port = |e: Option<v1::Endpoint>| e.map_or(0, |e| e.port as u16);
                        made.push((i, port(s.listen), port(s.connect)));
                    }
                    Err(e) => errors.push(format!("{}: {}", e.code(), e.message())),
                }
            }
            (made, errors)
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    let mut errors: Vec<String> = Vec::new();
    for t in tasks {
        let (made, errs) = t.await.context("create task")?;
        sessions.extend(made);
        errors.extend(errs);
    }
    sessions.sort_unstable();
    errors.truncate(5);
    Ok((sessions, errors))
}

/// Destroys the sessions `create_all` made; returns how many destroys failed.
async fn destroy_all(
    args: &Args,
    channels: &[Channel],
    prefix: &str,
    sessions: &Made,
) -> Result<u64> {
    let mut tasks = Vec::new();
    for k in 0..args.clients {
        let ch = channels[k % channels.len()].clone();
        let ids: Vec<String> = sessions
            .iter()
            .skip(k)
            .step_by(args.clients)
            .map(|&(i, _, _)| format!("{prefix}-{i}"))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut c = RelayClient::new(ch);
            let mut failed = 0u64;
            for id in ids {
                let req = v1::DestroySessionRequest { session_id: id };
                if c.destroy_session(req).await.is_err() {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.context("destroy task")?;
    }
    Ok(failed)
}

/// The sockets relaying test traffic through held sessions.
struct Traffic {
    client: UdpSocket,
    dest: UdpSocket,
    listen_ip: std::net::IpAddr,
    connect_ip: std::net::IpAddr,
}

impl Traffic {
    /// `rounds` packets each way through every session; returns (forwarded, reversed).
    fn run(&self, sessions: &Made, rounds: u16) -> Result<(u64, u64)> {
        let listen: Vec<SocketAddr> = sessions
            .iter()
            .map(|&(_, l, _)| SocketAddr::new(self.listen_ip, l))
            .collect();
        let connect: Vec<SocketAddr> = sessions
            .iter()
            .map(|&(_, _, c)| SocketAddr::new(self.connect_ip, c))
            .collect();
        let (mut forwarded, mut reversed) = (0, 0);
        for seq in 1..=rounds {
            forwarded += relay_round(&self.client, &self.dest, &listen, seq, 1)?;
            reversed += relay_round(&self.dest, &self.client, &connect, seq, 1 << 24)?;
        }
        Ok((forwarded, reversed))
    }
}

/// Sessions and packets of the warm-up: enough packets for every receive buffer of every
/// shard to have been used once, so the measurement sees per-session memory only.
const WARMUP_SESSIONS: usize = 64;
const WARMUP_ROUNDS: u16 = 200;

async fn hold(args: std::sync::Arc<Args>, n: usize) -> Result<()> {
    if n == 0 || n > MAX_HOLD {
        bail!("--hold must be in 1..={MAX_HOLD}");
    }
    let listen_ip: std::net::IpAddr = args.address.parse().context("--address")?;
    let connect_ip: std::net::IpAddr = match &args.connect_address {
        Some(a) => a.parse().context("--connect-address")?,
        None => listen_ip,
    };
    // Large buffers: the relay forwards a whole round faster than it is drained.
    let any = SocketAddr::new(listen_ip, 0);
    let client: UdpSocket = sys::udp_socket(any)?.into();
    let dest: UdpSocket = sys::udp_socket(any)?.into();
    let dest_port = dest.local_addr()?.port();
    let traffic = Traffic {
        client,
        dest,
        listen_ip,
        connect_ip,
    };
    let conns = match args.connections {
        0 => args.clients,
        n => n.min(args.clients),
    };
    let channels = connections(&args, conns).await?;
    let prefix = format!("hold-{}", std::process::id());

    // Warm-up: fixed costs (receive buffers, allocator arenas, gRPC buffers) out of the figure.
    let warm = format!("{prefix}-warm");
    let (sessions, _) = create_all(&args, &channels, &warm, WARMUP_SESSIONS, dest_port).await?;
    let rounds = if args.packets > 0 { WARMUP_ROUNDS } else { 0 };
    traffic.run(&sessions, rounds)?;
    destroy_all(&args, &channels, &warm, &sessions).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = memory_kib(args.relay_pid);

    let start = Instant::now();
    let (sessions, errors) = create_all(&args, &channels, &prefix, n, dest_port).await?;
    let create_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = memory_kib(args.relay_pid);

    let (forwarded, reversed) = traffic.run(&sessions, args.packets)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = memory_kib(args.relay_pid);
    if args.linger > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.linger.min(600.0))).await;
    }

    let start = Instant::now();
    let destroy_failed = destroy_all(&args, &channels, &prefix, &sessions).await?;
    let destroy_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = memory_kib(args.relay_pid);

    let up = sessions.len().max(1) as f64;
    let per = |m: Option<(u64, u64)>| {
        let (b, m) = (before?, m?);
        Some(json!({
            "rss_bytes": (m.0 as f64 - b.0 as f64) * 1024.0 / up,
            "anon_bytes": (m.1 as f64 - b.1 as f64) * 1024.0 / up,
        }))
    };
    let kib = |m: Option<(u64, u64)>| m.map(|(r, a)| json!({"rss": r, "anon": a}));
    println!(
        "{}",
        json!({
            "sessions": sessions.len(),
            "create_errors": n - sessions.len(),
            "first_errors": errors,
            "create_seconds": create_s,
            "packets_per_session_each_way": args.packets,
            "forwarded": forwarded,
            "reversed": reversed,
            "destroy_seconds": destroy_s,
            "destroy_errors": destroy_failed,
            "memory_kib": {
                "before": kib(before),
                "created": kib(created),
                "after_traffic": kib(loaded),
                "destroyed": kib(after),
            },
            "per_session": {
                "created": per(created),
                "after_traffic": per(loaded),
            },
        })
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 600.0) || args.clients == 0 {
        bail!("--seconds must be in (0, 600] and --clients at least 1");
    }
    let args = std::sync::Arc::new(args);
    match args.hold {
        Some(n) => hold(args, n).await,
        None => churn(args).await,
    }
}
