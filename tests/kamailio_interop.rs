//! Interop with Kamailio's stock `rtpproxy` module: Kamailio drives rtprelay's rtpproxy-compatible
//! control listener (`--rtpproxy-listen`) while sipp places calls through Kamailio, and the calls'
//! media flows between the two sipp sides through the relay.
//!
//! ```text
//!   sipp UAC --SIP--> Kamailio --SIP--> sipp UAS (-rtp_echo)
//!                        | rtpproxy protocol: V, VF, U (INVITE), L (200 OK), D (BYE)
//!                        v
//!   UAC media ==RTP==> rtprelay ==RTP==> UAS echo port
//!             <======          <======
//! ```
//!
//! Everything runs on 127.0.0.1. The files in tests/interop/ are Kamailio's config (placeholders
//! substituted here) and the two sipp scenarios.
//!
//! Media: the UAC plays a PCMU pcap this test writes (`PCAP_PACKETS` packets, 20 ms apart) with
//! sipp's `play_pcap_audio` to the address in the 200 OK's SDP, i.e. to the relay; the UAS
//! echoes every packet to its source (the relay), which relays it back to the UAC's per-call
//! media port. Counted three ways:
//! - the relay's own counters over gRPC: polled (ListSessions with id_prefix "rtpp:" and
//!   GetSessionStatus) while the calls run, and the final counters of the `Closed` events;
//! - tshark on `lo` with the capture filter `udp portrange <relay media window>`, per leg
//!   (UAC -> relay, relay -> UAS, UAS -> relay, relay -> UAC);
//! - UDP sinks this test binds on the UAC's per-call media ports (sipp itself binds only the
//!   first call's port), which also spares the relay ICMP port-unreachable replies.
//!
//! Two runs: one call, then 20 concurrent calls. The Kamailio and sipp versions, the rtpproxy
//! command transcript (captured on the control port), the relay's rtpproxy log lines and a table
//! of every check go to stderr, unbuffered, pass or fail.
//!
//! Needs root (sipp's pcap play uses raw sockets; tshark captures) and kamailio, sipp and tshark,
//! which it installs with scripts/install-interop-deps when missing. Without root it prints a
//! loud SKIPPED message, or fails when CI=true.
//!
//! Where things are, under tests/interop/:
//! - `harness.rs`: reporting, the work directory, child processes and their cleanup, the lock;
//! - `tools.rs`: the root check, installing the tools, their versions;
//! - `ports.rs`: the relay's media window, free ports, the UAC's media sinks;
//! - `kamailio.rs`: its config, starting it, the checks on its log;
//! - `sipp.rs`: scenarios and pcap, starting the UAS and UAC, reading their traces;
//! - `capture.rs`: tshark captures and the per-leg packet counts;
//! - `relay.rs`: the relay's rtpproxy probe, gRPC sessions, counters, events, its log;
//! - `calls.rs`: one run of calls and every check on it;
//! - `transcript.rs`: the rtpproxy conversation and the checks on it;
//! - `checks.rs`: the PASS/FAIL table.

mod common;

#[path = "interop/calls.rs"]
mod calls;
#[path = "interop/capture.rs"]
mod capture;
#[path = "interop/checks.rs"]
mod checks;
#[path = "interop/harness.rs"]
mod harness;
#[path = "interop/kamailio.rs"]
mod kamailio;
#[path = "interop/ports.rs"]
mod ports;
#[path = "interop/relay.rs"]
mod relay;
#[path = "interop/sipp.rs"]
mod sipp;
#[path = "interop/tools.rs"]
mod tools;
#[path = "interop/transcript.rs"]
mod transcript;

use std::collections::HashSet;
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use common::Relay;

use calls::{Ctx, run_calls};
use capture::{finish_capture, start_capture};
use checks::Checks;
use harness::{Procs, RunLock, read, report, tail};
use ports::{free_media_port, free_udp_port, pick_window};

/// The scenarios and Kamailio's config.
const INTEROP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
/// RTP packets the UAC plays per call (20 ms apart: 3 s of audio; uac.xml pauses 4 s).
const PCAP_PACKETS: u64 = 150;
/// Share of the played packets that must arrive on every leg (loopback loses nothing in
/// practice; the margin only keeps a scheduling hiccup from failing the run).
const MIN_SHARE: f64 = 0.95;
/// The calls of the second run, all concurrent.
const CONCURRENT_CALLS: u64 = 20;
/// Upper bound of one sipp UAC run (its own -timeout is a little shorter).
const SIPP_LIMIT: Duration = Duration::from_secs(60);
/// Size of the relay's media port window (20 calls take 80 ports).
const WINDOW: u16 = 200;
/// Log filter for the relay: debug (so its rtpproxy listener logs the commands it handles)
/// without the HTTP/2 stack's chatter. Set through RUST_LOG, which wins over the
/// `--log-level info` that tests/common passes.
const RELAY_LOG_FILTER: &str = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info";
/// The relay's media address (its default), which every SDP must name once rewritten.
const RELAY_ADDR: &str = "127.0.0.1";
/// Files of the work directory whose tails a failed run prints.
const FAILURE_LOGS: &[&str] = &[
    "kamailio.log",
    "uas.stderr",
    "uas_err.log",
    "uac-1_err.log",
    "uac-20_err.log",
    "uac-1_screen.log",
    "uac-20_screen.log",
];

