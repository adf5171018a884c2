//! The relay's own view: its rtpproxy listener answering a probe, its sessions and RTP counters
//! over gRPC (ListSessions, GetSessionStatus, WatchEvents), and its log.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use rtprelay_proto::v1::session_event::Kind;
use tonic::transport::Channel;

use crate::checks::Checks;
use crate::harness::report;

/// A session's RTP counters: (forward received, forward sent, reverse received, reverse sent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub fwd_rx: u64,
    pub fwd_tx: u64,
    pub rev_rx: u64,
    pub rev_tx: u64,
}

impl Counters {
    pub fn of(s: &v1::SessionInfo) -> Counters {
        let rtp = |d: &Option<v1::DirectionStats>| {
            d.as_ref()
                .and_then(|d| d.rtp.as_ref())
                .map_or((0, 0), |c| (c.packets_received, c.packets_sent))
        };
        let (fwd_rx, fwd_tx) = rtp(&s.forward);
        let (rev_rx, rev_tx) = rtp(&s.reverse);
        Counters {
            fwd_rx,
            fwd_tx,
            rev_rx,
            rev_tx,
        }
    }

    pub fn max(self, o: Counters) -> Counters {
        Counters {
            fwd_rx: self.fwd_rx.max(o.fwd_rx),
            fwd_tx: self.fwd_tx.max(o.fwd_tx),
            rev_rx: self.rev_rx.max(o.rev_rx),
            rev_tx: self.rev_tx.max(o.rev_tx),
        }
    }

    /// (fwd rx, fwd tx, rev rx, rev tx), for reports.
    pub fn tuple(self) -> (u64, u64, u64, u64) {
        (self.fwd_rx, self.fwd_tx, self.rev_rx, self.rev_tx)
    }

    pub fn all_at_least(self, n: u64) -> bool {
        [self.fwd_rx, self.fwd_tx, self.rev_rx, self.rev_tx]
            .iter()
            .all(|c| *c >= n)
    }
}

/// Sends `V` to the rtpproxy listener on `rtpp_port` until it answers (up to 15 tries, 300 ms
/// each); returns the answer.
pub fn probe_v(rtpp_port: u16) -> Option<String> {
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..15 {
        probe
            .send_to(b"interop_1 V", ("127.0.0.1", rtpp_port))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok((n, _)) = probe.recv_from(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
        }
    }
    None
}

pub async fn list_sessions(
    client: &mut RelayClient<Channel>,
    prefix: &str,
) -> Option<Vec<v1::SessionInfo>> {
    let req = v1::ListSessionsRequest {
        page_size: 1000,
        page_token: String::new(),
        id_prefix: prefix.to_string(),
    };
    let resp = tokio::time::timeout(Duration::from_secs(3), client.list_sessions(req))
        .await
        .ok()?
        .ok()?;
    Some(resp.into_inner().sessions)
}

pub async fn session_status(
    client: &mut RelayClient<Channel>,
    id: &str,
) -> Option<v1::SessionInfo> {
    let req = v1::GetSessionStatusRequest {
        session_id: id.to_string(),
    };
    tokio::time::timeout(Duration::from_secs(3), client.get_session_status(req))
        .await
        .ok()?
        .ok()?
        .into_inner()
        .session
}

/// The IDs of the sessions still listed under "rtpp:" and "rtph:", polled for up to `limit`
/// until there are none; None if a listing failed.
pub async fn remaining_sessions(
    client: &mut RelayClient<Channel>,
    limit: Duration,
) -> Option<Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut left = None;
    while Instant::now() < deadline {
        let rtpp = list_sessions(client, "rtpp:").await;
        let rtph = list_sessions(client, "rtph:").await;
        left = rtpp.zip(rtph).map(|(a, b)| {
            a.into_iter()
                .chain(b)
                .map(|s| s.session_id)
                .collect::<Vec<_>>()
        });
        if left.as_ref().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    left
}

/// The relay's `Closed` and `Lagged` session events, collected as they come.
pub type Events = Arc<Mutex<Vec<v1::SessionEvent>>>;

/// Subscribes to WatchEvents and collects the events a task keeps.
pub async fn watch_events(client: &mut RelayClient<Channel>) -> Events {
    let events: Events = Arc::default();
    let mut stream = client
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .expect("WatchEvents")
        .into_inner();
    let kept = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            if matches!(e.kind, Some(Kind::Closed(_) | Kind::Lagged(_))) {
                kept.lock().unwrap().push(e);
            }
        }
    });
    events
}

/// (session ID, reason, final counters) of every `Closed` event of a session whose ID
/// contains `tag`.
pub fn closed_sessions(events: &Events, tag: &str) -> Vec<(String, String, Counters)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.session_id.contains(tag))
        .filter_map(|e| match &e.kind {
            Some(Kind::Closed(c)) => Some((
                e.session_id.clone(),
                c.reason.clone(),
                c.session.as_ref().map(Counters::of).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

pub fn lagged(events: &Events) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Lagged(_))))
        .count()
}

/// Reports the relay's rtpproxy log lines and checks its log has no ERROR lines.
pub fn log_checks(log: &str, checks: &mut Checks) {
    let rtpp_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("rtpp"))
        .collect();
    report(&format!(
        "\n=== rtprelay log: {} rtpproxy lines (first 80) ===\n{}",
        rtpp_lines.len(),
        rtpp_lines
            .iter()
            .take(80)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    ));
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    checks.check(
        errors.is_empty(),
        "relay: no ERROR lines in its log",
        format!("{:?}", errors.iter().take(10).collect::<Vec<_>>()),
    );
}
