//! Test harness: starts the real `rtprelay` binary on loopback and talks to it over gRPC.

#![allow(dead_code)]

pub mod rtpproxy;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tonic::transport::Channel;

/// Media port windows handed to relays started by this test binary, so parallel tests never
/// share ports. Each relay gets 1000 ports.
static NEXT_WINDOW: AtomicU16 = AtomicU16::new(0);

pub struct Relay {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub log: PathBuf,
}

/// Ports handed out by [`free_tcp_port`] and [`free_udp_port`] so far in this test binary.
static NEXT_SERVICE_PORT: AtomicU16 = AtomicU16::new(0);
/// Relays started by this test binary, for unique log file names.
static NEXT_RELAY: AtomicU16 = AtomicU16::new(0);
/// Configuration files written by this test binary, for unique names.
static NEXT_CONFIG: AtomicU16 = AtomicU16::new(0);

/// A port for a service the relay will bind (gRPC, rtpproxy control), free when probed with
/// `is_free`. Taken above the ephemeral range, so no socket bound to port 0 elsewhere in the
/// test (a client, a peer) can grab it between the probe and the relay's own bind, and never
/// the same one twice in one test binary: parallel tests got each other's ports otherwise.
/// Falls back to an ephemeral port when the range leaves no room above it.
fn service_port(is_free: impl Fn(u16) -> bool, ephemeral: impl Fn() -> u16) -> u16 {
    let range_end = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().nth(1)?.parse::<u32>().ok())
        .unwrap_or(60999);
    let first = range_end + 1;
    let span = 65535u32.saturating_sub(first);
    if span < 1000 {
        return ephemeral();
    }
    // Test binaries run one after another; starting each at its own offset keeps a port that
    // the previous one left in TIME_WAIT from costing a probe.
    let offset = std::process::id() % 8 * (span / 8);
    for _ in 0..span {
        let n = u32::from(NEXT_SERVICE_PORT.fetch_add(1, Ordering::SeqCst));
        let port = (first + (offset + n) % span) as u16;
        if is_free(port) {
            return port;
        }
    }
    panic!("no free port above the ephemeral range");
}

/// A free TCP port on loopback for the gRPC API (see [`service_port`]).
fn free_tcp_port() -> u16 {
    service_port(
        |p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok(),
        || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
            l.local_addr().expect("local addr").port()
        },
    )
}

impl Relay {
    /// Starts the relay with `shards` shards and its own 1000-port media window, plus `extra`
    /// flags. Waits until the gRPC API answers.
    pub async fn start(shards: usize, extra: &[&str]) -> (Relay, RelayClient<Channel>) {
        let window = NEXT_WINDOW.fetch_add(1, Ordering::SeqCst);
        let port_min = 16384 + window * 1000;
        let port_max = port_min + 999;
        Self::start_with_range(shards, port_min, port_max, extra).await
    }

