//! Ports on 127.0.0.1: the relay's media window, free ports for the SIP and media sockets, and
//! the UDP sinks on the UAC's per-call media ports.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The relay's media port window, `min-max` inclusive.
#[derive(Clone, Copy)]
pub struct Window {
    pub min: u16,
    pub max: u16,
}

impl Window {
    pub fn ports(self) -> RangeInclusive<u16> {
        self.min..=self.max
    }

    pub fn contains(self, port: u16) -> bool {
        self.ports().contains(&port)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// A window of `size` ports below the kernel's ephemeral range whose ports are all free now
/// (other relays started by tests/common use 16384 + n * 1000 upwards).
pub fn pick_window(size: u16) -> Window {
    for start in (28000u16..=31800).step_by(usize::from(size)) {
        let free = (start..start + size).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return Window {
                min: start,
                max: start + size - 1,
            };
        }
    }
    panic!("no free {size}-port window in 28000-31999 for the relay");
}

/// True if some socket is bound to UDP `port` (read from /proc, so nothing is raced).
pub fn udp_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| format!("{local} ").ends_with(&needle))
            })
    })
}

/// A free ephemeral UDP port not in `taken`, which it joins.
pub fn free_udp_port(taken: &mut HashSet<u16>) -> u16 {
    for _ in 0..100 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
        let port = s.local_addr().expect("local addr").port();
        if taken.insert(port) {
            return port;
        }
    }
    panic!("no free UDP port");
}

/// True if `p` and `p + 2` can be bound now (sipp binds both for its media).
fn sipp_pair_free(p: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok()
}

/// An even port `p` with `p` and `p + 2` free (sipp binds both for its media).
pub fn free_media_port(taken: &mut HashSet<u16>) -> u16 {
    for _ in 0..200 {
        let p = free_udp_port(taken) & !3;
        if !(1024..=65000).contains(&p) || taken.contains(&(p + 2)) {
            continue;
        }
        if sipp_pair_free(p) {
            taken.extend([p, p + 1, p + 2, p + 3]);
            return p;
        }
    }
    panic!("no free media port pair");
}

/// The UAC's media base port for up to `calls` calls: `base`, `base + 2` free for sipp, and
/// sinks bound on `base + 4k` for the other calls.
pub fn uac_media(taken: &mut HashSet<u16>, calls: u64) -> (u16, Sinks) {
    for _ in 0..200 {
        let base = free_udp_port(taken) & !3;
        let last = u64::from(base) + 4 * calls;
        if base < 1024 || last > 65000 {
            continue;
        }
        let span: Vec<u16> = (base..=last as u16).collect();
        if span.iter().any(|p| taken.contains(p) && *p != base) {
            continue;
        }
        if !sipp_pair_free(base) {
            continue;
        }
        if let Some(sinks) = Sinks::bind(base, calls) {
            taken.extend(span);
            return (base, sinks);
        }
    }
    panic!("no free port span for the UAC's media");
}

/// UDP sinks on the UAC's per-call media ports `base + 4 * k`, k = 1..calls (call 1's port
/// `base` is sipp's own socket). A thread drains and counts them until dropped.
pub struct Sinks {
    ports: Vec<u16>,
    counts: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sinks {
    /// Binds the sinks, or None if any port is taken.
    fn bind(base: u16, calls: u64) -> Option<Sinks> {
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        for k in 1..calls {
            let port = base.checked_add(u16::try_from(4 * k).ok()?)?;
            let s = UdpSocket::bind(("127.0.0.1", port)).ok()?;
            s.set_nonblocking(true).ok()?;
            sockets.push(s);
            ports.push(port);
        }
        let counts: Arc<Vec<AtomicU64>> =
            Arc::new(ports.iter().map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    for (i, s) in sockets.iter().enumerate() {
                        while s.recv_from(&mut buf).is_ok() {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Some(Sinks {
            ports,
            counts,
            stop,
            thread: Some(thread),
        })
    }

    pub fn reset(&self) {
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// (port, packets received since the last reset) per sink, calls 2.. in order.
    pub fn counts(&self) -> Vec<(u16, u64)> {
        self.ports
            .iter()
            .zip(self.counts.iter())
            .map(|(p, c)| (*p, c.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
