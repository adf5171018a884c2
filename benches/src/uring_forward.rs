//! The bare io_uring forwarding loop of `ref-forwarder --engine uring`: the lower bound the
//! issue's bar was set against, measured in the same harness as the relay.
//!
//! One thread, one ring with deferred task work; a multishot receive on every socket from one
//! provided-buffer ring (4096 x 2 KiB); one send per packet on the connected peer socket, by
//! registered file; and one `io_uring_enter` per wake-up that both submits the sends and waits
//! for the next completion. No session lookup, statistics or timestamps: whatever rtprelay costs
//! above this is its own overhead.
//!
//! [`Receive::WithSource`] makes the kernel do per packet what rtprelay's does and nothing else
//! changes: a multishot `recvmsg` that also writes the source address and the arrival time
//! (SO_TIMESTAMPNS) in front of every payload, and a send that names its destination on an
//! unconnected socket (a route lookup per packet). rtprelay needs both: the source for latching
//! and filtering, the time for its age limit and residence figures. The gap between the two
//! modes is what those kernel features cost; the gap between this mode and rtprelay is
//! rtprelay's own work (session logic, statistics, the executor).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rtprelay_dataplane::io::bufring::BufRing;
use rtprelay_dataplane::io::cmsg;
use rtprelay_dataplane::sockaddr;

/// Counters of one run, as the epoll engine keeps them.
#[derive(Debug, Default)]
pub struct Counts {
    pub received: u64,
    pub relayed: u64,
    pub dropped: u64,
}

const BUFFERS: u16 = 4096;
const BUF_LEN: u32 = 2048;
/// In front of the payload with [`Receive::WithSource`]: `struct io_uring_recvmsg_out`, the
/// source address and the timestamp message.
const MSG_HEAD: usize = 16 + sockaddr::MAX_SOCKADDR_LEN + cmsg::TIMESTAMP_SPACE;
const GROUP: u16 = 0;
/// user_data: bit 63 set = a send of buffer `low 16 bits`; clear = a receive of route `low 32`.
const SEND: u64 = 1 << 63;

/// What the kernel does per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// Plain multishot `recv` on every socket; every send leaves a connected socket.
    Bare,
    /// Multishot `recvmsg` with source address and arrival time; every send names its
    /// destination (the sockets must have SO_TIMESTAMPNS on and the outbound ones must not be
    /// connected). The destination of route `i` is `destinations[i]`.
    WithSource,
}

/// Relays until `stop()` says so or `deadline` passes. Each route `(from, to)` names two of
/// `sockets` by index: what arrives on `from` leaves through `to`, which must be connected.
pub fn forward(
    sockets: &[RawFd],
    routes: &[(u32, u32)],
    mode: Receive,
    destinations: &[SocketAddr],
    deadline: Option<Instant>,
    stop: impl Fn() -> bool,
) -> Result<Counts> {
    if mode == Receive::WithSource && destinations.len() < routes.len() {
        anyhow::bail!("every route needs a destination");
    }
    let buf_len = match mode {
        Receive::Bare => BUF_LEN,
        Receive::WithSource => BUF_LEN + MSG_HEAD as u32,
    };
    // Declared first so they are dropped last: the ring may point into them until it is gone.
    let mut bufs = BufRing::new(BUFFERS, buf_len).context("buffer ring")?;
    // SAFETY: all-zero msghdr and sockaddr_in6 are valid values.
    let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    hdr.msg_namelen = sockaddr::MAX_SOCKADDR_LEN as libc::socklen_t;
    hdr.msg_controllen = cmsg::TIMESTAMP_SPACE as _;
    let dests: Box<[(libc::sockaddr_in6, libc::socklen_t)]> = destinations
        .iter()
        .map(|d| {
            // SAFETY: as above.
            let mut raw: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let len = sockaddr::encode(d, &mut raw);
            (raw, len)
        })
        .collect();
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(u32::from(BUFFERS) * 4)
        .build(4096)
        .context("io_uring")?;
    // SAFETY: the buffer ring's memory outlives the io_uring (dropped after it, see the end).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), bufs.entries(), GROUP, 0)
            .context("register buffer ring")?;
    }
    ring.submitter()
        .register_files(sockets)
        .context("register files")?;
    let recv = |route: u32| -> squeue::Entry {
        let fd = types::Fixed(routes[route as usize].0);
        match mode {
            Receive::Bare => opcode::RecvMulti::new(fd, GROUP).build(),
            Receive::WithSource => opcode::RecvMsgMulti::new(fd, &raw const *hdr, GROUP).build(),
        }
        .user_data(u64::from(route))
    };
    for i in 0..routes.len() as u32 {
        // SAFETY: the entry refers to registered files and the registered buffer group only.
        unsafe { ring.submission().push(&recv(i)) }.map_err(|_| anyhow::anyhow!("SQ full"))?;
    }
    ring.submit().context("arm receives")?;

    let mut c = Counts::default();
    let ts = types::Timespec::from(Duration::from_millis(100));
    let args = types::SubmitArgs::new().timespec(&ts);
    while !stop() && deadline.is_none_or(|d| Instant::now() < d) {
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        let (submitter, mut sq, mut cq) = ring.split();
        cq.sync();
        for cqe in &mut cq {
            let data = cqe.user_data();
            if data & SEND != 0 {
                if cqe.result() >= 0 {
                    c.relayed += 1;
                } else {
                    c.dropped += 1;
                }
                bufs.push(data as u16);
                continue;
            }
            let i = data as u32;
            if !cqueue::more(cqe.flags()) {
                push(&submitter, &mut sq, &recv(i))?;
            }
            let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                continue; // an error (e.g. ENOBUFS under backlog): re-armed above
            };
            c.received += 1;
            let len = cqe.result().max(0) as usize;
            let via = types::Fixed(routes[i as usize].1);
            let send = match mode {
                Receive::Bare => opcode::Send::new(via, bufs.addr(bid), len as u32).build(),
                Receive::WithSource => {
                    // SAFETY: the kernel finished writing `bid` (its CQE is reaped) and gets it
                    // back only after the send completes.
                    let buf = unsafe { bufs.slice(bid, len) };
                    let Ok(msg) = types::RecvMsgOut::parse(buf, &hdr) else {
                        bufs.push(bid);
                        continue;
                    };
                    // What rtprelay reads of every packet: who sent it and when it arrived.
                    std::hint::black_box((
                        sockaddr::decode(msg.name_data()),
                        cmsg::rx_timestamp_us(msg.control_data()),
                    ));
                    let payload = msg.payload_data();
                    let (addr, addr_len) = &dests[i as usize];
                    opcode::Send::new(via, payload.as_ptr(), payload.len() as u32)
                        .dest_addr((addr as *const libc::sockaddr_in6).cast())
                        .dest_addr_len(*addr_len)
                        .build()
                }
            }
            .user_data(SEND | u64::from(bid));
            push(&submitter, &mut sq, &send)?;
        }
        bufs.publish();
    }
    Ok(c)
}

fn push(
    submitter: &io_uring::Submitter<'_>,
    sq: &mut io_uring::SubmissionQueue<'_>,
    entry: &squeue::Entry,
) -> Result<()> {
    loop {
        // SAFETY: the entries point into the buffer ring, which outlives the io_uring.
        if unsafe { sq.push(entry) }.is_ok() {
            return Ok(());
        }
        sq.sync();
        submitter.submit().context("submit")?;
        sq.sync();
    }
}
