//! Process management for the interop test: unbuffered reporting to stderr, the work directory,
//! the children it starts (each in its own process group, stopped on drop), short bounded
//! commands, and the lock that keeps two runs on one machine apart.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and this
/// test's record (versions, transcript, checks) must always be visible.
pub fn report(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = err.write_all(b"\n");
    }
    let _ = err.flush();
}

pub fn loud(text: &str) {
    let bar = "!".repeat(78);
    report(&format!("\n{bar}\n!!! {text}\n{bar}\n"));
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A file's text, or "" if it cannot be read (a log a process has not written yet).
pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Creates (truncates) a file for a child's output.
pub fn create(path: impl AsRef<Path>) -> std::fs::File {
    let path = path.as_ref();
    std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// A fresh work directory for this process under the temp dir, with `run/` for Kamailio.
pub fn work_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("rtprelay-kamailio-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("run")).expect("create the work directory");
    dir
}

struct Tracked {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

/// Every process this test starts, each in its own process group (its PID), so Kamailio's
/// workers and tshark's dumpcap go with their parent. Drop stops whatever still runs, then
/// removes the work directory, or, when the test panics, keeps it and prints the tails of
/// `logs` (files in it).
pub struct Procs {
    list: Vec<Tracked>,
    dir: PathBuf,
    logs: &'static [&'static str],
}

impl Procs {
    pub fn new(dir: &Path, logs: &'static [&'static str]) -> Procs {
        Procs {
            list: Vec::new(),
            dir: dir.to_path_buf(),
            logs,
        }
    }

    /// Starts `cmd` (stdin from /dev/null) and returns its index.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> usize {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.list.push(Tracked {
            name: name.to_string(),
            child,
            status: None,
        });
        self.list.len() - 1
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.list[i].child.id()
    }

    pub fn try_wait(&mut self, i: usize) -> Option<ExitStatus> {
        let t = &mut self.list[i];
        if t.status.is_none()
            && let Ok(Some(s)) = t.child.try_wait()
        {
            t.status = Some(s);
            // Stragglers of the group (workers whose parent died) go too.
            signal_group(t.child.id(), libc::SIGKILL);
        }
        t.status
    }

    /// Polls `ready` every `every` until it holds, for up to `limit`: Err(Some(status)) if the
    /// process exited first, Err(None) on timeout.
    pub fn wait_ready(
        &mut self,
        i: usize,
        limit: Duration,
        every: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(s) = self.try_wait(i) {
                return Err(Some(s));
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            std::thread::sleep(every);
        }
    }

    /// Sends `sig` to the process group, waits up to `grace`, then kills the group.
    pub fn stop(&mut self, i: usize, sig: i32, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait(i) {
            return Some(s);
        }
        signal_group(self.pid(i), sig);
        if let Some(s) = self.wait_exit(i, grace) {
            return Some(s);
        }
        signal_group(self.pid(i), libc::SIGKILL);
        self.wait_exit(i, Duration::from_secs(5))
    }

    fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait(i) {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the process group led by a child this test started and has not yet
    // reaped, or whose leader it reaped a moment ago (the group ID stays reserved while any
    // member lives).
    unsafe { libc::kill(-(pid as i32), sig) };
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.list.len() {
            if self.list[i].status.is_none()
                && self
                    .stop(i, libc::SIGTERM, Duration::from_secs(3))
                    .is_none()
            {
                report(&format!(
                    "kamailio_interop: could not stop {}",
                    self.list[i].name
                ));
            }
        }
        if std::thread::panicking() {
            let mut text = format!(
                "\n--- kamailio_interop: the work directory is kept: {} ---\n",
                self.dir.display()
            );
            for name in self.logs {
                let body = read(self.dir.join(name));
                if !body.trim().is_empty() {
                    text.push_str(&format!("--- {name} (tail) ---\n{}\n", tail(&body, 60)));
                }
            }
            report(&text);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a short command with its output in files of `dir`; kills it after `limit`. Returns
/// its status (None if killed) and its stdout and stderr.
pub fn run_bounded(
    dir: &Path,
    name: &str,
    cmd: &mut Command,
    limit: Duration,
) -> (Option<ExitStatus>, String, String) {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(create(&out_path))
        .stderr(create(&err_path))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, read(&out_path), read(&err_path))
}

/// An exclusive flock on a file in the temp dir, released when dropped (or the process ends).
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub fn acquire(limit: Duration) -> RunLock {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("rtprelay-kamailio-interop.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("open the run lock");
        let deadline = Instant::now() + limit;
        let mut told = false;
        loop {
            // SAFETY: flock(2) on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return RunLock { _file: file };
            }
            if !told {
                report(&format!(
                    "kamailio_interop: another run holds {}; waiting",
                    path.display()
                ));
                told = true;
            }
            assert!(
                Instant::now() < deadline,
                "another kamailio_interop run held {} for {limit:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
