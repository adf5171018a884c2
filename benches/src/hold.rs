//! Holding N sessions on a running relay and measuring what they cost it in memory: the code
//! behind `grpc-churn --hold`, shared with the capacity test so both measure the same way.
//!
//! Creates N sessions, relays `packets` RTP packets each way through every one of them (so
//! media statistics exist as in a real call), reads the relay's resident memory before, with
//! the sessions up and after the traffic, then destroys them all. Traffic uses one client and
//! one destination socket for all sessions, so the tool itself needs no more descriptors for
//! 10,000 sessions than for one.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::{rtp, sys};

/// Upper bound of a hold: ports and descriptors run out long before.
pub const MAX_HOLD: usize = 200_000;

/// Where sessions are made: the relay's gRPC address and the media addresses to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    /// E.g. `http://127.0.0.1:50051`.
    pub grpc: String,
    /// Local media address of the sessions (and of the test traffic).
    pub address: String,
    /// Local address of the sessions' connect side (default: `address`); another loopback
    /// address doubles the ports available, as ports are allocated per address.
    pub connect_address: Option<String>,
}

impl Target {
    /// A UDP session from `address` to `address:destination`, ports chosen by the relay.
    pub fn create_request(&self, id: String, destination: u16) -> v1::CreateSessionRequest {
        let endpoint = |address: &str, port: u32| {
            Some(v1::Endpoint {
                address: address.to_owned(),
                port,
            })
        };
        let address = &self.address;
        v1::CreateSessionRequest {
            session_id: id,
            listen: endpoint(address, 0),
            connect: endpoint(self.connect_address.as_ref().unwrap_or(address), 0),
            destination: endpoint(address, u32::from(destination)),
            protocol: v1::Protocol::Udp as i32,
            options: None,
        }
    }

    /// `want` separate HTTP/2 connections to the relay.
    pub async fn connect(&self, want: usize) -> Result<Vec<Channel>> {
        let mut out = Vec::with_capacity(want);
        for _ in 0..want {
            let ch = Channel::from_shared(self.grpc.clone())
                .context("the gRPC address")?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", self.grpc))?;
            out.push(ch);
        }
        Ok(out)
    }
}

/// How to hold sessions.
#[derive(Debug, Clone)]
pub struct Hold {
    pub target: Target,
    /// Concurrent callers creating and destroying the sessions.
    pub clients: usize,
    /// HTTP/2 connections they share (0 = one each).
    pub connections: usize,
    /// RTP packets relayed each way through every session before measuring.
    pub packets: u16,
    /// The relay's process ID, whose memory is read from /proc.
    pub relay_pid: Option<u32>,
    /// Seconds to keep the sessions up after measuring (e.g. for a profiler).
    pub linger: f64,
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
    cfg: &Arc<Hold>,
    channels: &[Channel],
    prefix: &str,
    n: usize,
    destination: u16,
) -> Result<(Made, Vec<String>)> {
    let mut tasks = Vec::new();
    for k in 0..cfg.clients {
        let (cfg, ch) = (cfg.clone(), channels[k % channels.len()].clone());
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = RelayClient::new(ch);
            let mut made = Vec::new();
            let mut errors = Vec::new();
            for i in (k..n).step_by(cfg.clients) {
                let req = cfg
                    .target
                    .create_request(format!("{prefix}-{i}"), destination);
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
    cfg: &Hold,
    channels: &[Channel],
    prefix: &str,
    sessions: &Made,
) -> Result<u64> {
    let mut tasks = Vec::new();
    for k in 0..cfg.clients {
        let ch = channels[k % channels.len()].clone();
        let ids: Vec<String> = sessions
            .iter()
            .skip(k)
            .step_by(cfg.clients)
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

/// Creates `n` sessions, relays `cfg.packets` packets each way through each, and reports the
/// relay's memory before, with the sessions up, after the traffic and after destroying them,
/// as JSON (see `grpc-churn --hold`).
pub async fn run(cfg: Arc<Hold>, n: usize) -> Result<serde_json::Value> {
    if n == 0 || n > MAX_HOLD {
        bail!("--hold must be in 1..={MAX_HOLD}");
    }
    let listen_ip: std::net::IpAddr = cfg.target.address.parse().context("--address")?;
    let connect_ip: std::net::IpAddr = match &cfg.target.connect_address {
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
    let conns = match cfg.connections {
        0 => cfg.clients,
        n => n.min(cfg.clients),
    };
    let channels = cfg.target.connect(conns).await?;
    let prefix = format!("hold-{}", std::process::id());

    // Warm-up: fixed costs (receive buffers, allocator arenas, gRPC buffers) out of the figure.
    let warm = format!("{prefix}-warm");
    let (sessions, _) = create_all(&cfg, &channels, &warm, WARMUP_SESSIONS, dest_port).await?;
    let rounds = if cfg.packets > 0 { WARMUP_ROUNDS } else { 0 };
    traffic.run(&sessions, rounds)?;
    destroy_all(&cfg, &channels, &warm, &sessions).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = memory_kib(cfg.relay_pid);

    let start = Instant::now();
    let (sessions, errors) = create_all(&cfg, &channels, &prefix, n, dest_port).await?;
    let create_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = memory_kib(cfg.relay_pid);

    let (forwarded, reversed) = traffic.run(&sessions, cfg.packets)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = memory_kib(cfg.relay_pid);
    if cfg.linger > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(cfg.linger.min(600.0))).await;
    }

    let start = Instant::now();
    let destroy_failed = destroy_all(&cfg, &channels, &prefix, &sessions).await?;
    let destroy_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = memory_kib(cfg.relay_pid);

    let up = sessions.len().max(1) as f64;
    let per = |m: Option<(u64, u64)>| {
        let (b, m) = (before?, m?);
        Some(json!({
            "rss_bytes": (m.0 as f64 - b.0 as f64) * 1024.0 / up,
            "anon_bytes": (m.1 as f64 - b.1 as f64) * 1024.0 / up,
        }))
    };
    let kib = |m: Option<(u64, u64)>| m.map(|(r, a)| json!({"rss": r, "anon": a}));
    Ok(json!({
            "sessions": sessions.len(),
            "create_errors": n - sessions.len(),
            "first_errors": errors,
            "create_seconds": create_s,
            "packets_per_session_each_way": cfg.packets,
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
    }))
}
