//! Starting the real relay and driving its gRPC API: one session per flow before the load, and
//! their final counters after it (a cross-check of what the sink saw).

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rtprelay_proto::v1::relay_client::RelayClient;
use rtprelay_proto::v1::{
    CreateSessionRequest, DestroySessionRequest, Endpoint, PacketCounters, Protocol,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::procs::ChildGuard;

/// How long the relay may take to accept gRPC connections after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for each gRPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Picks a currently free TCP port on loopback for the relay's gRPC listener.
pub fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral TCP port")?;
    Ok(l.local_addr()?.port())
}

/// Starts `rtprelay` with `shards` data-plane shards (and `config` as its `--config`), its
/// output appended to `log`, and waits until its gRPC port accepts connections.
pub fn start(
    bin: &Path,
    shards: u32,
    config: Option<&Path>,
    grpc_port: u16,
    log: &Path,
) -> Result<ChildGuard> {
    if !bin.exists() {
        bail!(
            "relay binary {} does not exist (build it with cargo build --release -p rtprelay)",
            bin.display()
        );
    }
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
        .args(["--shards", &shards.to_string()])
        .args([
            "--port-min",
            "20000",
            "--port-max",
            "29999",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let mut guard = ChildGuard::spawn(&format!("rtprelay-{shards}"), &mut cmd)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], grpc_port));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        guard
            .check_alive()
            .with_context(|| format!("see {}", log.display()))?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(guard);
        }
        if Instant::now() >= deadline {
            bail!("rtprelay did not accept gRPC on {addr} within {STARTUP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn connect(grpc_port: u16) -> Result<RelayClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .connect()
        .await
        .context("gRPC connect")?;
    Ok(RelayClient::new(channel))
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
    }
}

fn loopback_any_port() -> Option<Endpoint> {
    Some(Endpoint {
        address: "127.0.0.1".into(),
        port: 0,
    })
}

/// Creates one UDP session per sink (IDs `{prefix}-{i}`) and returns, per flow, the address the
/// load generator must send to (the session's `listen` endpoint).
pub async fn create_sessions(
    client: &mut RelayClient<Channel>,
    prefix: &str,
    sinks: &[SocketAddr],
) -> Result<Vec<SocketAddr>> {
    let mut listens = Vec::with_capacity(sinks.len());
    for (i, sink) in sinks.iter().enumerate() {
        let req = CreateSessionRequest {
            session_id: format!("{prefix}-{i}"),
            listen: loopback_any_port(),
            connect: loopback_any_port(),
            destination: Some(endpoint(*sink)),
            protocol: Protocol::Udp as i32,
            // Server defaults for everything else (options added to the API later included).
            ..Default::default()
        };
        let resp = client
            .create_session(req)
            .await
            .with_context(|| format!("CreateSession {prefix}-{i}"))?
            .into_inner();
        let listen = resp
            .session
            .and_then(|s| s.listen)
            .context("CreateSession: no listen endpoint")?;
        let ip: IpAddr = listen
            .address
            .parse()
            .with_context(|| format!("bad listen address {:?}", listen.address))?;
        let port = u16::try_from(listen.port)
            .ok()
            .filter(|&p| p != 0)
            .context("bad listen port")?;
        listens.push(SocketAddr::new(ip, port));
    }
    Ok(listens)
}

/// Destroys the sessions and sums their final forward RTP counters.
pub async fn destroy_sessions(
    client: &mut RelayClient<Channel>,
    prefix: &str,
    count: usize,
) -> Result<serde_json::Value> {
    let mut sum = PacketCounters::default();
    let (mut unexpected, mut no_client, mut send_error, mut truncated) = (0, 0, 0, 0);
    for i in 0..count {
        let req = DestroySessionRequest {
            session_id: format!("{prefix}-{i}"),
        };
        let resp = client
            .destroy_session(req)
            .await
            .with_context(|| format!("DestroySession {prefix}-{i}"))?
            .into_inner();
        let Some(rtp) = resp.session.and_then(|s| s.forward).and_then(|f| f.rtp) else {
            continue;
        };
        sum.packets_received += rtp.packets_received;
        sum.packets_sent += rtp.packets_sent;
        if let Some(d) = rtp.dropped {
            unexpected += d.unexpected_source;
            no_client += d.no_client;
            send_error += d.send_error;
            truncated += d.truncated;
        }
    }
    Ok(json!({
        "packets_received": sum.packets_received,
        "packets_sent": sum.packets_sent,
        "dropped": {
            "unexpected_source": unexpected, "no_client": no_client,
            "send_error": send_error, "truncated": truncated,
        },
    }))
}
