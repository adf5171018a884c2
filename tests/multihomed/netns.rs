//! Network-namespace plumbing for the multi-homed tests: the topology (built by
//! `scripts/netns-topology`), threads that enter a namespace, the relay started inside the relay
//! namespace with a gRPC client that lives there too, UDP sockets that report the TOS/traffic
//! class and arrival interface of what they receive, and the kernel's own interface counters.
//!
//! How the test process reaches things inside the namespaces: a network namespace is a property
//! of a thread (setns(2) with CLONE_NEWNET changes only the calling thread), and a socket belongs
//! to the namespace it was created in for its whole life, whichever thread uses it later. So:
//! - UDP sockets for the client and the server are created in a short-lived thread that entered
//!   the client's or server's namespace, and are then used from the test's own thread.
//! - The relay serves gRPC on 127.0.0.1 of the relay namespace, which the root namespace cannot
//!   reach. Its client runs on a dedicated thread that entered the relay namespace and drives a
//!   current-thread tokio runtime, so every socket tonic/hyper ever opens (including a reconnect)
//!   is created on that thread, inside the namespace. The test hands it jobs over a channel.
//!   This needs no extra veth to the root namespace, no addresses there (so tests running in
//!   parallel cannot clash) and no change to the relay.
//! - Interface counters come from `ip netns exec <ns> cat /sys/class/net/...`: sysfs shows the
//!   devices of the namespace it was mounted in, which is why `ip netns exec` remounts it; a
//!   setns'd thread would still see the root namespace's /sys.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, mpsc};
use std::time::{Duration, Instant};

use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tonic::transport::Channel;

/// Every gRPC call and every wait for a packet is bounded by this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
pub const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// The gRPC port inside the relay namespace (each namespace has its own loopback).
const GRPC_PORT: u16 = 50051;
pub const PORT_MIN: u16 = 20000;
pub const PORT_MAX: u16 = 20999;

// ---------------------------------------------------------------------------------------------
// Privilege gate

/// True if the test may run. Without root it prints a loud SKIPPED message and returns false,
/// unless CI=true, where skipping is not allowed and the test fails instead.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!(
        "{test} needs root (it creates network namespaces, veth pairs and runs the relay in them)"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping it");
    }
    // Straight to the process's stderr: libtest captures eprintln! of passing tests, and a skip
    // must never be silent.
    let _ = writeln!(
        io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED: {why}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

// ---------------------------------------------------------------------------------------------
// Topology

/// The topology's fixed addresses (see scripts/netns-topology).
pub mod addr {
    use std::net::IpAddr;

    pub fn ip(s: &str) -> IpAddr {
        s.parse().expect("address literal")
    }
    pub const CLI_A4: &str = "10.201.1.2";
    pub const RELAY_A4: &str = "10.201.1.1";
    pub const RELAY_B4: &str = "10.201.2.1";
    pub const SRV_B4: &str = "10.201.2.2";
    pub const CLI_A6: &str = "fd00:201:1::2";
    pub const RELAY_A6: &str = "fd00:201:1::1";
    pub const RELAY_B6: &str = "fd00:201:2::1";
    pub const SRV_B6: &str = "fd00:201:2::2";
    /// Assigned nowhere.
    pub const NOWHERE4: &str = "10.201.9.9";
    pub const NOWHERE6: &str = "fd00:201:9::9";
}

/// Interface names inside the namespaces.
pub mod dev {
    pub const RELAY_A: &str = "relay-a";
    pub const RELAY_B: &str = "relay-b";
    pub const RELAY_C: &str = "relay-c";
    pub const SRV_B: &str = "srv-b";
    pub const SRV_C: &str = "srv-c";
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-topology")
}

fn run_script(args: &[&str]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script().display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "netns-topology {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Namespace names start with `rmh<pid>-`. Topologies of test processes that no longer exist
/// (killed before their Drop guards ran) are removed once per test binary.
fn reap_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        let mut prefixes = std::collections::BTreeSet::new();
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("rmh") else {
                continue;
            };
            let Some((pid, _)) = rest.split_once('-') else {
                continue;
            };
            if pid.parse::<u32>().is_err() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            for role in ["cli", "relay", "srv"] {
                if let Some(p) = name.strip_suffix(role) {
                    prefixes.insert(p.to_owned());
                }
            }
        }
        for p in prefixes {
            let _ = run_script(&["down", &p]);
        }
    });
}

