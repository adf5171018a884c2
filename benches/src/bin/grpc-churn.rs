//! `grpc-churn`: how many CreateSession + DestroySession pairs per second a running relay
//! sustains, the control-plane figure a SIP controller's call rate depends on.
//!
//! `--clients` concurrent gRPC clients (one HTTP/2 connection each) loop create -> destroy for
//! `--seconds` with their own session IDs, ports allocated by the relay. Prints pairs per second
//! and the latency percentiles of each call kind as JSON.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "CreateSession+DestroySession pairs per second against a running relay")]
struct Args {
    /// The relay's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long to run (bounded: at most 600 s).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Local media address for the sessions.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
}

struct ClientResult {
    pairs: u64,
    errors: u64,
    create_us: Histogram<u64>,
    destroy_us: Histogram<u64>,
}

async fn client(args: &Args, index: usize, until: Instant) -> Result<ClientResult> {
    let mut c = RelayClient::connect(args.grpc.clone())
        .await
        .with_context(|| format!("connecting to {}", args.grpc))?;
    let mut r = ClientResult {
        pairs: 0,
        errors: 0,
        create_us: Histogram::new(3)?,
        destroy_us: Histogram::new(3)?,
    };
    let ep = |port| {
        Some(v1::Endpoint {
            address: args.address.clone(),
            port,
        })
    };
    let mut n = 0u64;
    while Instant::now() < until {
        let id = format!("churn-{}-{index}-{n}", std::process::id());
        n += 1;
        let req = v1::CreateSessionRequest {
            session_id: id.clone(),
            listen: ep(0),
            connect: ep(0),
            destination: ep(9),
            protocol: v1::Protocol::Udp as i32,
            options: None,
        };
        let t = Instant::now();
        if c.create_session(req).await.is_err() {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 600.0) || args.clients == 0 {
        bail!("--seconds must be in (0, 600] and --clients at least 1");
    }
    let args = std::sync::Arc::new(args);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let args = args.clone();
        tasks.push(tokio::spawn(async move { client(&args, i, until).await }));
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
