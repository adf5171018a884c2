//! Stream mode (`--rtpproxy unix:/PATH`), the way Kamailio's rtpproxy module uses a unix
//! socket: one connection per command; write the command and a newline, close the writing
//! side, read the reply until the relay closes. There are no cookies, so nothing is sent twice
//! once written (a command sent again would run again); only a failed connect is retried.
//! Parallelism comes from several connections at once, one worker thread each.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rtprelay_benches::sys;

use super::wire::{RETRY, TRIES};

/// Most connections at once, whatever the window asks for.
const MAX_WORKERS: usize = 32;
/// Longest a single command may take before it counts as unanswered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reply read (a `Q` with many statistics is a few hundred bytes).
const MAX_REPLY: u64 = 64 * 1024;

/// Runs `commands` over `window` connections at a time; the reply of each, or `None`. A stop
/// request ends it early only if `interruptible`.
pub fn run(
    path: &Path,
    commands: &[String],
    window: usize,
    deadline: Instant,
    interruptible: bool,
) -> Vec<Option<String>> {
    let workers = window.clamp(1, MAX_WORKERS).min(commands.len().max(1));
    let mut replies = vec![None; commands.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    (w..commands.len())
                        .step_by(workers)
                        .map(|i| {
                            let late = Instant::now() >= deadline
                                || (interruptible && sys::stop_requested());
                            (
                                i,
                                if late {
                                    None
                                } else {
                                    one(path, &commands[i], deadline)
                                },
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A worker that panicked leaves its commands unanswered.
            for (i, reply) in h.join().unwrap_or_default() {
                replies[i] = reply;
            }
        }
    });
    replies
}

/// One command on its own connection: its first reply line.
fn one(path: &Path, command: &str, deadline: Instant) -> Option<String> {
    let mut conn = None;
    for _ in 0..TRIES {
        match UnixStream::connect(path) {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                std::thread::sleep(RETRY.min(left));
            }
        }
    }
    let mut conn = conn?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(COMMAND_TIMEOUT)
        .max(Duration::from_millis(1));
    conn.set_read_timeout(Some(left)).ok()?;
    conn.set_write_timeout(Some(left)).ok()?;
    conn.write_all(format!("{command}\n").as_bytes()).ok()?;
    conn.shutdown(Shutdown::Write).ok()?;
    let mut reply = Vec::new();
    conn.take(MAX_REPLY).read_to_end(&mut reply).ok()?;
    let text = String::from_utf8(reply).ok()?;
    Some(text.lines().next()?.trim_end().to_owned())
}
