//! Multi-homed forwarding, proven in network namespaces (needs root).
//!
//! Every test builds its own client / relay / server namespaces with `scripts/netns-topology`
//! (a unique prefix per test, so they run in parallel), runs the real relay binary inside the
//! relay namespace and drives it over gRPC from a thread inside that namespace (see
//! multihomed/netns.rs for why). Where media went is proven by the kernel, not by the relay:
//! the relay namespace's interface counters, the interface each datagram arrived on at the
//! server (IP_PKTINFO / IPV6_RECVPKTINFO) and the TOS / traffic class it carried
//! (IP_RECVTOS / IPV6_RECVTCLASS).
//!
//! Topology (scripts/netns-topology):
//!   cli-a 10.201.1.2 fd00:201:1::2  --A--  relay-a 10.201.1.1 fd00:201:1::1
//!   relay-b 10.201.2.1 fd00:201:2::1  --B--  srv-b 10.201.2.2 fd00:201:2::2
//!   relay-c 10.201.3.1 fd00:201:3::1  --C--  srv-c 10.201.3.2 fd00:201:3::2  (wrong-route only,
//!   with relay routes 10.201.2.2/32 and fd00:201:2::2/128 via C)
//!
//! Without root these tests print a loud SKIPPED message and pass; with CI=true they fail.

mod common;
#[path = "multihomed/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

use common::{addr_of, ep, payload, rtcp_sr, rtp};
use netns::addr::*;
use netns::{
    Count, NsRelay, PORT_MAX, PORT_MIN, Received, Topology, counters, delta, dev, have_root,
    ifindex, recv, sock, udp_in, udp_ports,
};
use rtprelay_proto::v1;

/// EF, the relay's default marking: DSCP 46 << 2.
const TOS_EF: u8 = 0xB8;

/// Which addresses a call uses: the client's, the relay's listen and connect addresses, and the
/// server's (the destination).
#[derive(Clone, Copy)]
struct Legs {
    client: &'static str,
    listen: &'static str,
    connect: &'static str,
    server: &'static str,
}

const V4: Legs = Legs {
    client: CLI_A4,
    listen: RELAY_A4,
    connect: RELAY_B4,
    server: SRV_B4,
};
const V6: Legs = Legs {
    client: CLI_A6,
    listen: RELAY_A6,
    connect: RELAY_B6,
    server: SRV_B6,
};
/// IPv4 client on A, IPv6 server on B.
const V4_TO_V6: Legs = Legs {
    client: CLI_A4,
    listen: RELAY_A4,
    connect: RELAY_B6,
    server: SRV_B6,
};
/// IPv6 client on A, IPv4 server on B.
const V6_TO_V4: Legs = Legs {
    client: CLI_A6,
    listen: RELAY_A6,
    connect: RELAY_B4,
    server: SRV_B4,
};

/// One session with its client sockets (in the client namespace) and server sockets (in the
/// server namespace).
struct Call {
    id: String,
    listen: SocketAddr,
    connect: SocketAddr,
    client_rtp: UdpSocket,
    client_rtcp: UdpSocket,
    srv_rtp: UdpSocket,
    srv_rtcp: UdpSocket,
}

/// Creates the session `id` with relay-allocated ports, the server listening on `srv_port` (and
/// +1). Client and server sockets send with TOS `own_tos`, so a test can tell the relay's
/// marking from a copied one.
fn open_call(
    topo: &Topology,
    relay: &NsRelay,
    id: &str,
    legs: Legs,
    srv_port: u16,
    own_tos: u8,
) -> Call {
    let srv_rtp = udp_in(&topo.srv(), sock(ip(legs.server), srv_port), own_tos);
    let srv_rtcp = udp_in(&topo.srv(), sock(ip(legs.server), srv_port + 1), own_tos);
    let client_rtp = udp_in(&topo.cli(), sock(ip(legs.client), 0), own_tos);
    let client_rtcp = udp_in(&topo.cli(), sock(ip(legs.client), 0), own_tos);
    let info = relay
        .create(v1::CreateSessionRequest {
            session_id: id.into(),
            listen: ep(legs.listen, 0),
            connect: ep(legs.connect, 0),
            destination: ep(legs.server, srv_port),
            protocol: v1::Protocol::Udp as i32,
            options: None,
        })
        .unwrap_or_else(|s| panic!("create {id}: {:?}: {}", s.code(), s.message()));
    let (listen, connect) = (addr_of(&info.listen), addr_of(&info.connect));
    assert_eq!(listen.ip(), ip(legs.listen), "{id}: bound listen address");
    assert_eq!(
        connect.ip(),
        ip(legs.connect),
        "{id}: bound connect address"
    );
    for p in [listen.port(), connect.port()] {
        assert!(
            (PORT_MIN..=PORT_MAX).contains(&p) && p % 2 == 0,
            "{id}: port {p}"
        );
    }
    Call {
        id: id.into(),
        listen,
        connect,
        client_rtp,
        client_rtcp,
        srv_rtp,
        srv_rtcp,
    }
}