/// One topology; torn down (namespaces, veths, anything running in them) when dropped.
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    /// Client, relay (A and B) and server namespaces, with a prefix unique to this process and
    /// `tag`, so tests can run in parallel.
    pub fn up(tag: &str) -> Topology {
        reap_stale();
        let prefix = format!("rmh{}-{tag}-", std::process::id());
        // The guard exists before `up` runs, so even a half-built topology is removed.
        let topo = Topology { prefix };
        if let Err(e) = run_script(&["up", &topo.prefix]) {
            panic!("{e}");
        }
        topo
    }

    /// Adds interface C and the more specific routes that prefer it for the server's B address.
    pub fn add_wrong_route(&self) {
        if let Err(e) = run_script(&["wrong-route", &self.prefix]) {
            panic!("{e}");
        }
    }

    pub fn cli(&self) -> String {
        format!("{}cli", self.prefix)
    }
    pub fn relay(&self) -> String {
        format!("{}relay", self.prefix)
    }
    pub fn srv(&self) -> String {
        format!("{}srv", self.prefix)
    }

    /// Runs `ip -n <ns> args...` and fails the test if it fails.
    pub fn ip(&self, ns: &str, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = run_script(&["down", &self.prefix]) {
            eprintln!("tearing down {}: {e}", self.prefix);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Threads inside a namespace

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace file descriptor; it affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
}

/// Runs `f` on a fresh thread inside network namespace `ns` and returns its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// The interface index of `device` in namespace `ns`.
pub fn ifindex(ns: &str, device: &str) -> u32 {
    let name = std::ffi::CString::new(device).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string; its helper socket is created in
    // this thread's namespace.
    let i = in_netns(ns, || unsafe { libc::if_nametoindex(name.as_ptr()) });
    assert!(i != 0, "no interface {device} in {ns}");
    i
}

/// Local UDP ports of every UDP socket (v4 and v6) in namespace `ns`.
pub fn udp_ports(ns: &str) -> Vec<u16> {
    in_netns(ns, || {
        let mut ports = Vec::new();
        for table in ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("{table}: {e}"));
            for line in text.lines().skip(1) {
                let local = line.split_whitespace().nth(1).unwrap_or("");
                if let Some((_, port)) = local.rsplit_once(':')
                    && let Ok(p) = u16::from_str_radix(port, 16)
                {
                    ports.push(p);
                }
            }
        }
        ports
    })
}

// ---------------------------------------------------------------------------------------------
// Interface counters

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub rx: u64,
    pub tx: u64,
}

/// rx/tx packet counters of every interface in `ns`, as the kernel keeps them.
pub fn counters(ns: &str) -> HashMap<String, Count> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(
            "cd /sys/class/net && for d in *; do \
             echo \"$d $(cat $d/statistics/rx_packets) $(cat $d/statistics/tx_packets)\"; done",
        )
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "reading counters in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_owned();
            let rx = f.next()?.parse().ok()?;
            let tx = f.next()?.parse().ok()?;
            Some((name, Count { rx, tx }))
        })
        .collect()
}

/// How much each interface's counters grew from `before` to `after`.
pub fn delta(
    before: &HashMap<String, Count>,
    after: &HashMap<String, Count>,
) -> HashMap<String, Count> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            (
                k.clone(),
                Count {
                    rx: a.rx - b.rx,
                    tx: a.tx - b.tx,
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// UDP sockets that report TOS and arrival interface

/// A datagram as received, with what the kernel said about it.
#[derive(Debug, Clone)]
pub struct Received {
    pub data: Vec<u8>,
    pub from: SocketAddr,
    /// IPv4 TOS byte or IPv6 traffic class.
    pub tos: Option<u8>,
    /// Index of the interface it arrived on.
    pub ifindex: Option<u32>,
}

fn setsockopt_int(s: &UdpSocket, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt reads one c_int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
}

/// A UDP socket bound to `addr` inside namespace `ns`, with a receive timeout, that reports the
/// TOS/traffic class and arrival interface of every datagram, and sends with TOS `own_tos`.
pub fn udp_in(ns: &str, addr: SocketAddr, own_tos: u8) -> UdpSocket {
    let s = in_netns(ns, || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    if addr.is_ipv4() {
        setsockopt_int(&s, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
        setsockopt_int(&s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        setsockopt_int(&s, libc::IPPROTO_IP, libc::IP_TOS, i32::from(own_tos));
    } else {
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1);
        setsockopt_int(
            &s,
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            i32::from(own_tos),
        );
    }
    s
}

/// Receives one datagram (bounded by the socket's timeout) with its TOS and arrival interface.
pub fn recv(s: &UdpSocket) -> io::Result<Received> {
    let mut data = vec![0u8; 65_536];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid sockaddr_storage / msghdr.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 64];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(msg.msg_flags & libc::MSG_TRUNC, 0, "datagram truncated");
    data.truncate(n as usize);
    // SAFETY: the kernel filled `name` with a sockaddr of the family it declares.
    let from = unsafe {
        match i32::from(name.ss_family) {
            libc::AF_INET => {
                let sin = &*(&raw const name).cast::<libc::sockaddr_in>();
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                ))
            }
            libc::AF_INET6 => {
                let sin6 = &*(&raw const name).cast::<libc::sockaddr_in6>();
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                ))
            }
            f => panic!("unexpected address family {f}"),
        }
    };
    let (mut tos, mut ifindex) = (None, None);
    // SAFETY: walking the control messages the kernel wrote into `control`, within
    // msg_controllen, reading each payload by the type its level/type pair declares.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TOS) => tos = Some(*data),
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    ifindex = Some(info.ipi_ifindex as u32);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    tos = Some(data.cast::<libc::c_int>().read_unaligned() as u8);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    ifindex = Some(info.ipi6_ifindex);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Received {
        data,
        from,
        tos,
        ifindex,
    })
}

