//! Child processes: spawning them so they cannot outlive us, stopping them by PID, reading their
//! CPU time, and running the load generator while sampling the relay's CPU at its send markers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rtprelay_benches::{MARK_SEND_END, MARK_SEND_START, sys};

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) when dropped,
/// so every exit path of the orchestrator, including `?` and panics, cleans up.
pub struct ChildGuard {
    pub name: String,
    pub child: Child,
}

impl ChildGuard {
    /// Spawns `cmd` with `PR_SET_PDEATHSIG = SIGKILL`, so the child also dies if the
    /// orchestrator is killed outright and never runs its destructors.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        // SAFETY: the closure only calls async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. The child is not reaped before this, so its
    /// PID cannot have been reused by another process.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench-forward: {} ignored SIGTERM, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit until `deadline`; kills the child and fails if it takes longer or if a
    /// stop was requested.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if sys::stop_requested() {
                self.stop(Duration::from_secs(1));
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                self.stop(Duration::from_secs(1));
                bail!("{} did not finish in time", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

fn ticks_to_us(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    ticks * 1_000_000 / hz
}

/// utime + stime of all threads of `pid`, in microseconds.
pub fn cpu_time_us(pid: u32) -> Result<u64> {
    Ok(stat_cpu(&format!("/proc/{pid}/stat"))?.1)
}

/// (command name, utime + stime in microseconds) from a `/proc/.../stat` file.
fn stat_cpu(path: &str) -> Result<(String, u64)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name may contain spaces and parentheses; the fields start after the last ')'.
    let (head, rest) = stat.rsplit_once(')').context("malformed stat")?;
    let comm = head
        .split_once('(')
        .map(|(_, c)| c)
        .unwrap_or_default()
        .to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), i.e. 12th and 13th after the state field.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short stat")?
            .parse::<u64>()
            .context("bad stat field")
    };
    Ok((comm, ticks_to_us(ticks(11)? + ticks(12)?)))
}

/// CPU time per thread of `pid`: (thread id, thread name, microseconds).
fn thread_cpu(pid: u32) -> Vec<(String, String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_string_lossy().into_owned();
            let (comm, us) = stat_cpu(&format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            Some((tid, comm, us))
        })
        .collect()
}

/// Per thread name, the share of one core each group of the relay's threads used between two
/// samples: shows whether the cost is in the data-plane shards or in the control plane.
fn thread_breakdown(
    s0: &[(String, String, u64)],
    s1: &[(String, String, u64)],
    window: Duration,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let secs = window.as_secs_f64().max(1e-9);
    for (tid, comm, us) in s1 {
        let before = s0
            .iter()
            .find(|(t, _, _)| t == tid)
            .map_or(0, |(_, _, u)| *u);
        *out.entry(comm.clone()).or_insert(0.0) += us.saturating_sub(before) as f64 / 1e4 / secs;
    }
    out
}

/// Busy time of the whole machine (user, nice, system, irq, softirq; all CPUs), microseconds.
/// Minus the relay's and the load generator's own time it tells whether something else ran
/// during a trial and disturbed it.
pub fn system_busy_us() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .context("bad /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq ...
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum();
    Ok(ticks_to_us(busy))
}

/// Waits (bounded by `max`) until the machine's busy time over one second is below `pct` of a
/// core: a compile running next to the benchmark would otherwise dominate loss and latency.
pub fn wait_for_quiet(pct: f64, max: Duration) {
    let deadline = Instant::now() + max;
    loop {
        let Ok(before) = system_busy_us() else {
            return;
        };
        std::thread::sleep(Duration::from_secs(1));
        let Ok(after) = system_busy_us() else {
            return;
        };
        let busy = after.saturating_sub(before) as f64 / 1e4;
        if busy < pct || sys::stop_requested() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("    machine still busy ({busy:.0}% of a core); running anyway");
            return;
        }
        eprintln!("    machine busy ({busy:.0}% of a core), waiting");
    }
}

/// CPU times sampled at one send marker.
struct Sample {
    at: Instant,
    relay_us: u64,
    relay_threads: Vec<(String, String, u64)>,
    loadgen_us: u64,
    system_us: u64,
}

fn sample(relay_pid: u32, loadgen_pid: u32) -> Result<Sample> {
    let relay_us = cpu_time_us(relay_pid).context("relay process vanished during the trial")?;
    Ok(Sample {
        at: Instant::now(),
        relay_us,
        relay_threads: thread_cpu(relay_pid),
        loadgen_us: cpu_time_us(loadgen_pid).unwrap_or(0),
        system_us: system_busy_us()?,
    })
}