    /// Starts the relay like [`Relay::start`] with `toml` as its configuration file (removed
    /// again once the relay has read it).
    pub async fn start_with_config(
        shards: usize,
        toml: &str,
        extra: &[&str],
    ) -> (Relay, RelayClient<Channel>) {
        let config = std::env::temp_dir().join(format!(
            "rtprelay-test-{}-{}.toml",
            std::process::id(),
            NEXT_CONFIG.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&config, toml).expect("write the test's relay config");
        let config_arg = config.to_string_lossy().into_owned();
        let mut args = vec!["--config", config_arg.as_str()];
        args.extend_from_slice(extra);
        let started = Self::start(shards, &args).await;
        let _ = std::fs::remove_file(&config);
        started
    }

    pub async fn start_with_range(
        shards: usize,
        port_min: u16,
        port_max: u16,
        extra: &[&str],
    ) -> (Relay, RelayClient<Channel>) {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!(
            "rtprelay-test-{}-{}-{}.log",
            std::process::id(),
            NEXT_RELAY.fetch_add(1, Ordering::SeqCst),
            grpc.port()
        ));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rtprelay"))
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--shards", &shards.to_string()])
            .args([
                "--port-min",
                &port_min.to_string(),
                "--port-max",
                &port_max.to_string(),
            ])
            .args(["--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start rtprelay");
        let mut relay = Relay {
            child: Some(child),
            grpc,
            port_min,
            port_max,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = RelayClient::connect(format!("http://{grpc}")).await {
                return (relay, client);
            }
            if let Some(status) = relay
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "rtprelay exited at start-up with {status}:\n{}",
                    relay.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rtprelay did not come up:\n{}",
                relay.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// CPU time (user + system) the relay process has used, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        // By position: rest starts at field 3 (state). Some fields can be negative (tpgid is
        // -1 without a controlling terminal), so skipping what does not parse would shift them.
        let field = |n: usize| -> u64 {
            rest.split_whitespace()
                .nth(n - 3)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
        };
        field(14) + field(15)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A relay that died under a test (a crash leaves no line in its log) is named as
            // such, so a failure that looks like a refused connection shows its real cause.
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("rtprelay (pid {}) had already exited: {status}", child.id());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "--- rtprelay log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

pub fn ep(address: &str, port: u16) -> Option<v1::Endpoint> {
    Some(v1::Endpoint {
        address: address.into(),
        port: u32::from(port),
    })
}

pub fn addr_of(e: &Option<v1::Endpoint>) -> SocketAddr {
    let e = e.as_ref().expect("endpoint present");
    SocketAddr::new(e.address.parse().expect("ip"), e.port as u16)
}

/// A UDP socket on 127.0.0.1 with a receive timeout.
pub fn udp(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(("127.0.0.1", port)).expect("bind udp");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// An RTP/RTCP socket pair on an even port and port + 1, searched from `from` upwards.
pub fn udp_pair(from: u16) -> (UdpSocket, UdpSocket) {
    let start = u32::from(from) + u32::from(from) % 2;
    let mut port = start;
    loop {
        if port + 1 > 65535 {
            // Wrapped: go on below the ephemeral range.
            port = 20000;
        }
        if let Ok(rtp) = UdpSocket::bind(("127.0.0.1", port as u16))
            && let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port as u16 + 1))
        {
            for s in [&rtp, &rtcp] {
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            }
            return (rtp, rtcp);
        }
        port += 2;
        assert!(port != start, "no free UDP pair");
    }
}

pub fn create_req(
    id: &str,
    listen_port: u16,
    connect_port: u16,
    dest: SocketAddr,
) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        session_id: id.into(),
        listen: ep("127.0.0.1", listen_port),
        connect: ep("127.0.0.1", connect_port),
        destination: ep(&dest.ip().to_string(), dest.port()),
        protocol: v1::Protocol::Udp as i32,
        options: None,
    }
}

/// Creates a session; panics if the relay refuses it or replies without the session.
pub async fn create_session(
    client: &mut RelayClient<Channel>,
    req: v1::CreateSessionRequest,
) -> v1::SessionInfo {
    let id = req.session_id.clone();
    client
        .create_session(req)
        .await
        .unwrap_or_else(|e| panic!("CreateSession({id}): {e}"))
        .into_inner()
        .session
        .unwrap_or_else(|| panic!("CreateSession({id}) returned no session"))
}

/// The relay's status of session `id`; panics if the call fails or the session is unknown.
pub async fn session_status(client: &mut RelayClient<Channel>, id: &str) -> v1::SessionInfo {
    client
        .get_session_status(v1::GetSessionStatusRequest {
            session_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetSessionStatus({id}): {e}"))
        .into_inner()
        .session
        .unwrap_or_else(|| panic!("GetSessionStatus({id}) returned no session"))
}

/// The peer an IPv4 UDP socket bound to `local` is connected to (`None`: unconnected), from
/// /proc/net/udp of this network namespace. Panics if no socket is bound to `local`.
pub fn udp_peer_of(local: SocketAddr) -> Option<SocketAddr> {
    let SocketAddr::V4(local) = local else {
        panic!("udp_peer_of reads IPv4 sockets only, not {local}");
    };
    // The kernel prints an address as the 32-bit word in memory (network byte order read
    // natively) and the port in host order, both in hex.
    let hex = |ip: std::net::Ipv4Addr, port: u16| {
        format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), port)
    };
    let want = hex(*local.ip(), local.port());
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let remote = table
        .lines()
        .skip(1)
        .find_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            (fields.next()? == want).then(|| fields.next().map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("no UDP socket bound to {local} in /proc/net/udp"));
    let (ip, port) = remote.split_once(':').expect("address:port");
    let ip = u32::from_str_radix(ip, 16).expect("hex address");
    let port = u16::from_str_radix(port, 16).expect("hex port");
    (port != 0).then(|| SocketAddr::from((ip.to_ne_bytes(), port)))
}

/// A recognisable payload of `len` bytes for packet `n` of session `s`.
pub fn payload(s: usize, n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (s * 31 + n * 7 + i) as u8).collect()
}

/// An RTP packet: version 2, payload type `pt`, the given sequence number, timestamp and SSRC,
/// and `payload` zero bytes.
pub fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: usize) -> Vec<u8> {
    let mut p = vec![0x80, pt & 0x7f];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.resize(12 + payload, 0);
    p
}

/// An RTCP sender report from `ssrc` carrying the NTP timestamp `ntp` (64-bit).
pub fn rtcp_sr(ssrc: u32, ntp: u64) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&ntp.to_be_bytes());
    p.extend_from_slice(&[0u8; 12]); // RTP timestamp, packet and octet counts
    p
}

/// An RTCP receiver report from `reporter` about `source`, echoing `lsr` (the middle 32 bits
/// of that source's last SR NTP time) with `dlsr` in units of 1/65536 s.
pub fn rtcp_rr(reporter: u32, source: u32, lsr: u32, dlsr: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&reporter.to_be_bytes());
    p.extend_from_slice(&source.to_be_bytes());
    p.extend_from_slice(&[0u8; 12]); // fraction/cumulative lost, highest seq, jitter
    p.extend_from_slice(&lsr.to_be_bytes());
    p.extend_from_slice(&dlsr.to_be_bytes());
    p
}

/// A free UDP port on loopback for a service the relay binds (see [`service_port`]).
pub fn free_udp_port() -> u16 {
    service_port(
        |p| UdpSocket::bind(("127.0.0.1", p)).is_ok(),
        || {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        },
    )
}

/// GetSessionStatus of `id`, which must exist.
pub async fn status(client: &mut RelayClient<Channel>, id: &str) -> v1::SessionInfo {
    let req = v1::GetSessionStatusRequest {
        session_id: id.into(),
    };
    client
        .get_session_status(req)
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

/// A WatchEvents stream limited to `ids`.
pub async fn watch(
    client: &mut RelayClient<Channel>,
    ids: &[&str],
) -> tonic::Streaming<v1::SessionEvent> {
    let req = v1::WatchEventsRequest {
        session_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    client.watch_events(req).await.unwrap().into_inner()
}

/// CreateSession that must succeed; the session as created.
pub async fn create(
    client: &mut RelayClient<Channel>,
    req: v1::CreateSessionRequest,
) -> v1::SessionInfo {
    client
        .create_session(req)
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}
