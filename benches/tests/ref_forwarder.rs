//! The reference forwarder relays every packet with each engine, one way and both ways, so
//! the benchmark's baselines measure real forwarding (with `uring-msg`, the payload is found
//! behind the source address and timestamp the kernel writes in front of it).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FLOWS: usize = 2;
const PACKETS: usize = 50;

/// Port ranges are picked by probing, so tests in this file take turns.
static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Fwd(Child);

impl Drop for Fwd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A base port with 2 * FLOWS * 2 free ports above it.
fn free_base() -> u16 {
    for base in (20000 + (std::process::id() % 500) as u16 * 40..60000).step_by(40) {
        let held: Vec<_> = (0..4 * FLOWS as u16)
            .map_while(|i| UdpSocket::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == 4 * FLOWS {
            return base;
        }
    }
    panic!("no free port range");
}

fn start(engine: &str, base: u16, dest: SocketAddr, sources: Option<&std::path::Path>) -> Fwd {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ref-forwarder"));
    cmd.args(["--engine", engine, "--flows", &FLOWS.to_string()])
        .args(["--base-port", &base.to_string(), "--seconds", "20"])
        .args(["--dest", &dest.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(path) = sources {
        cmd.arg("--sources-file").arg(path);
    }
    let mut child = Fwd(cmd.spawn().expect("spawn ref-forwarder"));
    let out = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), rtprelay_benches::MARK_READY, "ready line");
    child
}

/// Sinks on consecutive even ports (flow i's destination is the first port + 2i).
fn sinks() -> Vec<UdpSocket> {
    let base = free_base();
    (0..FLOWS)
        .map(|i| {
            let s = UdpSocket::bind(("127.0.0.1", base + 2 * i as u16)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .collect()
}

fn relays_both_ways(engine: &str) {
    let _turn = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let sinks = sinks();
    let phones: Vec<UdpSocket> = (0..FLOWS).map(|_| sock()).collect();
    let sources =
        std::env::temp_dir().join(format!("ref-fwd-sources-{engine}-{}", std::process::id()));
    let list: String = phones
        .iter()
        .map(|p| format!("{}\n", p.local_addr().unwrap()))
        .collect();
    std::fs::write(&sources, list).unwrap();
    let base = free_base();
    let _fwd = start(engine, base, sinks[0].local_addr().unwrap(), Some(&sources));
    let mut buf = [0u8; 2048];
    for (i, (phone, sink)) in phones.iter().zip(&sinks).enumerate() {
        let inbound = SocketAddr::from(([127, 0, 0, 1], base + 2 * i as u16));
        let outbound = SocketAddr::from(([127, 0, 0, 1], base + 2 * (FLOWS + i) as u16));
        for n in 0..PACKETS {
            let forward = format!("flow {i} forward {n}");
            phone.send_to(forward.as_bytes(), inbound).unwrap();
            let (len, from) = sink.recv_from(&mut buf).expect("forward packet");
            assert_eq!(&buf[..len], forward.as_bytes());
            assert_eq!(from, outbound);
            let back = format!("flow {i} back {n}");
            sink.send_to(back.as_bytes(), outbound).unwrap();
            let (len, from) = phone.recv_from(&mut buf).expect("reverse packet");
            assert_eq!(&buf[..len], back.as_bytes());
            assert_eq!(from, inbound);
        }
    }
    let _ = std::fs::remove_file(&sources);
}

fn relays_one_way(engine: &str) {
    let _turn = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let sinks = sinks();
    let phone = sock();
    let base = free_base();
    let _fwd = start(engine, base, sinks[0].local_addr().unwrap(), None);
    let mut buf = [0u8; 2048];
    for n in 0..PACKETS {
        for (i, sink) in sinks.iter().enumerate() {
            let payload = vec![(n + i) as u8; 172];
            phone
                .send_to(&payload, ("127.0.0.1", base + 2 * i as u16))
                .unwrap();
            let (len, _) = sink.recv_from(&mut buf).expect("relayed packet");
            assert_eq!(&buf[..len], &payload[..]);
        }
    }
}

#[test]
fn epoll_engine_relays_one_way() {
    relays_one_way("epoll");
}

#[test]
fn uring_engine_relays_one_way() {
    relays_one_way("uring");
}

#[test]
fn epoll_engine_relays_both_ways() {
    relays_both_ways("epoll");
}

#[test]
fn uring_engine_relays_both_ways() {
    relays_both_ways("uring");
}

#[test]
fn uring_msg_engine_relays_one_way() {
    relays_one_way("uring-msg");
}

#[test]
fn uring_msg_engine_relays_both_ways() {
    relays_both_ways("uring-msg");
}
