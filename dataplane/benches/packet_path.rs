//! The per-packet work of a shard, piece by piece, in ns per packet:
//!
//! * `header_parse`: RTP and RTCP header parsing alone, with the exact parser calls the relay
//!   makes on every datagram (`rtp_types::RtpPacket::parse`; for RTCP the compound framing
//!   check, then each sub-packet's own parser, as `rtp::rtcp` does).
//! * `session_lookup`: from an I/O token to the session's state, through a token table and a
//!   session slab laid out as the shard's table is (`Vec<Option<(slot, leg)>>` then
//!   `Vec<Option<session>>`), over 1, 1000 and 10000 sessions visited in a scattered order,
//!   so cache misses count as they would with many calls. The table itself is private to the
//!   shard module; the session state here is the real `UdpRelay` the table holds inline.
//! * `lookup_and_decide`: the lookup plus the real per-packet forwarding decision
//!   (`UdpRelay::on_receive`: routing, latching, counters and the RTP statistics update).
//! * `lookup_decide_account`: all of a packet's session work in the shard's `on_packet`: the
//!   above plus counting the send and recording the residence time (`UdpRelay::on_sent`).
//!   The growth from 1 to 10,000 sessions is the cost of the cache lines a packet touches.
//!
//! What this leaves out is the I/O: the receive and send system calls and the kernel's
//! loopback delivery, which `scripts/bench-forward` and `scripts/bench-all` measure end to end.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtcp_types::utils::parser;
use rtcp_types::{App, Bye, Compound, ReceiverReport, RtcpPacketParser, SenderReport, Unknown};
use rtp_types::RtpPacket;
use rtprelay_dataplane::session::Leg;
use rtprelay_dataplane::session::udp::{UdpRelay, Verdict};

const SSRC: u32 = 0x1234_5678;

/// A 172-byte PCMU packet (12-byte header + 20 ms of payload), as the load tools send.
fn rtp_packet(n: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&(u32::from(n) * 160).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// SR (no report blocks) + SDES CNAME.
fn sr_compound() -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&0xe000_0000_1234_5678u64.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 50, 0, 0, 0x1f, 0x40]);
    p.extend_from_slice(&[0x81, 202, 0, 5]);
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[1, 10]);
    p.extend_from_slice(b"relay@test");
    p.extend_from_slice(&[0, 0, 0, 0]);
    p
}

/// RR with one report block + SDES CNAME.
fn rr_compound() -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&0x8765_4321u32.to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[0x08, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0, 40]);
    p.extend_from_slice(&0x0000_1234u32.to_be_bytes());
    p.extend_from_slice(&0x0000_0800u32.to_be_bytes());
    p.extend_from_slice(&[0x81, 202, 0, 5]);
    p.extend_from_slice(&0x8765_4321u32.to_be_bytes());
    p.extend_from_slice(&[1, 10]);
    p.extend_from_slice(b"peer@testx");
    p.extend_from_slice(&[0, 0, 0, 0]);
    p
}

/// The relay's RTCP validity check: the crate's compound framing check, then every
/// sub-packet's own parser (SDES through `Unknown`, which does not allocate).
fn rtcp_valid(bytes: &[u8]) -> bool {
    if Compound::parse(bytes).is_err() {
        return false;
    }
    let mut data = bytes;
    while !data.is_empty() {
        let len = data.get(..4).map_or(usize::MAX, parser::parse_length);
        let (Some(pkt), Some(rest)) = (data.get(..len), data.get(len..)) else {
            return false;
        };
        let ok = match pkt[1] {
            200 => SenderReport::parse(pkt).is_ok(),
            201 => ReceiverReport::parse(pkt).is_ok(),
            203 => Bye::parse(pkt).is_ok(),
            204 => App::parse(pkt).is_ok(),
            _ => Unknown::parse(pkt).is_ok(),
        };
        if !ok {
            return false;
        }
        data = rest;
    }
    true
}

fn header_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("header_parse");
    group.throughput(Throughput::Elements(1));
    let rtp = rtp_packet(7);
    group.bench_function("rtp", |b| {
        b.iter(|| {
            let p = RtpPacket::parse(black_box(&rtp[..])).ok();
            black_box(p.map(|p| {
                (
                    p.payload_type(),
                    p.sequence_number(),
                    p.timestamp(),
                    p.ssrc(),
                )
            }))
        });
    });
    let sr = sr_compound();
    assert!(rtcp_valid(&sr), "the SR fixture must be valid RTCP");
    group.bench_function("rtcp_sr_sdes", |b| {
        b.iter(|| black_box(rtcp_valid(black_box(&sr))))
    });
    let rr = rr_compound();
    assert!(rtcp_valid(&rr), "the RR fixture must be valid RTCP");
    group.bench_function("rtcp_rr_sdes", |b| {
        b.iter(|| black_box(rtcp_valid(black_box(&rr))))
    });
    group.finish();
}

