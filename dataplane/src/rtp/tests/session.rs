//! `SessionMedia` end to end: sources, clocks, jitter, malformed input.

use super::rtp;
use crate::rtp::{Direction::*, MAX_SOURCES, PacketClass, SessionMedia, SourceSnapshot};

/// Sends `n` paced packets (20 ms, `step` timestamp units) of one source in `dir`.
fn stream(m: &mut SessionMedia, ssrc: u32, pt: u8, first_seq: u16, n: u16, t0_us: u64, step: u32) {
    for i in 0..n {
        let p = rtp(ssrc, first_seq.wrapping_add(i), u32::from(i) * step, pt);
        let class = m.on_packet(Forward, false, &p, t0_us + u64::from(i) * 20_000);
        assert_eq!(class, PacketClass::Rtp);
    }
}

fn source(m: &SessionMedia, ssrc: u32) -> SourceSnapshot {
    let snap = m.snapshot();
    let found = snap.forward.sources.into_iter().find(|s| s.ssrc == ssrc);
    found.expect("source tracked")
}

#[test]
fn ssrc_change_is_a_new_stream_not_loss() {
    let mut m = SessionMedia::new();
    stream(&mut m, 0xaaaa, 0, 100, 11, 0, 160);
    stream(&mut m, 0xbbbb, 0, 40_000, 11, 220_000, 160);
    let snap = m.snapshot();
    assert_eq!(snap.forward.sources.len(), 2);
    for s in &snap.forward.sources {
        assert_eq!(
            (s.expected, s.packets_received, s.lost),
            (10, 10, 0),
            "{s:?}"
        );
        assert_eq!(s.restarts, 0);
    }
    assert_eq!(snap.forward.sources[0].ssrc, 0xaaaa, "oldest first");
    assert_eq!(snap.forward.rtp_packets, 22);
    assert!(snap.reverse.sources.is_empty());
}

#[test]
fn the_least_recently_seen_source_is_evicted() {
    let mut m = SessionMedia::new();
    let mut t = 0;
    for ssrc in 1..=MAX_SOURCES as u32 {
        stream(&mut m, ssrc, 0, 0, 3, t, 160);
        t += 100_000;
    }
    // Source 1 speaks again, so source 2 is now the stalest.
    stream(&mut m, 1, 0, 3, 3, t, 160);
    stream(&mut m, 99, 0, 0, 3, t + 100_000, 160);
    let snap = m.snapshot();
    let ssrcs: Vec<u32> = snap.forward.sources.iter().map(|s| s.ssrc).collect();
    assert_eq!(ssrcs, [1, 3, 4, 99]);
    assert_eq!(snap.forward.evicted_sources, 1);
}

#[test]
fn jitter_matches_hand_computed_value_through_the_session() {
    // Same vector as the jitter unit test: J = 1.876953125 units at 8 kHz.
    let mut m = SessionMedia::new();
    for (i, a) in [0u64, 20_000, 41_000, 59_000, 80_000].iter().enumerate() {
        let p = rtp(7, 500 + i as u16, 160 * i as u32, 8);
        m.on_packet(Forward, false, &p, 10_000_000 + a);
    }
    let s = source(&m, 7);
    assert_eq!(s.clock_rate, Some(8_000));
    assert_eq!(s.jitter_ms, Some(0.234619140625));
}

#[test]
fn unknown_dynamic_payload_type_has_no_jitter_until_its_clock_is_set() {
    let mut m = SessionMedia::new();
    stream(&mut m, 1, 111, 0, 10, 0, 960);
    let s = source(&m, 1);
    assert_eq!((s.clock_rate, s.jitter_ms), (None, None));
    assert_eq!(s.lost, 0, "loss does not need a clock");
    assert!(m.set_clock_rate(111, 48_000));
    stream(&mut m, 1, 111, 10, 10, 200_000, 960);
    let s = source(&m, 1);
    assert_eq!(s.clock_rate, Some(48_000));
    assert!(s.jitter_ms.is_some_and(|j| j < 1e-9), "{s:?}");
}

