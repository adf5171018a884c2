//! Media statistics a SIP controller can trust, measured through the real relay: RFC 3550 loss,
//! reordering and jitter, RTCP round-trip time, alerts, and event watchers that cannot hurt
//! forwarding.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use rtprelay_proto::v1::session_event::Kind;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

struct Path {
    client: UdpSocket,
    client_rtcp: UdpSocket,
    dest: UdpSocket,
    dest_rtcp: UdpSocket,
    listen: SocketAddr,
}

async fn session(
    client: &mut RelayClient<Channel>,
    id: &str,
    dest_from: u16,
    options: Option<v1::SessionOptions>,
) -> Path {
    let (dest, dest_rtcp) = udp_pair(dest_from);
    let mut req = create_req(id, 0, 0, dest.local_addr().unwrap());
    req.options = options;
    let info = create_session(client, req).await;
    Path {
        client: udp(0),
        client_rtcp: udp(0),
        dest,
        dest_rtcp,
        listen: addr_of(&info.listen),
    }
}

fn rtcp_port(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port() + 1)
}

/// Receives everything waiting on `sock` until `quiet_ms` pass without a packet; the count.
fn drain(sock: &UdpSocket, quiet_ms: u64) -> usize {
    sock.set_read_timeout(Some(Duration::from_millis(quiet_ms)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Counts packets on `sock` in a thread while the test sends (a socket left unread would
/// overflow and hide what the relay did), until 1 s passes without a packet.
fn count_in_background(sock: &UdpSocket) -> std::thread::JoinHandle<usize> {
    let sock = sock.try_clone().unwrap();
    std::thread::spawn(move || drain(&sock, 1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_reordering_are_measured_and_alerts_fire_once_and_clear() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let options = v1::SessionOptions {
        alerts: Some(v1::AlertThresholds {
            loss_pct: Some(3.0),
            loss_window_ms: Some(500),
            // Only the loss alert is under test here.
            jitter_ms: Some(0.0),
            ..Default::default()
        }),
        stats_interval_ms: Some(0),
        ..Default::default()
    };
    let mut events = watch(&mut client, &["lossy"]).await;
    let p = session(&mut client, "lossy", 55000, Some(options)).await;

    // 2000 packets at 1 ms pacing: every 20th sequence number is never sent (5.0% loss) and
    // the pairs starting at 25, 75, 125, ... are swapped (reordered, not lost).
    let send = |seq: u16| {
        // 1 ms of PCMU per packet (8 samples), matching the 1 ms pacing.
        let pkt = rtp(0, seq, u32::from(seq) * 8, 0xdead_beef, 160);
        p.client.send_to(&pkt, p.listen).unwrap();
    };
    let counter = count_in_background(&p.dest);
    let mut sent = 0u64;
    let mut seq: u16 = 1;
    let start = Instant::now();
    while seq <= 2000 {
        if seq % 50 == 25 {
            send(seq + 1);
            send(seq);
            sent += 2;
            seq += 2;
        } else {
            if seq % 20 != 0 {
                send(seq);
                sent += 1;
            }
            seq += 1;
        }
        let due = start + Duration::from_micros(u64::from(seq) * 1000);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let arrived = counter.join().unwrap();
    assert_eq!(arrived as u64, sent, "every sent packet is relayed");

    let info = status(&mut client, "lossy").await;
    let fwd = info.forward.unwrap();
    let stream = &fwd.streams[0];
    assert_eq!(stream.ssrc, 0xdead_beef);
    let loss_pct = fwd.loss_rate * 100.0;
    eprintln!(
        "measured loss {loss_pct:.3}% reordered {} expected {} lost {}",
        stream.reordered, stream.expected, stream.lost
    );
    assert!(
        (loss_pct - 5.0).abs() <= 0.2,
        "loss {loss_pct}% should be 5.0% +- 0.2"
    );
    assert_eq!(stream.reordered, 40, "one late packet per swapped pair");
    assert_eq!(stream.duplicates, 0);

    // Clean media for a while: the alert clears.
    for seq in 2001..=3500u16 {
        send(seq);
        std::thread::sleep(Duration::from_micros(1000));
    }
    let mut alerts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alerts.len() < 2 && Instant::now() < deadline {
        let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(2), events.next()).await
        else {
            break;
        };
        if let Some(Kind::Alert(a)) = e.kind
            && a.kind == v1::AlertKind::HighLoss as i32
        {
            alerts.push(a);
        }
    }
    assert_eq!(alerts.len(), 2, "one raise and one clear: {alerts:?}");
    assert!(alerts[0].active && alerts[0].kind == v1::AlertKind::HighLoss as i32);
    assert_eq!(alerts[0].direction, v1::Direction::Forward as i32);
    assert!(alerts[0].value > 3.0 && alerts[0].threshold == 3.0);
    assert!(!alerts[1].active, "cleared after the loss stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_matches_rfc3550_computed_from_the_send_times() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let p = session(&mut client, "jittery", 55500, None).await;
    // PT 0 (PCMU, 8 kHz), 10 ms packets, each sent 0-8 ms late by a fixed pseudo-random pattern.
    let mut lcg: u32 = 12345;
    let start = Instant::now();
    let mut sends = Vec::new();
    for n in 0..250u32 {
        lcg = lcg.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let late_us = u64::from((lcg >> 16) % 8000);
        let due = start + Duration::from_micros(u64::from(n) * 10_000 + late_us);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ts = n * 80;
        let at = Instant::now();
        p.client
            .send_to(&rtp(0, n as u16 + 1, ts, 7, 80), p.listen)
            .unwrap();
        sends.push((at, ts));
    }
    // RFC 3550 A.8 over the actual send instants, in timestamp units.
    let mut j = 0.0f64;
    for w in sends.windows(2) {
        let arrival_diff = w[1].0.duration_since(w[0].0).as_secs_f64() * 8000.0;
        let d = arrival_diff - f64::from(w[1].1 - w[0].1);
        j += (d.abs() - j) / 16.0;
    }
    let expected_ms = j / 8.0;
    drain(&p.dest, 200);
    let info = status(&mut client, "jittery").await;
    let got = info.forward.unwrap().streams[0]
        .jitter_ms
        .expect("jitter known for PCMU");
    eprintln!("jitter: relay {got:.3} ms, test {expected_ms:.3} ms");
    assert!(
        (got - expected_ms).abs() <= expected_ms * 0.10,
        "relay {got} ms vs RFC 3550 {expected_ms} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_time_of_the_destination_leg_from_sr_and_rr() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let p = session(&mut client, "rtt", 56000, None).await;
    // The client sends SRs; the destination holds each for 30 ms but claims a DLSR of 10 ms,
    // so the relay must see 20 ms (plus loopback time) on the destination leg.
    for k in 0..5u64 {
        let ntp = (3_900_000_000u64 + k) << 32 | 0x8000_0000;
        p.client_rtcp
            .send_to(&rtcp_sr(0x1111, ntp), rtcp_port(p.listen))
            .unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = p.dest_rtcp.recv_from(&mut buf).expect("SR relayed");
        assert_eq!(&buf[..n], &rtcp_sr(0x1111, ntp)[..]);
        std::thread::sleep(Duration::from_millis(30));
        let lsr = (ntp >> 16) as u32;
        let dlsr = 65536 / 100; // 10 ms
        p.dest_rtcp
            .send_to(&rtcp_rr(0x2222, 0x1111, lsr, dlsr), from)
            .unwrap();
        p.client_rtcp.recv_from(&mut buf).expect("RR relayed back");
    }
    let info = status(&mut client, "rtt").await;
    let rtt = info.destination_rtt.unwrap();
    let last = rtt.last_ms.expect("an RTT sample");
    eprintln!(
        "destination leg RTT: last {last:.3} ms, avg {:?}, samples {}",
        rtt.avg_ms, rtt.samples
    );
    assert_eq!(rtt.samples, 5);
    assert!(
        (last - 20.0).abs() <= 2.0,
        "RTT {last} ms should be 20 +- 2 ms"
    );
    let fwd = info.forward.unwrap();
    assert_eq!(fwd.rtcp_packets.unwrap().sr, 5);
    assert_eq!(info.reverse.unwrap().rtcp_packets.unwrap().rr, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_neither_blocks_forwarding_nor_other_watchers() {
    let (relay, mut client) = Relay::start(1, &[]).await;
    let fast_options = v1::SessionOptions {
        stats_interval_ms: Some(100),
        ..Default::default()
    };
    // The stalled watcher subscribes to everything on its own connection with a small HTTP/2
    // window, and never reads: after 64 KiB the relay can no longer send to it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", relay.grpc))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stalled = RelayClient::new(channel)
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut reader = watch(&mut client, &["media"]).await;
    // 200 sessions publishing 10 StatsUpdates a second each: ~2000 events/s, so the 4096-event
    // buffer overflows for the stalled watcher within the run.
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for i in 0..200 {
        let mut req = create_req(&format!("noisy-{i}"), 0, 0, dest);
        req.options = Some(fast_options.clone());
        client.create_session(req).await.unwrap();
    }
    let p = session(&mut client, "media", 56500, Some(fast_options)).await;

    // 4 s of media while the stalled watcher's backlog grows past the event buffer.
    let rss_before = rss_kib(relay.pid());
    let counter = count_in_background(&p.dest);
    let mut sent = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        p.client
            .send_to(&rtp(0, sent as u16, 0, 1, 160), p.listen)
            .unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let arrived = counter.join().unwrap();
    let rss_after = rss_kib(relay.pid());
    assert_eq!(
        arrived, sent,
        "forwarding must not notice the stalled watcher"
    );

    // The reading watcher got its session's StatsUpdates all along (~10/s).
    let mut updates = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until
        && let Ok(Some(Ok(e))) =
            tokio::time::timeout(Duration::from_millis(200), reader.next()).await
    {
        assert_eq!(
            e.session_id, "media",
            "filter leaked another session's event"
        );
        if matches!(e.kind, Some(Kind::StatsUpdate(_))) {
            updates += 1;
        }
    }
    assert!(updates >= 30, "reader got only {updates} updates in ~4 s");

    // The stalled watcher finally reads: it is told how much it missed.
    let mut lagged = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until
        && let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(2), stalled.next()).await
    {
        if let Some(Kind::Lagged(l)) = e.kind {
            lagged += l.dropped;
            break;
        }
    }
    eprintln!(
        "stalled watcher: {sent} packets relayed of {sent}, reader got {updates} updates, \
         stalled one lagged by {lagged} events, relay RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(lagged > 0, "the stalled watcher must be told it lagged");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