fn rtcp_port(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port() + 1)
}

/// What the server received (forward) and the client received (reverse).
#[derive(Default)]
struct Seen {
    fwd: Vec<Received>,
    rev: Vec<Received>,
}

/// Sends `from` -> `to`, expects it byte-exact at `sink` from `relay_src`.
fn hop(
    from: &UdpSocket,
    to: SocketAddr,
    sink: &UdpSocket,
    relay_src: SocketAddr,
    data: &[u8],
    what: &str,
) -> Received {
    from.send_to(data, to)
        .unwrap_or_else(|e| panic!("{what}: send to {to}: {e}"));
    let r = recv(sink).unwrap_or_else(|e| {
        panic!(
            "{what}: {} bytes sent to {to} never arrived at {:?}: {e}",
            data.len(),
            sink.local_addr()
        )
    });
    // Compare address and port only (a received IPv6 address carries flow info / scope).
    assert_eq!(
        (r.from.ip(), r.from.port()),
        (relay_src.ip(), relay_src.port()),
        "{what}: came from the wrong relay address"
    );
    assert_eq!(r.data, data, "{what}: payload changed in transit");
    r
}

/// `n` RTP packets each way (ping-pong, so the client is latched before the server answers),
/// then `n_rtcp` RTCP packets each way, all checked byte-exact and from the right relay address.
fn exchange(c: &Call, n: usize, n_rtcp: usize) -> Seen {
    let mut seen = Seen::default();
    let ssrc = 0x1000_0000 ^ c.listen.port() as u32;
    for i in 0..n {
        let mut p = rtp(0, i as u16, i as u32 * 160, ssrc, 0);
        p.extend(payload(1, i, 160));
        let what = format!("{} forward RTP #{i}", c.id);
        seen.fwd.push(hop(
            &c.client_rtp,
            c.listen,
            &c.srv_rtp,
            c.connect,
            &p,
            &what,
        ));
        let mut q = rtp(0, i as u16, i as u32 * 160, !ssrc, 0);
        q.extend(payload(2, i, 160));
        let what = format!("{} reverse RTP #{i}", c.id);
        seen.rev.push(hop(
            &c.srv_rtp,
            c.connect,
            &c.client_rtp,
            c.listen,
            &q,
            &what,
        ));
    }
    for i in 0..n_rtcp {
        let p = rtcp_sr(ssrc, i as u64);
        let what = format!("{} forward RTCP #{i}", c.id);
        seen.fwd.push(hop(
            &c.client_rtcp,
            rtcp_port(c.listen),
            &c.srv_rtcp,
            rtcp_port(c.connect),
            &p,
            &what,
        ));
        let q = rtcp_sr(!ssrc, i as u64);
        let what = format!("{} reverse RTCP #{i}", c.id);
        seen.rev.push(hop(
            &c.srv_rtcp,
            rtcp_port(c.connect),
            &c.client_rtcp,
            rtcp_port(c.listen),
            &q,
            &what,
        ));
    }
    seen
}

fn status(relay: &NsRelay, id: &str) -> v1::SessionInfo {
    relay
        .status(id)
        .unwrap_or_else(|s| panic!("status {id}: {:?}: {}", s.code(), s.message()))
}

fn assert_devices(relay: &NsRelay, id: &str, listen: &str, connect: &str) {
    let info = status(relay, id);
    assert_eq!(
        (info.listen_device.as_str(), info.connect_device.as_str()),
        (listen, connect),
        "{id}: devices reported by GetSessionStatus (listen, connect)"
    );
}

