//! `grpc-churn`: how many CreateSession + DestroySession pairs per second a running relay
//! sustains, the control-plane figure a SIP controller's call rate depends on; and, with
//! `--hold N`, how much memory N concurrent sessions cost the relay.
//!
//! Churn: `--clients` concurrent callers loop create -> destroy for `--seconds` with their own
//! session IDs, ports allocated by the relay. They share `--connections` HTTP/2 connections
//! (default: one each), so the client's own cost can be kept off the figure. Prints pairs per
//! second and the latency percentiles of each call kind as JSON.
//!
//! Hold: see [`rtprelay_benches::hold`] (shared with the capacity test).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rtprelay_benches::hold;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use serde_json::json;
use tonic::transport::Channel;

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

fn target(args: &Args) -> hold::Target {
    hold::Target {
        grpc: args.grpc.clone(),
        address: args.address.clone(),
        connect_address: args.connect_address.clone(),
    }
}

struct ClientResult {
    pairs: u64,
    errors: u64,
    create_us: Histogram<u64>,
    destroy_us: Histogram<u64>,
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
        if c.create_session(target(args).create_request(id.clone(), 9))
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
    let channels = target(&args).connect(conns).await?;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 600.0) || args.clients == 0 {
        bail!("--seconds must be in (0, 600] and --clients at least 1");
    }
    let args = std::sync::Arc::new(args);
    match args.hold {
        Some(n) => {
            let cfg = hold::Hold {
                target: target(&args),
                clients: args.clients,
                connections: args.connections,
                packets: args.packets,
                relay_pid: args.relay_pid,
                linger: args.linger,
            };
            let report = hold::run(std::sync::Arc::new(cfg), n).await?;
            println!("{report}");
            Ok(())
        }
        None => churn(args).await,
    }
}
