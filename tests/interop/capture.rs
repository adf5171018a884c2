//! Packet capture with tshark on `lo`: starting a capture that is known to be live, reading it
//! back as one line per packet, and sorting the media packets into the four legs of a call.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Procs, create, read, run_bounded, tail};
use crate::ports::Window;

pub struct Capture {
    proc: usize,
    file: PathBuf,
    marker_port: u16,
}

/// Starts tshark on `lo` with `filter`, writing `<name>.pcap`, and returns once it really
/// captures: tshark says "Capturing on" before dumpcap has attached its filter, so this sends
/// datagrams to `marker` (a non-blocking socket of this test, also in the capture filter) until
/// the capture file grows.
pub fn start_capture(
    procs: &mut Procs,
    dir: &Path,
    name: &str,
    filter: &str,
    marker: &UdpSocket,
) -> Capture {
    let file = dir.join(format!("{name}.pcap"));
    let log = dir.join(format!("{name}.tshark.log"));
    let marker_port = marker.local_addr().expect("marker address").port();
    let full_filter = format!("({filter}) or (udp port {marker_port})");
    let i = procs.spawn(
        &format!("tshark {name}"),
        Command::new("tshark")
            .args(["-i", "lo", "-n", "-q", "-B", "16", "-f", &full_filter, "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(create(&log)),
    );
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind the marker sender");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut initial_size = None;
    loop {
        let size = std::fs::metadata(&file).map(|m| m.len()).ok();
        match (initial_size, size) {
            (None, Some(n)) => initial_size = Some(n),
            (Some(n0), Some(n)) if n > n0 => break,
            _ => {}
        }
        if initial_size.is_some() {
            let _ = sender.send_to(
                b"rtprelay interop capture marker",
                ("127.0.0.1", marker_port),
            );
            let mut buf = [0u8; 64];
            while marker.recv_from(&mut buf).is_ok() {}
        }
        if let Some(s) = procs.try_wait(i) {
            panic!("tshark ({full_filter}) exited with {s}:\n{}", read(&log));
        }
        assert!(
            Instant::now() < deadline,
            "tshark ({full_filter}) did not start capturing:\n{}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Capture {
        proc: i,
        file,
        marker_port,
    }
}

/// Stops the capture and returns one line per packet (the markers left out):
/// `time<TAB>src port<TAB>dst port`, plus `<TAB>hex payload` with `payload`.
pub fn finish_capture(procs: &mut Procs, dir: &Path, cap: &Capture, payload: bool) -> Vec<String> {
    let status = procs.stop(cap.proc, libc::SIGINT, Duration::from_secs(10));
    assert!(status.is_some(), "tshark did not stop");
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(&cap.file)
        .args(["-n", "-T", "fields", "-E", "separator=/t"])
        .args([
            "-e",
            "frame.time_relative",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
        ]);
    if payload {
        cmd.args(["-e", "udp.payload"]);
    }
    let name = cap.file.file_stem().unwrap().to_string_lossy().to_string();
    let (status, out, err) = run_bounded(
        dir,
        &format!("{name}.read"),
        &mut cmd,
        Duration::from_secs(60),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "tshark -r {} failed: {}",
        cap.file.display(),
        tail(&err, 20)
    );
    let marker = cap.marker_port.to_string();
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.split('\t').skip(1).take(2).any(|p| p == marker))
        .map(str::to_string)
        .collect()
}

/// Captured media packets by leg, each counted per call by the port on the far side of the
/// relay (A = UAC, R = relay, B = UAS).
#[derive(Default)]
pub struct Legs {
    /// UAC -> relay, by UAC media port.
    pub a_r: BTreeMap<u16, u64>,
    /// relay -> UAC, by UAC media port.
    pub r_a: BTreeMap<u16, u64>,
    /// relay -> UAS, by relay port.
    pub r_b: BTreeMap<u16, u64>,
    /// UAS (echo) -> relay, by relay port.
    pub b_r: BTreeMap<u16, u64>,
    /// The relay ports the UAC sent to.
    pub a_dst: BTreeSet<u16>,
    /// Packets on none of the legs.
    pub other: u64,
}

/// Sorts `finish_capture` lines into legs: `uac_media` are the UAC's media ports, `window` the
/// relay's, `uas_media` the UAS's (one port for every call).
pub fn legs(packets: &[String], uac_media: &BTreeSet<u16>, window: Window, uas_media: u16) -> Legs {
    let mut legs = Legs::default();
    for line in packets {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(src), Some(dst)) = (
            f.get(1).and_then(|p| p.parse::<u16>().ok()),
            f.get(2).and_then(|p| p.parse::<u16>().ok()),
        ) else {
            legs.other += 1;
            continue;
        };
        if uac_media.contains(&src) && window.contains(dst) {
            *legs.a_r.entry(src).or_default() += 1;
            legs.a_dst.insert(dst);
        } else if window.contains(src) && uac_media.contains(&dst) {
            *legs.r_a.entry(dst).or_default() += 1;
        } else if window.contains(src) && dst == uas_media {
            *legs.r_b.entry(src).or_default() += 1;
        } else if src == uas_media && window.contains(dst) {
            *legs.b_r.entry(dst).or_default() += 1;
        } else {
            legs.other += 1;
        }
    }
    legs
}
