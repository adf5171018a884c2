//! A fixed walk of packets through sessions' state, for a cache simulator: the same work as the
//! `lookup_decide_account` criterion group (token table -> session -> `on_receive` ->
//! `on_sent`), but a deterministic number of packets, so `valgrind --tool=cachegrind` counts
//! the cache misses of a layout exactly instead of timing it on a noisy machine:
//!
//! ```sh
//! cargo build --release -p rtprelay-dataplane --example packet_walk
//! valgrind --tool=cachegrind --cache-sim=yes target/release/examples/packet_walk 10000 200000
//! ```
//!
//! Run it with two packet counts and subtract, so the set-up's misses cancel out. Packets visit
//! the sessions in a scattered order and alternate between the two directions of each session,
//! as a relay's media does.

use std::hint::black_box;
use std::net::SocketAddr;

use rtprelay_dataplane::session::Leg;
use rtprelay_dataplane::session::udp::{UdpRelay, Verdict};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Session `slot`'s destination, which sends its reverse media.
fn destination_of(slot: u32) -> SocketAddr {
    addr(20_000 + (slot % 20_000) as u16 * 2)
}

/// A 172-byte PCMU packet with sequence number `seq`, as the load tools send.
fn rtp_packet(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 172];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let packets: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let sessions = sessions.max(1);

    // The shard's layout: token -> (slot, leg), slot -> session.
    let mut sockets: Vec<Option<(u32, Leg)>> = Vec::with_capacity(4 * sessions);
    let mut table: Vec<Option<UdpRelay>> = Vec::with_capacity(sessions);
    for slot in 0..sessions as u32 {
        for leg in Leg::ALL {
            sockets.push(Some((slot, leg)));
        }
        table.push(Some(UdpRelay::new(destination_of(slot))));
    }
    // Deterministic scattered order of sessions (xorshift shuffle).
    let mut order: Vec<u32> = (0..sessions as u32).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let client = addr(50_000);
    let mut forward = rtp_packet(0x1111_1111, 0);
    let mut reverse = rtp_packet(0x2222_2222, 0);
    let mut relayed = 0u64;
    // One forward packet per session first: the client is latched before anything returns.
    for n in 0..sessions as u64 + packets {
        let i = (n % sessions as u64) as usize;
        let round = n / sessions as u64;
        // After the first round, every other round goes the other way.
        let back = round % 2 == 1;
        let slot_of = order[i];
        let (leg_index, from, packet) = if back {
            (2, destination_of(slot_of), &mut reverse)
        } else {
            (0, client, &mut forward)
        };
        let seq = (round / 2) as u16;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        let token = 4 * slot_of as usize + leg_index;
        let Some(Some((slot, leg))) = sockets.get(token).copied() else {
            continue;
        };
        let Some(Some(relay)) = table.get_mut(slot as usize) else {
            continue;
        };
        // Arrival and hand-over times as the shard has them, in microseconds.
        let now = 1_000 + n * 20;
        if let Verdict::Send { via, .. } = relay.on_receive(leg, from, packet, false, now) {
            relay.on_sent(via, packet.len(), Some(80 + n % 64));
            relayed += 1;
        }
    }
    black_box(&table);
    println!("{sessions} sessions, {packets} packets walked, {relayed} relayed");
}
