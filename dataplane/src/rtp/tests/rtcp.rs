//! RTCP through `SessionMedia`: counts, report blocks, round-trip times, malformed compounds.

use rtcp_types::{
    App, Bye, Compound, ReceiverReport, ReportBlock, ReportBlockBuilder, Sdes, SdesChunk, SdesItem,
    SenderReport, Unknown,
};

use super::{rtcp, rtp};
use crate::rtp::{Direction::*, PacketClass, RtcpCounters, SessionMedia};

const CLIENT: u32 = 0x1111_1111;
const DEST: u32 = 0x2222_2222;

fn sdes(ssrc: u32) -> rtcp_types::SdesBuilder<'static> {
    Sdes::builder().add_chunk(SdesChunk::builder(ssrc).add_item(SdesItem::builder(1, "relay@test")))
}

/// An SR of `ssrc` with NTP time `ntp`, plus SDES.
fn sr(ssrc: u32, ntp: u64) -> Vec<u8> {
    let sr = SenderReport::builder(ssrc)
        .ntp_timestamp(ntp)
        .rtp_timestamp(1234);
    rtcp(Compound::builder().add_packet(sr).add_packet(sdes(ssrc)))
}

/// An RR of `reporter` carrying `block`, plus SDES.
fn rr(reporter: u32, block: ReportBlockBuilder) -> Vec<u8> {
    let rr = ReceiverReport::builder(reporter).add_report_block(block);
    rtcp(
        Compound::builder()
            .add_packet(rr)
            .add_packet(sdes(reporter)),
    )
}

fn echo(about: u32, lsr: u32, dlsr: u32) -> ReportBlockBuilder {
    ReportBlock::builder(about)
        .last_sender_report_timestamp(lsr)
        .delay_since_last_sender_report_timestamp(dlsr)
}

#[test]
fn compound_counts_by_type() {
    let mut m = SessionMedia::new();
    let first = rtcp(
        Compound::builder()
            .add_packet(SenderReport::builder(CLIENT).add_report_block(ReportBlock::builder(DEST)))
            .add_packet(sdes(CLIENT))
            .add_packet(Bye::builder().add_source(CLIENT).reason("done")),
    );
    let pli = [0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x22, 0x22];
    let second = rtcp(
        Compound::builder()
            .add_packet(ReceiverReport::builder(CLIENT))
            .add_packet(sdes(CLIENT))
            .add_packet(App::builder(CLIENT, "test").data(&[1, 2, 3, 4]))
            .add_packet(Unknown::builder(206, &pli).count(1)),
    );
    // On the RTCP port, then multiplexed on the RTP port.
    assert_eq!(m.on_packet(Forward, true, &first, 0), PacketClass::Rtcp);
    assert_eq!(m.on_packet(Forward, false, &second, 0), PacketClass::Rtcp);
    let snap = m.snapshot();
    let expected = RtcpCounters {
        compounds: 2,
        sr: 1,
        rr: 1,
        sdes: 2,
        bye: 1,
        app: 1,
        other: 1,
        malformed: 0,
    };
    assert_eq!(snap.forward.rtcp, expected);
    assert_eq!(snap.reverse.rtcp, RtcpCounters::default());
    assert_eq!(snap.forward.non_rtp, 0);
}

#[test]
fn rtt_of_each_leg_from_sr_and_echoing_report() {
    let mut m = SessionMedia::new();
    // Client's SR goes forward at t1 = 1 s; NTP 0xAAAA_BBBB_CCCC_DDDD -> LSR 0xBBBB_CCCC.
    m.on_packet(Forward, true, &sr(CLIENT, 0xaaaa_bbbb_cccc_dddd), 1_000_000);
    // The destination answers 180 ms later, having held the SR 0x2000/65536 s = 125 ms.
    m.on_packet(
        Reverse,
        true,
        &rr(DEST, echo(CLIENT, 0xbbbb_cccc, 0x2000)),
        1_180_000,
    );
    let snap = m.snapshot();
    assert_eq!(snap.destination_rtt.last_ms, Some(55.0));
    assert_eq!(snap.destination_rtt.samples, 1);
    assert_eq!(snap.client_rtt.samples, 0);

    // Its next RR echoes the same SR 1 s later with DLSR grown by 1 s: a second sample, 65 ms.
    m.on_packet(
        Reverse,
        true,
        &rr(DEST, echo(CLIENT, 0xbbbb_cccc, 0x1_2000)),
        2_190_000,
    );
    let d = m.snapshot().destination_rtt;
    assert_eq!(
        (d.last_ms, d.avg_ms, d.min_ms, d.max_ms),
        (Some(65.0), Some(60.0), Some(55.0), Some(65.0))
    );

    // The other way round: the destination's SR, echoed by the client after 1 s, 20 ms leg.
    m.on_packet(Reverse, true, &sr(DEST, 0x0000_0010_8000_0000), 3_000_000);
    m.on_packet(
        Forward,
        true,
        &rr(CLIENT, echo(DEST, 0x0010_8000, 0x1_0000)),
        4_020_000,
    );
    let c = m.snapshot().client_rtt;
    assert_eq!((c.last_ms, c.samples), (Some(20.0), 1));
}

