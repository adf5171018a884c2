//! Named media interfaces on loopback: each address takes its own port range, DSCP and
//! advertised address, for gRPC sessions and rtpproxy replies alike.

mod common;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use rtprelay_proto::v1;

/// Receives one datagram on `sock` (which has IP_RECVTOS on) and returns its TOS byte.
fn recv_tos(sock: &UdpSocket) -> Option<u8> {
    let mut buf = [0u8; 2048];
    let mut control = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: recvmsg writes only into the buffers described by `msg`.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return None;
    }
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TOS {
                return Some(*libc::CMSG_DATA(c));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_interface_has_its_own_ports_dscp_and_advertised_address() {
    // Two addresses of this host's loopback, each a named interface with its own range.
    let probe = Relay::start(1, &[]).await.0;
    let (a_min, b_min) = (probe.port_min + 100, probe.port_min + 200);
    let (window_min, window_max) = (probe.port_min, probe.port_max);
    drop(probe);
    let config = format!(
        "[[interfaces]]\nname = \"access\"\naddress = \"127.0.0.1\"\nadvertised = \"203.0.113.7\"\n\
         port_min = {a_min}\nport_max = {}\n\n\
         [[interfaces]]\nname = \"core\"\naddress = \"127.0.0.2\"\nport_min = {b_min}\nport_max = {}\ndscp = 10\n",
        a_min + 99,
        b_min + 99
    );
    let path = std::env::temp_dir().join(format!("rtprelay-ifaces-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let ctl = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ctl_port = ctl.local_addr().unwrap().port();
    drop(ctl);
    let rtpp = format!("udp:127.0.0.1:{ctl_port}");
    let (_relay, mut client) = Relay::start_with_range(
        1,
        window_min,
        window_max,
        &[
            "--config",
            path.to_str().unwrap(),
            "--rtpproxy-listen",
            &rtpp,
        ],
    )
    .await;
    std::fs::remove_file(&path).ok();

    let dest = UdpSocket::bind("127.0.0.1:0").unwrap();
    dest.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            dest.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVTOS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let req = v1::CreateSessionRequest {
        session_id: "two-nets".into(),
        listen: ep("127.0.0.1", 0),
        connect: ep("127.0.0.2", 0),
        destination: ep("127.0.0.1", dest.local_addr().unwrap().port()),
        protocol: v1::Protocol::Udp as i32,
        options: None,
    };
    let s = create_session(&mut client, req).await;
    let (listen, connect) = (addr_of(&s.listen), addr_of(&s.connect));
    assert!(
        (a_min..a_min + 100).contains(&listen.port()),
        "listen {listen} outside access's range"
    );
    assert!(
        (b_min..b_min + 100).contains(&connect.port()),
        "connect {connect} outside core's range"
    );
    assert_eq!(s.listen_advertised, "203.0.113.7");
    assert_eq!(s.connect_advertised, "", "core advertises nothing");

    // Media leaving from the core address carries core's DSCP 10 (TOS 0x28).
    let phone = udp(0);
    phone.send_to(&rtp(0, 1, 0, 9, 160), listen).unwrap();
    assert_eq!(recv_tos(&dest), Some(10 << 2));

    // rtpproxy replies announce the advertised address of the access interface.
    let rtpp_ctl = UdpSocket::bind("127.0.0.1:0").unwrap();
    rtpp_ctl
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    rtpp_ctl
        .send_to(
            b"c1 U call-1 127.0.0.1 4000 tag1;1",
            ("127.0.0.1", ctl_port),
        )
        .unwrap();
    let mut buf = [0u8; 256];
    let n = rtpp_ctl.recv(&mut buf).unwrap();
    let reply = std::str::from_utf8(&buf[..n])
        .unwrap()
        .trim_end()
        .to_owned();
    let parts: Vec<&str> = reply.split(' ').collect();
    assert_eq!(parts.len(), 3, "{reply:?}");
    let port: u16 = parts[1].parse().unwrap();
    assert!((a_min..a_min + 100).contains(&port), "{reply:?}");
    assert_eq!(parts[2], "203.0.113.7", "{reply:?}");
}
