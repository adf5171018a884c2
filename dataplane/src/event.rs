//! Session events leaving the data plane.
//!
//! The data plane does not know who listens (gRPC watchers, logs, an rtpproxy notify socket); it
//! hands each event to an [`EventSink`] chosen by whoever started it. A sink must return at once
//! and never block: it is called on a shard thread.

use crate::session::monitor::{AlertKind, Direction};
use crate::session::{SessionSnapshot, SessionState};

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// DestroySession (or its equivalent) was called.
    Destroyed,
    /// The relay is shutting down.
    Shutdown,
    /// No media in either direction for the session's idle timeout.
    Timeout,
    /// The TCP client disconnected and the session does not wait for another one.
    ClientClosed,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Destroyed => "destroyed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Timeout => "timeout",
            CloseReason::ClientClosed => "client closed",
        }
    }
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Created(Box<SessionSnapshot>),
    StateChanged {
        from: SessionState,
        to: SessionState,
        reason: String,
    },
    /// Periodic statistics.
    StatsUpdate(Box<SessionSnapshot>),
    /// A quality threshold was crossed (`active`) or the condition cleared.
    Alert {
        kind: AlertKind,
        direction: Direction,
        active: bool,
        value: f64,
        threshold: f64,
    },
    Error(String),
    Closed {
        reason: CloseReason,
        session: Box<SessionSnapshot>,
    },
}

#[derive(Debug, Clone)]
pub struct Event {
    pub session_id: String,
    /// Microseconds since the Unix epoch.
    pub at_us: u64,
    pub kind: EventKind,
}

/// Receives every event of every shard. Must not block.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: Event);

    /// Whether anyone would see an event emitted now. Shards skip building events (a session
    /// snapshot, converted again by the control plane) when nobody is listening, which is a
    /// measurable part of a create/destroy. A `false` may turn stale the moment it is read;
    /// a watcher subscribing then misses nothing it could have been promised, as watchers
    /// see events from their subscription on.
    fn wanted(&self) -> bool {
        true
    }
}

/// A sink that drops everything (for embedding the data plane without a control plane).
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: Event) {}

    fn wanted(&self) -> bool {
        false
    }
}
