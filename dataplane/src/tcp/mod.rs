//! RTP over TCP sessions (RFC 4571 / RTSP interleaved framing, or raw bytes).
//!
//! A TCP session lives on its shard like a UDP one, but it is driven by one glommio task of its
//! own instead of the shard's io_uring packet loop: streams need per-connection state (partial
//! writes, connects, backoff) that a per-datagram path has no use for, and keeping them apart
//! leaves the UDP hot path untouched. The task ([`driver`]) owns every socket of the session;
//! the session table holds a [`TcpSession`] handle that shares the counters and state with it
//! and can ask it to close.
//!
//! Policies:
//! - One client at a time: a second concurrent connection to the listen port is accepted and
//!   closed at once, logged and counted (`clients_rejected`); the relay cannot tell which of two
//!   clients is the genuine one, and the first one already owns the stream state.
//! - The outbound connection binds the connect address explicitly; port 0 there means an
//!   ephemeral port chosen by the kernel (TCP needs no even/odd pair, and each reconnect would
//!   otherwise wait out the previous connection's TIME_WAIT on the same 4-tuple).
//! - Listen sockets use SO_REUSEADDR, so a destroyed session's port can be bound again at once
//!   even while its accepted connection lingers in TIME_WAIT; a live listener still refuses.

pub mod backoff;
pub mod driver;
pub mod framing;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use crate::event::CloseReason;
use crate::rtp::SessionMedia;
use crate::session::SessionState;
use crate::stats::DirectionStats;

pub use driver::spawn;
pub use framing::TcpFraming;

/// Per-session TCP behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpOptions {
    pub framing: TcpFraming,
    /// How long one connection attempt to the destination may take.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// When the client disconnects: wait for a new one (true) or close the session (false).
    pub client_reconnect: bool,
    /// Client bytes held while the destination is (re)connecting; the client is not read
    /// beyond this.
    pub connect_buffer: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            framing: TcpFraming::Rfc4571,
            connect_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            client_reconnect: false,
            connect_buffer: 256 * 1024,
        }
    }
}

/// TCP-only figures of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Framing errors per direction (forward, reverse).
    pub framing_errors: [u64; 2],
    /// Concurrent second clients accepted and closed at once.
    pub clients_rejected: u64,
    /// Connection attempts to the destination, and how many failed.
    pub connect_attempts: u64,
    pub connect_failures: u64,
    /// Client connections accepted (including the current one).
    pub clients_accepted: u64,
}

/// What the session's task and the session table share. Only the shard's thread touches it,
/// and never across an await.
#[derive(Debug)]
pub struct TcpShared {
    pub state: SessionState,
    pub client: Option<SocketAddr>,
    pub forward: DirectionStats,
    pub reverse: DirectionStats,
    pub media: SessionMedia,
    pub counters: TcpCounters,
    pub framing: TcpFraming,
    pub last_error: Option<(String, u64)>,
    /// Set by the task when it ends the session itself (e.g. the client left).
    pub close_reason: Option<CloseReason>,
}

/// The table's end of a TCP session.
pub struct TcpSession {
    pub shared: Rc<RefCell<TcpShared>>,
    stop: Rc<StopSignal>,
}

impl TcpSession {
    /// Asks the session's task to close every socket and finish; idempotent.
    pub fn close(&self) {
        self.stop.raise();
    }
}

/// A one-shot "close now" flag the task can await.
#[derive(Default)]
pub(crate) struct StopSignal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl StopSignal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.get() {
                std::task::Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}
