//! Fault handling of UDP sessions through the real relay: an unreachable destination puts the
//! session in error within a second, with the reason, and it recovers when the destination
//! answers; the idle timeout closes a silent session and frees its ports.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use rtprelay_proto::v1;
use rtprelay_proto::v1::session_event::Kind;
use tokio_stream::StreamExt;

/// Waits up to `limit` for a StateChanged event to `to`; returns it and when it came.
/// Bytes queued for reading on the IPv4 UDP socket bound to 127.0.0.1:`port` (its receive and
/// error queues), from /proc/net/udp.
fn udp_rx_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) {
            return None;
        }
        let rx = f.get(4)?.split(':').nth(1)?;
        u64::from_str_radix(rx, 16).ok()
    })
}

async fn state_change(
    events: &mut tonic::Streaming<v1::SessionEvent>,
    to: v1::SessionState,
    limit: Duration,
) -> Option<(v1::StateChanged, Instant)> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(e))) => {
                if let Some(Kind::StateChanged(s)) = e.kind
                    && s.to == to as i32
                {
                    return Some((s, Instant::now()));
                }
            }
            _ => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_destination_is_reported_within_a_second_and_recovers() {
    unreachable_destination(false).await;
}

/// The same with the connect-side sockets connected to the destination, where the kernel
/// reports the ICMP error to the socket as a connected one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_connected_destination_is_reported_and_recovers() {
    unreachable_destination(true).await;
}

async fn unreachable_destination(connect_destination: bool) {
    let toml = format!("[media]\nconnect_destination = {connect_destination}\n");
    let (_relay, mut client) = Relay::start_with_config(1, &toml, &[]).await;
    // A port with nobody listening: the kernel answers with ICMP port unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = closed.local_addr().unwrap();
    drop(closed);
    let mut events = watch(&mut client, &["icmp"]).await;
    let info = create_session(&mut client, create_req("icmp", 0, 0, dest)).await;
    let listen = addr_of(&info.listen);
    let connect = addr_of(&info.connect);

    let phone = udp(0);
    let started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (phone, stop) = (phone.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            for seq in 0..300u16 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let _ = phone.send_to(&rtp(0, seq, u32::from(seq) * 160, 5, 160), listen);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (error, at) = state_change(&mut events, v1::SessionState::Error, Duration::from_secs(3))
        .await
        .expect("no StateChanged to ERROR");
    let took = at - started;
    eprintln!("error reported after {took:?}: {}", error.reason);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        error.reason.contains("unreachable") && error.reason.contains("refused"),
        "{}",
        error.reason
    );
    // Every packet sent meanwhile drew another ICMP error. Their reports must not pile up in
    // the outbound socket's error queue (charged to its receive buffer): let ~10 more arrive,
    // then at most one report may be waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = udp_rx_queue(connect.port()).expect("the relay's outbound socket is listed");
    assert!(queued < 1024, "{queued} bytes of error reports left queued");
    let status = session_status(&mut client, "icmp").await;
    assert_eq!(status.state, v1::SessionState::Error as i32);
    assert!(
        status.last_error.contains(&dest.to_string()),
        "{}",
        status.last_error
    );

    // The destination comes up and answers: back to forwarding.
    let back = UdpSocket::bind(dest).expect("destination port reusable");
    back.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    let (_, from) = back
        .recv_from(&mut buf)
        .expect("media reaches the destination once it listens");
    assert_eq!(from, connect);
    back.send_to(&rtp(0, 1, 160, 6, 160), connect).unwrap();
    let (ok, _) = state_change(
        &mut events,
        v1::SessionState::Forwarding,
        Duration::from_secs(3),
    )
    .await
    .expect("no StateChanged back to FORWARDING");
    assert_eq!(ok.from, v1::SessionState::Error as i32);
    assert_eq!(ok.reason, "destination answered");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let _ = client
        .destroy_session(v1::DestroySessionRequest {
            session_id: "icmp".into(),
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_the_session_and_frees_its_ports() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let mut events = watch(&mut client, &["idle"]).await;
    let mut req = create_req("idle", 0, 0, "127.0.0.1:9".parse().unwrap());
    req.options = Some(v1::SessionOptions {
        idle_timeout_ms: Some(500),
        ..Default::default()
    });
    let created = Instant::now();
    let info = create_session(&mut client, req).await;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), events.next()).await {
            Ok(Some(Ok(e))) => {
                if let Some(Kind::Closed(c)) = e.kind {
                    break c;
                }
            }
            other => panic!("no Closed event: {other:?}"),
        }
    };
    let after = created.elapsed();
    assert_eq!(closed.reason, "timeout");
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_millis(1500),
        "{after:?}"
    );
    for p in [addr_of(&info.listen).port(), addr_of(&info.connect).port()] {
        UdpSocket::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p} still held: {e}"));
        UdpSocket::bind(("127.0.0.1", p + 1))
            .unwrap_or_else(|e| panic!("port {} still held: {e}", p + 1));
    }
}
