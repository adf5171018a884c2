//! The rtpproxy conversation between Kamailio and the relay, as captured on the control port:
//! printed as a transcript, then checked command by command.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::RELAY_ADDR;
use crate::checks::Checks;
use crate::harness::report;
use crate::ports::Window;

/// Reports the transcript of `lines` (`finish_capture` lines with payload) on control port
/// `rtpp_port` and checks it holds one U, L and D per call of the `calls` calls, answered with
/// ports in `window`, sane version answers, and no errors or retransmissions.
pub fn transcript_checks(
    lines: &[String],
    rtpp_port: u16,
    window: Window,
    calls: u64,
    checks: &mut Checks,
) {
    let mut text = String::from("\n=== rtpproxy command transcript (Kamailio <-> rtprelay) ===\n");
    let mut commands: Vec<(String, String)> = Vec::new(); // cookie, command
    let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(t), Some(src), Some(dst), Some(hex)) = (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            continue;
        };
        let body = String::from_utf8_lossy(&unhex(hex)).trim_end().to_string();
        let to_relay = dst.parse::<u16>().ok() == Some(rtpp_port);
        text.push_str(&format!(
            "{:>8.3}s {} {body}\n",
            t.parse::<f64>().unwrap_or(0.0),
            if to_relay {
                format!("K:{src} -> R")
            } else {
                format!("R -> K:{dst}")
            }
        ));
        let (cookie, rest) = body.split_once(' ').unwrap_or((body.as_str(), ""));
        if to_relay {
            commands.push((cookie.to_string(), rest.to_string()));
        } else {
            replies
                .entry(cookie.to_string())
                .or_default()
                .push(rest.to_string());
        }
    }
    report(&text);

    let mut cookies = HashSet::new();
    let retransmitted: Vec<&String> = commands
        .iter()
        .filter(|(c, _)| !cookies.insert(c.clone()))
        .map(|(c, _)| c)
        .collect();
    let unanswered: Vec<&(String, String)> = commands
        .iter()
        .filter(|(c, _)| !replies.contains_key(c))
        .collect();
    checks.check(
        !commands.is_empty() && retransmitted.is_empty() && unanswered.is_empty(),
        "transcript: every command answered once, none retransmitted",
        format!(
            "{} commands; retransmitted {retransmitted:?}; unanswered {unanswered:?}",
            commands.len()
        ),
    );
    let reply = |cookie: &str| {
        replies
            .get(cookie)
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default()
    };
    // (cookie, command, first reply) of the commands whose verb is `verb`.
    let of = |verb: char| -> Vec<(String, String, String)> {
        commands
            .iter()
            .filter(|(_, cmd)| cmd.chars().next().map(|c| c.to_ascii_uppercase()) == Some(verb))
            .map(|(c, cmd)| (c.clone(), cmd.clone(), reply(c)))
            .collect()
    };
    // V must answer the base version; VF 20050322 (media index ;N, which Kamailio's module
    // requires) must be 1; other VF probes are optional features and may answer 0 or 1.
    let v = of('V');
    let v_bad: Vec<_> = v
        .iter()
        .filter(
            |(_, cmd, r)| match cmd.split_whitespace().collect::<Vec<_>>()[..] {
                ["V"] => r != "20040107",
                ["VF", "20050322"] => r != "1",
                ["VF", _] => r != "0" && r != "1",
                _ => true,
            },
        )
        .collect();
    let answers: BTreeSet<String> = v
        .iter()
        .map(|(_, cmd, r)| format!("{cmd} -> {r}"))
        .collect();
    checks.check(
        v.iter().any(|(_, cmd, _)| cmd.trim() == "V") && v_bad.is_empty(),
        "transcript: V answered 20040107, VF 20050322 answered 1, other VF probes 0 or 1",
        format!(
            "{} V/VF commands, answers {answers:?}; wrong: {v_bad:?}",
            v.len()
        ),
    );
    for (verb, what) in [('U', "U (offer)"), ('L', "L (answer)")] {
        let cmds = of(verb);
        let bad: Vec<_> = cmds
            .iter()
            .filter(|(_, _, r)| {
                let mut it = r.split_whitespace();
                let port = it.next().and_then(|p| p.parse::<u16>().ok());
                let addr = it.next();
                !(port.is_some_and(|p| window.contains(p)) && addr.is_none_or(|a| a == RELAY_ADDR))
            })
            .collect();
        checks.check(
            cmds.len() as u64 == calls && bad.is_empty(),
            format!("transcript: one {what} per call, answered with a port in the relay window"),
            format!("{} of {calls}; bad: {bad:?}", cmds.len()),
        );
    }
    let d = of('D');
    let bad: Vec<_> = d.iter().filter(|(_, _, r)| r.trim() != "0").collect();
    checks.check(
        d.len() as u64 == calls && bad.is_empty(),
        "transcript: one D (delete) per call, answered 0",
        format!("{} of {calls}; bad: {bad:?}", d.len()),
    );
    let errors: Vec<_> = commands
        .iter()
        .filter(|(c, _)| reply(c).starts_with('E'))
        .map(|(c, cmd)| format!("{c} {cmd} -> {}", reply(c)))
        .collect();
    checks.check(
        errors.is_empty(),
        "transcript: no E<code> error replies",
        format!("{errors:?}"),
    );
}

/// The bytes of a hex string (tshark's `udp.payload`), ignoring separators.
fn unhex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    s.chunks(2)
        .filter(|c| c.len() == 2)
        .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}
