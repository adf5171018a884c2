//! The `rtprelay` binary: configuration, logging, start-up and orderly shutdown, wiring the data
//! plane's shards to the gRPC control plane.

mod config;
mod logging;
mod system;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rtprelay_control::{EventHub, Router};
use rtprelay_dataplane::config::BatchWait;
use rtprelay_dataplane::io::uring::{TaskRun, UringConfig};
use rtprelay_dataplane::ports::PortRange;
use rtprelay_dataplane::{Dataplane, DataplaneConfig};
use tracing::{error, info, warn};

use config::{Cli, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", config::DEFAULT_TOML);
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rtprelay: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(&config.log.level) {
        eprintln!("rtprelay: {e:#}");
        return ExitCode::from(2);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dataplane_config(config: &Config, open_files: Option<u64>) -> anyhow::Result<DataplaneConfig> {
    let d = &config.dataplane;
    let shards = match d.shards {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let range = PortRange::new(config.media.port_min, config.media.port_max)?;
    if let Some((lo, hi)) = system::ephemeral_range()
        && range.overlaps(lo, hi)
    {
        warn!(
            media_ports = %format!("{}-{}", range.first, range.last()),
            ephemeral_ports = %format!("{lo}-{hi}"),
            "the media port range overlaps the kernel's ephemeral port range: other programs' \
             sockets will take media ports and calls will lose media; move one of the ranges"
        );
    }
    // UDP sockets live in each shard's registered-file table, not in the descriptor table,
    // but the kernel sizes no such table beyond the open-files limit.
    let mut max_sockets = d.max_sockets_per_shard;
    if let Some(files) = open_files {
        let fit = files.min(u64::from(u32::MAX)) as u32;
        if fit < max_sockets {
            info!(
                max_sockets,
                fit,
                sessions = u64::from(fit / 4) * shards as u64,
                "open-files limit caps the sockets per shard"
            );
            max_sockets = fit.max(4);
        }
    }
    let mut dp = DataplaneConfig::new(shards, range);
    dp.pin_cores = d.pin_cores;
    dp.preempt = Duration::from_millis(d.preempt_ms.max(1));
    dp.budget = d.budget;
    dp.interfaces = config
        .interfaces
        .iter()
        .map(config::Interface::media)
        .collect::<anyhow::Result<_>>()?;
    dp.sockets = rtprelay_dataplane::socket::SocketOptions {
        bind_device: config.media.bind_device,
        dscp: config.media.dscp,
        freebind: config.media.allow_nonlocal,
        rcvbuf: config.media.socket_rcvbuf,
        connect_destination: config.media.connect_destination,
    };
    dp.uring = UringConfig {
        sq_entries: d.sq_entries,
        buffers: d.buffers_per_shard,
        max_sockets,
        max_packet_age: Duration::from_millis(config.media.max_packet_age_ms),
        task_run: match d.task_run {
            config::TaskRun::Immediate => TaskRun::Immediate,
            config::TaskRun::Coop => TaskRun::Coop,
            config::TaskRun::Defer => TaskRun::Defer,
        },
    };
    dp.batch = BatchWait {
        packets: d.batch_packets,
        max_wait: Duration::from_micros(d.batch_max_wait_us),
        min_wait: Duration::from_micros(d.batch_min_wait_us),
        min_rate_pps: d.batch_min_rate_pps,
        linger: Duration::from_millis(d.linger_ms),
        busy_poll: Duration::from_micros(d.busy_poll_us),
    };
    Ok(dp)
}

fn run(config: Config) -> anyhow::Result<()> {
    info!(version = env!("CARGO_PKG_VERSION"), "rtprelay starting");
    // Each shard's socket table must fit under the limit, plus descriptors for TCP sessions,
    // sockets being set up and the control plane.
    let open_files = system::raise_limits(u64::from(config.dataplane.max_sockets_per_shard) + 4096);
    let dp_config = dataplane_config(&config, open_files)?;
    let shards = dp_config.shards;
    let events = EventHub::new(config.events.buffer);
    let dataplane =
        Dataplane::start(dp_config, Arc::new(events.clone())).context("starting the data plane")?;
    info!(shards, "data plane running");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rtprelay-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let router = Router::new(dataplane.handles().to_vec());
    let service = rtprelay_control::service(
        router.clone(),
        events.clone(),
        config.media.address,
        config.sessions.defaults(),
    );

    let result = runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.control.grpc_listen).await {
            Ok(l) => l,
            Err(e) => {
                router.shutdown().await;
                return Err(anyhow::Error::new(e).context(format!(
                    "binding the gRPC address {}",
                    config.control.grpc_listen
                )));
            }
        };
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(rtprelay_control::serve(listener, service.clone(), async {
            let _ = server_stopped.await;
        }));
        let (stop_rtpp, rtpp_stopped) = tokio::sync::watch::channel(false);
        let rtpp_tasks = match start_rtpproxy(&config, &router, &events, rtpp_stopped).await {
            Ok(tasks) => tasks,
            Err(e) => {
                router.shutdown().await;
                return Err(e);
            }
        };
        info!("rtprelay ready");

        let signal = wait_for_signal().await;
        info!(signal, "shutting down: closing every session");
        service.stop_accepting();
        let _ = stop_rtpp.send(true);
        for task in rtpp_tasks {
            let _ = task.await;
        }
        router.shutdown().await;
        events.close();
        let _ = stop_server.send(());
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
            Err(_) => warn!("gRPC server did not stop within 5 s; exiting anyway"),
        }
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    dataplane.join();
    if result.is_ok() {
        info!("rtprelay stopped");
    }
    result
}

/// Receive buffer of an rtpproxy UDP control socket. A burst of commands (a call storm, many
/// proxy workers at once, a proxy re-sending after a restart) waits here while the listener's
/// lanes are busy; the kernel's default (~212 KB) holds only ~270 command datagrams, and each
/// one dropped costs its call a retransmission a second later. 4 MiB holds ~5,000.
const RTPPROXY_RCVBUF: usize = 4 << 20;

/// An rtpproxy UDP control socket bound to `addr`, with [`RTPPROXY_RCVBUF`] of receive buffer
/// (beyond net.core.rmem_max when running as root).
fn rtpproxy_udp_socket(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    rtprelay_dataplane::socket::set_rcvbuf(&socket, RTPPROXY_RCVBUF);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Binds the configured rtpproxy control sockets and serves them until `stop` turns true.
async fn start_rtpproxy(
    config: &Config,
    router: &Router,
    events: &EventHub,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use rtprelay_control::rtpproxy::executor::{Executor, ExecutorConfig};
    use rtprelay_control::rtpproxy::notify::Notifier;
    use rtprelay_control::rtpproxy::server::{ListenerStats, serve_udp, serve_unix};
    let addrs = config.rtpproxy.udp_addresses()?;
    let paths = config.rtpproxy.unix_paths();
    if addrs.is_empty() && paths.is_empty() {
        return Ok(Vec::new());
    }
    // IPv6 streams (modifier 6) use the media address if it is IPv6, or ::1 beside a loopback
    // IPv4 media address; otherwise they are refused (E36).
    let address = config.media.address;
    let media_v6 = if address.is_ipv6() {
        Some(address)
    } else if address.is_loopback() {
        Some(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST))
    } else {
        None
    };
    let notifier = Arc::new(Notifier::new(config.rtpproxy.notify.clone()));
    tokio::spawn(notifier.clone().run(events.clone()));
    let executor = Arc::new(Executor::new(
        router.clone(),
        ExecutorConfig {
            media_v4: config.media.address,
            media_v6,
            ttl: Duration::from_secs(config.rtpproxy.ttl_s.max(1)),
            defaults: config.sessions.defaults(),
            record_dir: (!config.rtpproxy.record_dir.as_os_str().is_empty())
                .then(|| config.rtpproxy.record_dir.clone()),
            bridge: config.rtpproxy.bridge()?,
        },
        notifier,
    ));
    tokio::spawn(executor.refs().run(events.clone()));
    let mut tasks = Vec::new();
    for addr in addrs {
        let socket = rtpproxy_udp_socket(addr)
            .with_context(|| format!("binding the rtpproxy control socket {addr}"))?;
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(serve_udp(
            socket,
            executor.clone(),
            config.rtpproxy.allow.clone(),
            Arc::new(ListenerStats::default()),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    for path in paths {
        // A stale socket file from an earlier run would make bind fail.
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("binding the rtpproxy unix socket {}", path.display()))?;
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(serve_unix(
            listener,
            executor.clone(),
            Arc::new(ListenerStats::default()),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    Ok(tasks)
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop the relay with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
