//! rtpproxy media forking (`C`) and recording (`R`) against the real relay on loopback: copies
//! arrive byte-exact while the call keeps flowing, `N` stops them, and recordings are valid pcap
//! files holding exactly the RTP and RTCP relayed.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::rtpproxy::{Controller, port_of};
use common::*;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tonic::transport::Channel;

/// A call set up with U/L: the caller sends to `to_caller`, the callee to `to_callee`.
struct Call {
    id: &'static str,
    caller: UdpSocket,
    callee: UdpSocket,
    to_caller: u16,
    to_callee: u16,
}

fn setup_call(c: &Controller, id: &'static str) -> Call {
    let caller = udp(0);
    let callee = udp(0);
    let caller_port = caller.local_addr().unwrap().port();
    let callee_port = callee.local_addr().unwrap().port();
    let to_callee = port_of(&c.ask("u", &format!("U {id} 127.0.0.1 {caller_port} ftag;1")));
    let to_caller = port_of(&c.ask(
        "l",
        &format!("L {id} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    Call {
        id,
        caller,
        callee,
        to_caller,
        to_callee,
    }
}

/// Sends `n` RTP packets each way through the call, checking each arrives; returns them in
/// sending order (forward, then reverse).
fn exchange(call: &Call, n: u16, seq0: u16) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut fwd = Vec::new();
    let mut rev = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let seq = seq0.wrapping_add(i);
        let f = rtp(0, seq, u32::from(seq) * 160, 0xf0f0, 160);
        call.caller
            .send_to(&f, ("127.0.0.1", call.to_caller))
            .unwrap();
        let (len, _) = call
            .callee
            .recv_from(&mut buf)
            .expect("forward RTP relayed");
        assert_eq!(&buf[..len], &f[..]);
        let r = rtp(
            8,
            seq,
            u32::from(seq) * 160,
            0x0b0b,
            100 + usize::from(i % 7),
        );
        call.callee
            .send_to(&r, ("127.0.0.1", call.to_callee))
            .unwrap();
        let (len, _) = call
            .caller
            .recv_from(&mut buf)
            .expect("reverse RTP relayed");
        assert_eq!(&buf[..len], &r[..]);
        fwd.push(f);
        rev.push(r);
    }
    (fwd, rev)
}