#[tokio::test]
async fn kamailio_drives_rtprelay_through_the_rtpproxy_protocol() {
    if !tools::may_run() {
        return;
    }
    // SAFETY: set before this test starts any thread or child; the binary holds this one test,
    // run on a current-thread runtime, so nothing reads the environment concurrently. The relay
    // (tests/common passes `--log-level info`) inherits it: RUST_LOG wins over that flag.
    unsafe { std::env::set_var("RUST_LOG", RELAY_LOG_FILTER) };

    // One run at a time on a machine: two would pick the same media window and count each
    // other's packets. Held until the test ends (declared first, dropped last).
    let _lock = RunLock::acquire(Duration::from_secs(300));

    // The work directory, removed at the end unless the test fails.
    let dir = harness::work_dir();
    let mut procs = Procs::new(&dir, FAILURE_LOGS);
    tools::ensure_tools(&dir);
    report(&format!("\n=== versions ===\n{}", tools::versions(&dir)));

    // Ports: all distinct, the relay's window below the ephemeral range, the rest in it.
    let window = pick_window(WINDOW);
    let mut taken: HashSet<u16> = window.ports().collect();
    let rtpp_port = free_udp_port(&mut taken);
    let kam_port = free_udp_port(&mut taken);
    let uas_sip = free_udp_port(&mut taken);
    let uac_sip = free_udp_port(&mut taken);
    let uas_media = free_media_port(&mut taken);
    let (uac_media, sinks) = ports::uac_media(&mut taken, CONCURRENT_CALLS);
    let marker = UdpSocket::bind("127.0.0.1:0").expect("bind the capture marker");
    marker.set_nonblocking(true).expect("non-blocking marker");
    report(&format!(
        "ports: relay media {window}, rtpproxy control {rtpp_port}, kamailio {kam_port}, \
         UAS sip {uas_sip} media {uas_media}, UAC sip {uac_sip} media {uac_media}+4k; work dir {}",
        dir.display()
    ));

    // Files: the pcap, the scenarios, Kamailio's config with the placeholders filled in.
    let interop = Path::new(INTEROP_DIR);
    sipp::write_fixtures(interop, &dir, PCAP_PACKETS);
    let rtpp_sock = format!("udp:127.0.0.1:{rtpp_port}");
    kamailio::write_config(interop, &dir, kam_port, uas_sip, &rtpp_sock);

    // The relay, with its rtpproxy listener, which answers V before Kamailio asks (and the
    // test knows it is up).
    let (relay, mut client) = Relay::start_with_range(
        2,
        window.min,
        window.max,
        &["--rtpproxy-listen", &rtpp_sock],
    )
    .await;
    let mut checks = Checks::default();
    let answer = relay::probe_v(rtpp_port);
    let ok = checks.check(
        answer.as_deref() == Some("interop_1 20040107"),
        "relay: the rtpproxy listener answers V with 20040107",
        format!("{answer:?}"),
    );
    assert!(
        ok,
        "the relay's rtpproxy listener does not answer:\n{}",
        relay.log_text()
    );
    // Every session event, for the final counters in Closed.
    let events = relay::watch_events(&mut client).await;

    // The rtpproxy conversation, captured from before Kamailio starts until it stops.
    let ctl_cap = start_capture(
        &mut procs,
        &dir,
        "rtpproxy-control",
        &format!("udp port {rtpp_port}"),
        &marker,
    );

    // The SIP side: Kamailio with rtpproxy, and the UAS echoing media.
    let kam = kamailio::start(&mut procs, &dir, kam_port).await;
    let uas = sipp::start_uas(&mut procs, &dir, uas_sip, uas_media);

    // The calls: one, then CONCURRENT_CALLS at once.
    let mut ctx = Ctx {
        dir: dir.clone(),
        procs,
        client,
        events,
        window,
        kam_port,
        uac_sip,
        uac_media,
        uas_media,
        sinks,
        marker,
        checks,
        calls_so_far: 0,
    };
    run_calls(&mut ctx, 1).await;
    run_calls(&mut ctx, CONCURRENT_CALLS).await;

    // Stop the SIP side, then read the control capture and the logs.
    // Kamailio's log as the calls left it (its shutdown logs ALERTs about exiting children).
    let kam_text = read(dir.join(kamailio::LOG));
    let uas_status = ctx.procs.stop(uas, libc::SIGTERM, Duration::from_secs(5));
    let kam_status = ctx.procs.stop(kam, libc::SIGTERM, Duration::from_secs(10));
    report(&format!(
        "stopped: sipp UAS {uas_status:?}, kamailio {kam_status:?}"
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let control = finish_capture(&mut ctx.procs, &dir, &ctl_cap, true);
    transcript::transcript_checks(
        &control,
        rtpp_port,
        window,
        ctx.calls_so_far,
        &mut ctx.checks,
    );
    kamailio::log_checks(&kam_text, &mut ctx.checks);

    let lagged = relay::lagged(&ctx.events);
    ctx.checks.check(
        lagged == 0,
        "relay: the event watcher never lagged",
        format!("{lagged} lagged events"),
    );
    let relay_log = relay.log_text();
    relay::log_checks(&relay_log, &mut ctx.checks);

    report(&ctx.checks.summary());
    let failed = ctx.checks.failed();
    assert!(
        failed.is_empty(),
        "{} kamailio interop check(s) failed:\n{}\n--- rtprelay log (tail) ---\n{}",
        failed.len(),
        failed.join("\n"),
        tail(&relay_log, 60)
    );
}
