//! The task that drives one TCP session: accepting the client, connecting to the destination
//! with backoff, relaying both ways and reporting state changes.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::framing::Deframer;
use super::{StopSignal, TcpOptions, TcpSession, TcpShared};
use crate::event::{CloseReason, Event, EventKind, EventSink};
use crate::rtp::{self, SessionMedia};
use crate::session::SessionState;
use crate::stats::DirectionStats;
use crate::time::unix_now_us;

/// Read/write chunk per direction: the most a session holds in flight per direction, so a
/// stalled peer costs 64 KiB, not whatever the other side pushes.
const CHUNK: usize = 64 * 1024;
/// How often a pending outbound connect is checked for completion. Connects are rare (once per
/// session and per failure), so polling keeps them off any thread pool at negligible cost.
const CONNECT_POLL: Duration = Duration::from_millis(5);

/// Everything a TCP session starts with.
pub struct SpawnArgs {
    pub id: String,
    /// Bound and listening, non-blocking.
    pub listener: Socket,
    pub connect: SocketAddr,
    pub destination: SocketAddr,
    pub options: TcpOptions,
    pub media: SessionMedia,
    pub events: Arc<dyn EventSink>,
    /// Called once the task has closed every socket of the session.
    pub done: Box<dyn FnOnce()>,
}

/// Starts the session's task on the current glommio executor.
pub fn spawn(args: SpawnArgs) -> TcpSession {
    let shared = Rc::new(RefCell::new(TcpShared {
        state: SessionState::Connecting,
        client: None,
        forward: DirectionStats::default(),
        reverse: DirectionStats::default(),
        media: args.media,
        counters: Default::default(),
        framing: args.options.framing,
        last_error: None,
        close_reason: None,
    }));
    let stop = Rc::new(StopSignal::default());
    let listen_fd = args.listener.as_raw_fd();
    // SAFETY: the descriptor is handed over from the socket2 socket to glommio's listener.
    let listener = unsafe { TcpListener::from_raw_fd(args.listener.into_raw_fd()) };
    let seed = args.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let ctx = Ctx {
        backoff: RefCell::new(Backoff::new(
            args.options.backoff_initial,
            args.options.backoff_max,
            seed,
        )),
        next_attempt: std::cell::Cell::new(None),
        deframers: RefCell::new([
            Deframer::new(args.options.framing),
            Deframer::new(args.options.framing),
        ]),
        id: args.id,
        shared: shared.clone(),
        events: args.events,
        options: args.options,
        connect: args.connect,
        destination: args.destination,
    };
    let task_stop = stop.clone();
    let done = args.done;
    glommio::spawn_local(async move {
        let mut streams = Streams::default();
        let reason = or(ctx.run(&listener, &mut streams), async {
            task_stop.wait().await;
            None
        })
        .await;
        // Shut down before closing: an operation glommio may still have in flight on a socket
        // holds it open, and the listen port must be free when the table reports the session
        // closed.
        shutdown(listen_fd);
        for c in [streams.client.take(), streams.dest.take()]
            .into_iter()
            .flatten()
        {
            shutdown(c.r.as_raw_fd());
        }
        drop(listener);
        if let Some(reason) = reason {
            ctx.shared.borrow_mut().close_reason = Some(reason);
        }
        debug!(session = %ctx.id, "tcp session task finished");
        done();
    })
    .detach();
    TcpSession { shared, stop }
}

fn shutdown(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor this task still owns; failure (not connected) is moot.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// One TCP connection as two glommio streams over the same socket (duplicated descriptors), so
/// one direction can read while the other writes.
struct Conn {
    r: TcpStream,
    w: TcpStream,
    peer: SocketAddr,
}

#[derive(Default)]
struct Streams {
    client: Option<Conn>,
    dest: Option<Conn>,
}

fn keepalive(fd: RawFd) -> io::Result<()> {
    // SAFETY: `fd` is open for the duration of this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3),
    )?;
    sock.set_tcp_nodelay(true)
}

