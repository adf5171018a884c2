//! Sessions through the rtpproxy control protocol (`--rtpproxy udp:HOST:PORT`), the way
//! Kamailio's and OpenSIPS's rtpproxy modules set up a call: `U` with the caller's address (the
//! offer), `L` with the callee's (the answer), `Q` for the relay's counters and `D` at the end.
//! So the blaster loads rtprelay through the control path SIP proxies use, and any other relay
//! that speaks the protocol (rtpproxy itself, rtpengine's `listen-udp`) the same way.
//!
//! Over UDP, commands are pipelined (a window of them in flight, matched by cookie) and
//! retransmitted with the same cookie when no reply comes, as controllers do; the relay's reply
//! cache answers a retransmission without running the command twice. Over a unix socket
//! (`unix:/PATH`) each command gets its own connection, several at once ([`stream`]). The matching is a small sans-IO state
//! machine (`wire::Exchange`, with the replies' grammar); [`Rtpp`] only moves its datagrams.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rtprelay_benches::sys;
use serde_json::{Value, json};

use self::wire::{
    Control, DeleteOutcome, Exchange, RETRY, TRIES, delete_outcome, media_address, parse_spec,
    query_counts,
};

mod stream;
mod wire;

/// Upper bound for creating a trial's calls.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// The base version every rtpproxy-compatible relay answers to `V`.
const BASE_VERSION: &str = "20040107";
/// How long one receive waits before the loop looks at retransmissions again.
const POLL: Duration = Duration::from_millis(5);

/// How the blaster reaches the relay's control socket.
enum Link {
    Udp { sock: UdpSocket, server: SocketAddr },
    Unix(PathBuf),
}

