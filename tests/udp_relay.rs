//! The real relay, driven over gRPC on loopback: media through many sessions across shards,
//! exact counters, port life cycle, listing and shutdown.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Sends `data` from `from` to `to` and checks it arrives byte-exact at `sink` from `expect_src`.
fn relay_one(
    from: &UdpSocket,
    to: SocketAddr,
    sink: &UdpSocket,
    expect_src: SocketAddr,
    data: &[u8],
) {
    from.send_to(data, to).expect("send");
    let mut buf = vec![0u8; 70_000];
    let (n, src) = sink.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no packet of {} bytes at {:?}: {e}",
            data.len(),
            sink.local_addr()
        )
    });
    assert_eq!(src, expect_src, "packet came from the wrong relay socket");
    assert_eq!(
        &buf[..n],
        data,
        "payload changed in transit ({} bytes)",
        data.len()
    );
}

struct Call {
    id: String,
    client_rtp: UdpSocket,
    client_rtcp: UdpSocket,
    dest_rtp: UdpSocket,
    dest_rtcp: UdpSocket,
    listen: SocketAddr,
    connect: SocketAddr,
}

impl Call {
    fn rtcp(a: SocketAddr) -> SocketAddr {
        SocketAddr::new(a.ip(), a.port() + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_relay_rtp_and_rtcp_both_ways_byte_exact() {
    let (_relay, mut client) = Relay::start(2, &[]).await;
    let mut calls = Vec::new();
    let mut shards_seen = HashSet::new();
    let mut dest_port = 50000;
    for i in 0..200 {
        let (dest_rtp, dest_rtcp) = udp_pair(dest_port);
        let dest = dest_rtp.local_addr().unwrap();
        dest_port = dest.port() + 2;
        let id = format!("call-{i}@example.org;1");
        let info = client
            .create_session(create_req(&id, 0, 0, dest))
            .await
            .unwrap_or_else(|s| panic!("create {id}: {s}"))
            .into_inner()
            .session
            .unwrap();
        assert_eq!(info.session_id, id);
        assert_eq!(info.state, v1::SessionState::Forwarding as i32);
        let listen = addr_of(&info.listen);
        let connect = addr_of(&info.connect);
        assert!(
            listen.port() % 2 == 0 && listen.port() != 0,
            "allocated listen port {listen}"
        );
        assert!(
            connect.port() % 2 == 0 && connect.port() != 0,
            "allocated connect port {connect}"
        );
        shards_seen.insert(info.shard);
        let client_rtp = udp(0);
        let client_rtcp = udp(0);
        calls.push(Call {
            id,
            client_rtp,
            client_rtcp,
            dest_rtp,
            dest_rtcp,
            listen,
            connect,
        });
    }
    assert_eq!(shards_seen.len(), 2, "200 IDs must land on both shards");

    let sizes = [1usize, 172, 1500, 65_000];
    for (s, c) in calls.iter().enumerate() {
        // Every session relays 172-byte RTP; every 50th also the edge sizes.
        let these: &[usize] = if s % 50 == 0 { &sizes } else { &sizes[1..2] };
        for (n, &len) in these.iter().enumerate() {
            let p = payload(s, n, len);
            relay_one(&c.client_rtp, c.listen, &c.dest_rtp, c.connect, &p);
            relay_one(&c.dest_rtp, c.connect, &c.client_rtp, c.listen, &p);
            relay_one(
                &c.client_rtcp,
                Call::rtcp(c.listen),
                &c.dest_rtcp,
                Call::rtcp(c.connect),
                &p[..len.min(100)],
            );
            relay_one(
                &c.dest_rtcp,
                Call::rtcp(c.connect),
                &c.client_rtcp,
                Call::rtcp(c.listen),
                &p[..len.min(100)],
            );
        }
    }

    for (s, c) in calls.iter().enumerate() {
        let these: &[usize] = if s % 50 == 0 { &sizes } else { &sizes[1..2] };
        let rtp_bytes: u64 = these.iter().map(|&l| l as u64).sum();
        let rtcp_bytes: u64 = these.iter().map(|&l| l.min(100) as u64).sum();
        let packets = these.len() as u64;
        let info = session_status(&mut client, &c.id).await;
        assert_eq!(
            addr_of(&info.client),
            c.client_rtp.local_addr().unwrap(),
            "latched client"
        );
        assert_eq!(
            addr_of(&info.client_rtcp),
            c.client_rtcp.local_addr().unwrap()
        );
        for dir in [info.forward.unwrap(), info.reverse.unwrap()] {
            assert!(dir.last_activity_unix_us >= info.created_unix_us);
            let residence = dir.residence.unwrap();
            assert_eq!(
                residence.count,
                2 * packets,
                "{}: every relayed packet is timed",
                c.id
            );
            assert!(residence.p50_us > 0 && residence.p50_us <= residence.max_us);
            assert!(residence.max_us < 1_000_000, "{}: {residence:?}", c.id);
            for (counters, bytes) in [
                (dir.rtp.unwrap(), rtp_bytes),
                (dir.rtcp.unwrap(), rtcp_bytes),
            ] {
                assert_eq!(counters.packets_received, packets, "{}: {counters:?}", c.id);
                assert_eq!(counters.packets_sent, packets, "{}: {counters:?}", c.id);
                assert_eq!(counters.bytes_received, bytes, "{}: {counters:?}", c.id);
                assert_eq!(counters.bytes_sent, bytes, "{}: {counters:?}", c.id);
                assert_eq!(counters.dropped.unwrap(), v1::DropCounters::default());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_early_reverse_packets_are_dropped_and_counted() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let (dest_rtp, _dest_rtcp) = udp_pair(51000);
    let dest = dest_rtp.local_addr().unwrap();
    let info = create_session(&mut client, create_req("drops", 0, 0, dest)).await;
    let (listen, connect) = (addr_of(&info.listen), addr_of(&info.connect));

    // Reverse media before the client has sent anything: nowhere to go.
    dest_rtp.send_to(b"early", connect).unwrap();
    // A stranger sends to the outbound socket.
    let stranger = udp(0);
    stranger.send_to(b"spoof", connect).unwrap();
    // Then the client talks and the destination answers: that flows.
    let client_sock = udp(0);
    relay_one(&client_sock, listen, &dest_rtp, connect, b"hello");
    relay_one(&dest_rtp, connect, &client_sock, listen, b"world");
    // The stranger's packet must not have reached the client.
    client_sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        client_sock.recv_from(&mut [0u8; 64]).is_err(),
        "a stranger's packet was relayed"
    );

    let info = session_status(&mut client, "drops").await;
    let rev = info.reverse.unwrap().rtp.unwrap();
    assert_eq!(rev.packets_received, 3);
    assert_eq!(rev.packets_sent, 1);
    let dropped = rev.dropped.unwrap();
    assert_eq!((dropped.no_client, dropped.unexpected_source), (1, 1));
}

/// With `connect_destination`, a gRPC session's connect-side sockets are connected to the
/// destination (RTP) and its port + 1 (RTCP), media flows both ways as before, and a stranger's
/// packets are dropped by the kernel: they reach neither the client nor the session's counters.
/// Without it (the default) the sockets stay unconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_destination_sockets_relay_and_leave_strangers_to_the_kernel() {
    for connect in [false, true] {
        let toml = format!("[media]\nconnect_destination = {connect}\n");
        let (_relay, mut client) = Relay::start_with_config(1, &toml, &[]).await;
        let (dest_rtp, dest_rtcp) = udp_pair(51200);
        let dest = dest_rtp.local_addr().unwrap();
        let info = create_session(&mut client, create_req("connected", 0, 0, dest)).await;
        let (listen, connect_addr) = (addr_of(&info.listen), addr_of(&info.connect));
        let expect = |peer: SocketAddr| connect.then_some(peer);
        assert_eq!(udp_peer_of(connect_addr), expect(dest), "connect-side RTP");
        assert_eq!(
            udp_peer_of(Call::rtcp(connect_addr)),
            expect(Call::rtcp(dest)),
            "connect-side RTCP"
        );
        assert_eq!(udp_peer_of(listen), None, "listen side (learns the client)");

        let (client_rtp, client_rtcp) = udp_pair(51300);
        for n in 0..3u8 {
            relay_one(&client_rtp, listen, &dest_rtp, connect_addr, &[n; 160]);
            relay_one(&dest_rtp, connect_addr, &client_rtp, listen, &[n + 10; 160]);
        }
        let rtcp_out = Call::rtcp(connect_addr);
        relay_one(
            &client_rtcp,
            Call::rtcp(listen),
            &dest_rtcp,
            rtcp_out,
            b"rtcp-fwd",
        );
        relay_one(
            &dest_rtcp,
            rtcp_out,
            &client_rtcp,
            Call::rtcp(listen),
            b"rtcp-rev",
        );

        let stranger = udp(0);
        stranger.send_to(b"spoof", connect_addr).unwrap();
        // The session still relays after it, and the stranger's packet did not get through.
        relay_one(&dest_rtp, connect_addr, &client_rtp, listen, b"after");
        client_rtp
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            client_rtp.recv_from(&mut [0u8; 64]).is_err(),
            "a stranger's packet was relayed"
        );

        let info = session_status(&mut client, "connected").await;
        let (fwd, rev) = (info.forward.unwrap(), info.reverse.unwrap());
        assert_eq!(fwd.rtp.unwrap().packets_sent, 3);
        assert_eq!(fwd.rtcp.unwrap().packets_sent, 1);
        let rev_rtp = rev.rtp.unwrap();
        assert_eq!(rev_rtp.packets_sent, 4);
        // Seen and counted by the relay only while unconnected.
        let strangers = rev_rtp.dropped.unwrap().unexpected_source;
        assert_eq!(
            strangers,
            u64::from(!connect),
            "connect_destination = {connect}"
        );
    }
}

/// A packet's residence is its time in the relay: at a call's 20 ms pacing it used to include
/// the shard's wait for the next packet after the send (1.2-1.3 ms at p50, the length of that
/// wait's time slice), because the time was taken when the send's completion was reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residence_at_call_pacing_is_time_in_the_relay() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let (dest_rtp, _dest_rtcp) = udp_pair(51600);
    let dest = dest_rtp.local_addr().unwrap();
    let info = create_session(&mut client, create_req("paced", 0, 0, dest)).await;
    let listen = addr_of(&info.listen);
    let phone = udp(0);
    let mut buf = [0u8; 2048];
    for seq in 0..25u16 {
        phone
            .send_to(&rtp(0, seq, u32::from(seq) * 160, 7, 160), listen)
            .unwrap();
        dest_rtp.recv_from(&mut buf).expect("relayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = session_status(&mut client, "paced").await;
    let residence = info.forward.unwrap().residence.unwrap();
    assert_eq!(residence.count, 25);
    // 183-207 us in a debug build (mostly the shard's wake-up from sleep). The old measurement
    // could not go below the wait's 1 ms slice (1,343 us at p50 here), so that is the bound: as
    // much room as a loaded test machine can need without letting the old behaviour pass.
    assert!(residence.p50_us < 1000, "{residence:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_returns_final_counters_and_frees_the_ports() {
    let (relay, mut client) = Relay::start(2, &[]).await;
    let (dest_rtp, _dest_rtcp) = udp_pair(52000);
    let dest = dest_rtp.local_addr().unwrap();
    let listen_port = relay.port_max - 99 - (relay.port_max - 99) % 2;
    let connect_port = listen_port + 2;
    for round in 0..3 {
        let id = format!("reuse-{round}");
        let info = client
            .create_session(create_req(&id, listen_port, connect_port, dest))
            .await
            .unwrap_or_else(|s| panic!("round {round}: {s}"))
            .into_inner()
            .session
            .unwrap();
        assert_eq!(addr_of(&info.listen).port(), listen_port);
        assert_eq!(addr_of(&info.connect).port(), connect_port);
        let c = udp(0);
        relay_one(
            &c,
            addr_of(&info.listen),
            &dest_rtp,
            addr_of(&info.connect),
            b"x",
        );
        let last = client
            .destroy_session(v1::DestroySessionRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        assert_eq!(last.state, v1::SessionState::Closed as i32);
        assert_eq!(last.forward.unwrap().rtp.unwrap().packets_sent, 1);
        // The ports are free the moment DestroySession has answered.
        for port in [listen_port, listen_port + 1, connect_port, connect_port + 1] {
            UdpSocket::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("port {port} still held: {e}"));
        }
        let gone = client
            .get_session_status(v1::GetSessionStatusRequest { session_id: id })
            .await;
        assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_pages_and_filters() {
    let (_relay, mut client) = Relay::start(2, &[]).await;
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for i in 0..25 {
        client
            .create_session(create_req(&format!("a-{i:02}"), 0, 0, dest))
            .await
            .unwrap();
    }
    for i in 0..5 {
        client
            .create_session(create_req(&format!("b-{i}"), 0, 0, dest))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_sessions(v1::ListSessionsRequest {
                page_size: 10,
                page_token: token,
                id_prefix: "a-".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 25);
        pages += 1;
        seen.extend(page.sessions.into_iter().map(|s| s.session_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("a-{i:02}")).collect();
    assert_eq!(seen, expected, "every session once, in ID order");
    let all = client
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.total, all.sessions.len()), (30, 30));
    let stats = client
        .get_relay_stats(v1::GetRelayStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.sessions_per_shard.iter().sum::<u64>(), 30);
    assert_eq!(stats.sessions_per_shard.len(), 2);
    // One watchdog count per shard; it stays zero unless the kernel lost a wake-up.
    assert_eq!(stats.watchdog_kicks_per_shard.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_created_and_closed_to_filtered_watchers() {
    let (_relay, mut client) = Relay::start(2, &[]).await;
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut all = client
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut only_b = watch(&mut client, &["ev-b"]).await;
    for id in ["ev-a", "ev-b"] {
        client
            .create_session(create_req(id, 0, 0, dest))
            .await
            .unwrap();
        client
            .destroy_session(v1::DestroySessionRequest {
                session_id: id.into(),
            })
            .await
            .unwrap();
    }
    let kind = |e: v1::SessionEvent| {
        let k = match e.kind.unwrap() {
            v1::session_event::Kind::Created(_) => "created".to_string(),
            v1::session_event::Kind::Closed(c) => format!("closed:{}", c.reason),
            other => format!("{other:?}"),
        };
        format!("{} {k}", e.session_id)
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(kind(e));
    }
    assert_eq!(
        got,
        [
            "ev-a created",
            "ev-a closed:destroyed",
            "ev-b created",
            "ev-b closed:destroyed"
        ]
    );
    let mut got_b = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(5), only_b.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got_b.push(kind(e));
    }
    assert_eq!(got_b, ["ev-b created", "ev-b closed:destroyed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session_and_exits_zero() {
    let (mut relay, mut client) = Relay::start(2, &[]).await;
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut events = client
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ports = Vec::new();
    for i in 0..20 {
        let info = create_session(&mut client, create_req(&format!("s-{i}"), 0, 0, dest)).await;
        ports.push(addr_of(&info.listen).port());
        ports.push(addr_of(&info.connect).port());
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = relay.terminate(Duration::from_secs(10));
        (relay, status)
    });
    let mut closed = HashSet::new();
    let mut created = 0;
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        match e.kind.unwrap() {
            v1::session_event::Kind::Created(_) => created += 1,
            v1::session_event::Kind::Closed(c) => {
                assert_eq!(c.reason, "shutdown");
                assert_eq!(c.session.unwrap().state, v1::SessionState::Closed as i32);
                closed.insert(e.session_id);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let (_relay, status) = status.await.unwrap();
    let status = status.expect("relay did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(created, 20);
    assert_eq!(closed.len(), 20, "every session emits Closed before exit");
    for port in ports {
        UdpSocket::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} held after exit: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_uses_no_cpu_and_answers_within_milliseconds() {
    let (relay, mut client) = Relay::start(2, &[]).await;
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    client
        .create_session(create_req("idle", 0, 0, dest))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = relay.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = relay.cpu_ticks() - before;
    // Clock ticks are 10 ms: a busy-polling shard would burn ~200 ticks in 2 s.
    assert!(used <= 4, "idle relay used {used} ticks of CPU in 2 s");

    let mut rtts = Vec::new();
    for _ in 0..200 {
        let t = std::time::Instant::now();
        client
            .get_session_status(v1::GetSessionStatusRequest {
                session_id: "idle".into(),
            })
            .await
            .unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let p50 = rtts[rtts.len() / 2];
    eprintln!(
        "GetSessionStatus round trip on an idle relay: p50 {p50:?}, p99 {:?}",
        rtts[rtts.len() * 99 / 100]
    );
    assert!(p50 < Duration::from_millis(5), "p50 round trip {p50:?}");
}

/// One session `id` from `phone` (any port) through the relay to `sink`.
struct OneCall {
    phone: UdpSocket,
    listen: SocketAddr,
    sink: UdpSocket,
}

async fn one_call(client: &mut RelayClient<Channel>, id: &str) -> OneCall {
    let sink = udp(0);
    let info = create(client, create_req(id, 0, 0, sink.local_addr().unwrap())).await;
    OneCall {
        phone: udp(0),
        listen: addr_of(&info.listen),
        sink,
    }
}

/// A packet reaching a sleeping shard right after a control command is relayed at once. A
/// doorbell made of an eventfd broke this with deferred task work: from the second command on,
/// the ring's wake-up signal was lost, and packets waited for the shard's periodic check
/// (10 ms to 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_wakes_a_sleeping_shard_at_once_after_commands() {
    let (_relay, mut client) = Relay::start(1, &[]).await;
    let OneCall {
        phone,
        listen,
        sink,
    } = one_call(&mut client, "after-cmd").await;
    let mut buf = [0u8; 2048];
    let mut delays = Vec::new();
    for seq in 0..12u16 {
        // Longer than the shard lingers on its ring after traffic (10 ms): it sleeps now.
        tokio::time::sleep(Duration::from_millis(40)).await;
        status(&mut client, "after-cmd").await;
        let sent = std::time::Instant::now();
        phone
            .send_to(&rtp(0, seq, u32::from(seq) * 160, 9, 160), listen)
            .unwrap();
        sink.recv_from(&mut buf).expect("relayed packet");
        delays.push(sent.elapsed());
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    eprintln!(
        "one packet to a sleeping shard after a command: median {median:?}, max {:?}",
        delays[delays.len() - 1]
    );
    assert!(median < Duration::from_millis(5), "median delay {median:?}");
}

/// What a shard did while media arrived every 5 ms and a status request came every tenth
/// packet.
struct MediaWithCommands {
    /// CPU the relay used meanwhile, and the length of the run, both in clock ticks (10 ms).
    cpu_ticks: u64,
    run_ticks: u64,
    /// Round-trip times of the status requests, sorted.
    status_rtts: Vec<Duration>,
}

impl MediaWithCommands {
    fn status_p50(&self) -> Duration {
        self.status_rtts[self.status_rtts.len() / 2]
    }
}

async fn media_with_commands(
    relay: &Relay,
    client: &mut RelayClient<Channel>,
    id: &str,
    call: &OneCall,
) -> MediaWithCommands {
    let OneCall {
        phone,
        listen,
        sink,
    } = call;
    let listen = *listen;
    let mut buf = [0u8; 2048];
    let before = relay.cpu_ticks();
    let started = std::time::Instant::now();
    let mut status_rtts = Vec::new();
    for seq in 0..100u16 {
        phone
            .send_to(&rtp(0, seq, u32::from(seq) * 160, 7, 160), listen)
            .unwrap();
        let (n, _) = sink.recv_from(&mut buf).expect("relayed packet");
        assert_eq!(n, 12 + 160);
        if seq % 10 == 0 {
            let t = std::time::Instant::now();
            status(client, id).await;
            status_rtts.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    status_rtts.sort();
    let run = MediaWithCommands {
        cpu_ticks: relay.cpu_ticks() - before,
        run_ticks: started.elapsed().as_millis() as u64 / 10,
        status_rtts,
    };
    eprintln!(
        "{id}: {} CPU ticks in {} ticks of media; status round trip p50 {:?}, max {:?}",
        run.cpu_ticks,
        run.run_ticks,
        run.status_p50(),
        run.status_rtts.last()
    );
    run
}

/// Starts a one-shard relay with `dataplane` settings added to a preemption slice of
/// [`LONG_SLICE_MS`]. A command that waits for glommio's next look at its own rings instead of
/// being handed over by the media task then waits tens of milliseconds, not the 2-4 ms of the
/// default slice, which the noise of a shared machine can hide (a 6 ms p50 was seen with the
/// fix in place).
async fn start_with_long_slice(dataplane: &str) -> (Relay, RelayClient<Channel>) {
    let toml = format!("[dataplane]\npreempt_ms = {LONG_SLICE_MS}\n{dataplane}");
    Relay::start_with_config(1, &toml, &[]).await
}

const LONG_SLICE_MS: u64 = 50;
/// Status round trips faster than this were handed over at once: an idle relay answers in
/// ~1.5 ms (debug build) and a command that waited for the slice takes at least its length.
const PROMPT_ANSWER: Duration = Duration::from_millis(LONG_SLICE_MS / 2);

/// A command that arrives while media flows (the shard lingers on its ring between packets)
/// is answered as fast as on an idle relay. It used to wait for glommio's next look at its own
/// rings: up to two preemption slices (~6 ms with the default 2 ms slice, debug build, against
/// ~2.5 ms now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_at_once_while_media_flows() {
    // Lingering outlasts the slice too, or its end would hand the core over after 10 ms.
    let (relay, mut client) = start_with_long_slice("linger_ms = 200\n").await;
    let call = one_call(&mut client, "lingering").await;
    let run = media_with_commands(&relay, &mut client, "lingering", &call).await;
    assert!(
        run.status_p50() < PROMPT_ANSWER,
        "commands wait while media flows: {:?}",
        run.status_rtts
    );
}

/// `busy_poll_us`: after a packet the shard spins on its ring instead of sleeping. Spinning
/// must not cost what sleeping guarantees: media is relayed, commands are answered, the shard
/// goes back to sleep (no CPU) once media stops, and SIGTERM still ends the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_shard_relays_answers_and_sleeps_after_its_window() {
    let (mut relay, mut client) = start_with_long_slice("busy_poll_us = 200000\n").await;
    let call = one_call(&mut client, "busy").await;

    // Media every 5 ms, well inside the 200 ms window: the shard never sleeps meanwhile.
    let run = media_with_commands(&relay, &mut client, "busy", &call).await;
    // A sleeping shard uses ~1 tick here (the test above: ~8 ticks with its ten commands); a
    // spinning one most of the run, even when it shares its core with the test.
    assert!(
        run.cpu_ticks * 4 >= run.run_ticks,
        "the shard did not spin: {} ticks in {}",
        run.cpu_ticks,
        run.run_ticks
    );
    assert!(
        run.status_p50() < PROMPT_ANSWER,
        "commands wait while the shard spins: {:?}",
        run.status_rtts
    );

    // Past the window the shard sleeps again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = relay.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = relay.cpu_ticks() - before;
    assert!(
        idle <= 4,
        "still spinning after the window: {idle} ticks in 1 s"
    );

    // A packet wakes it and it stops on SIGTERM while spinning.
    let mut buf = [0u8; 2048];
    call.phone
        .send_to(&rtp(0, 100, 16_000, 7, 160), call.listen)
        .unwrap();
    call.sink
        .recv_from(&mut buf)
        .expect("relayed after sleeping");
    let exit = relay.terminate(Duration::from_secs(10));
    let exit = exit.expect("a spinning relay did not exit within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}
