//! sipp, both sides: the scenario files and the media pcap the UAC plays, starting the UAS and
//! the UAC, and reading what they leave behind (`-trace_msg` message logs, `-trace_stat`
//! statistics).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common;
use crate::harness::{Procs, create, read};
use crate::ports::udp_bound;

/// The (c= address, m=audio port) of an SDP.
pub type Sdp = (String, u16);

/// Copies the scenarios (uac.xml, uas.xml) from `src` into `dir` and writes `uac.pcap` there
/// with `packets` RTP packets.
pub fn write_fixtures(src: &Path, dir: &Path, packets: u64) {
    write_pcap(&dir.join("uac.pcap"), packets);
    for f in ["uac.xml", "uas.xml"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy a scenario");
    }
}

/// A pcap (Ethernet link type) of `packets` RTP packets, PCMU (payload type 0), 160 bytes of
/// mu-law silence each, 20 ms apart. sipp replaces the addresses and ports when it plays it.
fn write_pcap(path: &Path, packets: u64) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for n in 0..packets {
        let mut rtp = common::rtp(0, 1000 + n as u16, 160 * n as u32, 0x5eed_0001, 160);
        rtp[12..].fill(0xff);
        let udp_len = 8 + rtp.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&6000u16.to_be_bytes());
        udp.extend_from_slice(&7000u16.to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&0u16.to_be_bytes()); // no checksum
        udp.extend_from_slice(&rtp);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&(n as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&udp);
        let ts_us = n * 20_000;
        out.extend_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).expect("write the pcap");
}

/// Starts the UAS (uas.xml, echoing media with `-rtp_echo`) on SIP port `sip` and media port
/// `media`, logging received messages to `uas_msgs.log`, and waits until it has bound both.
pub fn start_uas(procs: &mut Procs, dir: &Path, sip: u16, media: u16) -> usize {
    let uas = procs.spawn(
        "sipp UAS",
        Command::new("sipp")
            .current_dir(dir)
            .args([
                "-sf",
                "uas.xml",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-rtp_echo",
            ])
            .args(["-p", &sip.to_string(), "-mp", &media.to_string()])
            .args(["-nostdin", "-trace_msg", "-message_file", "uas_msgs.log"])
            .args(["-trace_err", "-error_file", "uas_err.log"])
            .stdout(create(dir.join("uas.stdout")))
            .stderr(create(dir.join("uas.stderr"))),
    );
    let bound = || udp_bound(sip) && udp_bound(media);
    match procs.wait_ready(
        uas,
        Duration::from_secs(10),
        Duration::from_millis(50),
        bound,
    ) {
        Ok(()) => uas,
        Err(Some(s)) => panic!(
            "sipp UAS exited with {s}:\n{}",
            read(dir.join("uas.stderr"))
        ),
        Err(None) => panic!("sipp UAS did not bind its ports"),
    }
}

/// The UAC run `label`: `calls` calls to Kamailio on `kam_port`, all at once, from SIP port
/// `sip` and media ports `media + 4k`, giving up after `timeout_s`. Its traces go to
/// `<label>_msgs.log`, `<label>_err.log`, `<label>_stat.csv` and `<label>_screen.log`.
pub fn uac_command(
    dir: &Path,
    label: &str,
    kam_port: u16,
    sip: u16,
    media: u16,
    calls: u64,
    timeout_s: u64,
) -> Command {
    let mut cmd = Command::new("sipp");
    cmd.current_dir(dir)
        .arg(format!("127.0.0.1:{kam_port}"))
        .args(["-sf", "uac.xml", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &sip.to_string(), "-mp", &media.to_string()])
        .args([
            "-m",
            &calls.to_string(),
            "-l",
            &calls.to_string(),
            "-r",
            "20",
        ])
        .args([
            "-nostdin",
            "-timeout",
            &format!("{timeout_s}s"),
            "-timeout_error",
        ])
        .args(["-trace_msg", "-message_file", &format!("{label}_msgs.log")])
        .args(["-trace_err", "-error_file", &format!("{label}_err.log")])
        .args(["-trace_stat", "-stf", &format!("{label}_stat.csv")])
        .args([
            "-trace_screen",
            "-screen_file",
            &format!("{label}_screen.log"),
        ])
        .stdout(create(dir.join(format!("{label}.stdout"))))
        .stderr(create(dir.join(format!("{label}.stderr"))));
    cmd
}

/// SIP messages a sipp `-trace_msg` log shows as received.
fn received_messages(log: &str) -> Vec<String> {
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in log.lines() {
        if line.starts_with("----------") {
            blocks.push(Vec::new());
        } else if let Some(b) = blocks.last_mut() {
            b.push(line.trim_end_matches('\r'));
        }
    }
    blocks
        .into_iter()
        .filter(|b| b.first().is_some_and(|l| l.contains("message received")))
        .map(|b| {
            b[1..]
                .iter()
                .skip_while(|l| l.trim().is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The (c= address, m=audio port) of a message's SDP.
fn sdp_media(msg: &str) -> Option<Sdp> {
    let c = msg
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .to_string();
    let port = msg
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((c, port))
}

/// The received INVITEs of a `-trace_msg` log: their SDP by Call-ID.
pub fn invite_sdps(log: &str) -> BTreeMap<String, Option<Sdp>> {
    sdps_by_call(log, |m| m.starts_with("INVITE "))
}

/// The received 200 OKs to INVITEs of a `-trace_msg` log: their SDP by Call-ID.
pub fn answer_sdps(log: &str) -> BTreeMap<String, Option<Sdp>> {
    sdps_by_call(log, |m| {
        m.starts_with("SIP/2.0 200") && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
    })
}

fn sdps_by_call(log: &str, pick: impl Fn(&str) -> bool) -> BTreeMap<String, Option<Sdp>> {
    received_messages(log)
        .iter()
        .filter(|m| pick(m))
        .map(|m| {
            let id = header(m, "Call-ID").unwrap_or("?").to_string();
            (id, sdp_media(m))
        })
        .collect()
}

/// `SuccessfulCall(C)` and `FailedCall(C)` of the last line of a sipp `-trace_stat` file.
pub fn sipp_stats(csv: &str) -> Option<(u64, u64)> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let col = |name: &str| -> Option<u64> {
        let i = head.iter().position(|h| *h == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Some((col("SuccessfulCall(C)")?, col("FailedCall(C)")?))
}
