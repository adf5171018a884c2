//! Kamailio: its config (tests/interop/kamailio.cfg with the placeholders filled in), starting
//! it with rtpproxy support, and the checks on its log.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::checks::Checks;
use crate::harness::{Procs, create, read, tail};
use crate::ports::udp_bound;

/// Kamailio's log (its stderr) in the work directory.
pub const LOG: &str = "kamailio.log";
/// What Kamailio's rtpproxy module logs once it has probed the relay successfully.
const ENABLED: &str = "support for it enabled";

/// Writes `dir`/kamailio.cfg from `src`/kamailio.cfg: Kamailio listens on `kam_port`, sends
/// calls to the UAS on `uas_sip` and talks rtpproxy to `rtpp_sock`.
pub fn write_config(src: &Path, dir: &Path, kam_port: u16, uas_sip: u16, rtpp_sock: &str) {
    let cfg = std::fs::read_to_string(src.join("kamailio.cfg"))
        .expect("read tests/interop/kamailio.cfg")
        .replace("__KAM_PORT__", &kam_port.to_string())
        .replace("__UAS_PORT__", &uas_sip.to_string())
        .replace("__RTPP_SOCK__", rtpp_sock);
    std::fs::write(dir.join("kamailio.cfg"), cfg).expect("write kamailio.cfg");
}

/// Starts Kamailio in the foreground, logging to stderr, with rtpproxy, and waits until it
/// listens on `kam_port` and its rtpproxy module has found the relay.
pub async fn start(procs: &mut Procs, dir: &Path, kam_port: u16) -> usize {
    let log = dir.join(LOG);
    let kam = procs.spawn(
        "kamailio",
        Command::new("kamailio")
            .args(["-DD", "-E", "-f"])
            .arg(dir.join("kamailio.cfg"))
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(dir.join("run"))
            .arg("-w")
            .arg(dir)
            .args(["-A", "WITH_RTPPROXY"])
            .stdout(create(dir.join("kamailio.stdout")))
            .stderr(create(&log)),
    );
    let up = || udp_bound(kam_port) && read(&log).contains(ENABLED);
    match procs.wait_ready(kam, Duration::from_secs(20), Duration::from_millis(100), up) {
        Ok(()) => {}
        Err(Some(s)) => panic!("kamailio exited with {s}:\n{}", tail(&read(&log), 40)),
        Err(None) => panic!(
            "kamailio did not come up (listening and rtpproxy enabled):\n{}",
            tail(&read(&log), 40)
        ),
    }
    // Let every worker finish its own probe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kam
}

/// Checks Kamailio's `log` (read before its shutdown, which logs ALERTs about exiting
/// children): the rtpproxy module found the relay and never gave up on it, and nothing erred.
pub fn log_checks(log: &str, checks: &mut Checks) {
    let enabled = log.lines().filter(|l| l.contains(ENABLED)).count();
    checks.check(
        enabled > 0,
        "kamailio: rtpproxy module found the relay (\"support for it enabled\")",
        format!("{enabled} processes probed it successfully"),
    );
    const BAD: [&str; 10] = [
        "disable",
        "re-enabled",
        "timeout waiting reply",
        "can't send command",
        "can't read reply",
        "does not respond",
        "unsupported version",
        "doesn't support required",
        "no available proxies",
        "rtpproxy_manage failed",
    ];
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            // The module's lines carry "rtpproxy [rtpproxy.c:..]"; its messages say "RTP proxy".
            let lower = l.to_ascii_lowercase();
            let about_rtpproxy = ["rtpproxy", "rtp proxy", "rtpp "]
                .iter()
                .any(|k| lower.contains(k));
            (about_rtpproxy && BAD.iter().any(|b| lower.contains(b)))
                || [" ERROR: ", " CRITICAL: ", " ALERT: ", " BUG: "]
                    .iter()
                    .any(|lvl| l.contains(lvl))
        })
        .collect();
    checks.check(
        bad.is_empty(),
        "kamailio: no rtpproxy node disabled/re-probed, no timeouts, no errors in its log",
        if bad.is_empty() {
            format!("{} log lines, none matching", log.lines().count())
        } else {
            format!("{:?}", bad.iter().take(20).collect::<Vec<_>>())
        },
    );
}