#[test]
fn reports_that_echo_no_known_sr_give_no_rtt() {
    let mut m = SessionMedia::new();
    m.on_packet(Forward, true, &sr(CLIENT, 0x0000_1234_5678_0000), 1_000_000);
    // Wrong LSR, wrong SSRC, LSR 0 ("no SR yet"), and a report in the SR's own direction.
    m.on_packet(
        Reverse,
        true,
        &rr(DEST, echo(CLIENT, 0x1234_5679, 0)),
        1_100_000,
    );
    m.on_packet(
        Reverse,
        true,
        &rr(DEST, echo(0x3333, 0x1234_5678, 0)),
        1_100_000,
    );
    m.on_packet(Reverse, true, &rr(DEST, echo(CLIENT, 0, 0)), 1_100_000);
    m.on_packet(
        Forward,
        true,
        &rr(DEST, echo(CLIENT, 0x1234_5678, 0)),
        1_100_000,
    );
    // A DLSR longer than the time elapsed is bogus.
    m.on_packet(
        Reverse,
        true,
        &rr(DEST, echo(CLIENT, 0x1234_5678, 0x1_0000)),
        1_100_000,
    );
    let snap = m.snapshot();
    assert_eq!(
        (snap.destination_rtt.samples, snap.client_rtt.samples),
        (0, 0)
    );
    assert_eq!(snap.destination_rtt.avg_ms, None);
    assert_eq!(snap.reverse.rtcp.rr, 4);
}

#[test]
fn remote_report_is_attached_to_the_source_it_describes() {
    let mut m = SessionMedia::new();
    for seq in 0..5u16 {
        m.on_packet(
            Forward,
            false,
            &rtp(CLIENT, seq, u32::from(seq) * 160, 0),
            0,
        );
    }
    let block = ReportBlock::builder(CLIENT)
        .fraction_lost(64)
        .cumulative_lost(0xff_ffff) // -1: one duplicate more than losses
        .extended_sequence_number(0x0001_0004)
        .interarrival_jitter(80);
    m.on_packet(Reverse, false, &rr(DEST, block), 777);
    let snap = m.snapshot();
    let remote = snap.forward.sources[0].remote.expect("report attached");
    assert_eq!(remote.reporter_ssrc, DEST);
    assert_eq!(remote.fraction_lost, 0.25);
    assert_eq!(remote.cumulative_lost, -1);
    assert_eq!(remote.extended_highest_seq, 0x0001_0004);
    assert_eq!(remote.jitter_units, 80);
    assert_eq!(remote.jitter_ms, Some(10.0), "80 units at 8 kHz");
    assert_eq!(remote.received_us, 777);
}

#[test]
fn malformed_rtcp_is_counted_and_ignored() {
    let mut m = SessionMedia::new();
    let good = sr(CLIENT, 0x0000_1234_5678_0000);
    let mut bad_length = good.clone();
    bad_length[3] += 1; // first packet claims 4 more bytes than it has
    let mut bad_count = good.clone();
    bad_count[0] |= 0x01; // SR claims a report block it does not carry
    let mut version1 = good.clone();
    version1[0] = (version1[0] & 0x3f) | 0x40;
    let mut second_v1 = good.clone();
    second_v1[28] = (second_v1[28] & 0x3f) | 0x40; // the SDES after the SR
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0xaa; 10]); // e.g. an SRTCP index and tag
    let cases: [&[u8]; 7] = [
        &good[..2],
        &good[..7],
        &good[..good.len() - 1],
        &bad_length,
        &bad_count,
        &second_v1,
        &trailing,
    ];
    for (i, bytes) in cases.iter().enumerate() {
        assert_eq!(
            m.on_packet(Forward, true, bytes, 0),
            PacketClass::NotRtp,
            "case {i}"
        );
    }
    assert_eq!(
        m.on_packet(Forward, true, &version1, 0),
        PacketClass::NotRtp
    );
    let fwd = m.snapshot().forward;
    assert_eq!(
        fwd.rtcp.malformed,
        cases.len() as u64,
        "version 1 is not RTCP at all"
    );
    assert_eq!(fwd.non_rtp, cases.len() as u64 + 1);
    assert_eq!((fwd.rtcp.compounds, fwd.rtcp.sr, fwd.rtcp.sdes), (0, 0, 0));
    // Nothing of a malformed SR is remembered: a matching echo gives no RTT.
    m.on_packet(Reverse, true, &rr(DEST, echo(CLIENT, 0x1234_5678, 0)), 10);
    assert_eq!(m.snapshot().destination_rtt.samples, 0);
}
