//! The rtpproxy control listeners: UDP (cookie mode, IPv4 or IPv6) and a unix stream socket
//! (local mode: one command per line, or per connection when the client closes its side).
//!
//! Commands are taken one at a time per socket, in arrival order: a controller waits for each
//! reply, and U before L of one call must not be reordered. Retransmissions (same source and
//! cookie) are answered from the reply cache instead of being executed twice. Datagrams from
//! addresses outside the allow-list are dropped, logged and counted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::cache::{Lookup, ReplyCache};
use super::executor::Executor;
use super::frame::{self, Mode};
use super::parse::parse;
use super::reply::Reply;

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub retransmissions: AtomicU64,
    pub refused_sources: AtomicU64,
}

/// Serves `socket` until `shutdown` resolves.
pub async fn serve_udp(
    socket: UdpSocket,
    executor: Arc<Executor>,
    allow: Vec<IpAddr>,
    stats: Arc<ListenerStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let local = socket.local_addr().ok();
    info!(address = ?local, "rtpproxy control listener ready");
    let mut cache = ReplyCache::default();
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
        if let Some(reply) = handle(&buf[..n], src, &mut cache, &executor, &stats).await {
            if let Err(e) = socket.send_to(reply.as_bytes(), src).await {
                warn!(source = %src, error = %e, "rtpproxy reply could not be sent");
            }
        }
    }
    info!(address = ?local, "rtpproxy control listener stopped");
}

/// One datagram in, at most one reply out.
async fn handle(
    datagram: &[u8],
    src: SocketAddr,
    cache: &mut ReplyCache,
    executor: &Executor,
    stats: &ListenerStats,
) -> Option<String> {
    stats.commands.fetch_add(1, Ordering::Relaxed);
    let frame = match frame::split(datagram, Mode::Datagram) {
        Ok(f) => f,
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!(source = %src, code = %e.code, "malformed rtpproxy datagram");
            return Some(e.reply());
        }
    };
    let cookie = frame.cookie.unwrap_or_default().to_owned();
    match cache.begin(src, &cookie, Instant::now()) {
        Lookup::Replied(r) => {
            stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            return Some(r.to_owned());
        }
        Lookup::InProgress => return None,
        Lookup::New => {}
    }
    let reply = respond(frame.command, &src.to_string(), executor, stats).await;
    let text = frame::format_reply(Some(&cookie), &reply.render());
    debug!(source = %src, reply = text.trim_end(), "rtpproxy reply");
    cache.finish(src, &cookie, text.clone(), Instant::now());
    Some(text)
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