impl Link {
    /// The address a `U`/`L` reply without one means: the relay's own.
    fn relay_ip(&self) -> IpAddr {
        match self {
            Link::Udp { server, .. } => server.ip(),
            Link::Unix(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    fn name(&self) -> String {
        match self {
            Link::Udp { server, .. } => server.to_string(),
            Link::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

/// A control connection to an rtpproxy-protocol relay.
pub struct Rtpp {
    link: Link,
    /// Commands in flight at once.
    window: usize,
    cleanup_timeout: Duration,
    /// Modifiers added to every `U` and `L` (e.g. `a` for asymmetric, `ie` for bridging).
    mods: String,
    /// Cookie prefix, unique per process, and the next cookie number.
    cookie_base: String,
    next_cookie: AtomicU64,
}

/// Where the blaster sends once a call exists.
#[derive(Debug, Clone, Copy)]
pub struct CallAddrs {
    /// The relay port the `L` reply named: the caller (the blaster's source) sends there.
    pub to_callee: SocketAddr,
    /// The relay port the `U` reply named: the callee (the blaster's sink) sends there.
    pub to_caller: SocketAddr,
}

impl Rtpp {
    /// Opens the control socket and checks with `V` that an rtpproxy-protocol relay answers.
    pub fn connect(
        spec: &str,
        window: usize,
        cleanup_timeout: Duration,
        mods: &str,
    ) -> Result<Self> {
        let link = match parse_spec(spec)? {
            Control::Udp(server) => {
                let local: SocketAddr = if server.is_ipv6() {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(local).context("bind the rtpproxy control socket")?;
                sock.connect(server)
                    .with_context(|| format!("connect the rtpproxy control socket to {server}"))?;
                sock.set_read_timeout(Some(POLL))
                    .context("rtpproxy control socket timeout")?;
                Link::Udp { sock, server }
            }
            Control::Unix(path) => Link::Unix(path),
        };
        let server = link.name();
        let rtpp = Self {
            link,
            window: window.max(1),
            cleanup_timeout,
            mods: mods.to_owned(),
            cookie_base: format!("b{:x}", std::process::id()),
            next_cookie: AtomicU64::new(1),
        };
        let deadline = Instant::now() + RETRY * TRIES;
        match rtpp.run(&["V".to_owned()], deadline, true).pop().flatten() {
            Some(v) if v == BASE_VERSION => Ok(rtpp),
            Some(v) => bail!("{server} answered V with {v:?}, not {BASE_VERSION}"),
            None => bail!("no rtpproxy control reply from {server}"),
        }
    }

    /// Sets up one call per (source, sink) pair, call-IDs `{prefix}-{i}`. The returned guard
    /// deletes them when dropped unless [`Calls::remove`] already did.
    pub fn create<'a>(
        &'a self,
        prefix: &str,
        pairs: &[(SocketAddr, SocketAddr)],
    ) -> Result<(Calls<'a>, Vec<CallAddrs>)> {
        // Every call is owned from the start: a `U` whose reply was lost may still have created
        // it, and deleting a call that does not exist is harmless.
        let calls = Calls {
            rtpp: self,
            ids: (0..pairs.len()).map(|i| format!("{prefix}-{i}")).collect(),
            removed: false,
        };
        let deadline = Instant::now() + CREATE_TIMEOUT;
        let to_caller = self.media_replies("U", &calls.ids, deadline, |i, id| {
            offer(&self.mods, id, pairs[i].0)
        })?;
        let to_callee = self.media_replies("L", &calls.ids, deadline, |i, id| {
            answer(&self.mods, id, pairs[i].1)
        })?;
        let addrs = to_caller
            .into_iter()
            .zip(to_callee)
            .map(|(to_caller, to_callee)| CallAddrs {
                to_callee,
                to_caller,
            })
            .collect();
        Ok((calls, addrs))
    }

    /// Runs `U` or `L` for every call (`command(index, call_id)` writes it) and reads the
    /// relay address each reply names.
    fn media_replies(
        &self,
        what: &str,
        ids: &[String],
        deadline: Instant,
        command: impl Fn(usize, &str) -> String,
    ) -> Result<Vec<SocketAddr>> {
        let commands: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| command(i, id))
            .collect();
        let replies = self.run(&commands, deadline, true);
        if sys::stop_requested() {
            bail!("interrupted while creating sessions");
        }
        ids.iter()
            .zip(replies)
            .map(|(id, reply)| {
                let reply = reply.with_context(|| format!("{what} {id}: no reply"))?;
                media_address(&reply, self.link.relay_ip())
                    .map_err(|e| anyhow!("{what} {id}: {e} (reply {reply:?})"))
            })
            .collect()
    }

    /// Sends `commands` (a window at a time) until each has a reply, gave up, or `deadline`
    /// passed. A stop request ends it early only if `interruptible` (creation stops, removal
    /// must finish).
    fn run(
        &self,
        commands: &[String],
        deadline: Instant,
        interruptible: bool,
    ) -> Vec<Option<String>> {
        match &self.link {
            Link::Udp { sock, .. } => self.run_udp(sock, commands, deadline, interruptible),
            Link::Unix(path) => stream::run(path, commands, self.window, deadline, interruptible),
        }
    }

    /// Datagram mode: cookies, retransmitting unanswered commands with the same cookie.
    fn run_udp(
        &self,
        sock: &UdpSocket,
        commands: &[String],
        deadline: Instant,
        interruptible: bool,
    ) -> Vec<Option<String>> {
        let first = self
            .next_cookie
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        let mut ex = Exchange::new(commands.len(), &self.cookie_base, first, self.window);
        let mut buf = [0u8; 4096];
        while !ex.done() && Instant::now() < deadline {
            if interruptible && sys::stop_requested() {
                break;
            }
            for (cookie, i) in ex.due(Instant::now()) {
                // A failed send is retried like a lost one.
                let _ = sock.send(format!("{cookie} {}", commands[i]).as_bytes());
            }
            match sock.recv(&mut buf) {
                Ok(n) => ex.on_datagram(&buf[..n]),
                // Nothing yet; or ICMP port unreachable from a relay not (yet) listening,
                // which the retransmissions and their limit handle.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => std::thread::sleep(POLL),
            }
        }
        ex.into_replies()
    }
}

/// `U[mods] callid addr port fromtag;1`: the offer, with where the caller receives.
fn offer(mods: &str, id: &str, caller: SocketAddr) -> String {
    let six = if caller.is_ipv6() { "6" } else { "" };
    format!(
        "U{mods}{six} {id} {} {} {}",
        caller.ip(),
        caller.port(),
        from_tag(id)
    )
}

/// `L[mods] callid addr port fromtag;1 totag;1`: the answer, as Kamailio sends it from the 200
/// OK (the tags keep the dialog's From/To order; proxies swap them only for an offer in a reply
/// or an answer in a request).
fn answer(mods: &str, id: &str, callee: SocketAddr) -> String {
    let six = if callee.is_ipv6() { "6" } else { "" };
    format!(
        "L{mods}{six} {id} {} {} {} {}",
        callee.ip(),
        callee.port(),
        from_tag(id),
        to_tag(id)
    )
}

fn from_tag(id: &str) -> String {
    format!("f-{id};1")
}

fn to_tag(id: &str) -> String {
    format!("t-{id};1")
}

/// A trial's calls on the relay.
pub struct Calls<'a> {
    rtpp: &'a Rtpp,
    ids: Vec<String>,
    removed: bool,
}

/// The relay's counters of a trial's calls (`Q`), summed: its own view of what it received,
/// relayed and dropped, a cross-check of the sink's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueryTotals {
    /// Calls that answered `Q`.
    pub calls: u64,
    /// `npkts_ina + npkts_ino`: packets received on both sides.
    pub received: u64,
    pub relayed: u64,
    pub dropped: u64,
}

impl QueryTotals {
    pub fn to_json(self) -> Value {
        json!({
            "calls": self.calls, "packets_received": self.received,
            "packets_relayed": self.relayed, "packets_dropped": self.dropped,
        })
    }
}

/// The outcome of deleting a trial's calls.
pub struct Removal {
    pub totals: QueryTotals,
    /// Calls whose `D` got no reply or an error other than "no such session".
    pub left: u64,
}

impl Calls<'_> {
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Queries and deletes every call of the trial, bounded by the cleanup timeout. Never
    /// fails as a whole: what could not be deleted is counted in [`Removal::left`].
    pub fn remove(&mut self) -> Removal {
        self.removed = true;
        let rtpp = self.rtpp;
        let start = Instant::now();
        let tags = |id: &String| format!("{id} {} {}", from_tag(id), to_tag(id));
        let queries: Vec<String> = self
            .ids
            .iter()
            .map(|id| format!("Q {}", tags(id)))
            .collect();
        // The counters are worth half the time at most; the deletes must get the rest.
        let replies = rtpp.run(&queries, start + rtpp.cleanup_timeout / 2, false);
        let mut totals = QueryTotals::default();
        for q in replies.iter().flatten().filter_map(|r| query_counts(r)) {
            totals.calls += 1;
            totals.received += q[1] + q[2];
            totals.relayed += q[3];
            totals.dropped += q[4];
        }
        let deletes: Vec<String> = self
            .ids
            .iter()
            .map(|id| format!("D {}", tags(id)))
            .collect();
        let replies = rtpp.run(&deletes, start + rtpp.cleanup_timeout, false);
        let mut left = 0;
        let mut first_error = None;
        for (id, reply) in self.ids.iter().zip(&replies) {
            match reply.as_deref().map(delete_outcome) {
                Some(DeleteOutcome::Deleted | DeleteOutcome::Unknown) => {}
                other => {
                    left += 1;
                    first_error.get_or_insert_with(|| format!("D {id}: {other:?} {reply:?}"));
                }
            }
        }
        if let Some(e) = first_error {
            eprintln!("rtp-blaster: {left} call deletion(s) failed, e.g. {e}");
        }
        Removal { totals, left }
    }
}

impl Drop for Calls<'_> {
    /// The error and interrupt path: best effort, bounded, and loud if something is left.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        eprintln!("rtp-blaster: deleting {} call(s)", self.ids.len());
        let left = self.remove().left;
        if left > 0 {
            eprintln!("rtp-blaster: warning: {left} call(s) may still be on the relay");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_carry_the_dialog_tags_and_the_family() {
        let v4 = "127.0.0.1:4000".parse().expect("addr");
        let v6 = "[::1]:4002".parse().expect("addr");
        assert_eq!(offer("", "c-1", v4), "U c-1 127.0.0.1 4000 f-c-1;1");
        assert_eq!(answer("a", "c-1", v6), "La6 c-1 ::1 4002 f-c-1;1 t-c-1;1");
    }
}
