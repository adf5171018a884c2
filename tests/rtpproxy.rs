//! The rtpproxy control protocol against the real relay over UDP: Kamailio's exact handshake and
//! call commands, media through both sides with symmetric latching, retransmissions, queries,
//! deletion, errors, the same call visible over gRPC, and a burst of calls executed in
//! parallel with each call's commands in order.

mod common;

use std::time::Duration;

use common::rtpproxy::{Controller, port_of};
use common::*;
use rtprelay_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_transcript_relays_a_call_and_is_visible_over_grpc() {
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (relay, mut grpc) = Relay::start(2, &["--rtpproxy-listen", &listen]).await;
    let kam = Controller::new(format!("127.0.0.1:{ctl_port}").parse().unwrap());

    // Kamailio 5.6's handshake, as observed.
    assert_eq!(kam.ask("29816_0", "V"), "20040107");
    assert_eq!(kam.ask("29816_1", "VF 20050322"), "1");
    assert_eq!(kam.ask("29816_2", "VF 20071116"), "0");
    assert_eq!(kam.ask("29816_3", "VF 20081102"), "1");

    // Caller and callee media sockets; the caller's SDP port is not where it really sends from
    // (NAT), so the relay must latch.
    let caller = udp(0);
    let callee = udp(0);
    let caller_sdp_port = 15070;
    let callee_port = callee.local_addr().unwrap().port();
    let call = "1-29838@127.0.0.1";
    let u = kam.ask(
        "29816_4",
        &format!("U {call} 127.0.0.1 {caller_sdp_port} 29838E2ETag1;1"),
    );
    let to_callee = port_of(&u);
    // A retransmission of the same datagram is answered from the cache, not executed again.
    assert_eq!(
        kam.ask(
            "29816_4",
            &format!("U {call} 127.0.0.1 {caller_sdp_port} 29838E2ETag1;1")
        ),
        u
    );
    // Another worker process (other source port) sends L.
    let worker2 = Controller::new(kam.relay);
    let l = worker2.ask(
        "29815_4",
        &format!("L {call} 127.0.0.1 {callee_port} 29838E2ETag1;1 29831E2EUas1;1"),
    );
    let to_caller = port_of(&l);
    assert_ne!(to_callee, to_caller);
    for p in [to_callee, to_caller] {
        assert!(
            p % 2 == 0 && p >= relay.port_min && p <= relay.port_max,
            "port {p} outside the media range"
        );
    }

    // Media both ways through the relay.
    let relay_ip = "127.0.0.1";
    let fwd = rtp(0, 1, 160, 0xca11, 160);
    caller.send_to(&fwd, (relay_ip, to_caller)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = callee
        .recv_from(&mut buf)
        .expect("caller's media reaches the callee");
    assert_eq!((&buf[..n], from.port()), (&fwd[..], to_callee));
    let back = rtp(0, 7, 960, 0xca1e, 160);
    callee.send_to(&back, (relay_ip, to_callee)).unwrap();
    let (n, from) = caller
        .recv_from(&mut buf)
        .expect("callee's media reaches the latched caller");
    assert_eq!((&buf[..n], from.port()), (&back[..], to_caller));

    // Q: packets from this side, from the other side, relayed, dropped.
    let q = kam.ask(
        "29816_5",
        &format!("Q {call} 29838E2ETag1;1 29831E2EUas1;1"),
    );
    let fields: Vec<u64> = q.split(' ').map(|f| f.parse().unwrap()).collect();
    assert_eq!(&fields[1..], &[1, 1, 2, 0], "Q reply {q:?}");
    assert!(fields[0] > 50 && fields[0] <= 60, "ttl {q:?}");

    // The same stream over gRPC.
    let list = grpc
        .list_sessions(v1::ListSessionsRequest {
            id_prefix: "rtpp:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 1, "one stream, even after the retransmitted U");
    let s = &list.sessions[0];
    assert_eq!(s.session_id, format!("rtpp:{call}:29838E2ETag1:1"));
    assert_eq!(
        addr_of(&s.client),
        caller.local_addr().unwrap(),
        "latched, not the SDP port"
    );
    assert_eq!(
        s.forward
            .as_ref()
            .unwrap()
            .rtp
            .as_ref()
            .unwrap()
            .packets_sent,
        1
    );
    assert_eq!(
        s.reverse
            .as_ref()
            .unwrap()
            .rtp
            .as_ref()
            .unwrap()
            .packets_sent,
        1
    );

    // BYE: D carries the tags without ;1.
    assert_eq!(
        worker2.ask("29815_5", &format!("D {call} 29838E2ETag1 29831E2EUas1")),
        "0"
    );
    let list = grpc
        .list_sessions(v1::ListSessionsRequest {
            id_prefix: "rtpp:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0, "D deletes the stream");
    assert_eq!(
        worker2.ask("29815_6", &format!("D {call} 29838E2ETag1 29831E2EUas1")),
        "E50"
    );
    assert_eq!(
        kam.ask("x1", &format!("L {call} 127.0.0.1 5000 nobody;1 none;1")),
        "0",
        "L never creates"
    );
}

/// A burst of whole call lifecycles sent without waiting for replies (as many proxy workers
/// sharing one relay do): calls run in parallel, but each call's U, L, Q and D in the order
/// sent, so every L finds its session, every Q sees it and every D deletes it. A D overtaking
/// its U would answer E50 and leave the call behind. Every U is also retransmitted at once,
/// while the original may still run: any reply the copy gets must be the original's, and the
/// call must still end with its D. The 300 datagrams of the burst also need more than the
/// kernel's default receive buffer on the control socket (with it, 7-22 of them were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_keeps_each_calls_command_order() {
    const CALLS: usize = 60;
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (relay, mut grpc) = Relay::start(2, &["--rtpproxy-listen", &listen]).await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // The replies of the whole burst queue here until read.
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let verbs = ["U", "L", "Q", "D"];
    for i in 0..CALLS {
        let cmds = [
            format!("U burst-{i} 127.0.0.1 {} f{i};1", 20000 + 2 * i),
            format!("L burst-{i} 127.0.0.1 {} f{i};1 t{i};1", 30000 + 2 * i),
            format!("Q burst-{i} f{i};1 t{i};1"),
            format!("D burst-{i} f{i};1 t{i};1"),
        ];
        for (verb, cmd) in verbs.iter().zip(cmds) {
            let datagram = format!("{verb}{i} {cmd}");
            let copies = if *verb == "U" { 2 } else { 1 };
            for _ in 0..copies {
                sock.send_to(datagram.as_bytes(), ("127.0.0.1", ctl_port))
                    .unwrap();
            }
        }
    }
    let mut replies = std::collections::HashMap::new();
    let mut buf = [0u8; 2048];
    while replies.len() < 4 * CALLS {
        let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!(
                "only {} of {} replies ({e}):\n{}",
                replies.len(),
                4 * CALLS,
                relay.log_text()
            )
        });
        let text = std::str::from_utf8(&buf[..n])
            .unwrap()
            .trim_end()
            .to_owned();
        let (cookie, body) = text.split_once(' ').unwrap();
        if let Some(first) = replies.insert(cookie.to_owned(), body.to_owned()) {
            assert_eq!(first, body, "a retransmission's reply differs ({cookie})");
        }
    }
    for i in 0..CALLS {
        let get = |verb: &str| replies[&format!("{verb}{i}")].clone();
        let (u, l) = (get("U"), get("L"));
        assert_ne!(port_of(&u), port_of(&l), "call {i}: U {u:?}, L {l:?}");
        assert_eq!(get("Q").split(' ').count(), 5, "call {i}: Q {:?}", get("Q"));
        assert_eq!(get("D"), "0", "call {i}");
    }
    let list = grpc
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0, "every call deleted: {list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_precise_errors_and_change_nothing() {
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (relay, mut grpc) = Relay::start(1, &["--rtpproxy-listen", &listen]).await;
    let c = Controller::new(format!("127.0.0.1:{ctl_port}").parse().unwrap());
    let cases = [
        ("Z", "E0"),
        ("U", "E1"),
        ("Uq c 127.0.0.1 4000 t;1", "E35"),
        ("U c 127.0.0.1 99999 t;1", "E37"),
        ("Uz20 c 127.0.0.1 4000 t;1", "E35"),
        ("Ur0.0.0.0 c 127.0.0.1 4000 t;1", "E32"),
        ("R c t", "E65"),
        ("P c prompt session t", "E60"),
        ("D unknown t", "E50"),
    ];
    for (i, (cmd, want)) in cases.iter().enumerate() {
        let got = c.ask(&format!("e{i}"), cmd);
        assert_eq!(&got, want, "{cmd:?}");
        let n: u32 = got[1..].parse().unwrap();
        assert!(
            !(7..=10).contains(&n),
            "E7-E10 would disable the node in OpenSIPS"
        );
    }
    let list = grpc
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0, "no failed command left a session behind");
    assert!(
        relay.log_text().contains("rtpproxy command failed"),
        "errors are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stream_notifies_the_allowed_socket_only() {
    let notify = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let notify_addr = notify.local_addr().unwrap();
    let config = format!("[rtpproxy]\nttl_s = 1\nnotify = [\"tcp:{notify_addr}\"]\n");
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (_relay, _grpc) =
        Relay::start_with_config(1, &config, &["--rtpproxy-listen", &listen]).await;
    let c = Controller::new(format!("127.0.0.1:{ctl_port}").parse().unwrap());
    assert_eq!(
        c.ask("n0", "VF 20081224"),
        "1",
        "notification is on when a socket is allowed"
    );
    // A socket that is not allowed is refused.
    assert_eq!(
        c.ask(
            "n1",
            "U call-x 127.0.0.1 4000 ft;1 tt;1 tcp:127.0.0.1:9 some-tag"
        ),
        "E75"
    );
    // The allowed one gets the (URL-decoded) tag when the stream expires without media.
    let u = c.ask(
        "n2",
        &format!("U call-n 127.0.0.1 4000 ft;1 tt;1 tcp:{notify_addr} dlg%3A42"),
    );
    port_of(&u);
    notify.set_nonblocking(false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let accepted = notify.accept().map(|(mut s, _)| {
            use std::io::Read;
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            got
        });
        let _ = tx.send(accepted);
    });
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("no notification within 5 s")
        .unwrap();
    assert_eq!(got, "dlg:42\n");
    assert_eq!(
        c.ask("n3", "D call-n ft tt"),
        "E50",
        "the expired stream is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_stream_socket_answers_line_by_line_and_at_close() {
    use std::io::{Read, Write};
    let path = std::env::temp_dir().join(format!("rtprelay-ctl-{}.sock", std::process::id()));
    let listen = format!("unix:{}", path.display());
    let (_relay, mut grpc) = Relay::start(1, &["--rtpproxy-listen", &listen]).await;
    let mut conn = std::os::unix::net::UnixStream::connect(&path).expect("unix control socket");
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(b"V\nU call-u 127.0.0.1 4000 ft;1\n")
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 256];
    while got.matches('\n').count() < 2 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {got:?}");
        got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "20040107");
    port_of(lines[1]);
    // Kamailio-style: one command without a newline, then the write side closes.
    let mut one = std::os::unix::net::UnixStream::connect(&path).unwrap();
    one.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    one.write_all(b"D call-u ft").unwrap();
    one.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    one.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "0\n");
    let list = grpc
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0);
}
