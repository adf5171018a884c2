//! Recording media into pcap files (rtpproxy `R`) without file I/O on the shard's hot path.
//!
//! A shard that records anything owns one [`Recorder`]: a writer thread plus a fixed pool of
//! packet buffers allocated once when the recorder starts. Per packet the shard takes a buffer
//! from the pool, copies the datagram into it (at most [`SNAPLEN`] bytes, the rest is counted in
//! the record's original length) and hands it over through a bounded channel; the writer adds the
//! pcap and synthetic IP/UDP headers, writes, and gives the buffer back through another bounded
//! channel. When the pool is empty or the queue full the packet is not recorded and the caller
//! counts the drop: forwarding never waits for the disk and never allocates.
//!
//! Files use LINKTYPE_RAW (101): every record starts with an IPv4 or IPv6 header, so both
//! address families fit the same format and Wireshark/tshark decode the RTP with the real
//! addresses and ports (source: the sender, destination: the relay socket that received it).
//!
//! Opening and closing files go through a separate, unbounded control channel (they are rare
//! and must never be lost). The writer drains that channel before each packet, so a file is open
//! before its first packet is written, and drains the packet queue before closing a file, so no
//! packet queued before the close is lost.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::{info, warn};

/// Bytes of a packet kept in a record; larger datagrams are truncated (RTP is far smaller).
pub const SNAPLEN: usize = 2048;
/// Packet buffers per recorder: the most packets waiting for the writer at once.
const POOL: usize = 1024;
/// pcap link type: raw IPv4/IPv6, no link-layer header.
pub const LINKTYPE_RAW: u32 = 101;

/// One packet on its way to the writer.
struct Packet {
    key: u64,
    at_us: u64,
    src: SocketAddr,
    dst: SocketAddr,
    orig_len: usize,
    buf: Vec<u8>,
}

enum Control {
    Open { key: u64, file: File, path: PathBuf },
    Close { key: u64 },
}

/// A shard's handle on its pcap writer thread.
pub(crate) struct Recorder {
    data: Sender<Packet>,
    control: Option<Sender<Control>>,
    /// Buffers ready for use; never holds more than `POOL`, so pushing never reallocates.
    free: Vec<Vec<u8>>,
    returned: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts the writer thread for shard `shard` and allocates the buffer pool.
    pub fn start(shard: u32) -> std::io::Result<Self> {
        let (data, data_rx) = crossbeam_channel::bounded(POOL);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let (return_tx, returned) = crossbeam_channel::bounded(POOL);
        let thread = std::thread::Builder::new()
            .name(format!("rtprelay-pcap-{shard}"))
            .spawn(move || writer(data_rx, control_rx, return_tx))?;
        Ok(Self {
            data,
            control: Some(control),
            free: (0..POOL).map(|_| Vec::with_capacity(SNAPLEN)).collect(),
            returned,
            thread: Some(thread),
        })
    }

    /// Starts writing the packets recorded under `key` into `file`.
    pub fn open(&self, key: u64, file: File, path: PathBuf) {
        if let Some(c) = &self.control {
            let _ = c.send(Control::Open { key, file, path });
        }
    }

    /// Flushes and closes `key`'s file once the packets queued so far are written.
    pub fn close(&self, key: u64) {
        if let Some(c) = &self.control {
            let _ = c.send(Control::Close { key });
        }
    }

    /// Queues one packet for `key`'s file. Returns `false` (packet not recorded) when no buffer
    /// is free or the queue is full. Never blocks and never allocates.
    pub fn record(
        &mut self,
        key: u64,
        at_us: u64,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let mut buf = match self.free.pop() {
            Some(b) => b,
            None => match self.returned.try_recv() {
                Ok(b) => b,
                Err(_) => return false,
            },
        };
        buf.clear();
        buf.extend_from_slice(&payload[..payload.len().min(SNAPLEN)]);
        let packet = Packet {
            key,
            at_us,
            src,
            dst,
            orig_len: payload.len(),
            buf,
        };
        match self.data.try_send(packet) {
            Ok(()) => true,
            Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => {
                self.free.push(p.buf);
                false
            }
        }
    }
}

