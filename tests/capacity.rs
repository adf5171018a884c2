//! The open-files limit and session capacity: UDP sessions keep no descriptors open, so a
//! limit of N open files holds N/4 sessions per shard, and the next create is refused with
//! RESOURCE_EXHAUSTED instead of failing obscurely.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tonic::Code;

/// The open-files limit the relay runs under: its socket table holds this many sockets.
const NOFILE: usize = 160;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fill_the_open_files_limit_then_are_refused() {
    let grpc = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let log = std::env::temp_dir().join(format!("rtprelay-capacity-{}.log", grpc.port()));
    // Lowering a limit needs no privilege; the relay then cannot raise it again.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_rtprelay"))
        .args(["--grpc-listen", &grpc.to_string(), "--shards", "1"])
        .args(["--port-min", "47000", "--port-max", "47999"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start rtprelay under a low open-files limit");
    let _relay = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        if let Ok(c) = RelayClient::connect(format!("http://{grpc}")).await {
            break c;
        }
        assert!(Instant::now() < deadline, "relay did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The sink: the last session must still relay although its sockets hold no descriptor.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let dest: SocketAddr = sink.local_addr().unwrap();
    let capacity = NOFILE / 4;
    let mut last = None;
    for i in 0..capacity {
        let r = client
            .create_session(create_req(&format!("cap-{i}"), 0, 0, dest))
            .await
            .unwrap_or_else(|e| panic!("session {i} of {capacity}: {e}"));
        last = r.into_inner().session;
    }
    let listen = addr_of(&last.expect("a session").listen);
    let src = UdpSocket::bind("127.0.0.1:0").unwrap();
    src.send_to(b"still relayed", listen).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sink.recv_from(&mut buf).expect("relayed");
    assert_eq!(&buf[..n], b"still relayed");

    let refused = client
        .create_session(create_req("one-too-many", 0, 0, dest))
        .await
        .expect_err("beyond the socket table");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    client
        .destroy_session(v1::DestroySessionRequest {
            session_id: "cap-0".into(),
        })
        .await
        .unwrap();
    client
        .create_session(create_req("one-too-many", 0, 0, dest))
        .await
        .expect("a destroyed session's sockets are reusable");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("open_files=Some(160)"),
        "the limit obtained is logged:\n{text}"
    );
}

/// 10,000 concurrent sessions fit and cost the relay at most 4 KiB of memory each, after media
/// went through every one of them both ways: the bar of the performance issue, measured as
/// `grpc-churn --hold` measures it (resident memory before and after, fixed costs warmed up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_cost_at_most_4_kib_each() {
    use rtprelay_benches::hold::{self, Hold, Target};
    const SESSIONS: u64 = 10_000;
    // Three shards: without CAP_SYS_RESOURCE the open-files limit may be as low as 20,000, and
    // each shard's socket table holds that many sockets, 4 per session. The connect side uses
    // another loopback address, as ports are allocated per address: 23,000 ports each, below
    // the ephemeral range.
    let (relay, _client) = Relay::start_with_range(3, 9000, 31999, &[]).await;
    let cfg = Hold {
        target: Target {
            grpc: format!("http://{}", relay.grpc),
            address: "127.0.0.1".into(),
            connect_address: Some("127.0.0.2".into()),
        },
        clients: 32,
        connections: 4,
        packets: 1,
        relay_pid: Some(relay.pid()),
        linger: 0.0,
    };
    let started = Instant::now();
    let report = hold::run(std::sync::Arc::new(cfg), SESSIONS as usize)
        .await
        .expect("holding the sessions");
    eprintln!(
        "held {SESSIONS} sessions in {:?}: {report}",
        started.elapsed()
    );
    assert_eq!(report["sessions"].as_u64(), Some(SESSIONS), "{report}");
    // Not asserted: how long destroying them takes. Locally 3.3-3.6 s; in one CI run 122 s,
    // with most sessions idling out first (NotFound), cause not found yet. It is reported here
    // so such a run shows up in the test output.
    eprintln!(
        "destroy: {} s, {} errors",
        report["destroy_seconds"], report["destroy_errors"]
    );
    // Loopback may drop a few of a burst of 10,000; the memory figure needs media in nearly
    // every session, not in all.
    for way in ["forwarded", "reversed"] {
        let n = report[way].as_u64().unwrap_or(0);
        assert!(
            n >= SESSIONS * 99 / 100,
            "{way} {n} of {SESSIONS}: {report}"
        );
    }
    let per_session = report["per_session"]["after_traffic"]["rss_bytes"]
        .as_f64()
        .expect("memory readings");
    assert!(
        per_session <= 4096.0,
        "{per_session} bytes per session: {report}"
    );
}
