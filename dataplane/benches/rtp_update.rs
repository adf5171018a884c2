//! Cost of `SessionMedia::on_packet`, the per-datagram RTP/RTCP accounting on the forwarding
//! path, in ns per packet. Before measuring it checks that the call does not allocate, since a
//! hidden allocation would be the first thing to hurt a shard at full rate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rtprelay_dataplane::rtp::{Direction, PacketClass, SessionMedia};

/// Counts allocations made by the current thread while `COUNTING` is set.
struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator unchanged; the thread-locals are
// const-initialised `Cell`s, so touching them does not allocate or recurse.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SSRC: u32 = 0x1234_5678;
const PEER: u32 = 0x8765_4321;

fn rtp_packet() -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]); // 20 ms of PCMU
    p
}

/// Writes sequence number and timestamp of the `n`th packet of a 20 ms PCMU stream.
fn stamp(p: &mut [u8], n: u64) {
    p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    p[4..8].copy_from_slice(&((n as u32).wrapping_mul(160)).to_be_bytes());
}

/// SR (no report blocks) + SDES CNAME, as a typical sender's compound packet.
fn sr_compound() -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&0xe000_0000_1234_5678u64.to_be_bytes()); // NTP
    p.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 50, 0, 0, 0x1f, 0x40]); // RTP ts, counts
    p.extend_from_slice(&[0x81, 202, 0, 5]);
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[1, 10]);
    p.extend_from_slice(b"relay@test");
    p.extend_from_slice(&[0, 0, 0, 0]); // end of items + padding to 32 bits
    p
}

/// RR with one report block echoing the SR above + SDES, as the other side's answer.
fn rr_compound() -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&PEER.to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[0x08, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0, 40]); // loss, seq, jitter
    p.extend_from_slice(&0x0000_1234u32.to_be_bytes()); // LSR: middle of the SR's NTP
    p.extend_from_slice(&0x0000_0800u32.to_be_bytes()); // DLSR: 31 ms
    p.extend_from_slice(&[0x81, 202, 0, 5]);
    p.extend_from_slice(&PEER.to_be_bytes());
    p.extend_from_slice(&[1, 10]);
    p.extend_from_slice(b"peer@testx");
    p.extend_from_slice(&[0, 0, 0, 0]);
    p
}

fn assert_no_allocation() {
    let mut media = SessionMedia::new();
    let mut p = rtp_packet();
    let (sr, rr) = (sr_compound(), rr_compound());
    COUNTING.with(|c| c.set(true));
    for n in 0..10_000u64 {
        stamp(&mut p, n);
        let t = n * 20_000;
        assert_eq!(
            media.on_packet(Direction::Forward, false, &p, t),
            PacketClass::Rtp
        );
        assert_eq!(
            media.on_packet(Direction::Forward, true, &sr, t),
            PacketClass::Rtcp
        );
        assert_eq!(
            media.on_packet(Direction::Reverse, true, &rr, t + 50_000),
            PacketClass::Rtcp
        );
        media.on_packet(Direction::Reverse, false, &p[..7], t);
    }
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.with(Cell::get);
    assert_eq!(allocations, 0, "on_packet allocated {allocations} times");
    assert_eq!(media.snapshot().destination_rtt.samples, 10_000);
}

fn bench(c: &mut Criterion) {
    assert_no_allocation();
    let mut group = c.benchmark_group("rtp_update");
    group.throughput(Throughput::Elements(1));

    group.bench_function("steady_rtp", |b| {
        let mut media = SessionMedia::new();
        let mut p = rtp_packet();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            stamp(&mut p, n);
            black_box(media.on_packet(Direction::Forward, false, black_box(&p), n * 20_000))
        });
    });

    group.bench_function("rtcp_sr", |b| {
        let mut media = SessionMedia::new();
        let sr = sr_compound();
        let mut t = 0u64;
        b.iter(|| {
            t += 5_000_000;
            black_box(media.on_packet(Direction::Forward, true, black_box(&sr), t))
        });
    });

    group.bench_function("rtcp_rr_with_rtt", |b| {
        let mut media = SessionMedia::new();
        media.on_packet(Direction::Forward, true, &sr_compound(), 0);
        let rr = rr_compound();
        let mut t = 0u64;
        b.iter(|| {
            t += 1;
            black_box(media.on_packet(Direction::Reverse, true, black_box(&rr), 100_000 + t))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
