//! RTP over TCP through the real relay: framing and counters, destination faults with backoff
//! and recovery, the idle timeout, and bounded memory behind a stalled receiver.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use rtprelay_proto::v1::session_event::Kind;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn tcp_req(id: &str, dest: SocketAddr, options: v1::SessionOptions) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        protocol: v1::Protocol::Tcp as i32,
        options: Some(options),
        ..create_req(id, 0, 0, dest)
    }
}

fn rfc4571(p: &[u8]) -> Vec<u8> {
    let mut v = (p.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(p);
    v
}

fn interleaved(ch: u8, p: &[u8]) -> Vec<u8> {
    let mut v = vec![b'$', ch];
    v.extend_from_slice(&(p.len() as u16).to_be_bytes());
    v.extend_from_slice(p);
    v
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
}

fn accept(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                timeouts(&s);
                return s;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no connection from the relay: {e}"),
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to relay");
    timeouts(&s);
    s
}

/// Writes `data` in pieces of varying size (1..=7919 bytes), so frames straddle writes.
fn write_split(s: &mut TcpStream, data: &[u8]) {
    let mut at = 0;
    let mut k = 1usize;
    while at < data.len() {
        let n = (k * 7919 % 9000).max(1).min(data.len() - at);
        s.write_all(&data[at..at + n]).unwrap();
        at += n;
        k += 1;
    }
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("relayed bytes arrive");
    v
}

/// Polls the status until `f` holds (at most 3 s).
async fn wait_status(
    client: &mut RelayClient<Channel>,
    id: &str,
    f: impl Fn(&v1::SessionInfo) -> bool,
) -> v1::SessionInfo {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = status(client, id).await;
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status never matched: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn framing_round_trip(framing: v1::TcpFraming) {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let dest = TcpListener::bind("127.0.0.1:0").unwrap();
    let id = format!("tcp-{framing:?}");
    let info = create(
        &mut client,
        tcp_req(
            &id,
            dest.local_addr().unwrap(),
            v1::SessionOptions {
                tcp_framing: framing as i32,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(info.protocol, v1::Protocol::Tcp as i32);
    assert_eq!(info.state, v1::SessionState::Connecting as i32);
    let mut phone = connect(addr_of(&info.listen));
    let mut far = accept(&dest);
    let il = framing == v1::TcpFraming::Interleaved;
    // 40 RTP packets, every 10th of 60 KB, and (interleaved) 5 RTCP SRs on channel 1.
    let mut fwd = Vec::new();
    let mut rtp_bytes = 0u64;
    for seq in 0..40u16 {
        let size = if seq % 10 == 0 { 60_000 } else { 160 };
        let p = rtp(0, seq, u32::from(seq) * 160, 0x1234, size);
        let f = if il { interleaved(0, &p) } else { rfc4571(&p) };
        rtp_bytes += f.len() as u64;
        fwd.extend(f);
    }
    let mut rtcp_bytes = 0u64;
    if il {
        for k in 0..5u64 {
            let f = interleaved(1, &rtcp_sr(0x1234, k << 32));
            rtcp_bytes += f.len() as u64;
            fwd.extend(f);
        }
    }
    let rev: Vec<u8> = (0..20u16)
        .flat_map(|seq| {
            let p = rtp(8, seq, u32::from(seq) * 160, 0x99, 160);
            if il { interleaved(0, &p) } else { rfc4571(&p) }
        })
        .collect();
    let writer = {
        let (mut phone, fwd) = (phone.try_clone().unwrap(), fwd.clone());
        std::thread::spawn(move || write_split(&mut phone, &fwd))
    };
    assert_eq!(
        read_exact(&mut far, fwd.len()),
        fwd,
        "forward is byte-exact"
    );
    writer.join().unwrap();
    write_split(&mut far, &rev);
    assert_eq!(
        read_exact(&mut phone, rev.len()),
        rev,
        "reverse is byte-exact"
    );

    let s = wait_status(&mut client, &id, |s| {
        s.reverse
            .as_ref()
            .and_then(|r| r.rtp)
            .is_some_and(|c| c.packets_sent == 20)
    })
    .await;
    assert_eq!(s.state, v1::SessionState::Forwarding as i32);
    let f = s.forward.unwrap();
    let (frtp, frtcp) = (f.rtp.unwrap(), f.rtcp.unwrap());
    eprintln!("{framing:?}: forward rtp {frtp:?} rtcp {frtcp:?}");
    assert_eq!(
        (frtp.packets_received, frtp.bytes_received),
        (40, rtp_bytes)
    );
    assert_eq!((frtp.packets_sent, frtp.bytes_sent), (40, rtp_bytes));
    let want_rtcp = if il { 5 } else { 0 };
    assert_eq!(
        (frtcp.packets_received, frtcp.bytes_received),
        (want_rtcp, rtcp_bytes)
    );
    assert_eq!(frtcp.packets_sent, want_rtcp);
    assert_eq!(f.streams.len(), 1, "RTP statistics see the frames");
    assert_eq!(f.streams[0].ssrc, 0x1234);
    // RFC 3550 probation holds back the first packet of a new source.
    assert_eq!(f.streams[0].packets_received, 39);
    assert_eq!(f.streams[0].lost, 0);
    if il {
        assert_eq!(f.rtcp_packets.unwrap().sr, 5);
    }
    let r = s.reverse.unwrap();
    let rrtp = r.rtp.unwrap();
    assert_eq!(
        (rrtp.packets_received, rrtp.bytes_received),
        (20, rev.len() as u64)
    );
    assert_eq!(rrtp.bytes_sent, rev.len() as u64);
    assert_eq!(r.streams[0].ssrc, 0x99);
    let tcp = s.tcp.unwrap();
    assert_eq!(tcp.framing, framing as i32);
    assert_eq!(
        (tcp.framing_errors_forward, tcp.framing_errors_reverse),
        (0, 0)
    );
    assert_eq!(
        s.client.as_ref().map(|_| addr_of(&s.client)),
        Some(phone.local_addr().unwrap())
    );

    // A second client is accepted and closed at once; the first keeps flowing.
    let mut extra = connect(addr_of(&info.listen));
    let mut b = [0u8; 1];
    assert!(
        matches!(extra.read(&mut b), Ok(0) | Err(_)),
        "second client is closed"
    );
    let more = if il {
        interleaved(0, &rtp(0, 40, 0, 0x1234, 10))
    } else {
        rfc4571(&rtp(0, 40, 0, 0x1234, 10))
    };
    phone.write_all(&more).unwrap();
    assert_eq!(read_exact(&mut far, more.len()), more);
    let s = wait_status(&mut client, &id, |s| {
        s.tcp.is_some_and(|t| t.clients_rejected == 1)
    })
    .await;
    assert_eq!(s.tcp.unwrap().clients_accepted, 1);

    // Destroy frees the listen port before it answers.
    let listen = addr_of(&info.listen);
    client
        .destroy_session(v1::DestroySessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    TcpListener::bind(listen).unwrap_or_else(|e| panic!("listen port still held: {e}"));
    let mut b = [0u8; 1];
    assert!(
        matches!(far.read(&mut b), Ok(0) | Err(_)),
        "destination connection closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4571_is_relayed_byte_exact_and_counted() {
    framing_round_trip(v1::TcpFraming::Rfc4571).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_is_relayed_byte_exact_and_counted() {
    framing_round_trip(v1::TcpFraming::Interleaved).await;
}

/// The next event of the session (at most `limit` away).
async fn next_event(
    events: &mut tonic::Streaming<v1::SessionEvent>,
    limit: Duration,
) -> Option<(Kind, u64)> {
    match tokio::time::timeout(limit, events.next()).await {
        Ok(Some(Ok(e))) => e.kind.map(|k| (k, e.timestamp_unix_us)),
        _ => None,
    }
}

async fn wait_state(
    events: &mut tonic::Streaming<v1::SessionEvent>,
    to: v1::SessionState,
    limit: Duration,
) -> v1::StateChanged {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some((Kind::StateChanged(s), _)) = next_event(events, left).await
            && s.to == to as i32
        {
            return s;
        }
    }
    panic!("no StateChanged to {to:?} within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_faults_back_off_and_recover() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let dest = free_port();
    let mut events = watch(&mut client, &["fault"]).await;
    let info = create(
        &mut client,
        tcp_req(
            "fault",
            dest,
            v1::SessionOptions {
                tcp_backoff_initial_ms: Some(200),
                tcp_backoff_max_ms: Some(800),
                tcp_connect_timeout_ms: Some(500),
                ..Default::default()
            },
        ),
    )
    .await;
    let mut phone = connect(addr_of(&info.listen));
    // Bytes sent while the destination is down are held and delivered later.
    let early = rfc4571(&rtp(0, 1, 160, 7, 160));
    phone.write_all(&early).unwrap();

    let error = wait_state(&mut events, v1::SessionState::Error, Duration::from_secs(2)).await;
    assert!(error.reason.contains("refused"), "{}", error.reason);
    // Failed attempts are reported as Error events; their spacing is the backoff.
    let mut attempts = Vec::new();
    while attempts.len() < 5 {
        match next_event(&mut events, Duration::from_secs(3)).await {
            Some((Kind::Error(e), at)) => {
                assert!(e.message.contains("retrying in"), "{}", e.message);
                attempts.push(at);
            }
            Some(_) => {}
            None => panic!("only {} failed attempts reported", attempts.len()),
        }
    }
    // Relay timestamps, not arrival here: events may queue while the test is busy.
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| u128::from((w[1] - w[0]) / 1000))
        .collect();
    eprintln!("retry intervals (ms) after the 1st..4th failure: {gaps:?}");
    // After failures 1-4 the relay waits 200, 400, 800, 800 ms (cap), each +-10% jitter; scheduling adds a
    // little on top.
    for (gap, want) in gaps.iter().zip([200u128, 400, 800, 800]) {
        assert!(
            *gap as f64 >= want as f64 * 0.85 && (*gap as f64) <= want as f64 * 1.1 + 150.0,
            "gap {gap} ms, want about {want} ms ({gaps:?})"
        );
    }
    let s = status(&mut client, "fault").await;
    assert_eq!(s.state, v1::SessionState::Error as i32);
    assert!(s.last_error.contains("refused"), "{}", s.last_error);

    // The destination appears: the next attempt connects and the held bytes arrive.
    let listener = TcpListener::bind(dest).unwrap();
    let mut far = accept(&listener);
    let up = wait_state(
        &mut events,
        v1::SessionState::Forwarding,
        Duration::from_secs(2),
    )
    .await;
    eprintln!("recovered: {}", up.reason);
    assert_eq!(read_exact(&mut far, early.len()), early);
    far.write_all(&rfc4571(b"pong-1")).unwrap();
    assert_eq!(read_exact(&mut phone, 8), rfc4571(b"pong-1"));

    // The destination dies mid-stream: ERROR, and recovery once it is back.
    drop(far);
    drop(listener);
    let down = wait_state(&mut events, v1::SessionState::Error, Duration::from_secs(2)).await;
    eprintln!("destination lost: {}", down.reason);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = TcpListener::bind(dest).unwrap();
    let mut far = accept(&listener);
    wait_state(
        &mut events,
        v1::SessionState::Forwarding,
        Duration::from_secs(2),
    )
    .await;
    let again = rfc4571(&rtp(0, 2, 320, 7, 160));
    phone.write_all(&again).unwrap();
    assert_eq!(read_exact(&mut far, again.len()), again);
    let s = status(&mut client, "fault").await;
    let t = s.tcp.unwrap();
    eprintln!(
        "connect attempts {} failures {}",
        t.connect_attempts, t.connect_failures
    );
    assert!(t.connect_failures >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_closes_the_session_or_waits_for_another() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let dest = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut events = client
        .watch_events(v1::WatchEventsRequest {
            session_ids: vec!["leave".into(), "stay".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let leave = create(
        &mut client,
        tcp_req("leave", dest.local_addr().unwrap(), Default::default()),
    )
    .await;
    let phone = connect(addr_of(&leave.listen));
    let _far = accept(&dest);
    wait_status(&mut client, "leave", |s| {
        s.state == v1::SessionState::Forwarding as i32
    })
    .await;
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(3);
    let closed = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("no Closed event");
        if let Some((Kind::Closed(c), _)) = next_event(&mut events, left).await {
            break c;
        }
    };
    assert_eq!(closed.reason, "client closed");

    let stay = create(
        &mut client,
        tcp_req(
            "stay",
            dest.local_addr().unwrap(),
            v1::SessionOptions {
                tcp_client_reconnect: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let phone = connect(addr_of(&stay.listen));
    let mut far = accept(&dest);
    wait_status(&mut client, "stay", |s| {
        s.state == v1::SessionState::Forwarding as i32
    })
    .await;
    drop(phone);
    wait_status(&mut client, "stay", |s| {
        s.state == v1::SessionState::Connecting as i32
    })
    .await;
    let mut phone = connect(addr_of(&stay.listen));
    wait_status(&mut client, "stay", |s| {
        s.state == v1::SessionState::Forwarding as i32
    })
    .await;
    phone.write_all(&rfc4571(b"again")).unwrap();
    assert_eq!(read_exact(&mut far, 7), rfc4571(b"again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_session_times_out_and_frees_its_port() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let dest = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut events = watch(&mut client, &["idle"]).await;
    let created = Instant::now();
    let info = create(
        &mut client,
        tcp_req(
            "idle",
            dest.local_addr().unwrap(),
            v1::SessionOptions {
                idle_timeout_ms: Some(600),
                ..Default::default()
            },
        ),
    )
    .await;
    let _phone = connect(addr_of(&info.listen));
    let _far = accept(&dest);
    let deadline = Instant::now() + Duration::from_secs(3);
    let closed = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("no Closed event");
        if let Some((Kind::Closed(c), _)) = next_event(&mut events, left).await {
            break c;
        }
    };
    let after = created.elapsed();
    eprintln!("idle TCP session closed after {after:?}");
    assert_eq!(closed.reason, "timeout");
    assert!(
        after >= Duration::from_millis(600) && after < Duration::from_millis(1800),
        "{after:?}"
    );
    TcpListener::bind(addr_of(&info.listen)).expect("listen port is free");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_keeps_memory_bounded_and_others_flowing() {
    let (relay, mut client) = Relay::start(1, &[]).await;
    let stalled_dest = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled = create(
        &mut client,
        tcp_req(
            "stalled",
            stalled_dest.local_addr().unwrap(),
            v1::SessionOptions {
                tcp_framing: v1::TcpFraming::None as i32,
                ..Default::default()
            },
        ),
    )
    .await;
    let ok_dest = TcpListener::bind("127.0.0.1:0").unwrap();
    let ok = create(
        &mut client,
        tcp_req("flowing", ok_dest.local_addr().unwrap(), Default::default()),
    )
    .await;
    let pusher = connect(addr_of(&stalled.listen));
    let _never_reads = accept(&stalled_dest);
    let mut phone = connect(addr_of(&ok.listen));
    let mut far = accept(&ok_dest);
    let before = rss_kib(relay.pid());

    let push = std::thread::spawn(move || {
        let mut pusher = pusher;
        pusher
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chunk = vec![0x55u8; 64 * 1024];
        let (mut pushed, started) = (0usize, Instant::now());
        while pushed < 50 << 20 && started.elapsed() < Duration::from_secs(4) {
            match pusher.write(&chunk) {
                Ok(n) => pushed += n,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        pushed
    });
    let mut peak = before;
    let started = Instant::now();
    let mut seq = 0u16;
    while !push.is_finished() && started.elapsed() < Duration::from_secs(6) {
        let f = rfc4571(&rtp(0, seq, 0, 3, 160));
        phone.write_all(&f).unwrap();
        assert_eq!(
            read_exact(&mut far, f.len()),
            f,
            "the other session keeps flowing"
        );
        seq += 1;
        peak = peak.max(rss_kib(relay.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pushed = push.join().unwrap();
    let s = status(&mut client, "stalled").await;
    let fwd = s.forward.unwrap().rtp.unwrap();
    eprintln!(
        "stalled session: client offered {} KiB, relay read {} KiB and wrote {} KiB; RSS {} KiB before, {} KiB peak; {} packets on the other session",
        pushed / 1024,
        fwd.bytes_received / 1024,
        fwd.bytes_sent / 1024,
        before,
        peak,
        seq
    );
    assert!(
        pushed < 50 << 20,
        "the relay must push back, yet it took all {pushed} bytes"
    );
    assert!(
        fwd.bytes_received - fwd.bytes_sent <= 64 * 1024,
        "at most one chunk in flight"
    );
    assert!(
        peak < before + 8 * 1024,
        "RSS grew from {before} to {peak} KiB"
    );
    assert!(seq > 10);
}
