//! One run of calls: a sipp UAC places N concurrent calls through Kamailio while the relay is
//! polled over gRPC and its media window is captured, then every call is checked: sipp's
//! outcome, the SDPs, the relay's counters, tshark's per-leg counts, the sinks, the BYEs and
//! the final counters.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tonic::transport::Channel;

use crate::capture::{finish_capture, legs, start_capture};
use crate::checks::Checks;
use crate::harness::{Procs, read, report, tail};
use crate::ports::{Sinks, Window};
use crate::relay::{self, Counters, Events};
use crate::sipp::{self, Sdp};
use crate::{MIN_SHARE, PCAP_PACKETS, RELAY_ADDR, SIPP_LIMIT};

/// Everything a run needs, and what the runs accumulate.
pub struct Ctx {
    pub dir: PathBuf,
    pub procs: Procs,
    pub client: RelayClient<Channel>,
    pub events: Events,
    pub window: Window,
    pub kam_port: u16,
    pub uac_sip: u16,
    pub uac_media: u16,
    pub uas_media: u16,
    pub sinks: Sinks,
    /// Capture readiness marker (see `start_capture`).
    pub marker: UdpSocket,
    pub checks: Checks,
    /// Distinct Call-IDs sent so far (the UAS log is cumulative).
    pub calls_so_far: u64,
}

/// Packets every leg of every call must carry.
fn min_packets() -> u64 {
    (PCAP_PACKETS as f64 * MIN_SHARE).ceil() as u64
}

