//! The shard watchdog: a thread that notices a shard which stopped making progress and
//! interrupts its sleep.
//!
//! A shard sleeps in glommio's io_uring wait and is woken through a chain of kernel
//! notifications (its ring's eventfd, a poll on glommio's latency ring, a pipe read). On Linux
//! 6.18 that chain was seen to lose a wake-up outright: in 1 of 15 runs of the 10,000-session
//! test all three shards slept for minutes with destroy and shutdown commands queued and their
//! timers due, until a debugger's attach interrupted the wait and everything completed at once.
//! Any signal does the same: the wait returns EINTR, glommio looks at its rings again and finds
//! the work. So this thread watches two counters each shard bumps as it works (supervision
//! ticks, commands taken) and, when they stand still for too long, sends the shard's thread a
//! signal whose handler does nothing. Each such kick is logged and counted; it is a safety net
//! under a kernel bug, never the way a shard normally wakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// A counter on its own cache line: the shard's counters are written by the shard alone and
/// read by the watchdog a few times a second, so they must not share a line with anything
/// written by another thread.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// What a shard shows of its progress.
#[derive(Debug, Default)]
pub(crate) struct Pulse {
    /// Commands queued for the shard (bumped by the control plane's threads).
    sent: Padded,
    /// Commands the shard took off its queue.
    taken: Padded,
    /// Supervision ticks the shard ran (one per `tick` while it runs, also while stopping).
    ticks: Padded,
    /// The shard thread's kernel thread id, 0 until it runs and again once it ended.
    thread: AtomicU64,
    /// Kicks this shard needed so far.
    kicks: AtomicU64,
}

impl Pulse {
    pub(crate) fn sent(&self) {
        self.sent.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn taken(&self) {
        self.taken.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tick(&self) {
        self.ticks.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Called on the shard thread when it starts running (`true`) and when it ends.
    pub(crate) fn running(&self, running: bool) {
        // SAFETY: gettid has no preconditions.
        let id = if running {
            unsafe { libc::gettid() as u64 }
        } else {
            0
        };
        self.thread.store(id, Ordering::Release);
    }

    pub(crate) fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }
}

/// What one look at a shard's counters concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fine,
    /// No progress for `for_us`; `first` on the first look of this stall.
    Stalled {
        for_us: u64,
        first: bool,
    },
    /// Progress again after a stall that lasted `after_us`.
    Recovered {
        after_us: u64,
    },
}

/// The stall rule for one shard (sans-IO): a shard is stalled when its supervision ticks stood
/// still for `limit_us`, or when commands wait on its queue and none was taken for `limit_us`.
#[derive(Debug, Clone)]
pub(crate) struct StallCheck {
    limit_us: u64,
    ticks: u64,
    taken: u64,
    tick_progress_us: u64,
    command_progress_us: u64,
    stalled_since_us: Option<u64>,
}

impl StallCheck {
    pub(crate) fn new(limit: Duration, now_us: u64) -> Self {
        Self {
            limit_us: limit.as_micros() as u64,
            ticks: 0,
            taken: 0,
            tick_progress_us: now_us,
            command_progress_us: now_us,
            stalled_since_us: None,
        }
    }