/// What one load-generator run produced.
pub struct LoadgenRun {
    /// The JSON object it printed.
    pub report: serde_json::Value,
    /// Relay CPU time between the send markers, microseconds.
    pub relay_cpu_us: u64,
    /// Wall time between the send markers.
    pub window: Duration,
    /// CPU time of everything but the relay and the load generator over the window.
    pub background_cpu_us: u64,
    /// Relay CPU per thread name over the window, percent of one core.
    pub relay_threads_pct: BTreeMap<String, f64>,
}

/// Runs the load generator to completion, sampling `relay_pid`'s CPU time when it reports the
/// start and the end of sending. Everything is bounded by `timeout`.
pub fn run_loadgen(mut cmd: Command, relay_pid: u32, timeout: Duration) -> Result<LoadgenRun> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn("loadgen", &mut cmd)?;
    let deadline = Instant::now() + timeout;
    let stderr = guard.child.stderr.take().context("no loadgen stderr")?;
    let mut stdout = guard.child.stdout.take().context("no loadgen stdout")?;
    let (tx, rx) = mpsc::channel();
    let loadgen_pid = guard.pid();
    std::thread::spawn(move || watch_markers(stderr, relay_pid, loadgen_pid, &tx));
    // Collect stdout concurrently so a large report can never block the child on a full pipe.
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });

    let mut start: Option<Sample> = None;
    let mut end: Option<Sample> = None;
    while end.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok((marker, sample)) => {
                if marker == MARK_SEND_START {
                    start = Some(sample?);
                } else {
                    end = Some(sample?);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if sys::stop_requested() {
                    bail!("interrupted");
                }
                if left.is_zero() {
                    bail!("loadgen did not finish sending in time");
                }
                if let Some(status) = guard.child.try_wait()? {
                    bail!("loadgen exited before sending ended: {status}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("loadgen closed stderr early"),
        }
    }
    let status = guard.wait_until(deadline)?;
    let text = out_thread
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
    if !status.success() {
        bail!("loadgen failed: {status}");
    }
    let (Some(s0), Some(s1)) = (start, end) else {
        bail!("missing send_start marker")
    };
    let report = serde_json::from_str(text.trim()).context("loadgen printed invalid JSON")?;
    let relay_cpu_us = s1.relay_us.saturating_sub(s0.relay_us);
    let ours = relay_cpu_us + s1.loadgen_us.saturating_sub(s0.loadgen_us);
    Ok(LoadgenRun {
        report,
        relay_cpu_us,
        window: s1.at - s0.at,
        relay_threads_pct: thread_breakdown(&s0.relay_threads, &s1.relay_threads, s1.at - s0.at),
        background_cpu_us: s1
            .system_us
            .saturating_sub(s0.system_us)
            .saturating_sub(ours),
    })
}

type Marker = (&'static str, Result<Sample>);

/// Relays the load generator's stderr to ours and samples the relay's CPU time the moment a
/// send marker appears, so the sample is not delayed by the orchestrator's own polling.
fn watch_markers(stderr: ChildStderr, relay_pid: u32, loadgen_pid: u32, tx: &mpsc::Sender<Marker>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let marker = match line.trim() {
            l if l == MARK_SEND_START => MARK_SEND_START,
            l if l == MARK_SEND_END => MARK_SEND_END,
            _ => {
                eprintln!("loadgen: {line}");
                continue;
            }
        };
        if tx.send((marker, sample(relay_pid, loadgen_pid))).is_err() {
            break;
        }
    }
}

/// Waits until `child` prints `marker` on stdout (then keeps draining its stdout in the
/// background so it never blocks on a full pipe).
pub fn wait_for_line(
    guard: &mut ChildGuard,
    marker: &'static str,
    timeout: Duration,
) -> Result<()> {
    let stdout = guard
        .child
        .stdout
        .take()
        .context("child stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !seen && line.trim() == marker {
                seen = true;
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                guard.check_alive()?;
                bail!("{} closed stdout before it was ready", guard.name);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                guard.check_alive()?;
                if Instant::now() >= deadline {
                    bail!("{} not ready after {timeout:?}", guard.name);
                }
            }
        }
    }
}