/// One sipp UAC run of `calls` calls, all concurrent, and every check on it.
pub async fn run_calls(ctx: &mut Ctx, calls: u64) {
    let label = format!("uac-{calls}");
    report(&format!(
        "\n=== run {label}: {calls} call(s), all concurrent ==="
    ));
    let window = ctx.window;
    let cap = start_capture(
        &mut ctx.procs,
        &ctx.dir,
        &format!("media-{label}"),
        &format!("udp portrange {window}"),
        &ctx.marker,
    );
    ctx.sinks.reset();
    let uac = ctx.procs.spawn(
        &label,
        &mut sipp::uac_command(
            &ctx.dir,
            &label,
            ctx.kam_port,
            ctx.uac_sip,
            ctx.uac_media,
            calls,
            SIPP_LIMIT.as_secs() - 5,
        ),
    );
    // sipp's Call-IDs are `<n>-<pid>@<host>`, and the relay's session IDs contain them.
    let call_tag = format!("-{}@", ctx.procs.pid(uac));
    let (status, polled, most_at_once) = watch_uac(ctx, uac, &call_tag).await;
    let checks = &mut ctx.checks;

    // 1. Every call completed.
    let errors = read(ctx.dir.join(format!("{label}_err.log")));
    checks.check(
        status.is_some_and(|s| s.success()),
        format!(
            "{label}: sipp UAC exit code 0 within {}s",
            SIPP_LIMIT.as_secs()
        ),
        match status {
            Some(s) => match s.code() {
                Some(c) => format!("exit code {c}"),
                None => format!("killed by signal {:?}", s.signal()),
            },
            None => "timed out and was killed".to_string(),
        } + &if errors.trim().is_empty() {
            String::new()
        } else {
            format!("; errors: {}", tail(&errors, 5).replace('\n', " | "))
        },
    );
    let stats = sipp::sipp_stats(&read(ctx.dir.join(format!("{label}_stat.csv"))));
    checks.check(
        stats == Some((calls, 0)),
        format!("{label}: sipp statistics {calls} successful, 0 failed"),
        match stats {
            Some((ok, failed)) => format!("SuccessfulCall(C)={ok} FailedCall(C)={failed}"),
            None => "no statistics file".to_string(),
        },
    );

    // 2. The SDP each side received points at the relay.
    ctx.calls_so_far += calls;
    let invites = sipp::invite_sdps(&read(ctx.dir.join("uas_msgs.log")))
        .into_iter()
        .filter(|(id, _)| id.contains(&call_tag))
        .collect();
    let uas_ports = check_sdps(
        checks,
        calls,
        window,
        &invites,
        format!(
            "{label}: the INVITE SDP the UAS gets is c=IN IP4 127.0.0.1, m= port in the relay window {window}"
        ),
        "INVITEs",
    );
    let answers = sipp::answer_sdps(&read(ctx.dir.join(format!("{label}_msgs.log"))));
    let uac_ports = check_sdps(
        checks,
        calls,
        window,
        &answers,
        format!(
            "{label}: the 200 OK SDP the UAC gets is c=IN IP4 127.0.0.1, m= port in the relay window"
        ),
        "answers",
    );

    // 3. The relay's counters while the calls ran.
    let min = min_packets();
    checks.check(
        polled.len() as u64 == calls && most_at_once as u64 == calls,
        format!(
            "{label}: ListSessions id_prefix \"rtpp:\" shows one session per call during the calls"
        ),
        format!(
            "{} distinct sessions, at most {most_at_once} at once: {:?}",
            polled.len(),
            polled.keys().collect::<Vec<_>>()
        ),
    );
    // Packets in both directions while the calls ran (the exact totals come from the Closed
    // events below; a poll may miss the last packets before the BYE).
    let silent: Vec<String> = polled
        .iter()
        .filter(|(_, c)| !c.all_at_least(1))
        .map(|(id, c)| format!("{id}: {c:?}"))
        .collect();
    checks.check(
        !polled.is_empty() && silent.is_empty(),
        format!(
            "{label}: GetSessionStatus during the calls: every session received and sent RTP in both directions"
        ),
        if silent.is_empty() {
            format!(
                "highest seen per session (fwd rx/tx, rev rx/tx): {:?}",
                polled.values().map(|c| c.tuple()).collect::<Vec<_>>()
            )
        } else {
            format!("one-way or silent: {silent:?}")
        },
    );

    // 4. Independent count: tshark on lo over the relay's window, per leg.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let packets = finish_capture(&mut ctx.procs, &ctx.dir, &cap, false);
    let uac_media: BTreeSet<u16> = (0..calls).map(|k| ctx.uac_media + 4 * k as u16).collect();
    let legs = legs(&packets, &uac_media, window, ctx.uas_media);
    let leg_ok = |m: &BTreeMap<u16, u64>| m.len() as u64 == calls && m.values().all(|n| *n >= min);
    let fmt = |m: &BTreeMap<u16, u64>| format!("{m:?}");
    checks.check(
        leg_ok(&legs.a_r),
        format!("{label}: tshark: UAC -> relay, >= {min} packets from each call's media port"),
        fmt(&legs.a_r),
    );
    checks.check(
        leg_ok(&legs.r_b),
        format!("{label}: tshark: relay -> UAS, >= {min} packets from each call's relay port"),
        fmt(&legs.r_b),
    );
    checks.check(
        leg_ok(&legs.b_r),
        format!("{label}: tshark: UAS (echo) -> relay, >= {min} packets to each call's relay port"),
        fmt(&legs.b_r),
    );
    checks.check(
        leg_ok(&legs.r_a),
        format!("{label}: tshark: relay -> UAC, >= {min} packets to each call's media port"),
        fmt(&legs.r_a) + &format!("; {} other packets in the window", legs.other),
    );
    // The ports the SDPs named are the ports the media used.
    let a_dst = &legs.a_dst;
    let b_dst: BTreeSet<u16> = legs.b_r.keys().copied().collect();
    checks.check(
        *a_dst == uac_ports && b_dst == uas_ports,
        format!("{label}: media went to the relay ports the SDPs named"),
        format!("UAC sent to {a_dst:?} (200 OK said {uac_ports:?}); UAS sent to {b_dst:?} (INVITE said {uas_ports:?})"),
    );
    // Calls 2.. send to the test's sinks (call 1's port is sipp's own socket).
    if calls > 1 {
        let sinks: Vec<(u16, u64)> = ctx
            .sinks
            .counts()
            .into_iter()
            .take(calls as usize - 1)
            .collect();
        checks.check(
            sinks.iter().all(|(_, n)| *n >= min),
            format!("{label}: UDP sinks on the UAC media ports of calls 2-{calls} received >= {min} packets each"),
            format!("{sinks:?}"),
        );
    }

    // 5. BYE deleted the sessions.
    let left = relay::remaining_sessions(&mut ctx.client, Duration::from_secs(5)).await;
    checks.check(
        left.as_ref().is_some_and(Vec::is_empty),
        format!(
            "{label}: after the BYEs ListSessions id_prefix \"rtpp:\" (and \"rtph:\") is empty"
        ),
        format!("{left:?}"),
    );

    // 6. The final counters, from the Closed events.
    let closed = relay::closed_sessions(&ctx.events, &call_tag);
    let short = closed
        .iter()
        .filter(|(_, _, c)| !c.all_at_least(min))
        .count();
    checks.check(
        closed.len() as u64 == calls && short == 0,
        format!("{label}: WatchEvents Closed for every session, final RTP counters >= {min} in both directions"),
        format!(
            "{} closed; reasons {:?}; final (fwd rx/tx, rev rx/tx): {:?}",
            closed.len(),
            closed.iter().map(|c| c.1.as_str()).collect::<BTreeSet<_>>(),
            closed.iter().map(|(_, _, c)| c.tuple()).collect::<Vec<_>>()
        ),
    );
}