    pub(crate) fn observe(&mut self, ticks: u64, sent: u64, taken: u64, now_us: u64) -> Verdict {
        if ticks != self.ticks {
            self.ticks = ticks;
            self.tick_progress_us = now_us;
        }
        // No backlog counts as progress: nothing is waiting for the shard.
        if taken != self.taken || sent <= taken {
            self.taken = taken;
            self.command_progress_us = now_us;
        }
        let progress_us = self.tick_progress_us.min(self.command_progress_us);
        let idle_for = now_us.saturating_sub(progress_us);
        if idle_for >= self.limit_us {
            let first = self.stalled_since_us.is_none();
            let since = *self.stalled_since_us.get_or_insert(progress_us);
            return Verdict::Stalled {
                for_us: now_us.saturating_sub(since),
                first,
            };
        }
        match self.stalled_since_us.take() {
            Some(since) => Verdict::Recovered {
                after_us: now_us.saturating_sub(since),
            },
            None => Verdict::Fine,
        }
    }
}

/// The signal a kick sends. Real-time signals are never sent by the kernel or by operators'
/// tools on their own; the handler does nothing, its only effect is the interrupted wait.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn ignore_kick(_: libc::c_int) {}

/// Sends the kick to kernel thread `tid` of this process. By thread id, not pthread handle: a
/// shard that ended between the look and the kick leaves at worst another thread of this
/// process interrupted once (its handler does nothing), never a dangling handle.
fn kick(tid: u64) {
    // SAFETY: tgkill takes plain integers; a stale id fails with ESRCH or reaches a thread of
    // this process, whose handler for this signal does nothing.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid as libc::pid_t,
            kick_signal(),
        )
    };
}

