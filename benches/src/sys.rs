//! Minimal Linux syscall wrappers used by the benchmark binaries.
//!
//! These are deliberately thin: the benchmarks exist to measure the cost of moving packets, so
//! every wrapper here is allocation-free after construction and maps to exactly one syscall.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size for sources, sinks and the reference forwarder: large enough that a
/// scheduling hiccup of a few milliseconds at 100k pps does not overflow a queue.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Maximum number of datagrams moved per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;

/// Creates a non-blocking UDP socket bound to `bind` with `SOCKET_BUFFER`-sized buffers.
pub fn udp_socket(bind: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .context("socket(UDP)")?;
    set_buffers(&sock, SOCKET_BUFFER);
    sock.set_nonblocking(true).context("O_NONBLOCK")?;
    sock.bind(&bind.into())
        .with_context(|| format!("bind {bind}"))?;
    Ok(sock)
}

/// Has the kernel stamp every datagram `sock` receives with its arrival time (SO_TIMESTAMPNS),
/// as rtprelay's media sockets do.
pub fn enable_rx_timestamps(sock: &Socket) -> Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::SO_TIMESTAMPNS, 1).context("SO_TIMESTAMPNS")
}

/// Sets both socket buffers. The `*FORCE` variants bypass `net.core.[rw]mem_max` when running
/// as root; otherwise we fall back to the capped plain options. Failure only costs accuracy
/// under bursts, so it is not an error.
fn set_buffers(sock: &Socket, size: usize) {
    let fd = sock.as_raw_fd();
    if setsockopt_int(fd, libc::SO_RCVBUFFORCE, size).is_err() {
        let _ = sock.set_recv_buffer_size(size);
    }
    if setsockopt_int(fd, libc::SO_SNDBUFFORCE, size).is_err() {
        let _ = sock.set_send_buffer_size(size);
    }
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `value` is a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A level-triggered epoll instance whose events carry a caller-chosen `u64` token.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for readability.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `timeout_ms`; an interrupting signal counts as a timeout so callers can
    /// re-check their stop flag.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the kernel writes at most `max` entries into `events`.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(err)
        }
    }
}

/// Returns the token of an epoll event (copied out because the struct is packed on x86_64).
pub fn event_token(ev: &libc::epoll_event) -> u64 {
    ev.u64
}

/// An empty epoll event array for [`Epoll::wait`].
pub fn event_buffer(len: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; len]
}

/// `BATCH` preallocated datagram buffers with their `iovec`s and `mmsghdr`s, reused for every
/// call. Messages carry no address: senders use connected sockets, receivers do not need the
/// source. The pointers inside `hdrs`/`iovs` refer to the heap storage of the other vectors,
/// which never reallocates, so moving the struct is fine.
pub struct MmsgBatch {
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    buf_size: usize,
}

impl MmsgBatch {
    pub fn new(buf_size: usize) -> Self {
        let mut bufs = vec![0u8; BATCH * buf_size];
        let base = bufs.as_mut_ptr();
        let mut iovs: Vec<libc::iovec> = (0..BATCH)
            .map(|i| libc::iovec {
                // SAFETY: `i * buf_size` stays within the `BATCH * buf_size` allocation.
                iov_base: unsafe { base.add(i * buf_size) }.cast(),
                iov_len: buf_size,
            })
            .collect();
        let iov_base = iovs.as_mut_ptr();
        let hdrs = (0..BATCH)
            .map(|i| {
                // SAFETY: an all-zero msghdr is a valid "no name, no control" header.
                let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: `i < BATCH == iovs.len()`.
                hdr.msg_hdr.msg_iov = unsafe { iov_base.add(i) };
                hdr.msg_hdr.msg_iovlen = 1;
                hdr
            })
            .collect();
        Self {
            bufs,
            iovs,
            hdrs,
            buf_size,
        }
    }

    /// Receives up to `BATCH` datagrams without blocking. `Ok(0)` means nothing was queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for iov in &mut self.iovs {
            iov.iov_len = self.buf_size;
        }
        // SAFETY: every header points at a live iovec of `buf_size` writable bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            e => Err(e),
        }
    }

    /// The `i`-th received datagram.
    pub fn received(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.buf_size);
        &self.bufs[i * self.buf_size..i * self.buf_size + len]
    }

    /// True if the `i`-th received datagram did not fit its buffer.
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Makes the first `count` messages sendable with exactly the lengths just received.
    pub fn echo_lengths(&mut self, count: usize) {
        for i in 0..count {
            self.iovs[i].iov_len = (self.hdrs[i].msg_len as usize).min(self.buf_size);
        }
    }

    /// The full buffer of message `i`, to be filled before [`MmsgBatch::send`]; `len` bytes
    /// of it will be sent.
    pub fn fill(&mut self, i: usize, len: usize) -> &mut [u8] {
        let len = len.min(self.buf_size);
        self.iovs[i].iov_len = len;
        &mut self.bufs[i * self.buf_size..i * self.buf_size + len]
    }

    /// Sends messages `start..start + count` on a connected socket without blocking; returns
    /// how many the kernel took (possibly fewer than asked).
    pub fn send(&mut self, fd: RawFd, start: usize, count: usize) -> io::Result<usize> {
        let count = count.min(BATCH.saturating_sub(start));
        // SAFETY: `start + count <= BATCH`, and every header points at a live iovec.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr().add(start),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            Ok(n as usize)
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs SIGINT/SIGTERM handlers that only raise a flag (see [`stop_requested`]). Without
/// `SA_RESTART`, so a blocked `epoll_wait` returns promptly.
pub fn install_stop_handler() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid; the handler only touches an atomic, which is
        // async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// CLOCK_MONOTONIC in nanoseconds; the same clock in every process on the host, so a sender and
/// a sink in one process (or two) can compute one-way latency.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `core`.
pub fn pin_to_core(core: usize) -> Result<()> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        Ok(())
    } else {
        anyhow::bail!("cannot pin thread to core {core}")
    }
}

/// Runs the calling thread under SCHED_FIFO at `priority` (1-99), so it preempts ordinary
/// threads on its core at once. Needs CAP_SYS_NICE (root).
pub fn realtime(priority: u8) -> Result<()> {
    if !(1..=99).contains(&priority) {
        anyhow::bail!("real-time priority {priority} is outside 1-99");
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("SCHED_FIFO priority {priority} (needs root)"));
    }
    Ok(())
}

/// Lowers the calling thread's timer slack to 1 ns so short pacing sleeps (100 us) are not
/// stretched by the default 50 us slack.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only affects this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

/// Raises the soft limit on open files to the hard limit: every flow needs its own sockets, and
/// the usual soft limit of 1024 would cap a load tool at a few hundred sessions. Failure only
/// means the limit stays as it was (and binding will say so).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-parameter for getrlimit and a valid input for setrlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
