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