/// The relay's own counters agree with what was exchanged.
fn assert_relay_counted(relay: &NsRelay, id: &str, rtp: u64, rtcp: u64) {
    let info = status(relay, id);
    for (name, dir) in [("forward", info.forward), ("reverse", info.reverse)] {
        let dir = dir.expect("direction stats");
        let (r, c) = (dir.rtp.expect("rtp"), dir.rtcp.expect("rtcp"));
        assert_eq!(
            (r.packets_received, r.packets_sent),
            (rtp, rtp),
            "{id} {name} RTP: {r:?}"
        );
        assert_eq!(
            (c.packets_received, c.packets_sent),
            (rtcp, rtcp),
            "{id} {name} RTCP: {c:?}"
        );
    }
}

fn get(d: &HashMap<String, Count>, device: &str) -> Count {
    *d.get(device)
        .unwrap_or_else(|| panic!("no interface {device} in {d:?}"))
}

/// In on A and out on B (forward), in on B and out on A (reverse): at least `n` packets each,
/// by the relay namespace's interface counters.
fn assert_a_to_b(d: &HashMap<String, Count>, n: u64) {
    let (a, b) = (get(d, dev::RELAY_A), get(d, dev::RELAY_B));
    assert!(
        a.rx >= n,
        "relay-a received {} packets, expected >= {n}: {d:?}",
        a.rx
    );
    assert!(
        b.tx >= n,
        "relay-b sent {} packets, expected >= {n}: {d:?}",
        b.tx
    );
    assert!(
        b.rx >= n,
        "relay-b received {} packets, expected >= {n}: {d:?}",
        b.rx
    );
    assert!(
        a.tx >= n,
        "relay-a sent {} packets, expected >= {n}: {d:?}",
        a.tx
    );
}

fn assert_arrived_on(seen: &[Received], ifindex: u32, what: &str) {
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(
            r.ifindex,
            Some(ifindex),
            "{what}: packet {i} arrived on interface {:?}, expected {ifindex}",
            r.ifindex
        );
    }
}

fn assert_tos(seen: &[Received], tos: u8, what: &str) {
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(
            r.tos,
            Some(tos),
            "{what}: packet {i} carried TOS/traffic class {:#04x?}, expected {tos:#04x}",
            r.tos
        );
    }
}

/// The common body of the end-to-end tests: one call with `legs`, media both ways, proven by
/// the interface counters and the arrival interface, and the devices the relay reports.
fn end_to_end(tag: &str, legs: Legs) {
    const N: usize = 50;
    const N_RTCP: usize = 3;
    let topo = Topology::up(tag);
    let relay = NsRelay::start(&topo.relay(), &[]);
    let call = open_call(&topo, &relay, &format!("{tag}-call"), legs, 40000, 0);
    assert_devices(&relay, &call.id, dev::RELAY_A, dev::RELAY_B);

    let before = counters(&topo.relay());
    let seen = exchange(&call, N, N_RTCP);
    let d = delta(&before, &counters(&topo.relay()));
    eprintln!("{tag}: relay interface packet deltas: {d:?}");
    assert_a_to_b(&d, (N + N_RTCP) as u64);
    assert_arrived_on(&seen.fwd, ifindex(&topo.srv(), dev::SRV_B), "server side");
    assert_relay_counted(&relay, &call.id, N as u64, N_RTCP as u64);
}

#[test]
fn ipv4_media_enters_on_a_and_leaves_on_b_both_ways_byte_exact() {
    if !have_root("ipv4_media_enters_on_a_and_leaves_on_b_both_ways_byte_exact") {
        return;
    }
    end_to_end("v4", V4);
}

#[test]
fn ipv6_media_enters_on_a_and_leaves_on_b_both_ways_byte_exact() {
    if !have_root("ipv6_media_enters_on_a_and_leaves_on_b_both_ways_byte_exact") {
        return;
    }
    end_to_end("v6", V6);
}

#[test]
fn ipv4_client_is_bridged_to_an_ipv6_server() {
    if !have_root("ipv4_client_is_bridged_to_an_ipv6_server") {
        return;
    }
    end_to_end("v4v6", V4_TO_V6);
}

#[test]
fn ipv6_client_is_bridged_to_an_ipv4_server() {
    if !have_root("ipv6_client_is_bridged_to_an_ipv4_server") {
        return;
    }
    end_to_end("v6v4", V6_TO_V4);
}

