//! The rtpproxy control listener on UDP (cookie mode, IPv4 or IPv6).
//!
//! Commands are taken one at a time per socket, in arrival order: a controller waits for each
//! reply, and U before L of one call must not be reordered. Retransmissions (same source and
//! cookie) are answered from the reply cache instead of being executed twice. Datagrams from
//! addresses outside the allow-list are dropped, logged and counted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::UdpSocket;
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
    let reply = match parse(frame.command) {
        Ok(cmd) => {
            debug!(source = %src, command = frame.command, "rtpproxy command");
            executor.execute(cmd).await
        }
        Err(code) => Reply::Error(code),
    };
    if let Reply::Error(code) = &reply {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        warn!(source = %src, command = frame.command, %code, "rtpproxy command failed");
    }
    let text = frame::format_reply(Some(&cookie), &reply.render());
    debug!(source = %src, reply = text.trim_end(), "rtpproxy reply");
    cache.finish(src, &cookie, text.clone(), Instant::now());
    Some(text)
}
