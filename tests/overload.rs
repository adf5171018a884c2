//! A relay that falls behind sheds stale media, keeps serving every stream and recovers.
//!
//! Overload is made deterministic by stopping the relay process (SIGSTOP) while call-paced
//! media keeps arriving, as a CPU hog or a burst beyond its capacity would hold the shard off:
//! the packets queue in the kernel, more of them than the shard has receive buffers, and the
//! shard meets the whole backlog at once when it runs again (SIGCONT).

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rtprelay_proto::v1;

/// Sessions, each sending one packet every 20 ms.
const SESSIONS: usize = 100;
const INTERVAL: Duration = Duration::from_millis(20);
/// Media before the stall, the stall itself and media after it (the stop and the resumption
/// are measured, the schedule only aims at them).
const BEFORE: Duration = Duration::from_millis(1000);
const STALL: Duration = Duration::from_millis(1500);
const AFTER: Duration = Duration::from_millis(2000);
/// After the stall, the relay gets this long to work off its backlog before the test demands
/// every packet again.
const CATCH_UP: Duration = Duration::from_millis(500);
/// The relay's limit for the time a packet waited in the kernel (its default).
const MAX_AGE: Duration = Duration::from_millis(200);

/// One packet as the sink saw it.
struct Arrival {
    session: usize,
    sent: Duration,
    latency: Duration,
}

/// Packet payload: session index, then the send time in nanoseconds since the test's epoch.
fn packet(session: usize, seq: u16, sent: Duration) -> Vec<u8> {
    let mut p = rtp(
        0,
        seq,
        u32::from(seq) * 160,
        0x0ead_0000 + session as u32,
        160,
    );
    p[12..16].copy_from_slice(&(session as u32).to_be_bytes());
    p[16..24].copy_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
    p
}

fn parse(p: &[u8]) -> Option<(usize, Duration)> {
    let session = u32::from_be_bytes(p.get(12..16)?.try_into().ok()?) as usize;
    let sent = u64::from_be_bytes(p.get(16..24)?.try_into().ok()?);
    Some((session, Duration::from_nanos(sent)))
}

/// Stops and resumes the relay, and never leaves it stopped, also when the test fails.
struct Stall {
    pid: i32,
    stopped: bool,
}

impl Stall {
    /// Returns once every thread of the relay is stopped: kill(2) only queues the signal, and
    /// a shard still running can take a packet sent after the call.
    fn stop(&mut self) {
        // SAFETY: kill(2) on the relay this test started.
        assert_eq!(unsafe { libc::kill(self.pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        self.stopped = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.all_threads_stopped() {
            assert!(Instant::now() < deadline, "the relay did not stop");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the command name, which is in parentheses.
                let state = stat.rsplit_once(") ").map(|(_, rest)| rest.as_bytes()[0]);
                matches!(state, Some(b'T' | b't'))
            })
        })
    }