/// A shard's sessions as its table lays them out: socket token -> (slot, leg) -> session.
struct Table {
    sockets: Vec<Option<(u32, Leg)>>,
    sessions: Vec<Option<UdpRelay>>,
    /// Listen-RTP tokens in a scattered visiting order.
    order: Vec<u32>,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Table {
    fn new(sessions: usize) -> Self {
        let mut t = Table {
            sockets: Vec::with_capacity(4 * sessions),
            sessions: Vec::with_capacity(sessions),
            order: Vec::with_capacity(sessions),
        };
        for slot in 0..sessions as u32 {
            for leg in Leg::ALL {
                t.sockets.push(Some((slot, leg)));
            }
            t.sessions.push(Some(UdpRelay::new(addr(
                40_000 + (slot % 10_000) as u16 * 2,
            ))));
            t.order.push(4 * slot);
        }
        // Deterministic shuffle (xorshift), so packets hop between sessions as with many calls.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..t.order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t.order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        t
    }

    /// The next packet of the walk: the next session in the scattered order (`i`), packet
    /// number `n` with a new sequence number and timestamp, so the statistics do real work.
    /// Returns the token it arrives on.
    fn next_packet(&self, i: &mut usize, n: &mut u64, packet: &mut [u8]) -> u32 {
        *i += 1;
        if *i == self.order.len() {
            *i = 0;
        }
        *n += 1;
        packet[2..4].copy_from_slice(&(*n as u16).to_be_bytes());
        packet[4..8].copy_from_slice(&((*n as u32).wrapping_mul(160)).to_be_bytes());
        black_box(self.order[*i])
    }

    /// The shard's lookup: token -> socket entry -> session slot.
    #[inline]
    fn lookup(&mut self, token: u32) -> Option<(&mut UdpRelay, Leg)> {
        let Some(Some((slot, leg))) = self.sockets.get(token as usize) else {
            return None;
        };
        let leg = *leg;
        let relay = self.sessions.get_mut(*slot as usize)?.as_mut()?;
        Some((relay, leg))
    }
}

fn session_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_lookup");
    group.throughput(Throughput::Elements(1));
    for sessions in [1usize, 1000, 10_000] {
        let mut table = Table::new(sessions);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(sessions), &sessions, |b, _| {
            b.iter(|| {
                i += 1;
                if i == table.order.len() {
                    i = 0;
                }
                let token = table.order[i];
                // The session's address and leg: what the shard goes on with.
                black_box(
                    table
                        .lookup(black_box(token))
                        .map(|(r, leg)| (std::ptr::from_mut(r) as usize, leg)),
                )
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("lookup_and_decide");
    group.throughput(Throughput::Elements(1));
    let from = addr(50_000);
    for sessions in [1usize, 1000, 10_000] {
        let mut table = Table::new(sessions);
        let mut packet = rtp_packet(0);
        let mut i = 0usize;
        let mut n = 0u64;
        // Every session sees its first packet before measuring: latching is a one-off.
        for k in 0..sessions {
            let token = table.order[k];
            if let Some((relay, leg)) = table.lookup(token) {
                assert!(matches!(
                    relay.on_receive(leg, from, &packet, false, 1),
                    Verdict::Send { .. }
                ));
            }
        }
        group.bench_with_input(BenchmarkId::from_parameter(sessions), &sessions, |b, _| {
            b.iter(|| {
                let token = table.next_packet(&mut i, &mut n, &mut packet);
                let verdict = table
                    .lookup(token)
                    .map(|(relay, leg)| relay.on_receive(leg, from, &packet, false, n * 20));
                black_box(verdict)
            });
        });
    }
    group.finish();
}

/// What `SessionTable::on_packet` does with a session per packet: decide, then count the send
/// and its residence time (on the same state, while it is in cache).
fn lookup_decide_account(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup_decide_account");
    group.throughput(Throughput::Elements(1));
    let from = addr(50_000);
    for sessions in [1usize, 1000, 10_000] {
        let mut table = Table::new(sessions);
        let mut packet = rtp_packet(0);
        let (mut i, mut n) = (0usize, 0u64);
        for k in 0..sessions {
            if let Some((relay, leg)) = table.lookup(table.order[k]) {
                if let Verdict::Send { via, .. } = relay.on_receive(leg, from, &packet, false, 1) {
                    relay.on_sent(via, packet.len(), Some(100));
                }
            }
        }
        group.bench_with_input(BenchmarkId::from_parameter(sessions), &sessions, |b, _| {
            b.iter(|| {
                let token = table.next_packet(&mut i, &mut n, &mut packet);
                let len = packet.len();
                let sent = table.lookup(token).map(|(relay, leg)| {
                    match relay.on_receive(leg, from, &packet, false, n * 20) {
                        Verdict::Send { via, .. } => {
                            // Residence times spread over a few buckets, as real ones do.
                            relay.on_sent(via, len, Some(80 + n % 64));
                            true
                        }
                        Verdict::Drop(_) => false,
                    }
                });
                black_box(sent)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, header_parse, session_lookup, lookup_decide_account);
criterion_main!(benches);