// ---------------------------------------------------------------------------------------------
// The relay inside the relay namespace

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &mut RelayClient<Channel>) + Send>;

/// The relay binary running in the relay namespace, and its gRPC client thread.
pub struct NsRelay {
    child: Option<Child>,
    log: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    stop: Arc<AtomicBool>,
}

impl NsRelay {
    /// Starts the relay in `ns` (one shard, ports PORT_MIN..=PORT_MAX, plus `extra` flags) and
    /// waits until its gRPC API answers from inside the namespace.
    pub fn start(ns: &str, extra: &[&str]) -> NsRelay {
        let log = std::env::temp_dir().join(format!("{ns}-{}.log", unique()));
        let log_file = File::create(&log).expect("create log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_rtprelay")])
            .args(["--grpc-listen", &format!("127.0.0.1:{GRPC_PORT}")])
            .args(["--shards", "1", "--no-pin", "--log-level", "info"])
            .args(["--port-min", &PORT_MIN.to_string()])
            .args(["--port-max", &PORT_MAX.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start rtprelay in its namespace");
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut relay = NsRelay {
            child: Some(child),
            log,
            jobs: Some(jobs),
            stop: stop.clone(),
        };
        let ns_owned = ns.to_owned();
        // The client thread: detached, it ends when `jobs` is dropped or `stop` is set.
        std::thread::spawn(move || {
            enter(&ns_owned);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut client = loop {
                // The timer must be created inside the runtime, hence the async block.
                let attempt = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        RelayClient::connect(format!("http://127.0.0.1:{GRPC_PORT}")),
                    )
                    .await
                });
                if let Ok(Ok(c)) = attempt {
                    break c;
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = ready_tx.send(Err(format!("gRPC not answering: {attempt:?}")));
                    return;
                }
                std::thread::sleep(Duration::from_millis(30));
            };
            let _ = ready_tx.send(Ok(()));
            while let Ok(job) = job_rx.recv() {
                job(&rt, &mut client);
            }
        });
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(())) => return relay,
                Ok(Err(e)) => panic!(
                    "rtprelay did not come up in {ns}: {e}\n{}",
                    relay.log_text()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the gRPC client thread died\n{}", relay.log_text())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = relay
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                relay.child = None;
                panic!(
                    "rtprelay exited at start-up with {status}:\n{}",
                    relay.log_text()
                );
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `f` on the client thread (inside the relay namespace) and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &mut RelayClient<Channel>) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("relay running")
            .send(Box::new(move |rt, c| {
                let _ = tx.send(f(rt, c));
            }))
            .expect("gRPC client thread alive");
        rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(5))
            .expect("gRPC client thread answered")
    }

    pub fn create(&self, req: v1::CreateSessionRequest) -> Result<v1::SessionInfo, tonic::Status> {
        self.call(move |rt, c| {
            rt.block_on(async {
                match tokio::time::timeout(CALL_TIMEOUT, c.create_session(req)).await {
                    Ok(r) => r.map(|r| r.into_inner().session.expect("session in response")),
                    Err(_) => Err(tonic::Status::deadline_exceeded("CreateSession timed out")),
                }
            })
        })
    }

    pub fn status(&self, id: &str) -> Result<v1::SessionInfo, tonic::Status> {
        let req = v1::GetSessionStatusRequest {
            session_id: id.to_owned(),
        };
        self.call(move |rt, c| {
            rt.block_on(async {
                match tokio::time::timeout(CALL_TIMEOUT, c.get_session_status(req)).await {
                    Ok(r) => r.map(|r| r.into_inner().session.expect("session in response")),
                    Err(_) => Err(tonic::Status::deadline_exceeded(
                        "GetSessionStatus timed out",
                    )),
                }
            })
        })
    }

    /// Kills the relay and waits for it (its sessions and sockets go with it).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NsRelay {
    fn drop(&mut self) {
        let running = self.child.is_some();
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- rtprelay log ({}{}) ---\n{}",
                self.log.display(),
                if running { "" } else { ", relay had stopped" },
                self.log_text()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