impl Drop for Recorder {
    /// Closing the control channel makes the writer flush every open file and exit; waiting for
    /// it keeps a shutdown from cutting recordings short.
    fn drop(&mut self) {
        self.control = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Open {
    out: BufWriter<File>,
    path: PathBuf,
    records: u64,
}

fn writer(data: Receiver<Packet>, control: Receiver<Control>, give_back: Sender<Vec<u8>>) {
    let mut files: HashMap<u64, Open> = HashMap::new();
    let mut scratch = Vec::with_capacity(SNAPLEN + 64);
    loop {
        crossbeam_channel::select! {
            recv(control) -> msg => match msg {
                Ok(c) => on_control(c, &mut files, &data, &give_back, &mut scratch),
                Err(_) => break,
            },
            recv(data) -> msg => {
                let Ok(p) = msg else { break };
                // A file opened before this packet was queued must be open before it is written.
                while let Ok(c) = control.try_recv() {
                    on_control(c, &mut files, &data, &give_back, &mut scratch);
                }
                write_packet(p, &mut files, &give_back, &mut scratch);
            }
        }
    }
    while let Ok(p) = data.try_recv() {
        write_packet(p, &mut files, &give_back, &mut scratch);
    }
    for (_, f) in files.drain() {
        finish(f);
    }
}

fn on_control(
    c: Control,
    files: &mut HashMap<u64, Open>,
    data: &Receiver<Packet>,
    give_back: &Sender<Vec<u8>>,
    scratch: &mut Vec<u8>,
) {
    match c {
        Control::Open { key, file, path } => {
            let mut out = BufWriter::with_capacity(64 * 1024, file);
            if let Err(e) = out.write_all(&global_header()) {
                warn!(path = %path.display(), error = %e, "writing the pcap header failed");
                return;
            }
            info!(path = %path.display(), "recording started");
            if let Some(old) = files.insert(
                key,
                Open {
                    out,
                    path,
                    records: 0,
                },
            ) {
                finish(old);
            }
        }
        Control::Close { key } => {
            // Everything queued before the close belongs in the file.
            while let Ok(p) = data.try_recv() {
                write_packet(p, files, give_back, scratch);
            }
            if let Some(f) = files.remove(&key) {
                finish(f);
            }
        }
    }
}

fn finish(mut f: Open) {
    match f.out.flush() {
        Ok(()) => info!(path = %f.path.display(), records = f.records, "recording finished"),
        Err(e) => warn!(path = %f.path.display(), error = %e, "flushing a recording failed"),
    }
}

fn write_packet(
    p: Packet,
    files: &mut HashMap<u64, Open>,
    give_back: &Sender<Vec<u8>>,
    scratch: &mut Vec<u8>,
) {
    if let Some(f) = files.get_mut(&p.key) {
        scratch.clear();
        encode_record(scratch, p.at_us, p.src, p.dst, &p.buf, p.orig_len);
        match f.out.write_all(scratch) {
            Ok(()) => f.records += 1,
            Err(e) => warn!(path = %f.path.display(), error = %e, "writing a pcap record failed"),
        }
    }
    let _ = give_back.try_send(p.buf);
}

/// The classic pcap file header: microsecond timestamps, native byte order, LINKTYPE_RAW.
pub fn global_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs stay 0.
    h[16..20].copy_from_slice(&((SNAPLEN + 48) as u32).to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_RAW.to_ne_bytes());
    h
}

/// Appends one pcap record: record header, synthetic IP and UDP headers, the captured bytes.
/// `orig_len` is the datagram's real length (`data` may be truncated to [`SNAPLEN`]).
pub fn encode_record(
    out: &mut Vec<u8>,
    at_us: u64,
    src: SocketAddr,
    dst: SocketAddr,
    data: &[u8],
    orig_len: usize,
) {
    let udp_len = (8 + orig_len).min(usize::from(u16::MAX)) as u16;
    let ip_len = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 20,
        _ => 40,
    };
    let incl = (ip_len + 8 + data.len()) as u32;
    let orig = (ip_len + 8 + orig_len) as u32;
    out.extend_from_slice(&((at_us / 1_000_000) as u32).to_ne_bytes());
    out.extend_from_slice(&((at_us % 1_000_000) as u32).to_ne_bytes());
    out.extend_from_slice(&incl.to_ne_bytes());
    out.extend_from_slice(&orig.to_ne_bytes());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + u32::from(udp_len)).min(u32::from(u16::MAX)) as u16;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64; // TTL
            ip[9] = 17; // UDP
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let sum = checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = 17;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&v6(s).octets());
            ip[24..40].copy_from_slice(&v6(d).octets());
            out.extend_from_slice(&ip);
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0: "none" for IPv4; for IPv6 analysers only flag it.
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(data);
}

/// The Internet checksum (RFC 1071) of an IPv4 header.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_record_layout() {
        let mut out = Vec::new();
        let src: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        encode_record(&mut out, 1_500_000, src, dst, b"abcd", 4);
        assert_eq!(out.len(), 16 + 20 + 8 + 4);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(out[4..8].try_into().unwrap()), 500_000);
        assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 32);
        let ip = &out[16..36];
        assert_eq!(checksum(ip), 0, "header checksum verifies");
        assert_eq!(&ip[12..16], &[10, 0, 0, 1]);
        assert_eq!(&out[36..38], &4000u16.to_be_bytes());
        assert_eq!(&out[40..42], &12u16.to_be_bytes());
        assert_eq!(&out[44..], b"abcd");
    }

    #[test]
    fn truncated_record_keeps_original_length() {
        let mut out = Vec::new();
        let a: SocketAddr = "[::1]:1".parse().unwrap();
        encode_record(&mut out, 0, a, a, &[0; 10], 3000);
        assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 58);
        assert_eq!(u32::from_ne_bytes(out[12..16].try_into().unwrap()), 3048);
    }
}
