//! Interop with Kamailio's stock `rtpproxy` module: Kamailio drives rtprelay's rtpproxy-compatible
//! control listener (`--rtpproxy-listen`) while sipp places calls through Kamailio, and the calls'
//! media flows between the two sipp sides through the relay.
//!
//! ```text
//!   sipp UAC --SIP--> Kamailio --SIP--> sipp UAS (-rtp_echo)
//!                        | rtpproxy protocol: V, VF, U (INVITE), L (200 OK), D (BYE)
//!                        v
//!   UAC media ==RTP==> rtprelay ==RTP==> UAS echo port
//!             <======          <======
//! ```
//!
//! Everything runs on 127.0.0.1. The files in tests/interop/ are Kamailio's config (placeholders
//! substituted here) and the two sipp scenarios.
//!
//! Media: the UAC plays a PCMU pcap this test writes (`PCAP_PACKETS` packets, 20 ms apart) with
//! sipp's `play_pcap_audio` to the address in the 200 OK's SDP, i.e. to the relay; the UAS
//! echoes every packet to its source (the relay), which relays it back to the UAC's per-call
//! media port. Counted three ways:
//! - the relay's own counters over gRPC: polled (ListSessions with id_prefix "rtpp:" and
//!   GetSessionStatus) while the calls run, and the final counters of the `Closed` events;
//! - tshark on `lo` with the capture filter `udp portrange <relay media window>`, per leg
//!   (UAC -> relay, relay -> UAS, UAS -> relay, relay -> UAC);
//! - UDP sinks this test binds on the UAC's per-call media ports (sipp itself binds only the
//!   first call's port), which also spares the relay ICMP port-unreachable replies.
//!
//! Two runs: one call, then 20 concurrent calls. The Kamailio and sipp versions, the rtpproxy
//! command transcript (captured on the control port), the relay's rtpproxy log lines and a table
//! of every check go to stderr, unbuffered, pass or fail.
//!
//! Needs root (sipp's pcap play uses raw sockets; tshark captures) and kamailio, sipp and tshark,
//! which it installs with scripts/install-interop-deps when missing. Without root it prints a
//! loud SKIPPED message, or fails when CI=true.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Relay;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use rtprelay_proto::v1::session_event::Kind;
use tonic::transport::Channel;

/// The scenarios and Kamailio's config.
const INTEROP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
const INSTALL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-interop-deps");

/// RTP packets the UAC plays per call (20 ms apart: 3 s of audio; uac.xml pauses 4 s).
const PCAP_PACKETS: u64 = 150;
/// Share of the played packets that must arrive on every leg (loopback loses nothing in
/// practice; the margin only keeps a scheduling hiccup from failing the run).
const MIN_SHARE: f64 = 0.95;
/// The calls of the second run, all concurrent.
const CONCURRENT_CALLS: u64 = 20;
/// Upper bound of one sipp UAC run (its own -timeout is a little shorter).
const SIPP_LIMIT: Duration = Duration::from_secs(60);
/// Size of the relay's media port window (20 calls take 80 ports).
const WINDOW: u16 = 200;
/// Log filter for the relay: debug (so its rtpproxy listener logs the commands it handles)
/// without the HTTP/2 stack's chatter. Set through RUST_LOG, which wins over the
/// `--log-level info` that tests/common passes.
const RELAY_LOG_FILTER: &str = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info";
/// The relay's media address (its default), which every SDP must name once rewritten.
const RELAY_ADDR: &str = "127.0.0.1";

fn min_packets() -> u64 {
    (PCAP_PACKETS as f64 * MIN_SHARE).ceil() as u64
}

/// Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and this
/// test's record (versions, transcript, checks) must always be visible.
fn report(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = err.write_all(b"\n");
    }
    let _ = err.flush();
}

fn loud(text: &str) {
    let bar = "!".repeat(78);
    report(&format!("\n{bar}\n!!! {text}\n{bar}\n"));
}

// ---------------------------------------------------------------------------------------------
// Privileges and tools

/// True if the test may run: root, or a loud skip (a failure when CI=true).
fn may_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = "kamailio_interop needs root (to install kamailio/sipp/tshark, for sipp's \
               raw-socket pcap play and for packet capture)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping it");
    }
    loud(
        "SKIPPED: needs root to install kamailio/sipp (kamailio_interop also needs it for \
         sipp's raw-socket pcap play and for packet capture)",
    );
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(tool);
            std::fs::metadata(&p).is_ok_and(|m| m.is_file())
        })
    })
}