/// The relay namespace routes the server's B address via interface C (a more specific route).
/// Bound to its device (the default), the connect socket still sends out of B; with
/// --no-bind-device the same media follows the route out of C. Both phases run on the same
/// topology, so the test proves the binding is what makes the difference.
#[test]
fn device_binding_beats_a_more_specific_route() {
    if !have_root("device_binding_beats_a_more_specific_route") {
        return;
    }
    const N: usize = 40;
    // Background traffic (neighbour discovery, MLD, ARP) on an interface that carries no
    // media stays far below this.
    const QUIET: u64 = N as u64 / 4;
    let topo = Topology::up("route");
    topo.add_wrong_route();
    let srv_b = ifindex(&topo.srv(), dev::SRV_B);
    let srv_c = ifindex(&topo.srv(), dev::SRV_C);

    struct Phase {
        name: &'static str,
        flags: &'static [&'static str],
        devices: (&'static str, &'static str),
        egress: &'static str,
        idle: &'static str,
        arrival: u32,
    }
    let phases = [
        Phase {
            name: "bound to the device (default)",
            flags: &[],
            devices: (dev::RELAY_A, dev::RELAY_B),
            egress: dev::RELAY_B,
            idle: dev::RELAY_C,
            arrival: srv_b,
        },
        Phase {
            name: "--no-bind-device",
            flags: &["--no-bind-device"],
            devices: ("", ""),
            egress: dev::RELAY_C,
            idle: dev::RELAY_B,
            arrival: srv_c,
        },
    ];
    for phase in phases {
        let name = phase.name;
        let mut relay = NsRelay::start(&topo.relay(), phase.flags);
        let calls = [
            open_call(&topo, &relay, "route-v4", V4, 40000, 0),
            open_call(&topo, &relay, "route-v6", V6, 40002, 0),
        ];
        for c in &calls {
            assert_devices(&relay, &c.id, phase.devices.0, phase.devices.1);
        }
        let before = counters(&topo.relay());
        let seen: Vec<Seen> = calls.iter().map(|c| exchange(c, N, 0)).collect();
        let d = delta(&before, &counters(&topo.relay()));
        eprintln!("{name}: relay interface packet deltas: {d:?}");
        let (egress, idle) = (get(&d, phase.egress), get(&d, phase.idle));
        assert!(
            egress.tx >= 2 * N as u64,
            "{name}: media should leave through {}, which sent only {} packets: {d:?}",
            phase.egress,
            egress.tx
        );
        assert!(
            idle.tx < QUIET,
            "{name}: {} sent {} packets, but media should not leave through it: {d:?}",
            phase.idle,
            idle.tx
        );
        for (c, s) in calls.iter().zip(&seen) {
            assert_arrived_on(&s.fwd, phase.arrival, &format!("{name}: {}", c.id));
        }
        relay.stop();
    }
}

/// Outbound media is marked EF (DSCP 46, TOS 0xB8) by default in both directions and both
/// families, whatever the sender's own marking was.
#[test]
fn outbound_media_is_marked_ef_by_default() {
    if !have_root("outbound_media_is_marked_ef_by_default") {
        return;
    }
    let topo = Topology::up("ef");
    let relay = NsRelay::start(&topo.relay(), &[]);
    // The endpoints mark their own packets DSCP 10, so a relay that copied the marking fails.
    for (legs, port, id) in [(V4, 40000, "ef-v4"), (V6, 40002, "ef-v6")] {
        let call = open_call(&topo, &relay, id, legs, port, 10 << 2);
        let seen = exchange(&call, 10, 2);
        assert_tos(&seen.fwd, TOS_EF, &format!("{id} at the server"));
        assert_tos(&seen.rev, TOS_EF, &format!("{id} at the client"));
    }
}

/// `--dscp 10` marks outbound media TOS 0x28 (10 << 2), IPv4 and IPv6.
#[test]
fn dscp_flag_sets_the_marking() {
    if !have_root("dscp_flag_sets_the_marking") {
        return;
    }
    let topo = Topology::up("dscp");
    let relay = NsRelay::start(&topo.relay(), &["--dscp", "10"]);
    for (legs, port, id) in [(V4, 40000, "dscp-v4"), (V6, 40002, "dscp-v6")] {
        let call = open_call(&topo, &relay, id, legs, port, TOS_EF);
        let seen = exchange(&call, 10, 2);
        assert_tos(&seen.fwd, 10 << 2, &format!("{id} at the server"));
        assert_tos(&seen.rev, 10 << 2, &format!("{id} at the client"));
    }
}

