//! The rtpproxy control listeners: UDP (cookie mode, IPv4 or IPv6) and a unix stream socket
//! (local mode: one command per line, or per connection when the client closes its side).
//!
//! UDP commands run on [`LANES`] lanes: one call's commands in arrival order on the lane its
//! call-ID picks ([`lanes::lane_of`]), different calls in parallel, so a burst of call set-ups
//! from many proxy workers is not served one session creation at a time. Retransmissions (same
//! source and cookie) are answered from the reply cache instead of being executed twice, or
//! dropped while the original still runs. Datagrams from addresses outside the allow-list are
//! dropped, logged and counted.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::cache::{Lookup, ReplyCache};
use super::executor::Executor;
use super::frame::{self, Mode};
use super::lanes;
use super::parse::parse;
use super::reply::Reply;

/// Lanes of a UDP listener: how many calls' commands execute at once.
pub const LANES: usize = 16;
/// Commands queued per lane; when a lane is full the listener stops reading until it has room
/// (the kernel's socket buffer holds the rest, controllers retransmit what it drops).
const LANE_DEPTH: usize = 64;
/// How long a stopping listener lets its lanes finish the commands already accepted.
const DRAIN: Duration = Duration::from_secs(2);

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub retransmissions: AtomicU64,
    pub refused_sources: AtomicU64,
}

/// A command accepted for execution: who sent it, under which cookie.
struct Job {
    src: SocketAddr,
    cookie: String,
    command: String,
}

/// The reply cache, shared by the receive loop (lookups) and the lanes (replies).
type SharedCache = Arc<Mutex<ReplyCache>>;

/// Serves `socket` until `shutdown` resolves, then lets the lanes finish what they accepted.
pub async fn serve_udp(
    socket: UdpSocket,
    executor: Arc<Executor>,
    allow: Vec<IpAddr>,
    stats: Arc<ListenerStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let local = socket.local_addr().ok();
    info!(address = ?local, lanes = LANES, "rtpproxy control listener ready");
    let socket = Arc::new(socket);
    let cache: SharedCache = Arc::default();
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = JoinSet::new();
    for _ in 0..LANES {
        let (tx, rx) = mpsc::channel(LANE_DEPTH);
        lanes.push(tx);
        workers.spawn(run_lane(
            rx,
            socket.clone(),
            cache.clone(),
            executor.clone(),
            stats.clone(),
        ));
    }
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "rtpproxy control socket receive failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if !allow.contains(&src.ip()) {
            stats.refused_sources.fetch_add(1, Ordering::Relaxed);
            warn!(source = %src, "rtpproxy command from an address not in the allow-list; ignored");
            continue;
        }
        match admit(&buf[..n], src, &cache, &stats) {
            Admit::Reply(reply) => {
                if let Err(e) = socket.send_to(reply.as_bytes(), src).await {
                    warn!(source = %src, error = %e, "rtpproxy reply could not be sent");
                }
            }
            Admit::Ignore => {}
            Admit::Run(job) => {
                let lane = lanes::lane_of(&job.command, LANES);
                // Waits while the lane is full: backpressure instead of an unbounded queue.
                if lanes[lane].send(job).await.is_err() {
                    warn!("rtpproxy command lane ended unexpectedly; listener stops");
                    break;
                }
            }
        }
    }
    drop(lanes);
    let drained = tokio::time::timeout(DRAIN, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(address = ?local, "rtpproxy commands still running at shutdown were abandoned");
    }
    info!(address = ?local, "rtpproxy control listener stopped");
}

/// What the receive loop does with one datagram.
enum Admit {
    /// Answer at once: a framing error, or a retransmission's cached reply.
    Reply(String),
    /// A retransmission of a command still executing: its reply will answer both.
    Ignore,
    /// A new command: execute it on its lane.
    Run(Job),
}

