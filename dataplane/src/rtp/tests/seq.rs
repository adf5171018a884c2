//! Hand-worked RFC 3550 A.1 vectors for `SeqState`.

use crate::rtp::seq::{SeqState, SeqVerdict::*, loss_rate};

/// Feeds `seqs` to a fresh source and returns the state and the verdicts.
fn run(seqs: &[u16]) -> (SeqState, Vec<crate::rtp::seq::SeqVerdict>) {
    let mut s = SeqState::new(seqs[0]);
    let verdicts = seqs.iter().map(|&q| s.update(q)).collect();
    (s, verdicts)
}

fn counts(s: &SeqState) -> (u64, u64, i64) {
    (s.expected(), s.received(), s.lost())
}

#[test]
fn probation_needs_two_sequential_packets() {
    let mut s = SeqState::new(100);
    assert_eq!(s.update(100), Probation);
    assert!(!s.is_valid());
    assert_eq!(counts(&s), (0, 0, 0));
    assert_eq!(s.update(101), InOrder);
    assert!(s.is_valid());
    // base_seq is the packet that ended probation: the first one is not counted.
    assert_eq!(counts(&s), (1, 1, 0));
}

#[test]
fn probation_restarts_on_a_gap() {
    let (s, v) = run(&[100, 105, 106, 107]);
    assert_eq!(v, [Probation, Probation, InOrder, InOrder]);
    assert_eq!(counts(&s), (2, 2, 0));
}

#[test]
fn probation_across_the_wrap() {
    let (s, v) = run(&[65535, 0, 1]);
    assert_eq!(v, [Probation, InOrder, InOrder]);
    assert_eq!(s.extended_max(), 1);
    assert_eq!(counts(&s), (2, 2, 0));
}

#[test]
fn wraps_from_65535_to_0() {
    let (s, v) = run(&[65533, 65534, 65535, 0, 1]);
    assert_eq!(v, [Probation, InOrder, InOrder, InOrder, InOrder]);
    // cycles = 65536, max = 1: extended max 65537; base 65534 -> expected 4.
    assert_eq!(s.extended_max(), 65_537);
    assert_eq!(counts(&s), (4, 4, 0));
}

#[test]
fn loss_across_the_wrap() {
    let (s, _) = run(&[65533, 65534, 2]);
    // 65535, 0, 1 lost: expected 65538 - 65534 + 1 = 5, received 2.
    assert_eq!(counts(&s), (5, 2, 3));
    assert_eq!(loss_rate(s.expected(), s.lost()), 0.6);
}

#[test]
fn reordered_packet_is_late_not_lost() {
    let (s, v) = run(&[10, 11, 13, 12, 14]);
    assert_eq!(v, [Probation, InOrder, InOrder, Reordered, InOrder]);
    assert_eq!(counts(&s), (4, 4, 0));
    assert_eq!((s.reordered(), s.duplicates()), (1, 0));
}

#[test]
fn reorder_across_the_wrap() {
    let (s, v) = run(&[65533, 65534, 0, 65535, 1]);
    assert_eq!(v, [Probation, InOrder, InOrder, Reordered, InOrder]);
    assert_eq!(counts(&s), (4, 4, 0));
}

#[test]
fn duplicates_count_as_received_so_lost_goes_negative() {
    let (s, v) = run(&[10, 11, 12, 12, 11, 13]);
    assert_eq!(
        v,
        [Probation, InOrder, InOrder, Duplicate, Duplicate, InOrder]
    );
    // Expected 11..=13 = 3, received 5 (two duplicates): lost -2, rate clamped to 0.
    assert_eq!(counts(&s), (3, 5, -2));
    assert_eq!(s.duplicates(), 2);
    assert_eq!(s.reordered(), 0);
    assert_eq!(loss_rate(s.expected(), s.lost()), 0.0);
}

#[test]
fn a_late_packet_seen_twice_is_one_reorder_and_one_duplicate() {
    let (s, v) = run(&[10, 11, 14, 12, 12]);
    assert_eq!(v, [Probation, InOrder, InOrder, Reordered, Duplicate]);
    assert_eq!((s.reordered(), s.duplicates()), (1, 1));
    // 13 is missing, 12 counted twice: expected 4, received 4.
    assert_eq!(counts(&s), (4, 4, 0));
}

#[test]
fn misorder_boundary_is_100() {
    // max 1000; 99 behind is late, 100 behind is a jump candidate.
    let (s, v) = run(&[999, 1000, 901, 900]);
    assert_eq!(v, [Probation, InOrder, Reordered, Jump]);
    assert_eq!(s.received(), 2);
}

#[test]
fn dropout_boundary_is_3000() {
    let (s, v) = run(&[999, 1000, 3999]);
    assert_eq!(v[2], InOrder);
    assert_eq!(counts(&s), (3000, 2, 2998));
    let (_, v) = run(&[999, 1000, 4000]);
    assert_eq!(v[2], Jump);
}

#[test]
fn a_single_stray_jump_is_ignored() {
    let (s, v) = run(&[10, 11, 12, 5000, 13]);
    assert_eq!(v, [Probation, InOrder, InOrder, Jump, InOrder]);
    assert_eq!(counts(&s), (3, 3, 0));
    assert_eq!(s.restarts(), 0);
}

#[test]
fn a_jump_confirmed_by_the_next_packet_restarts() {
    let (s, v) = run(&[10, 11, 12, 9000, 9001, 9002]);
    assert_eq!(v, [Probation, InOrder, InOrder, Jump, Restarted, InOrder]);
    // Epoch 1: 11..=12 (2/2); epoch 2 starts at 9001: 9001..=9002 (2/2). 9000 is not counted.
    assert_eq!(counts(&s), (4, 4, 0));
    assert_eq!(s.restarts(), 1);
    assert_eq!(s.extended_max(), 9002);
}

#[test]
fn confirmation_must_be_exactly_the_next_sequence_number() {
    let (s, v) = run(&[10, 11, 12, 5000, 5002, 5003, 5004]);
    assert_eq!(
        v,
        [Probation, InOrder, InOrder, Jump, Jump, Restarted, InOrder]
    );
    assert_eq!(counts(&s), (4, 4, 0));
}

#[test]
fn a_backward_jump_can_restart_too() {
    let (s, v) = run(&[1000, 1001, 500, 501]);
    assert_eq!(v, [Probation, InOrder, Jump, Restarted]);
    assert_eq!(counts(&s), (2, 2, 0));
}

#[test]
fn cumulative_counts_survive_a_restart_with_loss() {
    // Epoch 1 loses 12 (11..=13: 3 expected, 2 received); epoch 2 loses 20_002.
    let (s, _) = run(&[10, 11, 13, 20_000, 20_001, 20_003]);
    assert_eq!(counts(&s), (6, 4, 2));
}

#[test]
fn interval_loss_since_the_last_mark() {
    let (mut s, _) = run(&[10, 11, 12, 14]);
    assert_eq!(s.interval(), (4, 1));
    s.mark_interval();
    assert_eq!(s.interval(), (0, 0));
    s.update(15);
    s.update(17);
    // 15, 16, 17 expected; 16 lost.
    assert_eq!(s.interval(), (3, 1));
    assert_eq!(loss_rate(3, 1), 1.0 / 3.0);
    assert_eq!(counts(&s), (7, 5, 2));
}
