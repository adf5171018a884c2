//! The shard's doorbell: how the control plane wakes a shard that has commands queued.
//!
//! It is a pipe, not an eventfd, on purpose. The shard's ring watches the doorbell (so a media
//! task blocked on the ring still answers commands), and with deferred task work the ring
//! signals its own eventfd from inside the waker's call. Waking through an eventfd makes that
//! a nested eventfd signal, which Linux 6.18 defers through RCU (22 ms late in the test below)
//! and, after the first time, drops for good: the deferred-signal bit of the ring's eventfd is
//! never cleared (io_uring/eventfd.c). The ring's work list then stays non-empty, so no later
//! completion signals either, and the shard sleeps with packets waiting. A pipe write wakes its
//! readers outside any eventfd, so every ring is signalled at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Both ends of a doorbell pipe.
pub(super) struct Doorbell {
    /// Blocking, so a read through glommio waits for a ring instead of failing with EAGAIN.
    pub(super) read: OwnedFd,
    /// Non-blocking, so the control plane never waits on a full pipe.
    pub(super) write: OwnedFd,
}

impl Doorbell {
    pub(super) fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes; checked below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // File status flags belong to each end's open file, so only the write end changes.
        let fd = write.as_raw_fd();
        // SAFETY: plain fcntl calls on a descriptor we own.
        let set = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !set {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { read, write })
    }
}

/// Rings the doorbell whose write end is `fd`. A full pipe already holds an unanswered ring,
/// which is as good as another one.
pub(super) fn ring(fd: RawFd) -> io::Result<()> {
    let byte = 1u8;
    // SAFETY: writes one byte from a live u8.
    let n = unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    if n == 1 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(())
    } else {
        Err(e)
    }
}

/// How many bytes one read of the doorbell takes: one ring each. More rings than this are
/// left for the next read, which then completes at once; the command queue is drained in full
/// on every read anyway.
pub(super) const READ_LEN: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::uring::{UringConfig, UringIo};
    use crate::io::{Action, MediaIo, PacketHandler, Received, Token};
    use std::time::{Duration, Instant};

    struct Nothing;
    impl PacketHandler for Nothing {
        fn on_packet(&mut self, _: Received<'_>) -> Action {
            Action::Drop
        }
        fn on_send_failed(&mut self, _: u64, _: usize, _: io::Error) {}
        fn on_copy_sent(&mut self, _: u64, _: io::Result<usize>) {}
        fn on_socket_error(&mut self, _: Token, _: i32) {}
        fn on_socket_released(&mut self, _: Token) {}
    }

    fn readable_within(fd: RawFd, limit: Duration) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) > 0 }
    }

    fn drain(fd: RawFd) {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a live buffer of the given size; the descriptors are
        // non-blocking or known readable.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    }

    /// Every ring of the doorbell must wake a shard asleep on its ring's eventfd, with the
    /// task-run mode of production. With an eventfd as the doorbell and deferred task work only
    /// the first round was signalled (after ~20 ms) and every later one timed out; on Linux
    /// 6.18.44 deferred task work delays even the pipe's first round by ~20 ms, which is why
    /// production runs cooperative task work.
    #[test]
    fn every_ring_wakes_a_sleeping_ring() {
        let cfg = UringConfig {
            max_sockets: 64,
            buffers: 64,
            ..UringConfig::default()
        };
        let mut io = UringIo::new(&cfg).expect("io_uring");
        let bell = Doorbell::new().expect("pipe");
        io.watch(bell.read.as_raw_fd()).expect("watch");
        let wake = io.wake_fd();
        // The wake-up descriptor is blocking; read it only once poll says it is readable.
        for round in 0..20 {
            while !io.prepare_sleep().expect("prepare sleep") {
                io.process(&mut Nothing, 1024).expect("process");
            }
            let writer = bell.write.as_raw_fd();
            // Timed from the ring to the moment the wake-up is seen, not from before the
            // ringer thread was spawned: on a loaded 2-core CI machine spawning and joining it
            // alone once took over 5 ms.
            let ringer = std::thread::spawn(move || {
                let rung = Instant::now();
                ring(writer).expect("ring");
                rung
            });
            let signalled = readable_within(wake, Duration::from_millis(500));
            let seen = Instant::now();
            let rung = ringer.join().expect("ringer");
            assert!(
                signalled,
                "round {round}: the ring's eventfd was not signalled"
            );
            // Well under the ~20 ms of the deferred-task-work failure this guards against,
            // with room for a busy machine to schedule this thread.
            let took = seen.saturating_duration_since(rung);
            assert!(
                took < Duration::from_millis(10),
                "round {round}: took {took:?}"
            );
            drain(wake);
            io.woke();
            let pass = io.process(&mut Nothing, 1024).expect("process");
            assert!(
                pass.watched,
                "round {round}: the doorbell completion is missing"
            );
            // Blocking, but it holds the byte just written.
            drain(bell.read.as_raw_fd());
        }
    }

    #[test]
    fn a_full_doorbell_does_not_block_the_ringer() {
        let bell = Doorbell::new().expect("pipe");
        // A pipe holds 64 KiB by default: ring far more often than that.
        for _ in 0..200_000 {
            ring(bell.write.as_raw_fd()).expect("ring");
        }
        assert!(readable_within(bell.read.as_raw_fd(), Duration::ZERO));
    }
}