fn conn(stream: TcpStream) -> io::Result<Conn> {
    let fd = stream.as_raw_fd();
    keepalive(fd)?;
    let peer = stream.peer_addr()?;
    // SAFETY: fcntl has no memory preconditions; checked below.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor owned by nothing else.
    let w = unsafe { TcpStream::from_raw_fd(dup) };
    Ok(Conn { r: stream, w, peer })
}

/// Connects from `from` (port 0 = ephemeral) to `to` within `timeout`, without blocking the
/// shard: a non-blocking connect, checked for completion every [`CONNECT_POLL`].
async fn connect(from: SocketAddr, to: SocketAddr, timeout: Duration) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(to),
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&from.into())?;
    match s.connect(&to.into()) {
        Ok(()) => return Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n > 0 {
            return match s.take_error()? {
                Some(e) => Err(e),
                None => Ok(s),
            };
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            ));
        }
        glommio::timer::sleep(CONNECT_POLL).await;
    }
}

/// Frames (or bytes) completed by some chunk of the stream, per kind; counted as sent once the
/// chunk has been written.
#[derive(Debug, Clone, Copy, Default)]
struct Done {
    rtp_packets: u64,
    rtp_bytes: u64,
    rtcp_packets: u64,
    rtcp_bytes: u64,
}

impl Done {
    fn add(&mut self, o: Done) {
        self.rtp_packets += o.rtp_packets;
        self.rtp_bytes += o.rtp_bytes;
        self.rtcp_packets += o.rtcp_packets;
        self.rtcp_bytes += o.rtcp_bytes;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Forward = 0,
    Reverse = 1,
}

enum Ev {
    Client(Conn),
    Dest(Conn),
    ClientGone(String),
    DestGone(String),
}

struct Ctx {
    id: String,
    shared: Rc<RefCell<TcpShared>>,
    events: Arc<dyn EventSink>,
    options: TcpOptions,
    connect: SocketAddr,
    destination: SocketAddr,
    backoff: RefCell<Backoff>,
    /// When the next connection attempt is due; kept across phases so that a client arriving
    /// or leaving does not cut a backoff short.
    next_attempt: std::cell::Cell<Option<Instant>>,
    deframers: RefCell<[Deframer; 2]>,
}

fn end_reason(what: &str, r: io::Result<usize>) -> String {
    match r {
        Ok(_) => format!("{what} closed the connection"),
        Err(e) => format!("{what} connection failed: {e}"),
    }
}

impl Ctx {
    fn emit(&self, kind: EventKind) {
        self.events.emit(Event {
            session_id: self.id.clone(),
            at_us: unix_now_us(),
            kind,
        });
    }

    fn set_state(&self, to: SessionState, reason: &str) {
        let from = std::mem::replace(&mut self.shared.borrow_mut().state, to);
        if from != to {
            info!(session = %self.id, ?from, ?to, reason, "tcp session state changed");
            self.emit(EventKind::StateChanged {
                from,
                to,
                reason: reason.to_owned(),
            });
        }
    }

    /// Accounts bytes read in `dir`: frames go to the counters and the RTP statistics.
    fn received(&self, dir: Dir, data: &[u8]) -> Done {
        let now = unix_now_us();
        let mut shared = self.shared.borrow_mut();
        let shared = &mut *shared;
        let mut deframers = self.deframers.borrow_mut();
        let media_dir = match dir {
            Dir::Forward => rtp::Direction::Forward,
            Dir::Reverse => rtp::Direction::Reverse,
        };
        let mut done = Done::default();
        let media = &mut shared.media;
        let outcome = deframers[dir as usize].push(data, |f| {
            media.on_packet(media_dir, f.rtcp, f.payload, now);
            if f.rtcp {
                done.rtcp_packets += 1;
                done.rtcp_bytes += f.wire_len as u64;
            } else {
                done.rtp_packets += 1;
                done.rtp_bytes += f.wire_len as u64;
            }
        });
        done.rtp_bytes += outcome.unframed as u64;
        shared.counters.framing_errors[dir as usize] += outcome.errors;
        let stats = match dir {
            Dir::Forward => &mut shared.forward,
            Dir::Reverse => &mut shared.reverse,
        };
        if stats.first_activity_us == 0 {
            stats.first_activity_us = now;
        }
        stats.last_activity_us = now;
        stats.rtp.packets_received += done.rtp_packets;
        stats.rtp.bytes_received += done.rtp_bytes;
        stats.rtcp.packets_received += done.rtcp_packets;
        stats.rtcp.bytes_received += done.rtcp_bytes;
        done
    }

