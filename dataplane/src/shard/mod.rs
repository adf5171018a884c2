//! A shard: one thread pinned to one core, running a glommio executor with two tasks.
//!
//! - The control task sleeps on a read of the shard's [`doorbell`] (through glommio, so an idle
//!   shard costs no CPU) and, when woken, drains the shard's command channel.
//! - The media task drives the shard's [`UringIo`]: it handles completions in passes of at most
//!   `budget`, yields to glommio when its preemption timer says so (so timers and commands are
//!   never starved under overload), waits in the kernel for the next batch while traffic is
//!   steady ([`BatchWait`]), and sleeps on the ring's eventfd when idle.
//!
//! Both tasks share the shard state through an `Rc<RefCell<_>>`; glommio never runs two tasks
//! of one executor at once and neither holds the borrow across an await, so no lock exists.

mod batch;
mod doorbell;
mod fork;
mod table;
mod watchdog;

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::BufferedFile;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::command::{Command, Reply};
use crate::config::{BatchWait, DataplaneConfig};
use crate::event::EventSink;
use crate::io::uring::UringIo;
use crate::io::{MediaIo, Pass};
use crate::time::unix_now_us;
use batch::{BatchGate, SleepCheck};
use table::SessionTable;
pub(crate) use watchdog::{Pulse, Watchdog};

/// The control plane's way into one shard. Cheap to clone.
#[derive(Clone)]
pub struct ShardHandle {
    index: usize,
    tx: Sender<Command>,
    /// The write end of the shard's doorbell.
    wake: Arc<OwnedFd>,
    pulse: Arc<Pulse>,
}

/// The shard is gone (stopped or crashed); its commands cannot be delivered.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is not running")]
pub struct ShardGone(pub usize);

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard {shard}: {what}: {source}")]
    Shard {
        shard: usize,
        what: &'static str,
        source: std::io::Error,
    },
}

impl ShardHandle {
    pub fn index(&self) -> usize {
        self.index
    }

    /// How often the watchdog had to interrupt this shard's sleep (see [`watchdog`]): each is
    /// a wake-up the kernel lost. Nonzero means commands or media waited up to a second.
    pub fn watchdog_kicks(&self) -> u64 {
        self.pulse.kicks()
    }

    pub(crate) fn pulse(&self) -> Arc<Pulse> {
        self.pulse.clone()
    }

    /// Queues `cmd` and wakes the shard.
    pub fn send(&self, cmd: Command) -> Result<(), ShardGone> {
        self.tx.send(cmd).map_err(|_| ShardGone(self.index))?;
        self.pulse.sent();
        if let Err(e) = doorbell::ring(self.wake.as_raw_fd()) {
            warn!(shard = self.index, error = %e, "waking a shard failed");
        }
        Ok(())
    }
}

/// A glommio file over a duplicate of `fd`, so glommio may close its copy when done.
fn glommio_reader(fd: std::os::fd::RawFd) -> std::io::Result<BufferedFile> {
    // SAFETY: dup has no preconditions; checked below.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor handed over to the BufferedFile, which closes it.
    Ok(unsafe { <BufferedFile as FromRawFd>::from_raw_fd(dup) })
}

struct Shard {
    io: UringIo,
    table: SessionTable,
}

type Ready = std::sync::mpsc::Sender<Result<(), StartError>>;

/// What reaches a shard from outside: its command queue, the read end of its doorbell, and
/// the counters it shows the watchdog.
struct Inbox {
    rx: Receiver<Command>,
    wake: OwnedFd,
    pulse: Arc<Pulse>,
}

/// Starts shard `index` on its own thread and waits until it is ready.
pub(crate) fn spawn(
    index: usize,
    core: Option<core_affinity::CoreId>,
    config: Arc<DataplaneConfig>,
    events: Arc<dyn EventSink>,
) -> Result<(ShardHandle, std::thread::JoinHandle<()>), StartError> {
    let fail = |what, source| StartError::Shard {
        shard: index,
        what,
        source,
    };
    let bell = doorbell::Doorbell::new().map_err(|e| fail("doorbell", e))?;
    let wake = Arc::new(bell.write);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let shard_wake = bell.read;
    let pulse = Arc::new(Pulse::default());
    let shard_pulse = pulse.clone();
    let thread = std::thread::Builder::new()
        .name(format!("rtprelay-shard-{index}"))
        .spawn(move || {
            let inbox = Inbox {
                rx,
                wake: shard_wake,
                pulse: shard_pulse.clone(),
            };
            run(index, core, config, events, inbox, ready_tx);
            shard_pulse.running(false);
        })
        .map_err(|e| fail("thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            ShardHandle {
                index,
                tx,
                wake,
                pulse,
            },
            thread,
        )),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(fail(
                "start",
                std::io::Error::other("shard thread died during start-up"),
            ))
        }
    }
}