/// `connect_destination` connects only sessions whose destination is fixed (gRPC): rtpproxy
/// sessions learn their peers from the first packets (a NATed phone rarely sends from the port
/// its SDP names), so their sockets stay unconnected and media flows as without the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_destination_leaves_rtpproxy_sessions_unconnected() {
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let toml = "[media]\nconnect_destination = true\n";
    let (_relay, _grpc) = Relay::start_with_config(1, toml, &["--rtpproxy-listen", &listen]).await;
    let c = Controller::on_port(ctl_port);
    let mut call = setup_call(&c, "connect-1@test");
    exchange(&call, 3, 100);
    // `Ln` re-creates the session on a new port with both peers known: still not connected.
    let callee_port = call.callee.local_addr().unwrap().port();
    call.to_caller = port_of(&c.ask(
        "n",
        &format!("Ln {} 127.0.0.1 {callee_port} ftag;1 ttag;1", call.id),
    ));
    exchange(&call, 3, 200);
    for port in [call.to_caller, call.to_callee] {
        for port in [port, port + 1] {
            let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(udp_peer_of(local), None, "relay socket {local}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_forks_both_directions_until_n() {
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (_relay, mut grpc) = Relay::start(2, &["--rtpproxy-listen", &listen]).await;
    let c = Controller::on_port(ctl_port);
    assert_eq!(c.ask("v", "VF 20071218"), "1");

    let call = setup_call(&c, "copy-1@test");
    let tap = udp(0);
    tap.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tap_addr = tap.local_addr().unwrap();
    assert_eq!(
        c.ask("c0", &format!("C {} /tmp/x.rtp ftag;1 ttag;1", call.id)),
        "E65"
    );
    assert_eq!(
        c.ask("c1", &format!("C nocall udp:{tap_addr} ftag;1")),
        "E50"
    );
    assert_eq!(
        c.ask("c2", &format!("C {} udp:{tap_addr} ftag;1 ttag;1", call.id)),
        "0"
    );

    const N: u16 = 50;
    let (fwd, rev) = exchange(&call, N, 1000);
    let mut copies = Vec::new();
    let mut buf = [0u8; 2048];
    while copies.len() < 2 * usize::from(N) {
        let (len, from) = tap
            .recv_from(&mut buf)
            .expect("a copy for every relayed packet");
        assert_eq!(
            from.port(),
            call.to_callee,
            "copies leave the connect-side RTP socket"
        );
        copies.push(buf[..len].to_vec());
    }
    let mut want: Vec<Vec<u8>> = fwd.iter().chain(rev.iter()).cloned().collect();
    let mut got = copies.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every copy byte-exact, none missing or extra");
    assert!(tap.recv_from(&mut buf).is_err(), "no extra copies");

    let status = grpc
        .get_session_status(v1::GetSessionStatusRequest {
            session_id: format!("rtpp:{}:ftag:1", call.id),
        })
        .await
        .unwrap()
        .into_inner();
    let fork = status
        .session
        .and_then(|s| s.fork)
        .expect("fork info present");
    assert_eq!(fork.copy_target, tap_addr.to_string());
    assert_eq!(fork.copies_sent, 2 * u64::from(N));
    assert_eq!(fork.copies_failed, 0);

    // N stops copying; the call still flows.
    assert_eq!(c.ask("n", &format!("N {} ftag;1 ttag;1", call.id)), "0");
    exchange(&call, 10, 2000);
    assert!(tap.recv_from(&mut buf).is_err(), "no copies after N");
    assert_eq!(c.ask("d", &format!("D {} ftag ttag", call.id)), "0");
}

/// Reads a classic pcap file: (link type, the records' data). The recorder's thread may still
/// be writing while a test polls the file, so a header not yet complete reads as no records
/// and a record cut short at the end is left for the next read; callers compare the count.
fn read_pcap(path: &Path) -> (u32, Vec<Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap();
    if bytes.len() < 24 {
        return (0, Vec::new());
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(
        u32_at(&bytes, 0),
        0xa1b2_c3d4,
        "little-endian microsecond pcap"
    );
    assert_eq!(&bytes[4..8], &[2, 0, 4, 0], "pcap version 2.4");
    let linktype = u32_at(&bytes, 20);
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32_at(&bytes, at + 8) as usize;
        let orig = u32_at(&bytes, at + 12) as usize;
        assert_eq!(incl, orig, "RTP is never truncated");
        if at + 16 + incl > bytes.len() {
            break;
        }
        records.push(bytes[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    (linktype, records)
}

fn pcaps_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect()
}

/// A relay with `shards` shards, an rtpproxy UDP listener and a fresh record directory named
/// `name-PID` under the temporary directory.
async fn recording_relay(
    shards: usize,
    name: &str,
) -> (PathBuf, Relay, RelayClient<Channel>, Controller) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let (relay, grpc) = Relay::start(
        shards,
        &["--rtpproxy-listen", &listen, "--record-dir", &dir_arg],
    )
    .await;
    (dir, relay, grpc, Controller::on_port(ctl_port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_writes_a_pcap_of_both_directions() {
    let (dir, _relay, _grpc, c) = recording_relay(2, "rtprelay-rec").await;
    let call = setup_call(&c, "rec-1@test/../x");
    assert_eq!(c.ask("r0", "R nocall ftag;1"), "E50");
    assert_eq!(c.ask("r1", &format!("R {} ftag;1 ttag;1", call.id)), "0");

    const N: u16 = 40;
    let (fwd, rev) = exchange(&call, N, 7);
    assert_eq!(c.ask("d", &format!("D {} ftag ttag", call.id)), "0");

    let files = pcaps_in(&dir);
    assert_eq!(files.len(), 1, "one recording: {files:?}");
    let path = &files[0];
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("rtpp_rec-1_test_.._x_ftag_1-"),
        "{path:?}"
    );
    // The writer thread closes the file shortly after D.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (linktype, records) = loop {
        let (lt, r) = read_pcap(path);
        if r.len() >= 2 * usize::from(N) || Instant::now() > deadline {
            break (lt, r);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(linktype, 101, "LINKTYPE_RAW");
    assert_eq!(records.len(), 2 * usize::from(N));
    let caller = call.caller.local_addr().unwrap();
    let callee = call.callee.local_addr().unwrap();
    let mut fwd_seen = Vec::new();
    let mut rev_seen = Vec::new();
    for r in &records {
        assert_eq!(r[0], 0x45, "IPv4 without options");
        assert_eq!(r[9], 17, "UDP");
        let src_port = u16::from_be_bytes([r[20], r[21]]);
        let dst_port = u16::from_be_bytes([r[22], r[23]]);
        let payload = r[28..].to_vec();
        assert_eq!(
            usize::from(u16::from_be_bytes([r[24], r[25]])),
            8 + payload.len()
        );
        if src_port == caller.port() {
            assert_eq!(dst_port, call.to_caller);
            fwd_seen.push(payload);
        } else {
            assert_eq!((src_port, dst_port), (callee.port(), call.to_callee));
            rev_seen.push(payload);
        }
    }
    assert_eq!(fwd_seen, fwd, "forward RTP recorded in order, byte-exact");
    assert_eq!(rev_seen, rev, "reverse RTP recorded in order, byte-exact");

    // tshark, when installed, must read the file too.
    if let Ok(out) = std::process::Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-c", "5"])
        .output()
    {
        assert!(
            out.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_without_record_dir_is_refused_and_n_stops_recording() {
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (_relay, _grpc) = Relay::start(1, &["--rtpproxy-listen", &listen]).await;
    let c = Controller::on_port(ctl_port);
    let call = setup_call(&c, "rec-off@test");
    assert_eq!(c.ask("r", &format!("R {} ftag;1 ttag;1", call.id)), "E65");
    exchange(&call, 3, 1);
    assert_eq!(c.ask("n", &format!("N {} ftag;1 ttag;1", call.id)), "0");
    assert_eq!(c.ask("n2", "N nocall ftag;1"), "E50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_closes_the_recording_while_the_call_goes_on() {
    let (dir, _relay, mut grpc, c) = recording_relay(1, "rtprelay-rec-n").await;
    let call = setup_call(&c, "rec-n@test");
    assert_eq!(c.ask("r", &format!("R {} ftag;1 ttag;1", call.id)), "0");
    exchange(&call, 5, 1);
    assert_eq!(c.ask("n", &format!("N {} ftag;1 ttag;1", call.id)), "0");
    exchange(&call, 5, 100);
    let status = grpc
        .get_session_status(v1::GetSessionStatusRequest {
            session_id: format!("rtpp:{}:ftag:1", call.id),
        })
        .await
        .unwrap()
        .into_inner();
    let fork = status.session.and_then(|s| s.fork).unwrap();
    assert!(!fork.recording);
    assert_eq!((fork.records_queued, fork.records_dropped), (10, 0));
    let files = pcaps_in(&dir);
    assert_eq!(files.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = read_pcap(&files[0]);
        if r.len() == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{} records, want 10", r.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_is_copied_to_port_plus_one_and_recorded() {
    let (dir, _relay, _grpc, c) = recording_relay(1, "rtprelay-rec-rtcp").await;
    let (caller, caller_rtcp) = udp_pair(free_udp_port());
    let (callee, callee_rtcp) = udp_pair(free_udp_port());
    let (tap, tap_rtcp) = udp_pair(free_udp_port());
    let call = "rtcp-fork@test";
    let caller_port = caller.local_addr().unwrap().port();
    let callee_port = callee.local_addr().unwrap().port();
    let to_callee = port_of(&c.ask("u", &format!("U {call} 127.0.0.1 {caller_port} ftag;1")));
    let to_caller = port_of(&c.ask(
        "l",
        &format!("L {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    let tap_addr = tap.local_addr().unwrap();
    assert_eq!(
        c.ask("c", &format!("Cs {call} udp:{tap_addr} ftag;1 ttag;1")),
        "0"
    );
    assert_eq!(c.ask("r", &format!("Rs {call} ftag;1 ttag;1")), "0");

    let mut buf = [0u8; 2048];
    let mut relay = |from: &UdpSocket, port: u16, to: &UdpSocket, data: &[u8]| {
        from.send_to(data, ("127.0.0.1", port)).unwrap();
        let (n, _) = to.recv_from(&mut buf).expect("relayed");
        assert_eq!(&buf[..n], data);
    };
    let (fwd_rtp, rev_rtp) = (rtp(0, 1, 0, 1, 20), rtp(0, 1, 0, 2, 20));
    let (fwd_sr, rev_sr) = (rtcp_sr(1, 1 << 32), rtcp_sr(2, 2 << 32));
    relay(&caller, to_caller, &callee, &fwd_rtp);
    relay(&caller_rtcp, to_caller + 1, &callee_rtcp, &fwd_sr);
    relay(&callee, to_callee, &caller, &rev_rtp);
    relay(&callee_rtcp, to_callee + 1, &caller_rtcp, &rev_sr);

    // RTP copies reach the target, RTCP copies its port + 1, each from the matching socket.
    let mut copies = |sock: &UdpSocket, n: usize| {
        (0..n)
            .map(|_| {
                let (len, from) = sock.recv_from(&mut buf).expect("a copy");
                (buf[..len].to_vec(), from.port())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        copies(&tap, 2),
        vec![(fwd_rtp.clone(), to_callee), (rev_rtp.clone(), to_callee)]
    );
    assert_eq!(
        copies(&tap_rtcp, 2),
        vec![
            (fwd_sr.clone(), to_callee + 1),
            (rev_sr.clone(), to_callee + 1)
        ]
    );
    assert_eq!(c.ask("d", &format!("D {call} ftag ttag")), "0");

    // One recording with all four packets, RTCP on the RTCP ports.
    let files = pcaps_in(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let (_, r) = read_pcap(&files[0]);
        if r.len() >= 4 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let seen: Vec<(u16, u16, Vec<u8>)> = records
        .iter()
        .map(|r| {
            let port = |at: usize| u16::from_be_bytes([r[at], r[at + 1]]);
            (port(20), port(22), r[28..].to_vec())
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (caller_port, to_caller, fwd_rtp),
            (caller_port + 1, to_caller + 1, fwd_sr),
            (callee_port, to_callee, rev_rtp),
            (callee_port + 1, to_callee + 1, rev_sr),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
