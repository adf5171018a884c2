//! Every kind of bad request gets a precise status, names the field, changes nothing, leaves no
//! socket behind, and is counted.

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use rtprelay_proto::v1;
use tonic::Code;

async fn expect(
    client: &mut rtprelay_proto::v1::relay_client::RelayClient<tonic::transport::Channel>,
    req: v1::CreateSessionRequest,
    code: Code,
    mentions: &str,
) {
    let status = client
        .create_session(req.clone())
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), code, "{req:?}: {}", status.message());
    assert!(
        status.message().contains(mentions),
        "{:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_precisely_and_change_nothing() {
    let (relay, mut client) = Relay::start(2, &[]).await;
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    client
        .create_session(create_req("existing", 0, 0, dest))
        .await
        .unwrap();

    let mut r = create_req("", 0, 0, dest);
    expect(
        &mut client,
        r.clone(),
        Code::InvalidArgument,
        "session_id must not be empty",
    )
    .await;
    r.session_id = "x".repeat(129);
    expect(&mut client, r.clone(), Code::InvalidArgument, "session_id").await;
    expect(
        &mut client,
        create_req("existing", 0, 0, dest),
        Code::AlreadyExists,
        "existing",
    )
    .await;

    let mut r = create_req("bad-listen", 0, 0, dest);
    r.listen = ep("not-an-ip", 0);
    expect(&mut client, r, Code::InvalidArgument, "listen.address").await;
    let mut r = create_req("bad-connect", 0, 0, dest);
    r.connect = ep("192.0.2.1", 0); // TEST-NET-1: no local interface owns it
    expect(
        &mut client,
        r,
        Code::InvalidArgument,
        "connect address 192.0.2.1",
    )
    .await;
    let mut r = create_req("odd", 0, 0, dest);
    r.listen = ep("127.0.0.1", 30001);
    expect(
        &mut client,
        r,
        Code::InvalidArgument,
        "listen.port 30001 is odd",
    )
    .await;
    let mut r = create_req("no-dest", 0, 0, dest);
    r.destination = None;
    expect(&mut client, r, Code::InvalidArgument, "destination").await;
    // TCP sessions exist now; a bad TCP option is refused like any other field.
    let mut r = create_req("tcp", 0, 0, dest);
    r.protocol = v1::Protocol::Tcp as i32;
    r.options = Some(v1::SessionOptions {
        tcp_framing: 7,
        ..Default::default()
    });
    expect(&mut client, r, Code::InvalidArgument, "options.tcp_framing").await;

    // A listen port somebody else holds.
    let blocker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let held = blocker.local_addr().unwrap().port();
    let held_even = held - held % 2;
    expect(
        &mut client,
        create_req("held", held_even, 0, dest),
        Code::AlreadyExists,
        "listen port",
    )
    .await;

    // A connect port that is held after the listen pair was bound: the listen pair must be
    // released again (no half-session).
    let (free_rtp, free_rtcp) = udp_pair(53000);
    let free = free_rtp.local_addr().unwrap().port();
    drop((free_rtp, free_rtcp));
    let (held_rtp, _held_rtcp) = udp_pair(free + 2);
    let held = held_rtp.local_addr().unwrap().port();
    expect(
        &mut client,
        create_req("half", free, held, dest),
        Code::AlreadyExists,
        "connect port",
    )
    .await;
    for port in [free, free + 1] {
        UdpSocket::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("listen port {port} left bound: {e}"));
    }

    for call in ["get", "destroy"] {
        let status = match call {
            "get" => client
                .get_session_status(v1::GetSessionStatusRequest {
                    session_id: "nobody".into(),
                })
                .await
                .map(drop),
            _ => client
                .destroy_session(v1::DestroySessionRequest {
                    session_id: "nobody".into(),
                })
                .await
                .map(drop),
        }
        .expect_err("unknown ID");
        assert_eq!(status.code(), Code::NotFound, "{call}");
    }
    let status = client
        .get_session_status(v1::GetSessionStatusRequest {
            session_id: String::new(),
        })
        .await;
    assert_eq!(status.unwrap_err().code(), Code::InvalidArgument);

    // Nothing changed: one session, and it still relays.
    let list = client
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 1);
    let stats = client
        .get_relay_stats(v1::GetRelayStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let refused = |code: &str| stats.refused_requests.get(code).copied().unwrap_or(0);
    assert_eq!(refused("InvalidArgument"), 8);
    assert_eq!(refused("AlreadyExists"), 3);
    assert_eq!(refused("Unimplemented"), 0);
    assert_eq!(refused("NotFound"), 2);
    assert!(
        relay.log_text().contains("request refused"),
        "refusals are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_port_range_says_so_and_recovers() {
    // Two pairs in the range: one session (listen + connect) fills it.
    let (_free_rtp, _) = udp_pair(54000);
    let base = _free_rtp.local_addr().unwrap().port();
    drop(_free_rtp);
    let (_relay, mut client) = Relay::start_with_range(1, base, base + 3, &[]).await;
    let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
    client
        .create_session(create_req("first", 0, 0, dest))
        .await
        .unwrap();
    expect(
        &mut client,
        create_req("second", 0, 0, dest),
        Code::ResourceExhausted,
        "port range",
    )
    .await;
    client
        .destroy_session(v1::DestroySessionRequest {
            session_id: "first".into(),
        })
        .await
        .unwrap();
    client
        .create_session(create_req("second", 0, 0, dest))
        .await
        .expect("ports are reusable after destroy");
}