fn run(
    index: usize,
    core: Option<core_affinity::CoreId>,
    config: Arc<DataplaneConfig>,
    events: Arc<dyn EventSink>,
    inbox: Inbox,
    ready: Ready,
) {
    let Inbox { rx, wake, pulse } = inbox;
    let fail = |what, source| StartError::Shard {
        shard: index,
        what,
        source,
    };
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        warn!(
            shard = index,
            core = core.id,
            "could not pin the shard to its core"
        );
    }
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("shard-{index}"))
        .preempt_timer(config.preempt)
        .io_memory(1 << 20)
        .make();
    let executor = match executor {
        Ok(ex) => ex,
        Err(e) => {
            let _ = ready.send(Err(fail(
                "glommio executor",
                std::io::Error::other(e.to_string()),
            )));
            return;
        }
    };
    executor.run(async move {
        let io = match UringIo::new(&config.uring) {
            Ok(io) => io,
            Err(e) => {
                let _ = ready.send(Err(fail("io_uring", e)));
                return;
            }
        };
        let mut io = io;
        let readers = io.watch(wake.as_raw_fd()).and_then(|()| {
            glommio_reader(io.wake_fd()).and_then(|r| Ok((r, glommio_reader(wake.as_raw_fd())?)))
        });
        let (ring_wake, cmd_wake) = match readers {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(fail("wake-up descriptors", e)));
                return;
            }
        };
        let table = SessionTable::new(
            index as u32,
            config.shards as u32,
            config.port_range,
            config.uring.max_sockets,
            config.sockets.clone(),
            &config.interfaces,
            events,
        );
        let shard = Rc::new(RefCell::new(Shard { io, table }));
        // TCP session tasks report here once their sockets are closed. Weak: the table owns
        // the callback, and the shard must not keep itself alive through it.
        let weak = Rc::downgrade(&shard);
        shard
            .borrow_mut()
            .table
            .set_tcp_done(Rc::new(move |slot, generation| {
                let Some(shard) = weak.upgrade() else { return };
                let mut s = shard.borrow_mut();
                let Shard { io, table } = &mut *s;
                table.tcp_finished(slot, generation);
                if table.stopping
                    && let Err(e) = io.nudge()
                {
                    error!(error = %e, "waking the media task for shutdown failed");
                }
            }));
        pulse.running(true);
        let _ = ready.send(Ok(()));
        info!(shard = index, core = core.map(|c| c.id), "shard started");

        let (nudge, nudged) = local_channel::new_bounded(1);
        let media = glommio::spawn_local(media_loop(
            shard.clone(),
            ring_wake,
            Commands {
                queue: rx.clone(),
                nudge,
            },
            config.budget,
            config.batch,
            SLEEP_CHECK,
        ));
        glommio::spawn_local(supervise(shard.clone(), config.tick, pulse.clone())).detach();
        let stop_reply = control_loop(&shard, &rx, &cmd_wake, &nudged, &pulse).await;
        media.await;
        let _ = ring_wake_close(cmd_wake).await;
        info!(shard = index, "shard stopped");
        if let Some(reply) = stop_reply {
            let _ = reply.send(());
        }
    });
}

async fn ring_wake_close(file: BufferedFile) -> glommio::Result<(), ()> {
    file.close().await
}

/// The media task's view of the command queue: it sees queued commands on every pass and
/// wakes the control task itself. The doorbell read alone reaches the control task only when
/// glommio next polls its own rings, which a media task lingering on its ring or spinning
/// delays by up to two preemption periods (measured in a debug build: a status request took
/// ~6-7 ms during media against ~1.5 ms on an idle relay; ~2.5 ms now). The check per pass
/// reads the channel's indices, which other cores write only when they send a command: a
/// shared cache line on the media path, not a contended one.
struct Commands {
    queue: Receiver<Command>,
    nudge: LocalSender<()>,
}