/// A listen or connect address no interface owns is refused with INVALID_ARGUMENT naming the
/// field, and leaves no socket behind (not even the listen pair bound before connect failed).
#[test]
fn non_local_addresses_are_refused_naming_the_field() {
    if !have_root("non_local_addresses_are_refused_naming_the_field") {
        return;
    }
    let topo = Topology::up("nonlocal");
    let relay = NsRelay::start(&topo.relay(), &[]);
    let cases = [
        ("listen", NOWHERE4, 20100, RELAY_B4, 20102, SRV_B4),
        ("connect", RELAY_A4, 20104, NOWHERE4, 20106, SRV_B4),
        ("listen", NOWHERE6, 20108, RELAY_B6, 20110, SRV_B6),
        ("connect", RELAY_A6, 20112, NOWHERE6, 20114, SRV_B6),
    ];
    for (n, (field, listen, lport, connect, cport, dest)) in cases.into_iter().enumerate() {
        let id = format!("nonlocal-{n}");
        let err = relay
            .create(v1::CreateSessionRequest {
                session_id: id.clone(),
                listen: ep(listen, lport),
                connect: ep(connect, cport),
                destination: ep(dest, 40000),
                protocol: v1::Protocol::Udp as i32,
                options: None,
            })
            .err()
            .unwrap_or_else(|| {
                panic!("{id}: {field} address not local, yet the session was created")
            });
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{id}: {err:?}");
        let other = if field == "listen" {
            "connect"
        } else {
            "listen"
        };
        let msg = err.message();
        let bad = if field == "listen" { listen } else { connect };
        assert!(
            msg.contains(field) && !msg.contains(other) && msg.contains(bad),
            "{id}: the message should name the field {field:?} and the address {bad}: {msg:?}"
        );
        let ports = udp_ports(&topo.relay());
        for p in [lport, lport + 1, cport, cport + 1] {
            assert!(
                !ports.contains(&p),
                "{id}: a socket on port {p} was left behind: {ports:?}"
            );
        }
        let gone = relay.status(&id).err().map(|s| s.code());
        assert_eq!(gone, Some(tonic::Code::NotFound), "{id}: no half-session");
    }
    // The same ports with local addresses work, and the socket check sees them.
    relay
        .create(v1::CreateSessionRequest {
            session_id: "local".into(),
            listen: ep(RELAY_A4, 20104),
            connect: ep(RELAY_B4, 20106),
            destination: ep(SRV_B4, 40000),
            protocol: v1::Protocol::Udp as i32,
            options: None,
        })
        .unwrap_or_else(|s| {
            panic!(
                "create with local addresses: {:?}: {}",
                s.code(),
                s.message()
            )
        });
    let ports = udp_ports(&topo.relay());
    for p in [20104, 20105, 20106, 20107] {
        assert!(
            ports.contains(&p),
            "port {p} should be bound now: {ports:?}"
        );
    }
}

/// An IPv6 link-local address no interface has is just as non-local as 10.201.9.9: refused
/// with INVALID_ARGUMENT naming the field, not an internal error, and nothing left bound.
#[test]
fn an_unassigned_link_local_address_is_refused_as_invalid_argument() {
    if !have_root("an_unassigned_link_local_address_is_refused_as_invalid_argument") {
        return;
    }
    let topo = Topology::up("lladdr");
    let relay = NsRelay::start(&topo.relay(), &[]);
    for (n, (field, listen, connect)) in [
        ("listen", "fe80::1", RELAY_B6),
        ("connect", RELAY_A6, "fe80::1"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("lladdr-{n}");
        let err = relay
            .create(v1::CreateSessionRequest {
                session_id: id.clone(),
                listen: ep(listen, 20300),
                connect: ep(connect, 20302),
                destination: ep(SRV_B6, 40000),
                protocol: v1::Protocol::Udp as i32,
                options: None,
            })
            .err()
            .unwrap_or_else(|| panic!("{id}: {field} fe80::1 is not local, yet it was accepted"));
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{id}: {field} fe80::1: {:?}: {}",
            err.code(),
            err.message()
        );
        assert!(err.message().contains(field), "{id}: {:?}", err.message());
        let ports = udp_ports(&topo.relay());
        for p in 20300..20304 {
            assert!(!ports.contains(&p), "{id}: port {p} left bound: {ports:?}");
        }
    }
}