/// Installs the no-op handler without SA_RESTART, so a kicked wait returns EINTR.
fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler that touches nothing is valid; sigemptyset and
    // sigaction only read and write the struct we own.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_kick as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The watchdog thread of a running data plane.
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches `pulses` (one per shard, in shard order) every `period`; a shard without
    /// progress for `limit` is kicked.
    pub(crate) fn start(pulses: Vec<Arc<Pulse>>, period: Duration, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if let Err(e) = install_handler() {
            warn!(error = %e, "no shard watchdog: cannot install its signal handler");
            return Self { stop, thread: None };
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rtprelay-watchdog".into())
            .spawn(move || watch(&pulses, &flag, period, limit));
        match thread {
            Ok(t) => Self {
                stop,
                thread: Some(t),
            },
            Err(e) => {
                warn!(error = %e, "no shard watchdog: cannot start its thread");
                Self { stop, thread: None }
            }
        }
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(pulses: &[Arc<Pulse>], stop: &AtomicBool, period: Duration, limit: Duration) {
    let epoch = Instant::now();
    let now_us = || epoch.elapsed().as_micros() as u64;
    let mut checks: Vec<StallCheck> = pulses.iter().map(|_| StallCheck::new(limit, 0)).collect();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(period);
        for (shard, (pulse, check)) in pulses.iter().zip(&mut checks).enumerate() {
            let thread = pulse.thread.load(Ordering::Acquire);
            let (ticks, sent, taken) = (
                pulse.ticks.0.load(Ordering::Relaxed),
                pulse.sent.0.load(Ordering::Relaxed),
                pulse.taken.0.load(Ordering::Relaxed),
            );
            if thread == 0 {
                // Not running (yet, or any more): nothing to watch.
                *check = StallCheck::new(limit, now_us());
                continue;
            }
            match check.observe(ticks, sent, taken, now_us()) {
                Verdict::Fine => {}
                Verdict::Recovered { after_us } => info!(
                    shard,
                    stalled_ms = after_us / 1000,
                    "shard makes progress again"
                ),
                Verdict::Stalled { for_us, first } => {
                    let kicks = pulse.kicks.fetch_add(1, Ordering::Relaxed) + 1;
                    if first {
                        warn!(
                            shard,
                            stalled_ms = for_us / 1000,
                            waiting_commands = sent.saturating_sub(taken),
                            kicks,
                            "shard made no progress; interrupting its sleep (lost kernel wake-up)"
                        );
                    }
                    kick(thread);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(1);

    /// Runs `wait` (a call that blocks for 10 s or more) on a thread of its own and kicks that
    /// thread every 100 ms until the call returns (a kick that lands before the thread entered
    /// its wait is lost, as any signal would be), at most 50 times. Returns the call's OS error
    /// and how long it blocked.
    fn kicked<R: Send + 'static>(
        wait: impl FnOnce() -> std::io::Result<R> + Send + 'static,
    ) -> (Option<i32>, Duration) {
        install_handler().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() as u64 }).unwrap();
            let started = Instant::now();
            let r = wait();
            (r.err().and_then(|e| e.raw_os_error()), started.elapsed())
        });
        let tid = rx.recv().unwrap();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            if sleeper.is_finished() {
                break;
            }
            kick(tid);
        }
        sleeper.join().unwrap()
    }

    #[test]
    fn ticking_shard_is_fine() {
        let mut c = StallCheck::new(LIMIT, 0);
        for i in 1..50 {
            assert_eq!(c.observe(i, 0, 0, i * 100_000), Verdict::Fine);
        }
    }

    #[test]
    fn shard_without_ticks_is_stalled_then_recovers() {
        let mut c = StallCheck::new(LIMIT, 0);
        assert_eq!(c.observe(3, 0, 0, 300_000), Verdict::Fine);
        assert_eq!(c.observe(3, 0, 0, 1_200_000), Verdict::Fine);
        assert_eq!(
            c.observe(3, 0, 0, 1_300_000),
            Verdict::Stalled {
                for_us: 1_000_000,
                first: true
            }
        );
        assert_eq!(
            c.observe(3, 0, 0, 1_500_000),
            Verdict::Stalled {
                for_us: 1_200_000,
                first: false
            }
        );
        assert_eq!(
            c.observe(4, 0, 0, 1_700_000),
            Verdict::Recovered {
                after_us: 1_400_000
            }
        );
        assert_eq!(c.observe(5, 0, 0, 1_800_000), Verdict::Fine);
    }

    #[test]
    fn queued_commands_not_taken_are_a_stall_even_while_ticking() {
        let mut c = StallCheck::new(LIMIT, 0);
        assert_eq!(c.observe(1, 5, 5, 100_000), Verdict::Fine);
        // Two commands queued at 0.2 s; ticks go on, the queue does not move.
        assert_eq!(c.observe(2, 7, 5, 200_000), Verdict::Fine);
        assert_eq!(c.observe(9, 7, 5, 1_000_000), Verdict::Fine);
        assert!(matches!(
            c.observe(12, 7, 5, 1_200_000),
            Verdict::Stalled { first: true, .. }
        ));
        // Taken: recovered.
        assert!(matches!(
            c.observe(13, 7, 7, 1_300_000),
            Verdict::Recovered { .. }
        ));
    }

    #[test]
    fn an_idle_queue_is_no_stall() {
        let mut c = StallCheck::new(LIMIT, 0);
        for i in 1..40 {
            assert_eq!(c.observe(i, 3, 3, i * 100_000), Verdict::Fine);
        }
    }

    /// The kick really ends a sleep: a thread blocked in a long wait returns at once with
    /// EINTR when the watchdog's signal reaches it.
    #[test]
    fn a_kick_interrupts_a_blocking_wait() {
        let (errno, took) = kicked(|| {
            let mut fds = [0; 2];
            // SAFETY: a fresh pipe; poll on its read end, which no one writes, then close both.
            unsafe {
                assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
                let mut pfd = libc::pollfd {
                    fd: fds[0],
                    events: libc::POLLIN,
                    revents: 0,
                };
                let r = libc::poll(&mut pfd, 1, 10_000);
                let err = std::io::Error::last_os_error();
                libc::close(fds[0]);
                libc::close(fds[1]);
                if r < 0 { Err(err) } else { Ok(r) }
            }
        });
        assert_eq!(errno, Some(libc::EINTR));
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    /// The same for the wait a sleeping shard is in: io_uring_enter waiting for a completion
    /// that never comes returns EINTR when kicked.
    #[test]
    fn a_kick_interrupts_an_io_uring_wait() {
        let (errno, took) = kicked(|| io_uring::IoUring::new(8)?.submit_and_wait(1));
        assert_eq!(errno, Some(libc::EINTR));
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