/// Handles commands until shutdown; returns the shutdown command's reply, if any. Woken by the
/// doorbell (a sleeping shard) or by the media task (a busy one).
async fn control_loop(
    shard: &Rc<RefCell<Shard>>,
    rx: &Receiver<Command>,
    wake: &BufferedFile,
    nudged: &LocalReceiver<()>,
    pulse: &Pulse,
) -> Option<Reply<()>> {
    let mut doorbell = Box::pin(wake.read_at(0, doorbell::READ_LEN));
    let mut nudges_open = true;
    loop {
        let rang = futures_lite::future::or(async { Some((&mut doorbell).await) }, async {
            if nudges_open && nudged.recv().await.is_some() {
                return None;
            }
            nudges_open = false;
            futures_lite::future::pending().await
        })
        .await;
        if let Some(read) = rang {
            if let Err(e) = read {
                error!(error = %e, "reading the shard's doorbell failed");
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            doorbell = Box::pin(wake.read_at(0, doorbell::READ_LEN));
        }
        loop {
            let cmd = match rx.try_recv() {
                Ok(cmd) => {
                    pulse.taken();
                    cmd
                }
                Err(TryRecvError::Empty) => {
                    // The receives and cancellations of every command handled since the last
                    // flush reach the kernel in one system call.
                    if let Err(e) = shard.borrow_mut().io.flush() {
                        error!(error = %e, "submitting socket changes failed");
                    }
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    stop(shard);
                    return None;
                }
            };
            if let Command::Shutdown { reply } = cmd {
                stop(shard);
                return Some(reply);
            }
            handle(shard, cmd);
            // Let the media task run between commands: creating sockets is not free.
            glommio::yield_if_needed().await;
        }
    }
}

fn stop(shard: &Rc<RefCell<Shard>>) {
    let mut s = shard.borrow_mut();
    let Shard { io, table } = &mut *s;
    table.close_all(io);
    if let Err(e) = io.nudge() {
        error!(error = %e, "waking the media task for shutdown failed");
    }
}

fn handle(shard: &Rc<RefCell<Shard>>, cmd: Command) {
    let mut s = shard.borrow_mut();
    let Shard { io, table } = &mut *s;
    match cmd {
        Command::Create { spec, reply } => {
            let result = table.create(io, spec);
            if let Err(e) = &result {
                warn!(error = %e, "create session refused");
            }
            let _ = reply.send(result);
        }
        Command::Destroy { id, reply } => table.destroy(io, &id, reply),
        Command::Get { id, reply } => {
            let _ = reply.send(table.get(&id));
        }
        Command::Update {
            id,
            client,
            destination,
            reply,
        } => {
            let _ = reply.send(table.update(&id, client, destination));
        }
        Command::SetCopy { id, target, reply } => {
            let _ = reply.send(table.set_copy(&id, target));
        }
        Command::SetRecord { id, file, reply } => {
            let _ = reply.send(table.set_record(&id, file));
        }
        Command::List { query, reply } => {
            let _ = reply.send(table.list(&query));
        }
        Command::Shutdown { .. } => unreachable!("handled by the control loop"),
    }
}

/// Shares of the sessions supervised one after the other in a tick. Supervising 1000 sessions
/// takes ~0.5 ms of the shard's time; in one piece that delays every packet arriving meanwhile,
/// a latency spike every tick. Between shares the media task gets its turn.
const TICK_PARTS: usize = 16;

/// The shard's clock: statistics, alerts and idle timeouts, every `tick`. It keeps ticking
/// (with nothing to supervise) while the shard stops, so the watchdog sees a stopping shard
/// alive and can kick one whose shutdown stalls.
async fn supervise(shard: Rc<RefCell<Shard>>, tick: std::time::Duration, pulse: Arc<Pulse>) {
    loop {
        glommio::timer::sleep(tick).await;
        pulse.tick();
        for part in 0..TICK_PARTS {
            {
                let mut s = shard.borrow_mut();
                let Shard { io, table } = &mut *s;
                if table.stopping {
                    break;
                }
                table.tick_part(io, unix_now_us(), part, TICK_PARTS);
                // Sessions that timed out cancel their receives: submit that now, not at the
                // media task's next wake-up.
                if let Err(e) = io.flush() {
                    error!(error = %e, "submitting socket changes failed");
                }
            }
            glommio::executor().yield_now().await;
        }
    }
}

/// Longest sleep through the executor before the media task looks at its ring anyway. The
/// ring wakes the shard through its eventfd; a lost signal would leave packets waiting, and
/// with deferred task work (the ring signals only when work goes from none to some) it would
/// silence every later one too. Two causes were seen on Linux 6.18 (a nested eventfd signal,
/// see [`doorbell`]; with deferred task work, a signal lost after every control command on
/// 6.18.44), so the shard looks at its ring after this long, in every task-run mode, and logs
/// each miss it finds. Each check that finds nothing doubles the next interval up to
/// [`SLEEP_CHECK_MAX`]: an idle shard wakes about once a second.
const SLEEP_CHECK: Duration = Duration::from_millis(10);
const SLEEP_CHECK_MAX: Duration = Duration::from_secs(1);

/// Longest single wait on the ring while lingering: how late glommio's timers and other tasks can
/// run while the media task waits on its ring instead of through the executor.
const LINGER_SLICE: Duration = Duration::from_millis(1);

async fn media_loop(
    shard: Rc<RefCell<Shard>>,
    wake: BufferedFile,
    commands: Commands,
    budget: usize,
    batch: BatchWait,
    sleep_check: Duration,
) {
    let epoch = Instant::now();
    let mono_us = || epoch.elapsed().as_micros() as u64;
    let mut gate = BatchGate::new(batch.min_rate_pps, mono_us());
    let mut last_packet_us = 0;
    let busy_poll_us = batch.busy_poll.as_micros() as u64;
    let mut check = SleepCheck::new(sleep_check, SLEEP_CHECK_MAX);
    loop {
        let (pass, stopping, done) = {
            let mut s = shard.borrow_mut();
            let Shard { io, table } = &mut *s;
            let pass = io.process(table, budget).unwrap_or_else(|e| {
                error!(error = %e, "media I/O pass failed");
                Pass::default()
            });
            (pass, table.stopping, table.stopping && table.live() == 0)
        };
        if done {
            break;
        }
        let now_us = mono_us();
        if pass.packets > 0 {
            last_packet_us = now_us;
        }
        if let Some(missed_wakeups) = check.on_pass(pass.completions)
            && missed_wakeups % 1000 == 1
        {
            warn!(
                missed_wakeups,
                "completions were waiting without a wake-up; found by the periodic check"
            );
        }
        let batch_next = batch.packets > 0 && gate.on_pass(pass.packets, now_us);
        // A command is queued (the ring's watch on the doorbell ends a wait on the ring for
        // one): hand the core to the control task now. Once stopping, nobody takes commands.
        let command = !stopping && !commands.queue.is_empty();
        let full = pass.completions >= budget;
        // Spinning: the next packet is seen without a wake-up.
        let spin = now_us.saturating_sub(last_packet_us) < busy_poll_us;
        if command || full || spin {
            // No wait on the ring follows to carry the sends of this pass: submit them now.
            if let Err(e) = shard.borrow_mut().io.flush() {
                error!(error = %e, "submitting sends failed");
            }
        }
        if command {
            // Full: the control task is already woken.
            let _ = commands.nudge.try_send(());
            glommio::executor().yield_now().await;
            continue;
        }
        if full || spin {
            // Other tasks of the shard run when glommio's preemption timer says so (commands
            // at once, see `Commands`).
            if spin {
                std::hint::spin_loop();
            }
            glommio::yield_if_needed().await;
            continue;
        }
        let wait = if batch_next {
            Some((batch.packets, batch.min_wait, batch.max_wait))
        } else if now_us.saturating_sub(last_packet_us) < batch.linger.as_micros() as u64 {
            Some((1, Duration::ZERO, LINGER_SLICE))
        } else {
            None
        };
        if let Some((packets, min_wait, max_wait)) = wait {
            let waited = shard
                .borrow_mut()
                .io
                .wait_batch(packets, min_wait, max_wait);
            if let Err(e) = waited {
                error!(error = %e, "waiting for packets failed");
            }
            glommio::yield_if_needed().await;
            continue;
        }
        let sleep = shard.borrow_mut().io.prepare_sleep().unwrap_or_else(|e| {
            error!(error = %e, "preparing the media task to sleep failed");
            true
        });
        if sleep {
            let read = wake.read_at(0, 8);
            match glommio::timer::timeout(check.limit(), read).await {
                Ok(_) => {}
                Err(glommio::GlommioError::TimedOut(_)) => check.timed_out(),
                Err(e) => error!(error = %e, "reading the ring eventfd failed"),
            }
            shard.borrow_mut().io.woke();
        } else {
            // Completions came in meanwhile: handle them, but let other tasks run if due.
            glommio::yield_if_needed().await;
        }
    }
    let _ = wake.close().await;
}