fn admit(datagram: &[u8], src: SocketAddr, cache: &SharedCache, stats: &ListenerStats) -> Admit {
    stats.commands.fetch_add(1, Ordering::Relaxed);
    let frame = match frame::split(datagram, Mode::Datagram) {
        Ok(f) => f,
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!(source = %src, code = %e.code, "malformed rtpproxy datagram");
            return Admit::Reply(e.reply());
        }
    };
    let cookie = frame.cookie.unwrap_or_default();
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    match cache.begin(src, cookie, Instant::now()) {
        Lookup::Replied(r) => {
            stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            Admit::Reply(r.to_owned())
        }
        Lookup::InProgress => {
            stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            Admit::Ignore
        }
        Lookup::New => Admit::Run(Job {
            src,
            cookie: cookie.to_owned(),
            command: frame.command.to_owned(),
        }),
    }
}

/// One lane: executes its commands one after another, caches and sends each reply.
async fn run_lane(
    mut jobs: mpsc::Receiver<Job>,
    socket: Arc<UdpSocket>,
    cache: SharedCache,
    executor: Arc<Executor>,
    stats: Arc<ListenerStats>,
) {
    while let Some(job) = jobs.recv().await {
        let reply = respond(&job.command, &job.src.to_string(), &executor, &stats).await;
        let text = frame::format_reply(Some(&job.cookie), &reply.render());
        debug!(source = %job.src, reply = text.trim_end(), "rtpproxy reply");
        cache.lock().unwrap_or_else(PoisonError::into_inner).finish(
            job.src,
            &job.cookie,
            text.clone(),
            Instant::now(),
        );
        if let Err(e) = socket.send_to(text.as_bytes(), job.src).await {
            warn!(source = %job.src, error = %e, "rtpproxy reply could not be sent");
        }
    }
}

/// Parses and executes one command, logging and counting failures.
async fn respond(command: &str, source: &str, executor: &Executor, stats: &ListenerStats) -> Reply {
    let reply = match parse(command) {
        Ok(cmd) => {
            debug!(source, command, "rtpproxy command");
            executor.execute(cmd).await
        }
        Err(code) => Reply::Error(code),
    };
    if let Reply::Error(code) = &reply {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        warn!(source, command, %code, "rtpproxy command failed");
    }
    reply
}

/// Serves a unix stream socket until `shutdown` resolves; each connection in its own task.
/// Access is governed by the socket file's permissions.
pub async fn serve_unix(
    listener: UnixListener,
    executor: Arc<Executor>,
    stats: Arc<ListenerStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    info!(address = ?listener.local_addr().ok(), "rtpproxy unix control socket ready");
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            r = listener.accept() => match r {
                Ok((conn, _)) => conn,
                Err(e) => {
                    warn!(error = %e, "rtpproxy unix socket accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(serve_stream(conn, executor.clone(), stats.clone()));
    }
}

/// One stream connection: a reply per newline-terminated command, and one for a final command
/// the client ends by closing its side.
async fn serve_stream(mut conn: UnixStream, executor: Arc<Executor>, stats: Arc<ListenerStats>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            let (line, used) = match frame::take_line(&buf) {
                Ok(Some((line, used))) => (line.to_vec(), used),
                Ok(None) => break,
                Err(code) => {
                    let _ = conn
                        .write_all(
                            frame::format_reply(None, &Reply::Error(code).render()).as_bytes(),
                        )
                        .await;
                    return;
                }
            };
            buf.drain(..used);
            if !answer(&line, &mut conn, &executor, &stats).await {
                return;
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) => {
                if !buf.trim_ascii().is_empty() {
                    answer(&buf, &mut conn, &executor, &stats).await;
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return,
        }
    }
}

async fn answer(
    line: &[u8],
    conn: &mut UnixStream,
    executor: &Executor,
    stats: &ListenerStats,
) -> bool {
    stats.commands.fetch_add(1, Ordering::Relaxed);
    let reply = match frame::split(line, Mode::Stream) {
        Ok(f) => respond(f.command, "unix", executor, stats).await,
        Err(e) => Reply::Error(e.code),
    };
    conn.write_all(frame::format_reply(None, &reply.render()).as_bytes())
        .await
        .is_ok()
}