/// Installs kamailio, sipp and tshark with scripts/install-interop-deps when any is missing.
fn ensure_tools(dir: &Path) {
    let missing: Vec<&str> = ["kamailio", "sipp", "tshark"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if missing.is_empty() {
        return;
    }
    report(&format!(
        "kamailio_interop: {} missing; running {INSTALL_SCRIPT}",
        missing.join(", ")
    ));
    let (status, out, err) = run_bounded(
        dir,
        "install-interop-deps",
        &mut Command::new(INSTALL_SCRIPT),
        Duration::from_secs(900),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "scripts/install-interop-deps failed ({status:?}):\n{}\n{}",
        tail(&out, 40),
        tail(&err, 40)
    );
    for tool in ["kamailio", "sipp", "tshark"] {
        assert!(
            on_path(tool),
            "{tool} still missing after install-interop-deps"
        );
    }
}

fn versions(dir: &Path) -> String {
    let first = |name: &str, cmd: &mut Command, pick: &dyn Fn(&str) -> bool| {
        let (_, out, err) = run_bounded(dir, name, cmd, Duration::from_secs(10));
        format!("{out}\n{err}")
            .lines()
            .map(str::trim)
            .find(|l| pick(l))
            .unwrap_or("(unknown)")
            .to_string()
    };
    let kamailio = first(
        "kamailio-version",
        Command::new("kamailio").arg("-v"),
        &|l: &str| l.contains("kamailio"),
    );
    let sipp = first(
        "sipp-version",
        Command::new("sipp").arg("-v"),
        &|l: &str| l.contains("SIPp v"),
    );
    let tshark = first(
        "tshark-version",
        Command::new("tshark").arg("--version"),
        &|l: &str| l.starts_with("TShark"),
    );
    format!("kamailio: {kamailio}\nsipp:     {sipp}\ntshark:   {tshark}")
}

// ---------------------------------------------------------------------------------------------
// Processes

struct Tracked {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

/// Every process this test starts, each in its own process group (its PID), so Kamailio's
/// workers and tshark's dumpcap go with their parent. Drop stops whatever still runs.
struct Procs {
    list: Vec<Tracked>,
    dir: PathBuf,
}

impl Procs {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> usize {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.list.push(Tracked {
            name: name.to_string(),
            child,
            status: None,
        });
        self.list.len() - 1
    }

    fn pid(&self, i: usize) -> u32 {
        self.list[i].child.id()
    }

    fn try_wait(&mut self, i: usize) -> Option<ExitStatus> {
        let t = &mut self.list[i];
        if t.status.is_none()
            && let Ok(Some(s)) = t.child.try_wait()
        {
            t.status = Some(s);
            // Stragglers of the group (workers whose parent died) go too.
            signal_group(t.child.id(), libc::SIGKILL);
        }
        t.status
    }

    /// Sends `sig` to the process group, waits up to `grace`, then kills the group.
    fn stop(&mut self, i: usize, sig: i32, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait(i) {
            return Some(s);
        }
        signal_group(self.pid(i), sig);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait(i) {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.pid(i), libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait(i) {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the process group led by a child this test started and has not yet
    // reaped, or whose leader it reaped a moment ago (the group ID stays reserved while any
    // member lives).
    unsafe { libc::kill(-(pid as i32), sig) };
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.list.len() {
            if self.list[i].status.is_none() {
                let name = self.list[i].name.clone();
                if self
                    .stop(i, libc::SIGTERM, Duration::from_secs(3))
                    .is_none()
                {
                    report(&format!("kamailio_interop: could not stop {name}"));
                }
            }
        }
        if std::thread::panicking() {
            let mut text = format!(
                "\n--- kamailio_interop: the work directory is kept: {} ---\n",
                self.dir.display()
            );
            for name in [
                "kamailio.log",
                "uas.stderr",
                "uas_err.log",
                "uac-1_err.log",
                "uac-20_err.log",
                "uac-1_screen.log",
                "uac-20_screen.log",
            ] {
                let body = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                if !body.trim().is_empty() {
                    text.push_str(&format!("--- {name} (tail) ---\n{}\n", tail(&body, 60)));
                }
            }
            report(&text);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a short command with its output in files of `dir`; kills it after `limit`.
fn run_bounded(
    dir: &Path,
    name: &str,
    cmd: &mut Command,
    limit: Duration,
) -> (Option<ExitStatus>, String, String) {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An exclusive flock on a file in the temp dir, released when dropped (or the process ends).
struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    fn acquire(limit: Duration) -> RunLock {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("rtprelay-kamailio-interop.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("open the run lock");
        let deadline = Instant::now() + limit;
        let mut told = false;
        loop {
            // SAFETY: flock(2) on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return RunLock { _file: file };
            }
            if !told {
                report(&format!(
                    "kamailio_interop: another run holds {}; waiting",
                    path.display()
                ));
                told = true;
            }
            assert!(
                Instant::now() < deadline,
                "another kamailio_interop run held {} for {limit:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ports

/// True if some socket is bound to UDP `port` (read from /proc, so nothing is raced).
fn udp_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| format!("{local} ").ends_with(&needle))
            })
    })
}

fn free_udp_port(taken: &mut HashSet<u16>) -> u16 {
    for _ in 0..100 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
        let port = s.local_addr().expect("local addr").port();
        if taken.insert(port) {
            return port;
        }
    }
    panic!("no free UDP port");
}

/// An even port `p` with `p` and `p + 2` free (sipp binds both for its media).
fn free_media_port(taken: &mut HashSet<u16>) -> u16 {
    for _ in 0..200 {
        let p = free_udp_port(taken) & !3;
        if !(1024..=65000).contains(&p) || taken.contains(&(p + 2)) {
            continue;
        }
        if UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok()
        {
            taken.extend([p, p + 1, p + 2, p + 3]);
            return p;
        }
    }
    panic!("no free media port pair");
}

/// A relay media window below the kernel's ephemeral range whose ports are all free now (other
/// relays started by tests/common use 16384 + n * 1000 upwards).
fn pick_window() -> (u16, u16) {
    for start in (28000u16..=31800).step_by(usize::from(WINDOW)) {
        let free = (start..start + WINDOW).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return (start, start + WINDOW - 1);
        }
    }
    panic!("no free {WINDOW}-port window in 28000-31999 for the relay");
}

/// UDP sinks on the UAC's per-call media ports `base + 4 * k`, k = 1..calls (call 1's port
/// `base` is sipp's own socket). A thread drains and counts them until dropped.
struct Sinks {
    ports: Vec<u16>,
    counts: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sinks {
    /// Binds the sinks, or None if any port is taken.
    fn bind(base: u16, calls: u64) -> Option<Sinks> {
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        for k in 1..calls {
            let port = base.checked_add(u16::try_from(4 * k).ok()?)?;
            let s = UdpSocket::bind(("127.0.0.1", port)).ok()?;
            s.set_nonblocking(true).ok()?;
            sockets.push(s);
            ports.push(port);
        }
        let counts: Arc<Vec<AtomicU64>> =
            Arc::new(ports.iter().map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    for (i, s) in sockets.iter().enumerate() {
                        while s.recv_from(&mut buf).is_ok() {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Some(Sinks {
            ports,
            counts,
            stop,
            thread: Some(thread),
        })
    }

    fn reset(&self) {
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> Vec<(u16, u64)> {
        self.ports
            .iter()
            .zip(self.counts.iter())
            .map(|(p, c)| (*p, c.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The UAC's media base port: `base`, `base + 2` free for sipp, and sinks bound on
/// `base + 4k` for the other calls.
fn uac_media(taken: &mut HashSet<u16>) -> (u16, Sinks) {
    for _ in 0..200 {
        let base = free_udp_port(taken) & !3;
        let last = u64::from(base) + 4 * CONCURRENT_CALLS;
        if base < 1024 || last > 65000 {
            continue;
        }
        let span: Vec<u16> = (base..=last as u16).collect();
        if span.iter().any(|p| taken.contains(p) && *p != base) {
            continue;
        }
        let sipp_ports_free = UdpSocket::bind(("127.0.0.1", base)).is_ok()
            && UdpSocket::bind(("127.0.0.1", base + 2)).is_ok();
        if !sipp_ports_free {
            continue;
        }
        if let Some(sinks) = Sinks::bind(base, CONCURRENT_CALLS) {
            taken.extend(span);
            return (base, sinks);
        }
    }
    panic!("no free port span for the UAC's media");
}

// ---------------------------------------------------------------------------------------------
// Media and logs

/// A pcap (Ethernet link type) of `PCAP_PACKETS` RTP packets, PCMU (payload type 0), 160 bytes
/// of mu-law silence each, 20 ms apart. sipp replaces the addresses and ports when it plays it.
fn write_pcap(path: &Path) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for n in 0..PCAP_PACKETS {
        let mut rtp = common::rtp(0, 1000 + n as u16, 160 * n as u32, 0x5eed_0001, 160);
        rtp[12..].fill(0xff);
        let udp_len = 8 + rtp.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&6000u16.to_be_bytes());
        udp.extend_from_slice(&7000u16.to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&0u16.to_be_bytes()); // no checksum
        udp.extend_from_slice(&rtp);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&(n as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&udp);
        let ts_us = n * 20_000;
        out.extend_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).expect("write the pcap");
}

/// SIP messages a sipp `-trace_msg` log shows as received.
fn received_messages(log: &str) -> Vec<String> {
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in log.lines() {
        if line.starts_with("----------") {
            blocks.push(Vec::new());
        } else if let Some(b) = blocks.last_mut() {
            b.push(line.trim_end_matches('\r'));
        }
    }
    blocks
        .into_iter()
        .filter(|b| b.first().is_some_and(|l| l.contains("message received")))
        .map(|b| {
            b[1..]
                .iter()
                .skip_while(|l| l.trim().is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The (c= address, m=audio port) of a message's SDP.
fn sdp_media(msg: &str) -> Option<(String, u16)> {
    let c = msg
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .to_string();
    let port = msg
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((c, port))
}

/// `SuccessfulCall(C)` and `FailedCall(C)` of the last line of a sipp `-trace_stat` file.
fn sipp_stats(csv: &str) -> Option<(u64, u64)> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let col = |name: &str| -> Option<u64> {
        let i = head.iter().position(|h| *h == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Some((col("SuccessfulCall(C)")?, col("FailedCall(C)")?))
}

fn unhex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    s.chunks(2)
        .filter(|c| c.len() == 2)
        .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Packet capture

struct Capture {
    proc: usize,
    file: PathBuf,
    marker_port: u16,
}

/// Starts tshark on `lo` with `filter`, writing `<name>.pcap`, and returns once it really
/// captures: tshark says "Capturing on" before dumpcap has attached its filter, so this sends
/// datagrams to `marker` (a socket of this test, also in the capture filter) until the capture
/// file grows.
fn start_capture(
    procs: &mut Procs,
    dir: &Path,
    name: &str,
    filter: &str,
    marker: &UdpSocket,
) -> Capture {
    let file = dir.join(format!("{name}.pcap"));
    let log = dir.join(format!("{name}.tshark.log"));
    let marker_port = marker.local_addr().expect("marker address").port();
    let full_filter = format!("({filter}) or (udp port {marker_port})");
    let i = procs.spawn(
        &format!("tshark {name}"),
        Command::new("tshark")
            .args(["-i", "lo", "-n", "-q", "-B", "16", "-f", &full_filter, "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create tshark log")),
    );
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind the marker sender");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut initial_size = None;
    loop {
        let size = std::fs::metadata(&file).map(|m| m.len()).ok();
        match (initial_size, size) {
            (None, Some(n)) => initial_size = Some(n),
            (Some(n0), Some(n)) if n > n0 => break,
            _ => {}
        }
        if initial_size.is_some() {
            let _ = sender.send_to(
                b"rtprelay interop capture marker",
                ("127.0.0.1", marker_port),
            );
            let mut buf = [0u8; 64];
            while marker.recv_from(&mut buf).is_ok() {}
        }
        if let Some(s) = procs.try_wait(i) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("tshark ({full_filter}) exited with {s}:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "tshark ({full_filter}) did not start capturing:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Capture {
        proc: i,
        file,
        marker_port,
    }
}

/// Stops the capture and returns one line per packet: `time<TAB>src port<TAB>dst port<TAB>hex`.
fn finish_capture(procs: &mut Procs, dir: &Path, cap: &Capture, payload: bool) -> Vec<String> {
    let status = procs.stop(cap.proc, libc::SIGINT, Duration::from_secs(10));
    assert!(status.is_some(), "tshark did not stop");
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(&cap.file)
        .args(["-n", "-T", "fields", "-E", "separator=/t"])
        .args([
            "-e",
            "frame.time_relative",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
        ]);
    if payload {
        cmd.args(["-e", "udp.payload"]);
    }
    let name = cap.file.file_stem().unwrap().to_string_lossy().to_string();
    let (status, out, err) = run_bounded(
        dir,
        &format!("{name}.read"),
        &mut cmd,
        Duration::from_secs(60),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "tshark -r {} failed: {}",
        cap.file.display(),
        tail(&err, 20)
    );
    let marker = cap.marker_port.to_string();
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.split('\t').skip(1).take(2).any(|p| p == marker))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checks

#[derive(Default)]
struct Checks {
    rows: Vec<(bool, String, String)>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>, detail: impl Into<String>) -> bool {
        let (what, detail) = (what.into(), detail.into());
        report(&format!(
            "[{}] {what}: {detail}",
            if ok { "PASS" } else { "FAIL" }
        ));
        self.rows.push((ok, what, detail));
        ok
    }

    fn summary(&self) -> String {
        let mut s = String::from("\n=== kamailio_interop checks ===\n");
        for (ok, what, detail) in &self.rows {
            s.push_str(&format!(
                "[{}] {what}: {detail}\n",
                if *ok { "PASS" } else { "FAIL" }
            ));
        }
        let failed = self.rows.iter().filter(|r| !r.0).count();
        s.push_str(&format!(
            "{} passed, {failed} failed\n",
            self.rows.len() - failed
        ));
        s
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// A session's RTP counters: (forward received, forward sent, reverse received, reverse sent).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counters {
    fwd_rx: u64,
    fwd_tx: u64,
    rev_rx: u64,
    rev_tx: u64,
}

impl Counters {
    fn of(s: &v1::SessionInfo) -> Counters {
        let rtp = |d: &Option<v1::DirectionStats>| {
            d.as_ref()
                .and_then(|d| d.rtp.as_ref())
                .map_or((0, 0), |c| (c.packets_received, c.packets_sent))
        };
        let (fwd_rx, fwd_tx) = rtp(&s.forward);
        let (rev_rx, rev_tx) = rtp(&s.reverse);
        Counters {
            fwd_rx,
            fwd_tx,
            rev_rx,
            rev_tx,
        }
    }

    fn max(self, o: Counters) -> Counters {
        Counters {
            fwd_rx: self.fwd_rx.max(o.fwd_rx),
            fwd_tx: self.fwd_tx.max(o.fwd_tx),
            rev_rx: self.rev_rx.max(o.rev_rx),
            rev_tx: self.rev_tx.max(o.rev_tx),
        }
    }

    fn all_at_least(&self, n: u64) -> bool {
        [self.fwd_rx, self.fwd_tx, self.rev_rx, self.rev_tx]
            .iter()
            .all(|c| *c >= n)
    }
}

async fn list_sessions(
    client: &mut RelayClient<Channel>,
    prefix: &str,
) -> Option<Vec<v1::SessionInfo>> {
    let req = v1::ListSessionsRequest {
        page_size: 1000,
        page_token: String::new(),
        id_prefix: prefix.to_string(),
    };
    let resp = tokio::time::timeout(Duration::from_secs(3), client.list_sessions(req))
        .await
        .ok()?
        .ok()?;
    Some(resp.into_inner().sessions)
}

async fn session_status(client: &mut RelayClient<Channel>, id: &str) -> Option<v1::SessionInfo> {
    let req = v1::GetSessionStatusRequest {
        session_id: id.to_string(),
    };
    tokio::time::timeout(Duration::from_secs(3), client.get_session_status(req))
        .await
        .ok()?
        .ok()?
        .into_inner()
        .session
}

// ---------------------------------------------------------------------------------------------
// The test

struct Ctx {
    dir: PathBuf,
    procs: Procs,
    client: RelayClient<Channel>,
    events: Arc<Mutex<Vec<v1::SessionEvent>>>,
    window: (u16, u16),
    kam_port: u16,
    uac_sip: u16,
    uac_media: u16,
    uas_media: u16,
    sinks: Sinks,
    /// Capture readiness marker (see `start_capture`).
    marker: UdpSocket,
    checks: Checks,
    /// Distinct Call-IDs sent so far (the UAS log is cumulative).
    calls_so_far: u64,
}

impl Ctx {
    fn in_window(&self, port: u16) -> bool {
        (self.window.0..=self.window.1).contains(&port)
    }
}

/// One sipp UAC run of `calls` calls, all concurrent, and every check on it.
async fn run_calls(ctx: &mut Ctx, calls: u64) {
    let label = format!("uac-{calls}");
    report(&format!(
        "\n=== run {label}: {calls} call(s), all concurrent ==="
    ));
    let (wmin, wmax) = ctx.window;
    let cap = start_capture(
        &mut ctx.procs,
        &ctx.dir,
        &format!("media-{label}"),
        &format!("udp portrange {wmin}-{wmax}"),
        &ctx.marker,
    );
    ctx.sinks.reset();
    let limit = SIPP_LIMIT.as_secs() - 5;
    let uac = ctx.procs.spawn(
        &label,
        Command::new("sipp")
            .current_dir(&ctx.dir)
            .arg(format!("127.0.0.1:{}", ctx.kam_port))
            .args(["-sf", "uac.xml", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args([
                "-p",
                &ctx.uac_sip.to_string(),
                "-mp",
                &ctx.uac_media.to_string(),
            ])
            .args([
                "-m",
                &calls.to_string(),
                "-l",
                &calls.to_string(),
                "-r",
                "20",
            ])
            .args([
                "-nostdin",
                "-timeout",
                &format!("{limit}s"),
                "-timeout_error",
            ])
            .args(["-trace_msg", "-message_file", &format!("{label}_msgs.log")])
            .args(["-trace_err", "-error_file", &format!("{label}_err.log")])
            .args(["-trace_stat", "-stf", &format!("{label}_stat.csv")])
            .args([
                "-trace_screen",
                "-screen_file",
                &format!("{label}_screen.log"),
            ])
            .stdout(std::fs::File::create(ctx.dir.join(format!("{label}.stdout"))).unwrap())
            .stderr(std::fs::File::create(ctx.dir.join(format!("{label}.stderr"))).unwrap()),
    );
    let call_tag = format!("-{}@", ctx.procs.pid(uac));

    // While the calls run: the relay's view, session by session.
    let mut polled: BTreeMap<String, Counters> = BTreeMap::new();
    let mut most_at_once = 0usize;
    let deadline = Instant::now() + SIPP_LIMIT;
    let status = loop {
        if let Some(s) = ctx.procs.try_wait(uac) {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // Killed: reported as "timed out" below, whatever status the kill left.
            ctx.procs.stop(uac, libc::SIGKILL, Duration::from_secs(1));
            break None;
        }
        if let Some(list) = list_sessions(&mut ctx.client, "rtpp:").await {
            let ours: Vec<&v1::SessionInfo> = list
                .iter()
                .filter(|s| s.session_id.contains(&call_tag))
                .collect();
            most_at_once = most_at_once.max(ours.len());
            for s in ours {
                let mut c = Counters::of(s);
                if let Some(st) = session_status(&mut ctx.client, &s.session_id).await {
                    c = c.max(Counters::of(&st));
                }
                let e = polled.entry(s.session_id.clone()).or_default();
                *e = e.max(c);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stat_csv =
        std::fs::read_to_string(ctx.dir.join(format!("{label}_stat.csv"))).unwrap_or_default();
    let errors =
        std::fs::read_to_string(ctx.dir.join(format!("{label}_err.log"))).unwrap_or_default();
    let mut checks = std::mem::take(&mut ctx.checks);

    // 1. Every call completed.
    checks.check(
        status.is_some_and(|s| s.success()),
        format!(
            "{label}: sipp UAC exit code 0 within {}s",
            SIPP_LIMIT.as_secs()
        ),
        match status {
            Some(s) => match s.code() {
                Some(c) => format!("exit code {c}"),
                None => format!("killed by signal {:?}", s.signal()),
            },
            None => "timed out and was killed".to_string(),
        } + &if errors.trim().is_empty() {
            String::new()
        } else {
            format!("; errors: {}", tail(&errors, 5).replace('\n', " | "))
        },
    );
    let stats = sipp_stats(&stat_csv);
    checks.check(
        stats == Some((calls, 0)),
        format!("{label}: sipp statistics {calls} successful, 0 failed"),
        match stats {
            Some((ok, failed)) => format!("SuccessfulCall(C)={ok} FailedCall(C)={failed}"),
            None => "no statistics file".to_string(),
        },
    );

    // 2. The SDP each side received points at the relay.
    ctx.calls_so_far += calls;
    let uas_log = std::fs::read_to_string(ctx.dir.join("uas_msgs.log")).unwrap_or_default();
    let mut invites: BTreeMap<String, Option<(String, u16)>> = BTreeMap::new();
    for m in received_messages(&uas_log) {
        if m.starts_with("INVITE ") {
            let id = header(&m, "Call-ID").unwrap_or("?").to_string();
            invites.insert(id, sdp_media(&m));
        }
    }
    let ours: Vec<(&String, &Option<(String, u16)>)> = invites
        .iter()
        .filter(|(id, _)| id.contains(&call_tag))
        .collect();
    let bad: Vec<String> = ours
        .iter()
        .filter(|(_, sdp)| {
            !sdp.as_ref()
                .is_some_and(|(c, p)| c == RELAY_ADDR && ctx.in_window(*p))
        })
        .map(|(id, sdp)| format!("{id}: {sdp:?}"))
        .collect();
    let uas_ports: BTreeSet<u16> = ours
        .iter()
        .filter_map(|(_, sdp)| sdp.as_ref().map(|s| s.1))
        .collect();
    checks.check(
        ours.len() as u64 == calls && bad.is_empty(),
        format!("{label}: the INVITE SDP the UAS gets is c=IN IP4 127.0.0.1, m= port in the relay window {wmin}-{wmax}"),
        format!(
            "{} INVITEs, m= ports {:?}{}",
            ours.len(),
            uas_ports,
            if bad.is_empty() { String::new() } else { format!("; wrong: {bad:?}") }
        ),
    );
    let uac_log =
        std::fs::read_to_string(ctx.dir.join(format!("{label}_msgs.log"))).unwrap_or_default();
    let mut answers: BTreeMap<String, Option<(String, u16)>> = BTreeMap::new();
    for m in received_messages(&uac_log) {
        if m.starts_with("SIP/2.0 200") && header(&m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        {
            let id = header(&m, "Call-ID").unwrap_or("?").to_string();
            answers.insert(id, sdp_media(&m));
        }
    }
    let bad: Vec<String> = answers
        .iter()
        .filter(|(_, sdp)| {
            !sdp.as_ref()
                .is_some_and(|(c, p)| c == RELAY_ADDR && ctx.in_window(*p))
        })
        .map(|(id, sdp)| format!("{id}: {sdp:?}"))
        .collect();
    let uac_ports: BTreeSet<u16> = answers
        .values()
        .filter_map(|s| s.as_ref().map(|s| s.1))
        .collect();
    checks.check(
        answers.len() as u64 == calls && bad.is_empty(),
        format!("{label}: the 200 OK SDP the UAC gets is c=IN IP4 127.0.0.1, m= port in the relay window"),
        format!(
            "{} answers, m= ports {:?}{}",
            answers.len(),
            uac_ports,
            if bad.is_empty() { String::new() } else { format!("; wrong: {bad:?}") }
        ),
    );

    // 3. The relay's counters while the calls ran.
    let min = min_packets();
    checks.check(
        polled.len() as u64 == calls && most_at_once as u64 == calls,
        format!(
            "{label}: ListSessions id_prefix \"rtpp:\" shows one session per call during the calls"
        ),
        format!(
            "{} distinct sessions, at most {most_at_once} at once: {:?}",
            polled.len(),
            polled.keys().collect::<Vec<_>>()
        ),
    );
    // Packets in both directions while the calls ran (the exact totals come from the Closed
    // events below; a poll may miss the last packets before the BYE).
    let silent: Vec<String> = polled
        .iter()
        .filter(|(_, c)| [c.fwd_rx, c.fwd_tx, c.rev_rx, c.rev_tx].contains(&0))
        .map(|(id, c)| format!("{id}: {c:?}"))
        .collect();
    checks.check(
        !polled.is_empty() && silent.is_empty(),
        format!(
            "{label}: GetSessionStatus during the calls: every session received and sent RTP in both directions"
        ),
        if silent.is_empty() {
            format!(
                "highest seen per session (fwd rx/tx, rev rx/tx): {:?}",
                polled
                    .values()
                    .map(|c| (c.fwd_rx, c.fwd_tx, c.rev_rx, c.rev_tx))
                    .collect::<Vec<_>>()
            )
        } else {
            format!("one-way or silent: {silent:?}")
        },
    );

    // 4. Independent count: tshark on lo over the relay's window, per leg.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let packets = finish_capture(&mut ctx.procs, &ctx.dir, &cap, false);
    let uac_media: BTreeSet<u16> = (0..calls).map(|k| ctx.uac_media + 4 * k as u16).collect();
    let (mut a_r, mut r_a, mut r_b, mut b_r, mut other) = (
        BTreeMap::<u16, u64>::new(),
        BTreeMap::<u16, u64>::new(),
        BTreeMap::<u16, u64>::new(),
        BTreeMap::<u16, u64>::new(),
        0u64,
    );
    let mut a_dst = BTreeSet::new();
    for line in &packets {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(src), Some(dst)) = (
            f.get(1).and_then(|p| p.parse::<u16>().ok()),
            f.get(2).and_then(|p| p.parse::<u16>().ok()),
        ) else {
            other += 1;
            continue;
        };
        if uac_media.contains(&src) && ctx.in_window(dst) {
            *a_r.entry(src).or_default() += 1;
            a_dst.insert(dst);
        } else if ctx.in_window(src) && uac_media.contains(&dst) {
            *r_a.entry(dst).or_default() += 1;
        } else if ctx.in_window(src) && dst == ctx.uas_media {
            *r_b.entry(src).or_default() += 1;
        } else if src == ctx.uas_media && ctx.in_window(dst) {
            *b_r.entry(dst).or_default() += 1;
        } else {
            other += 1;
        }
    }
    let leg_ok = |m: &BTreeMap<u16, u64>| m.len() as u64 == calls && m.values().all(|n| *n >= min);
    let fmt = |m: &BTreeMap<u16, u64>| format!("{m:?}");
    checks.check(
        leg_ok(&a_r),
        format!("{label}: tshark: UAC -> relay, >= {min} packets from each call's media port"),
        fmt(&a_r),
    );
    checks.check(
        leg_ok(&r_b),
        format!("{label}: tshark: relay -> UAS, >= {min} packets from each call's relay port"),
        fmt(&r_b),
    );
    checks.check(
        leg_ok(&b_r),
        format!("{label}: tshark: UAS (echo) -> relay, >= {min} packets to each call's relay port"),
        fmt(&b_r),
    );
    checks.check(
        leg_ok(&r_a),
        format!("{label}: tshark: relay -> UAC, >= {min} packets to each call's media port"),
        fmt(&r_a) + &format!("; {other} other packets in the window"),
    );
    // The ports the SDPs named are the ports the media used.
    let b_dst: BTreeSet<u16> = b_r.keys().copied().collect();
    checks.check(
        a_dst == uac_ports && b_dst == uas_ports,
        format!("{label}: media went to the relay ports the SDPs named"),
        format!("UAC sent to {a_dst:?} (200 OK said {uac_ports:?}); UAS sent to {b_dst:?} (INVITE said {uas_ports:?})"),
    );
    // Calls 2.. send to the test's sinks (call 1's port is sipp's own socket).
    if calls > 1 {
        let sinks: Vec<(u16, u64)> = ctx
            .sinks
            .counts()
            .into_iter()
            .take(calls as usize - 1)
            .collect();
        checks.check(
            sinks.iter().all(|(_, n)| *n >= min),
            format!("{label}: UDP sinks on the UAC media ports of calls 2-{calls} received >= {min} packets each"),
            format!("{sinks:?}"),
        );
    }

    // 5. BYE deleted the sessions.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = None;
    while Instant::now() < deadline {
        let rtpp = list_sessions(&mut ctx.client, "rtpp:").await;
        let rtph = list_sessions(&mut ctx.client, "rtph:").await;
        left = rtpp.zip(rtph).map(|(a, b)| {
            a.into_iter()
                .chain(b)
                .map(|s| s.session_id)
                .collect::<Vec<_>>()
        });
        if left.as_ref().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.check(
        left.as_ref().is_some_and(Vec::is_empty),
        format!(
            "{label}: after the BYEs ListSessions id_prefix \"rtpp:\" (and \"rtph:\") is empty"
        ),
        format!("{left:?}"),
    );

    // 6. The final counters, from the Closed events.
    let closed: Vec<(String, String, Counters)> = ctx
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.session_id.contains(&call_tag))
        .filter_map(|e| match &e.kind {
            Some(Kind::Closed(c)) => Some((
                e.session_id.clone(),
                c.reason.clone(),
                c.session.as_ref().map(Counters::of).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let short: Vec<&(String, String, Counters)> = closed
        .iter()
        .filter(|(_, _, c)| !c.all_at_least(min))
        .collect();
    checks.check(
        closed.len() as u64 == calls && short.is_empty(),
        format!("{label}: WatchEvents Closed for every session, final RTP counters >= {min} in both directions"),
        format!(
            "{} closed; reasons {:?}; final (fwd rx/tx, rev rx/tx): {:?}",
            closed.len(),
            closed.iter().map(|c| c.1.as_str()).collect::<BTreeSet<_>>(),
            closed.iter().map(|(_, _, c)| (c.fwd_rx, c.fwd_tx, c.rev_rx, c.rev_tx)).collect::<Vec<_>>()
        ),
    );
    ctx.checks = checks;
}

/// The rtpproxy conversation on the control port, and the checks on it.
fn transcript_checks(lines: &[String], rtpp_port: u16, ctx: &mut Ctx) {
    let mut text = String::from("\n=== rtpproxy command transcript (Kamailio <-> rtprelay) ===\n");
    let mut commands: Vec<(String, String)> = Vec::new(); // cookie, command
    let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(t), Some(src), Some(dst), Some(hex)) = (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            continue;
        };
        let body = String::from_utf8_lossy(&unhex(hex)).trim_end().to_string();
        let to_relay = dst.parse::<u16>().ok() == Some(rtpp_port);
        text.push_str(&format!(
            "{:>8.3}s {} {body}\n",
            t.parse::<f64>().unwrap_or(0.0),
            if to_relay {
                format!("K:{src} -> R")
            } else {
                format!("R -> K:{dst}")
            }
        ));
        let (cookie, rest) = body.split_once(' ').unwrap_or((body.as_str(), ""));
        if to_relay {
            commands.push((cookie.to_string(), rest.to_string()));
        } else {
            replies
                .entry(cookie.to_string())
                .or_default()
                .push(rest.to_string());
        }
    }
    report(&text);

    let checks = &mut ctx.checks;
    let mut cookies = HashSet::new();
    let retransmitted: Vec<&String> = commands
        .iter()
        .filter(|(c, _)| !cookies.insert(c.clone()))
        .map(|(c, _)| c)
        .collect();
    let unanswered: Vec<&(String, String)> = commands
        .iter()
        .filter(|(c, _)| !replies.contains_key(c))
        .collect();
    checks.check(
        !commands.is_empty() && retransmitted.is_empty() && unanswered.is_empty(),
        "transcript: every command answered once, none retransmitted",
        format!(
            "{} commands; retransmitted {retransmitted:?}; unanswered {unanswered:?}",
            commands.len()
        ),
    );
    let reply = |cookie: &str| {
        replies
            .get(cookie)
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default()
    };
    let of = |verb: char| -> Vec<(String, String, String)> {
        commands
            .iter()
            .filter(|(_, cmd)| cmd.chars().next().map(|c| c.to_ascii_uppercase()) == Some(verb))
            .map(|(c, cmd)| (c.clone(), cmd.clone(), reply(c)))
            .collect()
    };
    // V must answer the base version; VF 20050322 (media index ;N, which Kamailio's module
    // requires) must be 1; other VF probes are optional features and may answer 0 or 1.
    let v: Vec<_> = of('V');
    let v_bad: Vec<_> = v
        .iter()
        .filter(
            |(_, cmd, r)| match cmd.split_whitespace().collect::<Vec<_>>()[..] {
                ["V"] => r != "20040107",
                ["VF", "20050322"] => r != "1",
                ["VF", _] => r != "0" && r != "1",
                _ => true,
            },
        )
        .collect();
    let answers: BTreeSet<String> = v
        .iter()
        .map(|(_, cmd, r)| format!("{cmd} -> {r}"))
        .collect();
    checks.check(
        v.iter().any(|(_, cmd, _)| cmd.trim() == "V") && v_bad.is_empty(),
        "transcript: V answered 20040107, VF 20050322 answered 1, other VF probes 0 or 1",
        format!(
            "{} V/VF commands, answers {answers:?}; wrong: {v_bad:?}",
            v.len()
        ),
    );
    let total = ctx.calls_so_far;
    let window = ctx.window;
    for (verb, what) in [('U', "U (offer)"), ('L', "L (answer)")] {
        let cmds = of(verb);
        let bad: Vec<_> = cmds
            .iter()
            .filter(|(_, _, r)| {
                let mut it = r.split_whitespace();
                let port = it.next().and_then(|p| p.parse::<u16>().ok());
                let addr = it.next();
                !(port.is_some_and(|p| (window.0..=window.1).contains(&p))
                    && addr.is_none_or(|a| a == RELAY_ADDR))
            })
            .collect();
        checks.check(
            cmds.len() as u64 == total && bad.is_empty(),
            format!("transcript: one {what} per call, answered with a port in the relay window"),
            format!("{} of {total}; bad: {bad:?}", cmds.len()),
        );
    }
    let d = of('D');
    let bad: Vec<_> = d.iter().filter(|(_, _, r)| r.trim() != "0").collect();
    checks.check(
        d.len() as u64 == total && bad.is_empty(),
        "transcript: one D (delete) per call, answered 0",
        format!("{} of {total}; bad: {bad:?}", d.len()),
    );
    let errors: Vec<_> = commands
        .iter()
        .filter(|(c, _)| reply(c).starts_with('E'))
        .map(|(c, cmd)| format!("{c} {cmd} -> {}", reply(c)))
        .collect();
    checks.check(
        errors.is_empty(),
        "transcript: no E<code> error replies",
        format!("{errors:?}"),
    );
}

fn kamailio_log_checks(log: &str, ctx: &mut Ctx) {
    let enabled = log
        .lines()
        .filter(|l| l.contains("found, support for it enabled"))
        .count();
    ctx.checks.check(
        enabled > 0,
        "kamailio: rtpproxy module found the relay (\"support for it enabled\")",
        format!("{enabled} processes probed it successfully"),
    );
    const BAD: [&str; 10] = [
        "disable",
        "re-enabled",
        "timeout waiting reply",
        "can't send command",
        "can't read reply",
        "does not respond",
        "unsupported version",
        "doesn't support required",
        "no available proxies",
        "rtpproxy_manage failed",
    ];
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            // The module's lines carry "rtpproxy [rtpproxy.c:..]"; its messages say "RTP proxy".
            let lower = l.to_ascii_lowercase();
            let about_rtpproxy = ["rtpproxy", "rtp proxy", "rtpp "]
                .iter()
                .any(|k| lower.contains(k));
            (about_rtpproxy && BAD.iter().any(|b| lower.contains(b)))
                || [" ERROR: ", " CRITICAL: ", " ALERT: ", " BUG: "]
                    .iter()
                    .any(|lvl| l.contains(lvl))
        })
        .collect();
    ctx.checks.check(
        bad.is_empty(),
        "kamailio: no rtpproxy node disabled/re-probed, no timeouts, no errors in its log",
        if bad.is_empty() {
            format!("{} log lines, none matching", log.lines().count())
        } else {
            format!("{:?}", bad.iter().take(20).collect::<Vec<_>>())
        },
    );
}

#[tokio::test]
async fn kamailio_drives_rtprelay_through_the_rtpproxy_protocol() {
    if !may_run() {
        return;
    }
    // SAFETY: set before this test starts any thread or child; the binary holds this one test,
    // run on a current-thread runtime, so nothing reads the environment concurrently. The relay
    // (tests/common passes `--log-level info`) inherits it: RUST_LOG wins over that flag.
    unsafe { std::env::set_var("RUST_LOG", RELAY_LOG_FILTER) };

    // One run at a time on a machine: two would pick the same media window and count each
    // other's packets. Held until the test ends (declared first, dropped last).
    let _lock = RunLock::acquire(Duration::from_secs(300));

    let dir =
        std::env::temp_dir().join(format!("rtprelay-kamailio-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("run")).expect("create the work directory");
    let mut procs = Procs {
        list: Vec::new(),
        dir: dir.clone(),
    };
    ensure_tools(&dir);
    report(&format!("\n=== versions ===\n{}", versions(&dir)));

    // Ports: all distinct, the relay's window below the ephemeral range, the rest in it.
    let (wmin, wmax) = pick_window();
    let mut taken: HashSet<u16> = (wmin..=wmax).collect();
    let rtpp_port = free_udp_port(&mut taken);
    let kam_port = free_udp_port(&mut taken);
    let uas_sip = free_udp_port(&mut taken);
    let uac_sip = free_udp_port(&mut taken);
    let uas_media = free_media_port(&mut taken);
    let (uac_media, sinks) = uac_media(&mut taken);
    let marker = UdpSocket::bind("127.0.0.1:0").expect("bind the capture marker");
    marker.set_nonblocking(true).expect("non-blocking marker");
    report(&format!(
        "ports: relay media {wmin}-{wmax}, rtpproxy control {rtpp_port}, kamailio {kam_port}, \
         UAS sip {uas_sip} media {uas_media}, UAC sip {uac_sip} media {uac_media}+4k; work dir {}",
        dir.display()
    ));

    // Files: the pcap, the scenarios, Kamailio's config with the placeholders filled in.
    write_pcap(&dir.join("uac.pcap"));
    for f in ["uac.xml", "uas.xml"] {
        std::fs::copy(Path::new(INTEROP_DIR).join(f), dir.join(f)).expect("copy a scenario");
    }
    let rtpp_sock = format!("udp:127.0.0.1:{rtpp_port}");
    let cfg = std::fs::read_to_string(Path::new(INTEROP_DIR).join("kamailio.cfg"))
        .expect("read tests/interop/kamailio.cfg")
        .replace("__KAM_PORT__", &kam_port.to_string())
        .replace("__UAS_PORT__", &uas_sip.to_string())
        .replace("__RTPP_SOCK__", &rtpp_sock);
    std::fs::write(dir.join("kamailio.cfg"), cfg).expect("write kamailio.cfg");

    // The relay, with its rtpproxy listener.
    let (relay, mut client) =
        Relay::start_with_range(2, wmin, wmax, &["--rtpproxy-listen", &rtpp_sock]).await;
    let mut checks = Checks::default();
    {
        // The listener answers V before Kamailio asks (and the test knows it is up).
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut answer = None;
        for _ in 0..15 {
            probe
                .send_to(b"interop_1 V", ("127.0.0.1", rtpp_port))
                .unwrap();
            let mut buf = [0u8; 256];
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                answer = Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
                break;
            }
        }
        let ok = answer.as_deref() == Some("interop_1 20040107");
        checks.check(
            ok,
            "relay: the rtpproxy listener answers V with 20040107",
            format!("{answer:?}"),
        );
        assert!(
            ok,
            "the relay's rtpproxy listener does not answer:\n{}",
            relay.log_text()
        );
    }

    // Every session event, for the final counters in Closed.
    let events: Arc<Mutex<Vec<v1::SessionEvent>>> = Arc::default();
    {
        let mut stream = client
            .watch_events(v1::WatchEventsRequest::default())
            .await
            .expect("WatchEvents")
            .into_inner();
        let events = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                if matches!(
                    e.kind,
                    Some(Kind::Created(_) | Kind::Closed(_) | Kind::Lagged(_))
                ) {
                    events.lock().unwrap().push(e);
                }
            }
        });
    }

    let ctl_cap = start_capture(
        &mut procs,
        &dir,
        "rtpproxy-control",
        &format!("udp port {rtpp_port}"),
        &marker,
    );

    // Kamailio, foreground, logging to stderr, with rtpproxy.
    let kam_log = dir.join("kamailio.log");
    let kam = procs.spawn(
        "kamailio",
        Command::new("kamailio")
            .args(["-DD", "-E", "-f"])
            .arg(dir.join("kamailio.cfg"))
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(dir.join("run"))
            .arg("-w")
            .arg(&dir)
            .args(["-A", "WITH_RTPPROXY"])
            .stdout(std::fs::File::create(dir.join("kamailio.stdout")).unwrap())
            .stderr(std::fs::File::create(&kam_log).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&kam_log).unwrap_or_default();
        if udp_bound(kam_port) && log.contains("support for it enabled") {
            break;
        }
        if let Some(s) = procs.try_wait(kam) {
            panic!("kamailio exited with {s}:\n{}", tail(&log, 40));
        }
        assert!(
            Instant::now() < deadline,
            "kamailio did not come up (listening and rtpproxy enabled):\n{}",
            tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let every worker finish its own probe.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The UAS, echoing media.
    let uas = procs.spawn(
        "sipp UAS",
        Command::new("sipp")
            .current_dir(&dir)
            .args([
                "-sf",
                "uas.xml",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-rtp_echo",
            ])
            .args(["-p", &uas_sip.to_string(), "-mp", &uas_media.to_string()])
            .args(["-nostdin", "-trace_msg", "-message_file", "uas_msgs.log"])
            .args(["-trace_err", "-error_file", "uas_err.log"])
            .stdout(std::fs::File::create(dir.join("uas.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("uas.stderr")).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(udp_bound(uas_sip) && udp_bound(uas_media)) {
        if let Some(s) = procs.try_wait(uas) {
            panic!(
                "sipp UAS exited with {s}:\n{}",
                std::fs::read_to_string(dir.join("uas.stderr")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "sipp UAS did not bind its ports");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut ctx = Ctx {
        dir: dir.clone(),
        procs,
        client,
        events,
        window: (wmin, wmax),
        kam_port,
        uac_sip,
        uac_media,
        uas_media,
        sinks,
        marker,
        checks,
        calls_so_far: 0,
    };
    run_calls(&mut ctx, 1).await;
    run_calls(&mut ctx, CONCURRENT_CALLS).await;

    // Stop the SIP side, then read the control capture and the logs.
    // Kamailio's log as the calls left it (its shutdown logs ALERTs about exiting children).
    let kam_text = std::fs::read_to_string(&kam_log).unwrap_or_default();
    let uas_status = ctx.procs.stop(uas, libc::SIGTERM, Duration::from_secs(5));
    let kam_status = ctx.procs.stop(kam, libc::SIGTERM, Duration::from_secs(10));
    report(&format!(
        "stopped: sipp UAS {uas_status:?}, kamailio {kam_status:?}"
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let control = finish_capture(&mut ctx.procs, &dir, &ctl_cap, true);
    transcript_checks(&control, rtpp_port, &mut ctx);
    kamailio_log_checks(&kam_text, &mut ctx);

    let lagged = ctx
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Lagged(_))))
        .count();
    ctx.checks.check(
        lagged == 0,
        "relay: the event watcher never lagged",
        format!("{lagged} lagged events"),
    );

    let relay_log = relay.log_text();
    let rtpp_lines: Vec<&str> = relay_log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("rtpp"))
        .collect();
    report(&format!(
        "\n=== rtprelay log: {} rtpproxy lines (first 80) ===\n{}",
        rtpp_lines.len(),
        rtpp_lines
            .iter()
            .take(80)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    ));
    let relay_errors: Vec<&str> = relay_log
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .collect();
    ctx.checks.check(
        relay_errors.is_empty(),
        "relay: no ERROR lines in its log",
        format!("{:?}", relay_errors.iter().take(10).collect::<Vec<_>>()),
    );

    let summary = ctx.checks.summary();
    report(&summary);
    let failed: Vec<String> = ctx
        .checks
        .rows
        .iter()
        .filter(|r| !r.0)
        .map(|r| format!("{}: {}", r.1, r.2))
        .collect();
    assert!(
        failed.is_empty(),
        "{} kamailio interop check(s) failed:\n{}\n--- rtprelay log (tail) ---\n{}",
        failed.len(),
        failed.join("\n"),
        tail(&relay_log, 60)
    );
    drop(ctx);
}
