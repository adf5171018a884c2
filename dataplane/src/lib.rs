//! rtprelay's data plane: thread-per-core shards that own sessions and their sockets outright,
//! relaying media through a batched io_uring path. It knows nothing of gRPC: controllers talk to
//! it with [`command::Command`]s sent to a [`shard::ShardHandle`] and listen to it through an
//! [`event::EventSink`].

pub mod command;
pub mod config;
pub mod event;
pub mod iface;
pub mod io;
pub mod ports;
pub mod record;
pub mod rtp;
pub mod session;
pub mod shard;
pub mod sockaddr;
pub mod socket;
pub mod stats;
pub mod tcp;
pub mod time;

use std::sync::Arc;

pub use command::{Command, CreateError, EndpointField, ForkError, ListPage, ListQuery};
pub use config::DataplaneConfig;
pub use event::{CloseReason, Event, EventKind, EventSink};
pub use session::{ForkSnapshot, Protocol, SessionSnapshot, SessionSpec, SessionState};
pub use shard::{ShardHandle, StartError};

/// The running shards.
pub struct Dataplane {
    handles: Vec<ShardHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    watchdog: Option<shard::Watchdog>,
}

/// How often the watchdog looks at the shards, and how long a shard may show no progress
/// (supervision ticks every 100 ms by default; commands taken) before it is kicked.
const WATCHDOG_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);
const WATCHDOG_MIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Dataplane {
    /// Starts `config.shards` shards and waits until each is ready to take commands, so a
    /// failure (no io_uring, too few file descriptors) is reported here, not on first use.
    pub fn start(config: DataplaneConfig, events: Arc<dyn EventSink>) -> Result<Self, StartError> {
        if config.sockets.bind_device {
            socket::probe_device_binding();
        }
        let config = Arc::new(config);
        let cores = if config.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut handles = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        for index in 0..config.shards {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            match shard::spawn(index, core, config.clone(), events.clone()) {
                Ok((handle, thread)) => {
                    handles.push(handle);
                    threads.push(thread);
                }
                Err(e) => {
                    let me = Self {
                        handles,
                        threads,
                        watchdog: None,
                    };
                    me.stop_blocking();
                    return Err(e);
                }
            }
        }
        // Five missed ticks at least, so a slow tick is never taken for a stall.
        let limit = WATCHDOG_MIN_LIMIT.max(config.tick * 5);
        let pulses = handles.iter().map(ShardHandle::pulse).collect();
        let watchdog = Some(shard::Watchdog::start(pulses, WATCHDOG_PERIOD, limit));
        Ok(Self {
            handles,
            threads,
            watchdog,
        })
    }

    /// One handle per shard, in shard order.
    pub fn handles(&self) -> &[ShardHandle] {
        &self.handles
    }

    /// Waits for every shard thread to end (after each got [`Command::Shutdown`]).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        // Only now: a shard whose shutdown stalls on a lost wake-up needs the watchdog.
        if let Some(w) = self.watchdog {
            w.stop();
        }
    }

    /// Shuts every shard down from a non-async context and joins them.
    pub fn stop_blocking(self) {
        for h in &self.handles {
            let (reply, done) = tokio::sync::oneshot::channel();
            if h.send(Command::Shutdown { reply }).is_ok() {
                let _ = done.blocking_recv();
            }
        }
        self.join();
    }
}