    fn resume(&mut self) {
        if std::mem::take(&mut self.stopped) {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.resume();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_relay_sheds_stale_media_and_recovers_every_stream() {
    let (relay, mut client) = Relay::start(1, &[]).await;

    // One sink for every session, with room for the burst that follows the stall.
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind the sink");
    socket2::SockRef::from(&sink)
        .set_recv_buffer_size(8 << 20)
        .expect("sink buffer");
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let dest = sink.local_addr().unwrap();
    let mut sources = Vec::new();
    for i in 0..SESSIONS {
        let info = create_session(&mut client, create_req(&format!("stall-{i}"), 0, 0, dest)).await;
        let source = UdpSocket::bind("127.0.0.1:0").expect("bind a source");
        source.connect(addr_of(&info.listen)).expect("connect");
        sources.push(source);
    }

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = sink.recv(&mut buf) else { continue };
                let now = epoch.elapsed();
                if let Some((session, sent)) = parse(&buf[..n]) {
                    seen.push(Arrival {
                        session,
                        sent,
                        latency: now.saturating_sub(sent),
                    });
                }
            }
            seen
        })
    };

    // Every session sends one packet per INTERVAL, staggered across it, for the whole run;
    // the relay is stopped after BEFORE for STALL.
    let pid = relay.pid() as i32;
    let sender = std::thread::spawn(move || {
        let end = BEFORE + STALL + AFTER;
        let mut sent: HashMap<usize, Vec<Duration>> = HashMap::new();
        let mut stall = Stall {
            pid,
            stopped: false,
        };
        let (mut stopped_at, mut resumed_at) = (None, None);
        let mut n: u64 = 0;
        loop {
            let due = INTERVAL * (n / SESSIONS as u64) as u32
                + INTERVAL * (n % SESSIONS as u64) as u32 / SESSIONS as u32;
            if due >= end {
                break;
            }
            let now = epoch.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
            if stopped_at.is_none() && due >= BEFORE {
                stall.stop();
                stopped_at = Some(epoch.elapsed());
            }
            if resumed_at.is_none() && stopped_at.is_some_and(|t| epoch.elapsed() >= t + STALL) {
                // Packets sent until now were sent into a stopped relay.
                resumed_at = Some(epoch.elapsed());
                stall.resume();
            }
            let session = (n % SESSIONS as u64) as usize;
            let sent_at = epoch.elapsed();
            sources[session]
                .send(&packet(session, (n / SESSIONS as u64) as u16, sent_at))
                .expect("send");
            sent.entry(session).or_default().push(sent_at);
            n += 1;
        }
        (sent, stopped_at, resumed_at)
    });
    let (sent, stopped, resumed) =
        tokio::task::spawn_blocking(move || sender.join().expect("sender"))
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = tokio::task::spawn_blocking(move || receiver.join().expect("receiver"))
        .await
        .unwrap();

    let (Some(stopped), Some(resumed)) = (stopped, resumed) else {
        panic!("the run ended before the stall was over");
    };
    let sent_in = |from: Duration, to: Duration| -> usize {
        sent.values()
            .map(|v| v.iter().filter(|t| **t >= from && **t < to).count())
            .sum()
    };
    let seen_in =
        |from: Duration, to: Duration| seen.iter().filter(move |a| a.sent >= from && a.sent < to);
    // Packets the relay had already taken when it was stopped go out when it resumes, as late
    // as the stall was long: they were in its hands, not in the backlog. Only packets sent
    // after the stop show how the backlog was handled.
    let worst = seen_in(stopped, Duration::MAX)
        .map(|a| a.latency)
        .max()
        .unwrap_or_default();
    let worst_taken = seen_in(Duration::ZERO, stopped)
        .map(|a| a.latency)
        .max()
        .unwrap_or_default();
    // Sent early enough in the stall to be older than the age limit when the relay resumed.
    let stale = stopped..resumed - MAX_AGE - Duration::from_millis(50);
    let stale_relayed = seen_in(stale.start, stale.end).count();
    eprintln!(
        "sent {} / received {}: before the stall {} / {}, during {} / {} ({stale_relayed} of \
         {} stale ones), after catching up {} / {}; worst latency {worst:?} (of packets taken \
         before the stop: {worst_taken:?})",
        sent_in(Duration::ZERO, Duration::MAX),
        seen.len(),
        sent_in(Duration::ZERO, stopped),
        seen_in(Duration::ZERO, stopped).count(),
        sent_in(stopped, resumed),
        seen_in(stopped, resumed).count(),
        sent_in(stale.start, stale.end),
        sent_in(resumed + CATCH_UP, Duration::MAX),
        seen_in(resumed + CATCH_UP, Duration::MAX).count(),
    );

    // Before the stall: everything (the last packets before the stop may still have been
    // queued in the kernel, and are then rightly dropped as late).
    let settled = stopped - Duration::from_millis(50);
    assert_eq!(
        seen_in(Duration::ZERO, settled).count(),
        sent_in(Duration::ZERO, settled),
        "media was lost before the relay was stopped"
    );
    // The backlog is shed, not relayed seconds late.
    assert_eq!(
        stale_relayed, 0,
        "packets older than the age limit when the relay resumed were relayed"
    );
    assert!(
        worst < MAX_AGE + Duration::from_millis(250),
        "a packet sent during the stall arrived {worst:?} after it was sent"
    );
    // Every stream is served again, and completely once the backlog is gone.
    let after: Vec<usize> = (0..SESSIONS)
        .filter(|s| !seen_in(resumed + CATCH_UP, Duration::MAX).any(|a| a.session == *s))
        .collect();
    assert!(
        after.is_empty(),
        "streams silent after the stall: {after:?}"
    );
    assert_eq!(
        seen_in(resumed + CATCH_UP, Duration::MAX).count(),
        sent_in(resumed + CATCH_UP, Duration::MAX),
        "media lost after the relay caught up"
    );

    // The relay accounts for every packet: relayed, or dropped as late.
    let mut late = 0;
    for i in 0..SESSIONS {
        let id = format!("stall-{i}");
        let info = session_status(&mut client, &id).await;
        assert_eq!(
            info.state,
            v1::SessionState::Forwarding as i32,
            "{id} left forwarding"
        );
        let c = info
            .forward
            .and_then(|d| d.rtp)
            .unwrap_or_else(|| panic!("{id} has no forward counters"));
        let dropped = c.dropped.unwrap_or_default();
        let delivered = seen.iter().filter(|a| a.session == i).count() as u64;
        let sent = sent.get(&i).map_or(0, Vec::len) as u64;
        assert_eq!(c.packets_received, sent, "{id}: the relay missed packets");
        assert_eq!(
            c.packets_sent, delivered,
            "{id}: sent by the relay vs delivered"
        );
        assert_eq!(
            c.packets_received - c.packets_sent,
            dropped.late,
            "{id}: every packet not relayed must be counted late ({dropped:?})"
        );
        late += dropped.late;
    }
    eprintln!("the relay counted {late} packets late");
    assert!(late > 0, "nothing was counted late");
    drop(relay);
}
