//! rtpproxy stream features against the real relay on loopback: named `Q` statistics, weak
//! references (`w`), new ports for an existing stream (`n`) and bridging between an internal
//! and an external address (`i`/`e`).

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::Duration;

use common::rtpproxy::{Controller, port_of};
use common::*;

/// `name=value ...` into a map.
fn named(reply: &str) -> HashMap<String, String> {
    reply
        .split(' ')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("not name=value: {reply:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn count(m: &HashMap<String, String>, name: &str) -> u64 {
    m[name]
        .parse()
        .unwrap_or_else(|_| panic!("{name} not a count: {m:?}"))
}

/// Sends `data` from `from` to the relay's `port` and expects it at `to`, byte-exact.
fn relay_one(from: &UdpSocket, port: u16, to: &UdpSocket, data: &[u8]) {
    from.send_to(data, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = to.recv_from(&mut buf).expect("packet relayed");
    assert_eq!(&buf[..n], data);
}

async fn start() -> (Relay, Controller) {
    let ctl_port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl_port}");
    let (relay, _grpc) = Relay::start(2, &["--rtpproxy-listen", &listen]).await;
    (relay, Controller::on_port(ctl_port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_query_statistics_count_loss_duplicates_and_errors() {
    let (_relay, c) = start().await;
    assert_eq!(c.ask("v", "VF 20150420"), "1");
    let (caller, callee) = (udp(0), udp(0));
    let callee_port = callee.local_addr().unwrap().port();
    let call = "q-1@test";
    let to_callee = port_of(&c.ask("u", &format!("U {call} 127.0.0.1 9 ftag;1")));
    let to_caller = port_of(&c.ask(
        "l",
        &format!("L {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));

    // The caller sends PCMU seq 1..=20 paced at 20 ms, without 5 and 6, with 10 twice, and one
    // datagram that is neither RTP nor RTCP.
    let mut seqs: Vec<u16> = (1..=20).filter(|s| *s != 5 && *s != 6).collect();
    seqs.insert(9, 10);
    for seq in &seqs {
        let p = rtp(0, *seq, u32::from(*seq) * 160, 0x5eed, 160);
        relay_one(&caller, to_caller, &callee, &p);
        std::thread::sleep(Duration::from_millis(20));
    }
    caller.send_to(b"junk", ("127.0.0.1", to_caller)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // One packet back, so the other direction has something too.
    relay_one(&callee, to_callee, &caller, &rtp(0, 1, 0, 0xbac, 160));

    let names = "rtpa_nsent rtpa_nrcvd rtpa_ndups rtpa_nlost rtpa_perrs \
                 rtpa_jlast rtpa_jmax rtpa_javg ttl npkts_ina npkts_ino nrelayed ndropped";
    let q = named(&c.ask("q1", &format!("Qv {call} ftag;1 ttag;1 {names}")));
    assert_eq!(q.len(), 13, "{q:?}");
    assert_eq!(count(&q, "rtpa_nlost"), 2, "{q:?}");
    assert_eq!(count(&q, "rtpa_ndups"), 1, "{q:?}");
    assert_eq!(count(&q, "rtpa_perrs"), 1, "{q:?}");
    let (sent, rcvd) = (count(&q, "rtpa_nsent"), count(&q, "rtpa_nrcvd"));
    // The first packets of a source are its RFC 3550 probation and not analysed.
    assert!((16..=18).contains(&rcvd) && sent == rcvd + 2, "{q:?}");
    let jitter = |n: &str| -> f64 { q[n].parse().unwrap() };
    assert!(q["rtpa_jlast"].contains('.'), "jitter prints as %f: {q:?}");
    assert!(jitter("rtpa_jmax") >= jitter("rtpa_jlast") && jitter("rtpa_jmax") > 0.0);
    assert!(jitter("rtpa_javg") <= jitter("rtpa_jmax"), "{q:?}");
    // The plain names agree with the classic reply.
    let classic: Vec<u64> = c
        .ask("q2", &format!("Q {call} ftag;1 ttag;1"))
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(
        [count(&q, "npkts_ina"), count(&q, "npkts_ino")],
        [classic[1], classic[2]]
    );
    assert_eq!(count(&q, "npkts_ina"), seqs.len() as u64 + 1, "{q:?}");
    assert_eq!(count(&q, "npkts_ino"), 1);
    // From the callee's side the directions swap; non-verbose answers values only.
    let callee_view = c.ask(
        "q3",
        &format!("Q {call} ttag;1 ftag;1 npkts_ina rtpa_nlost rtpa_perrs"),
    );
    assert_eq!(callee_view, "1 0 0");

    assert_eq!(
        c.ask("q4", &format!("Q {call} ftag;1 ttag;1 rtpa_bogus")),
        "E62"
    );
    assert_eq!(
        c.ask("q5", &format!("Q {call} ftag;1 ttag;1 ttl longest_ipi")),
        "E62"
    );
    assert_eq!(c.ask("q6", "Q nocall ftag;1 ttag;1 ttl"), "E50");
}

/// Whether the relay still knows the stream (Q answers, rather than E50).
fn exists(c: &Controller, cookie: &str, call: &str) -> bool {
    match c.ask(cookie, &format!("Q {call} ftag;1 ttag;1")).as_str() {
        "E50" => false,
        reply => {
            assert_eq!(reply.split(' ').count(), 5, "{reply:?}");
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_references_keep_a_stream_until_the_last_one_goes() {
    let (_relay, c) = start().await;
    let (caller, callee) = (udp(0), udp(0));
    let caller_port = caller.local_addr().unwrap().port();
    let callee_port = callee.local_addr().unwrap().port();

    // Uw creates a weakly held stream, Lw adds the other side's weak reference.
    let call = "weak-1@test";
    let to_callee = port_of(&c.ask("u1", &format!("Uw {call} 127.0.0.1 {caller_port} ftag;1")));
    let to_caller = port_of(&c.ask(
        "l1",
        &format!("Lw {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    // A plain D has no strong reference to drop: the call goes on.
    assert_eq!(c.ask("d1", &format!("D {call} ftag ttag")), "0");
    assert!(exists(&c, "q1", call));
    relay_one(&caller, to_caller, &callee, &rtp(0, 1, 0, 1, 20));
    // Dw with the caller's tag first drops the L's weak reference, swapped tags the U's.
    assert_eq!(c.ask("d2", &format!("Dw {call} ftag ttag")), "0");
    assert!(exists(&c, "q2", call));
    relay_one(&callee, to_callee, &caller, &rtp(0, 1, 0, 2, 20));
    assert_eq!(c.ask("d3", &format!("Dw {call} ttag ftag")), "0");
    assert!(!exists(&c, "q3", call), "no reference left");
    assert_eq!(c.ask("d4", &format!("Dw {call} ttag ftag")), "E50");

    // A strong U plus a weak L: D drops the strong one, the weak one still holds the stream.
    let call = "weak-2@test";
    port_of(&c.ask("u2", &format!("U {call} 127.0.0.1 {caller_port} ftag;1")));
    let to_caller = port_of(&c.ask(
        "l2",
        &format!("Lw {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    assert_eq!(c.ask("d5", &format!("D {call} ftag ttag")), "0");
    assert!(exists(&c, "q4", call));
    relay_one(&caller, to_caller, &callee, &rtp(0, 2, 160, 1, 20));
    // Dw of the U's side (swapped tags) changes nothing: that side holds no weak reference.
    assert_eq!(c.ask("d6", &format!("Dw {call} ttag ftag")), "0");
    assert!(exists(&c, "q5", call));
    assert_eq!(c.ask("d7", &format!("Dw {call} ftag ttag")), "0");
    assert!(!exists(&c, "q6", call));
    // The ports are closed: nothing is relayed any more.
    callee
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    caller
        .send_to(&rtp(0, 3, 320, 1, 20), ("127.0.0.1", to_caller))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        callee.recv_from(&mut buf).is_err(),
        "deleted stream relayed"
    );

    // Without w, a plain D deletes at once, as before.
    let call = "strong@test";
    port_of(&c.ask("u3", &format!("U {call} 127.0.0.1 {caller_port} ftag;1")));
    assert_eq!(c.ask("d8", &format!("D {call} ftag")), "0");
    assert!(!exists(&c, "q7", call));
}

/// Expects `data` at `to`, sent by the relay from `from_port`; returns the source address.
fn expect_from(to: &UdpSocket, data: &[u8]) -> std::net::SocketAddr {
    let mut buf = [0u8; 2048];
    let (n, src) = to.recv_from(&mut buf).expect("packet relayed");
    assert_eq!(&buf[..n], data);
    src
}

/// Asserts nothing arrives at `to` within 300 ms.
fn expect_nothing(to: &UdpSocket, what: &str) {
    to.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(to.recv_from(&mut buf).is_err(), "{what}");
    to.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_moves_the_announced_port_and_keeps_the_call() {
    let (_relay, c) = start().await;
    assert_eq!(c.ask("v", "VF 20150330"), "1");
    // Without bridge mode, i and e are errors, as rtpproxy answers them.
    assert_eq!(c.ask("e1", "Ui c 127.0.0.1 9 f;1"), "E12");
    assert_eq!(c.ask("e2", "Uei c 127.0.0.1 9 f;1"), "E11");
    assert_eq!(
        c.ask("e3", "Ln c 127.0.0.1 9 f;1 t;1"),
        "0",
        "L never creates"
    );

    let (caller, callee) = (udp(0), udp(0));
    let caller_port = caller.local_addr().unwrap().port();
    let callee_port = callee.local_addr().unwrap().port();
    let call = "new-port@test";
    let to_callee = port_of(&c.ask("u1", &format!("Uw {call} 127.0.0.1 {caller_port} ftag;1")));
    let to_caller = port_of(&c.ask(
        "l1",
        &format!("L {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    relay_one(&caller, to_caller, &callee, &rtp(0, 1, 0, 1, 20));
    relay_one(&callee, to_callee, &caller, &rtp(0, 1, 0, 2, 20));

    // Un: the U's port (where the callee sends) is replaced; the caller's port stays.
    let moved = port_of(&c.ask("u2", &format!("Unw {call} 127.0.0.1 {caller_port} ftag;1")));
    assert!(
        moved != to_callee && moved % 2 == 0,
        "{moved} vs {to_callee}"
    );
    let p = rtp(0, 2, 160, 1, 20);
    caller.send_to(&p, ("127.0.0.1", to_caller)).unwrap();
    assert_eq!(
        expect_from(&callee, &p).port(),
        moved,
        "relayed from the new port"
    );
    let p = rtp(0, 2, 160, 2, 20);
    callee.send_to(&p, ("127.0.0.1", to_callee)).unwrap();
    expect_nothing(&caller, "the old port is closed");
    callee.send_to(&p, ("127.0.0.1", moved)).unwrap();
    assert_eq!(expect_from(&caller, &p).port(), to_caller);

    // Ln: the L's port (where the caller sends) is replaced the same way.
    let moved_l = port_of(&c.ask(
        "l2",
        &format!("Ln {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    assert!(moved_l != to_caller && moved_l != moved, "{moved_l}");
    let p = rtp(0, 3, 320, 1, 20);
    caller.send_to(&p, ("127.0.0.1", to_caller)).unwrap();
    expect_nothing(&callee, "the old caller-side port is closed");
    caller.send_to(&p, ("127.0.0.1", moved_l)).unwrap();
    assert_eq!(expect_from(&callee, &p).port(), moved);
    // Counters restarted with the new ports: one packet from the caller since Ln.
    let q: Vec<u64> = c
        .ask("q1", &format!("Q {call} ftag;1 ttag;1"))
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(q[1], 1, "{q:?}");

    // The weak reference of Uw/Unw carried over: D (strong) keeps the stream, Dw of the U's
    // side ends it.
    assert_eq!(c.ask("d1", &format!("D {call} ftag ttag")), "0");
    assert!(exists(&c, "q2", call));
    assert_eq!(c.ask("d2", &format!("Dw {call} ttag ftag")), "0");
    assert!(!exists(&c, "q3", call));
}

/// `PORT ADDR` of a U/L reply.
fn port_addr(reply: &str) -> (u16, String) {
    let (port, addr) = reply
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a port reply: {reply:?}"));
    (port.parse().unwrap(), addr.to_owned())
}

fn udp_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mode_binds_each_leg_to_its_network() {
    let ctl_port = free_udp_port();
    let toml = format!(
        "[rtpproxy]\nlisten = [\"udp:127.0.0.1:{ctl_port}\"]\n\
         internal = \"127.0.0.1\"\nexternal = \"127.0.0.2\"\n"
    );
    let (_relay, mut grpc) = Relay::start_with_config(2, &toml, &[]).await;
    let c = Controller::on_port(ctl_port);

    // Caller inside (127.0.0.1), callee outside (127.0.0.2): Uie.
    let caller = udp_on("127.0.0.1");
    let callee = udp_on("127.0.0.2");
    let caller_port = caller.local_addr().unwrap().port();
    let callee_port = callee.local_addr().unwrap().port();
    let call = "bridge-1@test";
    let (to_callee, ext) =
        port_addr(&c.ask("u1", &format!("Uie {call} 127.0.0.1 {caller_port} ftag;1")));
    assert_eq!(ext, "127.0.0.2", "the callee is told the external address");
    let (to_caller, int) = port_addr(&c.ask(
        "l1",
        &format!("L {call} 127.0.0.2 {callee_port} ftag;1 ttag;1"),
    ));
    assert_eq!(int, "127.0.0.1", "the caller is told the internal address");
    let s = status(&mut grpc, &format!("rtpp:{call}:ftag:1")).await;
    assert_eq!(
        addr_of(&s.listen).to_string(),
        format!("127.0.0.1:{to_caller}")
    );
    assert_eq!(
        addr_of(&s.connect).to_string(),
        format!("127.0.0.2:{to_callee}")
    );
    // Media crosses between the networks, each leg from its own address.
    let p = rtp(0, 1, 0, 1, 40);
    caller.send_to(&p, ("127.0.0.1", to_caller)).unwrap();
    assert_eq!(
        expect_from(&callee, &p).to_string(),
        format!("127.0.0.2:{to_callee}")
    );
    let p = rtp(0, 1, 0, 2, 40);
    callee.send_to(&p, ("127.0.0.2", to_callee)).unwrap();
    assert_eq!(
        expect_from(&caller, &p).to_string(),
        format!("127.0.0.1:{to_caller}")
    );

    // The other way round, one letter, and none.
    for (mods, listen, connect) in [
        ("ei", "127.0.0.2", "127.0.0.1"),
        ("e", "127.0.0.2", "127.0.0.1"),
        ("ee", "127.0.0.2", "127.0.0.2"),
        ("", "127.0.0.1", "127.0.0.1"),
    ] {
        let call = format!("bridge-{mods}@test");
        let (_, addr) = port_addr(&c.ask(
            &format!("u-{mods}"),
            &format!("U{mods} {call} 127.0.0.1 9 ftag;1"),
        ));
        assert_eq!(addr, connect, "U{mods}");
        let (_, addr) = port_addr(&c.ask(
            &format!("l-{mods}"),
            &format!("L {call} 127.0.0.1 9 ftag;1 ttag;1"),
        ));
        assert_eq!(addr, listen, "U{mods}");
        let s = status(&mut grpc, &format!("rtpp:{call}:ftag:1")).await;
        assert_eq!(
            (
                addr_of(&s.listen).ip().to_string(),
                addr_of(&s.connect).ip().to_string()
            ),
            (listen.to_owned(), connect.to_owned()),
            "U{mods}"
        );
    }

    // n with both letters moves the announced port to the second letter's network.
    let call = "bridge-n@test";
    let caller = udp_on("127.0.0.1");
    let callee = udp_on("127.0.0.1");
    let caller_port = caller.local_addr().unwrap().port();
    let callee_port = callee.local_addr().unwrap().port();
    let (old, addr) =
        port_addr(&c.ask("u2", &format!("Uii {call} 127.0.0.1 {caller_port} ftag;1")));
    assert_eq!(addr, "127.0.0.1");
    let (to_caller, _) = port_addr(&c.ask(
        "l2",
        &format!("L {call} 127.0.0.1 {callee_port} ftag;1 ttag;1"),
    ));
    let (moved, addr) =
        port_addr(&c.ask("u3", &format!("Unie {call} 127.0.0.1 {caller_port} ftag;1")));
    assert_eq!(addr, "127.0.0.2");
    let s = status(&mut grpc, &format!("rtpp:{call}:ftag:1")).await;
    assert_eq!(
        addr_of(&s.connect).to_string(),
        format!("127.0.0.2:{moved}")
    );
    assert_eq!(
        addr_of(&s.listen).to_string(),
        format!("127.0.0.1:{to_caller}")
    );
    let p = rtp(0, 1, 0, 3, 40);
    caller.send_to(&p, ("127.0.0.1", to_caller)).unwrap();
    assert_eq!(
        expect_from(&callee, &p).to_string(),
        format!("127.0.0.2:{moved}"),
        "relayed from the moved port, not {old}"
    );
}