#[test]
fn static_types_keep_their_rfc3551_clock() {
    let mut m = SessionMedia::new();
    assert!(!m.set_clock_rate(9, 16_000));
    assert_eq!(m.clock_rate(9), Some(8_000), "G.722 RTP clock is 8 kHz");
    assert_eq!(m.clock_rate(35), None, "unassigned");
}

#[test]
fn video_at_90khz_with_one_late_frame() {
    let mut m = SessionMedia::new();
    // 25 fps: 3600 units per 40 ms. Frame 5 arrives 9 ms (810 units) late.
    for i in 0..10u32 {
        let late = if i == 5 { 9_000 } else { 0 };
        let p = rtp(0x5151, i as u16, 3_600 * i, 34);
        m.on_packet(Forward, false, &p, u64::from(i) * 40_000 + late);
    }
    let s = source(&m, 0x5151);
    assert_eq!(s.clock_rate, Some(90_000));
    // D = 810 at frame 5 and 810 at frame 6, 0 elsewhere:
    // J5 = 810/16 = 50.625; J6 = 50.625 + (810 - 50.625)/16 = 98.08594;
    // then 3 zero differences: J *= (15/16)^3.
    let units = (50.625 + (810.0 - 50.625) / 16.0) * (15.0f64 / 16.0).powi(3);
    let expected_ms = units / 90.0;
    let got = s.jitter_ms.expect("known clock");
    assert!((got - expected_ms).abs() < 1e-9, "{got} vs {expected_ms}");
}

#[test]
fn malformed_input_is_not_rtp_and_never_panics() {
    let mut m = SessionMedia::new();
    let good = rtp(1, 1, 1, 0);
    let mut padded_badly = good.clone();
    padded_badly[0] |= 0x20; // padding bit, last byte 0xef = 239 > packet length
    let mut version1 = good.clone();
    version1[0] = 0x40;
    let cases: [&[u8]; 8] = [
        &[],
        &[0x80],
        &good[..11],                                       // truncated header
        &version1,                                         // wrong version
        &padded_badly,                                     // padding longer than the packet
        &[0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],          // extension bit, no extension
        &[0x00, 0x01, 0x00, 0x00],                         // STUN-like
        &[0x8f, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0], // 15 CSRCs missing
    ];
    for (i, bytes) in cases.iter().enumerate() {
        assert_eq!(
            m.on_packet(Forward, false, bytes, 0),
            PacketClass::NotRtp,
            "case {i}"
        );
    }
    // A well-formed RTP packet on the RTCP port is not RTP there.
    assert_eq!(m.on_packet(Reverse, true, &good, 0), PacketClass::NotRtp);
    let snap = m.snapshot();
    assert_eq!(snap.forward.non_rtp, cases.len() as u64);
    assert_eq!(snap.reverse.non_rtp, 1);
    assert_eq!(snap.forward.rtp_packets, 0);
    assert!(snap.forward.sources.is_empty());
}

#[test]
fn take_interval_marks_every_source() {
    let mut m = SessionMedia::new();
    for seq in [10u16, 11, 12, 14] {
        m.on_packet(Forward, false, &rtp(1, seq, 0, 0), 0);
        m.on_packet(Reverse, false, &rtp(2, seq, 0, 0), 0);
    }
    let first = m.take_interval();
    assert_eq!(first.forward.sources[0].interval_lost, 1);
    assert_eq!(first.forward.sources[0].interval_loss_rate, 0.25);
    for seq in [15u16, 16] {
        m.on_packet(Forward, false, &rtp(1, seq, 0, 0), 0);
    }
    let second = m.snapshot();
    let fwd = &second.forward.sources[0];
    assert_eq!(
        (
            fwd.interval_expected,
            fwd.interval_lost,
            fwd.interval_loss_rate
        ),
        (2, 0, 0.0)
    );
    assert_eq!((fwd.expected, fwd.lost, fwd.loss_rate), (6, 1, 1.0 / 6.0));
    let rev = &second.reverse.sources[0];
    assert_eq!((rev.interval_expected, rev.interval_lost), (0, 0));
}

#[test]
fn session_state_stays_small() {
    // The table lives inline per session; keep an eye on its footprint.
    let size = std::mem::size_of::<SessionMedia>();
    assert!(size <= 3072, "SessionMedia is {size} bytes");
}
