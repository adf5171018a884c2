//! Property tests: random network impairments against a simple model, and random bytes.

use proptest::prelude::*;
use std::collections::HashSet;

use super::rtp;
use crate::rtp::seq::MAX_MISORDER;
use crate::rtp::{Direction, PacketClass, SessionMedia};

/// What happens to one sent packet on the way.
#[derive(Debug, Clone, Copy)]
struct Fate {
    dropped: bool,
    /// Positions it arrives late by.
    delay: u8,
    /// Positions after the original a copy arrives, if duplicated.
    duplicate: Option<u8>,
}

fn fate() -> impl Strategy<Value = Fate> {
    (
        0u8..10,
        0u8..10,
        0u8..8,
        prop::option::weighted(0.1, 0u8..12),
    )
        .prop_map(|(drop, late, delay, duplicate)| Fate {
            dropped: drop == 0,
            delay: if late == 0 { delay } else { 0 },
            duplicate,
        })
}

/// The model's verdict on a delivery order: extended sequence numbers actually fed to the
/// relay (packets too late for RFC 3550 to take as reordered are treated as lost), plus the
/// counts the relay must report.
struct Model {
    fed: Vec<u64>,
    expected: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
}

/// Sent packets are `base + i`; the first two arrive in order (probation), the rest suffer
/// their fate.
fn model(base: u64, fates: &[Fate]) -> Model {
    let mut arrivals: Vec<(usize, u64)> = vec![(0, base), (1, base + 1)];
    for (i, f) in fates.iter().enumerate() {
        let i = i + 2;
        let ext = base + i as u64;
        if !f.dropped {
            arrivals.push((i + usize::from(f.delay), ext));
        }
        if let Some(after) = f.duplicate {
            arrivals.push((i + usize::from(f.delay) + usize::from(after), ext));
        }
    }
    arrivals.sort_by_key(|&(at, _)| at); // stable: ties keep sending order
    let mut m = Model {
        fed: vec![base],
        expected: 0,
        received: 0,
        duplicates: 0,
        reordered: 0,
    };
    // Counting starts at the packet that ends probation.
    let mut max = base + 1;
    let mut seen = HashSet::new();
    for &(_, ext) in &arrivals[1..] {
        if ext > max {
            max = ext;
        } else if max - ext >= u64::from(MAX_MISORDER) {
            continue;
        } else if seen.contains(&ext) {
            m.duplicates += 1;
        } else if ext != max {
            m.reordered += 1;
        }
        seen.insert(ext);
        m.fed.push(ext);
        m.received += 1;
    }
    m.expected = max - (base + 1) + 1;
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn loss_reorder_duplicates_match_the_model(
        start in any::<u16>(),
        fates in prop::collection::vec(fate(), 0..400),
        mark_at in 0usize..400,
    ) {
        // Start anywhere, including just before the 16-bit wrap.
        let base = u64::from(start);
        let model = model(base, &fates);
        let mut relay = SessionMedia::new();
        let mut at_mark = None;
        for (i, &ext) in model.fed.iter().enumerate() {
            if i == mark_at && i > 0 {
                at_mark = Some(relay.take_interval().forward.sources[0].clone());
            }
            let p = rtp(42, ext as u16, (ext as u32).wrapping_mul(160), 0);
            let class = relay.on_packet(Direction::Forward, false, &p, i as u64 * 20_000);
            prop_assert_eq!(class, PacketClass::Rtp);
        }
        let snap = relay.snapshot();
        let s = &snap.forward.sources[0];
        prop_assert_eq!(s.expected, model.expected);
        prop_assert_eq!(s.packets_received, model.received);
        prop_assert_eq!(s.lost, model.expected as i64 - model.received as i64);
        prop_assert_eq!(s.duplicates, model.duplicates);
        prop_assert_eq!(s.reordered, model.reordered);
        prop_assert_eq!(s.restarts, 0);
        prop_assert!((0.0..=1.0).contains(&s.loss_rate));
        if let Some(m) = at_mark {
            prop_assert_eq!(s.interval_expected, s.expected - m.expected);
            prop_assert_eq!(s.interval_lost, s.lost - m.lost);
            prop_assert!((0.0..=1.0).contains(&s.interval_loss_rate));
        }
        // Paced sender, delays only from reordering: jitter is known and finite.
        prop_assert!(s.jitter_ms.is_some_and(f64::is_finite));
    }

    #[test]
    fn random_bytes_never_panic(
        packets in prop::collection::vec(
            (any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..120), any::<u64>()),
            1..60,
        ),
    ) {
        let mut relay = SessionMedia::new();
        for (forward, rtcp_port, bytes, at) in &packets {
            let dir = if *forward { Direction::Forward } else { Direction::Reverse };
            relay.on_packet(dir, *rtcp_port, bytes, *at);
        }
        let snap = relay.snapshot();
        let total: u64 = [&snap.forward, &snap.reverse]
            .iter()
            .map(|d| d.rtp_packets + d.rtcp.compounds + d.non_rtp)
            .sum();
        prop_assert_eq!(total, packets.len() as u64);
    }

    /// Random bytes behind a plausible RTCP header, so the sub-packet parsers get exercised.
    #[test]
    fn random_rtcp_bodies_never_panic(
        bodies in prop::collection::vec(
            (0u8..32, 192u8..=223, any::<u16>(), prop::collection::vec(any::<u8>(), 0..200)),
            1..40,
        ),
    ) {
        let mut relay = SessionMedia::new();
        for (i, (count, pt, words, tail)) in bodies.iter().enumerate() {
            let mut bytes = vec![0x80 | count, *pt];
            // Mostly a length that matches the datagram, sometimes an arbitrary one.
            let len = if words % 4 == 0 { *words } else { (tail.len() / 4) as u16 };
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(tail);
            let dir = if i % 2 == 0 { Direction::Forward } else { Direction::Reverse };
            let class = relay.on_packet(dir, true, &bytes, i as u64);
            prop_assert!(class != PacketClass::Rtp);
        }
        let snap = relay.snapshot();
        for d in [&snap.forward, &snap.reverse] {
            prop_assert_eq!(d.non_rtp, d.rtcp.malformed);
        }
    }
}