/// With --allow-nonlocal (IP_FREEBIND) a floating address is accepted before any interface has
/// it, bound to no device, and carries media once it is assigned (as after a VRRP takeover).
#[test]
fn allow_nonlocal_accepts_a_floating_address() {
    if !have_root("allow_nonlocal_accepts_a_floating_address") {
        return;
    }
    let topo = Topology::up("float");
    let relay = NsRelay::start(&topo.relay(), &["--allow-nonlocal"]);
    let srv_rtp = udp_in(&topo.srv(), sock(ip(SRV_B4), 40000), 0);
    let srv_rtcp = udp_in(&topo.srv(), sock(ip(SRV_B4), 40001), 0);
    let info = relay
        .create(v1::CreateSessionRequest {
            session_id: "float".into(),
            listen: ep(NOWHERE4, 20200),
            connect: ep(RELAY_B4, 0),
            destination: ep(SRV_B4, 40000),
            protocol: v1::Protocol::Udp as i32,
            options: None,
        })
        .unwrap_or_else(|s| panic!("--allow-nonlocal refused: {:?}: {}", s.code(), s.message()));
    assert_eq!(addr_of(&info.listen), sock(ip(NOWHERE4), 20200));
    assert_eq!(
        info.listen_device, "",
        "no interface owns the floating address"
    );
    assert_eq!(info.connect_device, dev::RELAY_B);
    let ports = udp_ports(&topo.relay());
    assert!(
        ports.contains(&20200) && ports.contains(&20201),
        "{ports:?}"
    );

    // The address arrives on interface A; the client reaches it through its default route.
    topo.ip(
        &topo.relay(),
        &["addr", "add", "10.201.9.9/32", "dev", dev::RELAY_A],
    );
    let call = Call {
        id: "float".into(),
        listen: addr_of(&info.listen),
        connect: addr_of(&info.connect),
        client_rtp: udp_in(&topo.cli(), sock(ip(CLI_A4), 0), 0),
        client_rtcp: udp_in(&topo.cli(), sock(ip(CLI_A4), 0), 0),
        srv_rtp,
        srv_rtcp,
    };
    exchange(&call, 5, 1);
}

/// A network interruption: the relay's interface towards the server goes down mid-call. The
/// session must report ERROR with the cause, and come back to FORWARDING once the link is up
/// and the server answers again.
#[test]
fn a_downed_interface_is_an_error_until_the_link_returns() {
    if !have_root("a_downed_interface_is_an_error_until_the_link_returns") {
        return;
    }
    let topo = Topology::up("down");
    let relay = NsRelay::start(&topo.relay(), &[]);
    let call = open_call(&topo, &relay, "down-call", V4, 40000, 0);
    exchange(&call, 3, 0);
    assert_eq!(
        status(&relay, &call.id).state,
        v1::SessionState::Forwarding as i32
    );

    topo.ip(&topo.relay(), &["link", "set", dev::RELAY_B, "down"]);
    let started = std::time::Instant::now();
    let mut seq = 100u16;
    let error = loop {
        let p = rtp(0, seq, u32::from(seq) * 160, 0x0d0d, 160);
        call.client_rtp
            .send_to(&p, call.listen)
            .expect("client send");
        seq += 1;
        let s = status(&relay, &call.id);
        if s.state == v1::SessionState::Error as i32 {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "no ERROR within 3 s of the link going down"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let took = started.elapsed();
    eprintln!("link down -> ERROR after {took:?}: {}", error.last_error);
    assert!(
        error.last_error.contains("unreachable") || error.last_error.contains("down"),
        "{}",
        error.last_error
    );

    topo.ip(&topo.relay(), &["link", "set", dev::RELAY_B, "up"]);
    // The server answers once media reaches it again (the connected route returns with the link).
    let back = std::time::Instant::now();
    loop {
        let p = rtp(0, seq, u32::from(seq) * 160, 0x0d0d, 160);
        call.client_rtp
            .send_to(&p, call.listen)
            .expect("client send");
        seq += 1;
        if let Ok(r) = recv(&call.srv_rtp) {
            call.srv_rtp
                .send_to(&r.data, call.connect)
                .expect("server answers");
            break;
        }
        assert!(
            back.elapsed() < std::time::Duration::from_secs(5),
            "media did not resume after link up"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while status(&relay, &call.id).state != v1::SessionState::Forwarding as i32 {
        assert!(
            std::time::Instant::now() < deadline,
            "no FORWARDING after the link came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("link up -> FORWARDING after {:?}", back.elapsed());
}