/// Waits for the UAC (up to `SIPP_LIMIT`, then kills it), meanwhile polling the relay's view of
/// the sessions whose ID contains `call_tag`. Returns the UAC's status (None if killed), the
/// highest counters seen per session, and the most sessions seen at once.
async fn watch_uac(
    ctx: &mut Ctx,
    uac: usize,
    call_tag: &str,
) -> (Option<ExitStatus>, BTreeMap<String, Counters>, usize) {
    let mut polled: BTreeMap<String, Counters> = BTreeMap::new();
    let mut most_at_once = 0usize;
    let deadline = Instant::now() + SIPP_LIMIT;
    let status = loop {
        if let Some(s) = ctx.procs.try_wait(uac) {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // Killed: reported as "timed out" below, whatever status the kill left.
            ctx.procs.stop(uac, libc::SIGKILL, Duration::from_secs(1));
            break None;
        }
        if let Some(list) = relay::list_sessions(&mut ctx.client, "rtpp:").await {
            let ours: Vec<&v1::SessionInfo> = list
                .iter()
                .filter(|s| s.session_id.contains(call_tag))
                .collect();
            most_at_once = most_at_once.max(ours.len());
            for s in ours {
                let mut c = Counters::of(s);
                if let Some(st) = relay::session_status(&mut ctx.client, &s.session_id).await {
                    c = c.max(Counters::of(&st));
                }
                let e = polled.entry(s.session_id.clone()).or_default();
                *e = e.max(c);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    (status, polled, most_at_once)
}

/// Checks that each of `calls` calls has an SDP in `sdps` naming the relay's address and a port
/// in `window`; returns the m= ports named.
fn check_sdps(
    checks: &mut Checks,
    calls: u64,
    window: Window,
    sdps: &BTreeMap<String, Option<Sdp>>,
    what: String,
    noun: &str,
) -> BTreeSet<u16> {
    let bad: Vec<String> = sdps
        .iter()
        .filter(|(_, sdp)| {
            !sdp.as_ref()
                .is_some_and(|(c, p)| c == RELAY_ADDR && window.contains(*p))
        })
        .map(|(id, sdp)| format!("{id}: {sdp:?}"))
        .collect();
    let ports: BTreeSet<u16> = sdps
        .values()
        .filter_map(|s| s.as_ref().map(|s| s.1))
        .collect();
    checks.check(
        sdps.len() as u64 == calls && bad.is_empty(),
        what,
        format!(
            "{} {noun}, m= ports {ports:?}{}",
            sdps.len(),
            if bad.is_empty() {
                String::new()
            } else {
                format!("; wrong: {bad:?}")
            }
        ),
    );
    ports
}