    fn sent(&self, dir: Dir, done: Done) {
        let mut shared = self.shared.borrow_mut();
        let stats = match dir {
            Dir::Forward => &mut shared.forward,
            Dir::Reverse => &mut shared.reverse,
        };
        stats.rtp.packets_sent += done.rtp_packets;
        stats.rtp.bytes_sent += done.rtp_bytes;
        stats.rtcp.packets_sent += done.rtcp_packets;
        stats.rtcp.bytes_sent += done.rtcp_bytes;
    }

    fn reset_deframer(&self, dir: Dir) {
        self.deframers.borrow_mut()[dir as usize] = Deframer::new(self.options.framing);
    }

    async fn accept(&self, listener: &TcpListener) -> Conn {
        loop {
            match listener
                .accept()
                .await
                .map_err(io::Error::from)
                .and_then(conn)
            {
                Ok(c) => return c,
                Err(e) => {
                    warn!(session = %self.id, error = %e, "accepting a tcp client failed");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// While a client is connected: accepts and closes any further client at once.
    async fn reject_extra(&self, listener: &TcpListener) -> Ev {
        loop {
            let extra = self.accept(listener).await;
            self.shared.borrow_mut().counters.clients_rejected += 1;
            warn!(session = %self.id, peer = %extra.peer, "second tcp client rejected: the session already has one");
            shutdown(extra.r.as_raw_fd());
        }
    }

    /// Connects to the destination, retrying with backoff; the session is in ERROR while
    /// attempts fail.
    async fn connect_dest(&self) -> Ev {
        loop {
            if let Some(due) = self.next_attempt.get()
                && let Some(wait) = due.checked_duration_since(Instant::now())
            {
                glommio::timer::sleep(wait).await;
            }
            self.shared.borrow_mut().counters.connect_attempts += 1;
            let result = connect(self.connect, self.destination, self.options.connect_timeout)
                .await
                // SAFETY: the descriptor moves from the socket2 socket to the glommio stream.
                .and_then(|s| conn(unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) }));
            match result {
                Ok(c) => {
                    self.backoff.borrow_mut().reset();
                    self.next_attempt.set(None);
                    info!(session = %self.id, destination = %self.destination, local = ?c.r.local_addr().ok(), "connected to the destination");
                    return Ev::Dest(c);
                }
                Err(e) => {
                    let delay = self.backoff.borrow_mut().next_delay();
                    self.next_attempt.set(Some(Instant::now() + delay));
                    let attempt = {
                        let mut s = self.shared.borrow_mut();
                        s.counters.connect_failures += 1;
                        let reason = format!("connecting to {} failed: {e}", self.destination);
                        s.last_error = Some((reason, unix_now_us()));
                        s.counters.connect_attempts
                    };
                    let reason = format!("connecting to {} failed: {e}", self.destination);
                    self.set_state(SessionState::Error, &reason);
                    let message = format!(
                        "{reason} (attempt {attempt}); retrying in {} ms",
                        delay.as_millis()
                    );
                    warn!(session = %self.id, "{message}");
                    self.emit(EventKind::Error(message));
                }
            }
        }
    }

    /// Reads the client while the destination is not connected, holding up to the configured
    /// limit; beyond it the client is simply not read (TCP flow control pushes back).
    async fn buffer_client(&self, client: &mut Conn, pending: &mut Vec<u8>, done: &mut Done) -> Ev {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let room = self
                .options
                .connect_buffer
                .saturating_sub(pending.len())
                .min(CHUNK);
            if room == 0 {
                std::future::pending::<()>().await;
            }
            let r = client.r.read(&mut buf[..room]).await;
            match r {
                Ok(n) if n > 0 => {
                    done.add(self.received(Dir::Forward, &buf[..n]));
                    pending.extend_from_slice(&buf[..n]);
                }
                other => return Ev::ClientGone(end_reason("client", other)),
            }
        }
    }

    /// Relays one direction until either side fails: read a chunk, write it all, repeat, so a
    /// slow writer stops the reading (at most one chunk in flight).
    async fn pump(&self, dir: Dir, from: &mut TcpStream, to: &mut TcpStream) -> Ev {
        let (reader, writer) = match dir {
            Dir::Forward => ("client", "destination"),
            Dir::Reverse => ("destination", "client"),
        };
        let gone = |side: &str, why: String| {
            if side == "client" {
                Ev::ClientGone(why)
            } else {
                Ev::DestGone(why)
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(n) if n > 0 => n,
                other => return gone(reader, end_reason(reader, other)),
            };
            let done = self.received(dir, &buf[..n]);
            if let Err(e) = to.write_all(&buf[..n]).await {
                return gone(writer, end_reason(writer, Err(e)));
            }
            self.sent(dir, done);
        }
    }

    /// The session's life until it is closed; `Some` when it ends by itself.
    async fn run(&self, listener: &TcpListener, st: &mut Streams) -> Option<CloseReason> {
        let mut pending = Vec::new();
        let mut pending_done = Done::default();
        loop {
            let ev = match (st.client.as_mut(), st.dest.as_mut()) {
                (None, None) => {
                    or(
                        async { Ev::Client(self.accept(listener).await) },
                        self.connect_dest(),
                    )
                    .await
                }
                (Some(c), None) => {
                    or(
                        or(self.reject_extra(listener), self.connect_dest()),
                        self.buffer_client(c, &mut pending, &mut pending_done),
                    )
                    .await
                }
                (None, Some(_)) => Ev::Client(self.accept(listener).await),
                (Some(c), Some(d)) => {
                    self.set_state(SessionState::Forwarding, "client and destination connected");
                    let flushed = if pending.is_empty() {
                        None
                    } else {
                        let r = d.w.write_all(&pending).await;
                        pending.clear();
                        match r {
                            Ok(()) => {
                                self.sent(Dir::Forward, std::mem::take(&mut pending_done));
                                None
                            }
                            Err(e) => Some(Ev::DestGone(end_reason("destination", Err(e)))),
                        }
                    };
                    match flushed {
                        Some(ev) => ev,
                        None => {
                            let Conn { r: cr, w: cw, .. } = c;
                            let Conn { r: dr, w: dw, .. } = d;
                            or(
                                self.reject_extra(listener),
                                or(
                                    self.pump(Dir::Forward, cr, dw),
                                    self.pump(Dir::Reverse, dr, cw),
                                ),
                            )
                            .await
                        }
                    }
                }
            };
            match ev {
                Ev::Client(c) => {
                    info!(session = %self.id, client = %c.peer, "tcp client connected");
                    {
                        let mut s = self.shared.borrow_mut();
                        s.client = Some(c.peer);
                        s.counters.clients_accepted += 1;
                    }
                    st.client = Some(c);
                }
                Ev::Dest(c) => {
                    st.dest = Some(c);
                    if st.client.is_none() {
                        self.set_state(
                            SessionState::Connecting,
                            "destination connected; waiting for a client",
                        );
                    }
                }
                Ev::ClientGone(why) => {
                    if let Some(c) = st.client.take() {
                        shutdown(c.r.as_raw_fd());
                    }
                    self.reset_deframer(Dir::Forward);
                    pending.clear();
                    pending_done = Done::default();
                    self.shared.borrow_mut().client = None;
                    info!(session = %self.id, reason = %why, "tcp client gone");
                    if !self.options.client_reconnect {
                        return Some(CloseReason::ClientClosed);
                    }
                    self.set_state(
                        SessionState::Connecting,
                        &format!("{why}; waiting for a new client"),
                    );
                }
                Ev::DestGone(why) => {
                    if let Some(d) = st.dest.take() {
                        shutdown(d.r.as_raw_fd());
                    }
                    self.reset_deframer(Dir::Reverse);
                    self.shared.borrow_mut().last_error = Some((why.clone(), unix_now_us()));
                    self.set_state(SessionState::Error, &format!("{why}; reconnecting"));
                }
            }
        }
    }
}
