//! Carrying out parsed rtpproxy commands on the relay's shards.
//!
//! One rtpproxy stream (call-ID, from-tag, media index) is one relay session, named by
//! [`session_id`]. The caller's side is the session's listen side and the callee's side its
//! connect side: `U` (from the caller's INVITE) creates the session with both port pairs and
//! answers the connect port, which the proxy puts into the SDP towards the callee; `L` (from the
//! callee's answer) answers the listen port, which goes to the caller. Both sides' addresses are
//! taken from the commands and then learned from the first packets (symmetric latching), unless
//! the command says `a` (asymmetric).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rtprelay_dataplane::session::peer::Latching;
use rtprelay_dataplane::{CreateError, ListQuery, Protocol, SessionSnapshot, SessionSpec};
use tracing::{info, warn};

use super::bridge::{BridgeAddresses, LocalAddresses};
use super::command::{Command, QueryStat, StreamRef, UpdateLookup};
use super::error::ErrorCode;
use super::notify::{Notifier, Target};
use super::query::QueryView;
use super::refs::{self, RefTable};
use super::reply::{Info, Reply, StatValue};
use super::{capabilities, session_id};
use crate::router::Router;
use crate::validate::{self, SessionDefaults};

mod forks;

/// What the executor needs to know about the relay.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Local media address for IPv4 streams (also announced in replies).
    pub media_v4: IpAddr,
    /// Local media address for IPv6 streams, if the relay has one.
    pub media_v6: Option<IpAddr>,
    /// A stream without media for this long expires (rtpproxy's TTL); U/L refresh it.
    pub ttl: Duration,
    pub defaults: SessionDefaults,
    /// Where `R` writes pcap files; `None` disables recording (`R` answers E65).
    pub record_dir: Option<PathBuf>,
    /// rtpproxy's bridge mode (`i`/`e`); `None` makes those modifiers errors.
    pub bridge: Option<BridgeAddresses>,
}

/// Executes commands; shared by all control sockets.
pub struct Executor {
    router: Router,
    cfg: ExecutorConfig,
    created: AtomicU64,
    notifier: std::sync::Arc<Notifier>,
    refs: std::sync::Arc<RefTable>,
}

/// Which side of an existing session a command speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The from-tag names the session: the caller.
    Caller,
    /// The to-tag names the session: the callee, with tags swapped.
    Callee,
}

impl Executor {
    pub fn new(router: Router, cfg: ExecutorConfig, notifier: std::sync::Arc<Notifier>) -> Self {
        Self {
            router,
            cfg,
            created: AtomicU64::new(0),
            notifier,
            refs: std::sync::Arc::default(),
        }
    }

    /// The weak/strong reference table; its [`RefTable::run`] must follow the relay's events
    /// so entries of closed streams are dropped.
    pub fn refs(&self) -> std::sync::Arc<RefTable> {
        self.refs.clone()
    }

    pub async fn execute(&self, cmd: Command) -> Reply {
        match cmd {
            Command::Version => Reply::Version,
            // Timeout notification is there only when a notify socket is allowed.
            Command::VersionFeature { date } if date == "20081224" => {
                Reply::Feature(self.notifier.enabled())
            }
            Command::VersionFeature { date } => Reply::Feature(capabilities::supports(&date)),
            Command::Update(u) => self.update_or_lookup(u, false).await,
            Command::Lookup(u) => self.update_or_lookup(u, true).await,
            Command::Delete { stream, weak } => self.delete(&stream, weak).await,
            Command::Query {
                stream,
                verbose,
                stats,
            } => self.query(&stream, verbose, &stats).await,
            Command::Info { .. } => self.info().await,
            Command::GetStats { verbose, names } => self.global_stats(verbose, names).await,
            Command::DeleteAll => self.delete_all().await,
            // Prompts are not implemented: answer a precise error rather than pretend.
            Command::Play { .. } | Command::StopPlay { .. } => Reply::Error(ErrorCode::PlayFailed),
            Command::Copy { stream, target, .. } => self.copy(&stream, &target).await,
            Command::Record { stream, .. } => self.record(&stream).await,
            Command::NoRecord { stream, .. } => self.stop_forks(&stream).await,
        }
    }

    /// Finds the session of `stream`: by the from-tag first (the caller's own command), then by
    /// the to-tag (the callee speaking, tags swapped), as rtpproxy searches.
    async fn find(&self, stream: &StreamRef) -> Result<Option<(Side, SessionSnapshot)>, ErrorCode> {
        for (i, id) in session_id::candidates(stream).into_iter().enumerate() {
            let found = self
                .router
                .get(id)
                .await
                .map_err(|_| ErrorCode::ShuttingDown)?;
            if let Some(s) = found {
                return Ok(Some((if i == 0 { Side::Caller } else { Side::Callee }, s)));
            }
        }
        Ok(None)
    }

    fn addresses(&self) -> LocalAddresses {
        LocalAddresses {
            v4: self.cfg.media_v4,
            v6: self.cfg.media_v6,
            bridge: self.cfg.bridge,
        }
    }

    async fn update_or_lookup(&self, u: UpdateLookup, lookup: bool) -> Reply {
        if u.modifiers.ptime_ms.is_some() {
            // Repacketization is not implemented (VF 20071116 answers 0).
            return Reply::Error(ErrorCode::UnknownModifier);
        }
        if let Some(n) = &u.notify
            && !self.notifier.allowed(&n.socket)
        {
            warn!(
                socket = n.socket,
                "notify socket not in [rtpproxy] notify; refused"
            );
            return Reply::Error(ErrorCode::NotifyDisabled);
        }
        if let Err(code) = self.addresses().check(&u.modifiers) {
            return Reply::Error(code);
        }
        let remote = u.remote_known();
        let found = match self.find(&u.stream).await {
            Ok(f) => f,
            Err(code) => return Reply::Error(code),
        };
        // Announce the advertised address of the side's interface (NAT), else the bound one.
        let port_reply = |s: &SessionSnapshot, listen_side: bool| {
            let (a, advertised) = if listen_side {
                (s.listen, s.listen_advertised)
            } else {
                (s.connect, s.connect_advertised)
            };
            Reply::Port {
                port: a.port(),
                addr: Some(advertised.unwrap_or(a.ip())),
            }
        };
        match found {
            // The command's own side: U names the caller (reply: where the callee sends),
            // L names the callee (reply: where the caller sends). With swapped tags, mirrored.
            Some((side, s)) => {
                let caller_speaks = (side == Side::Caller) != lookup;
                let s = if u.modifiers.new_port {
                    match self.new_port(&u, s, !caller_speaks).await {
                        Ok(s) => s,
                        Err(code) => return Reply::Error(code),
                    }
                } else {
                    s
                };
                let (client, destination) = if caller_speaks {
                    (remote, None)
                } else {
                    (None, remote)
                };
                if let Err(e) = self.router.update(s.id.clone(), client, destination).await {
                    warn!(error = %e, "rtpproxy update failed");
                    return Reply::Error(ErrorCode::ShuttingDown);
                }
                let index = refs::stream_index(side == Side::Caller, !lookup);
                self.refs
                    .hold(&s.id, s.created_us, index, u.modifiers.weak, !lookup);
                port_reply(&s, !caller_speaks)
            }
            None if lookup => Reply::Ok,
            None => match self.create(&u, remote).await {
                Ok(s) => {
                    self.refs.created(&s.id, s.created_us, u.modifiers.weak);
                    if let Some(n) = &u.notify {
                        let target = Target {
                            socket: n.socket.clone(),
                            tag: n.tag.clone(),
                        };
                        self.notifier.register(s.id.clone(), s.created_us, target);
                    }
                    port_reply(&s, false)
                }
                Err(code) => Reply::Error(code),
            },
        }
    }

    async fn create(
        &self,
        u: &UpdateLookup,
        remote: Option<SocketAddr>,
    ) -> Result<SessionSnapshot, ErrorCode> {
        let ipv6 = u.modifiers.ipv6 || u.remote.is_ipv6();
        let legs = self
            .addresses()
            .new_stream(&u.modifiers, ipv6, route_source)?;
        // The callee's address is not known before L: "unspecified" of the callee leg's family.
        let unknown = if legs.connect.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let id = session_id::session_id(&u.stream.call_id, &u.stream.from_tag);
        let spec = SessionSpec {
            id: id.clone(),
            protocol: Protocol::Udp,
            listen: SocketAddr::new(legs.listen, 0),
            connect: SocketAddr::new(legs.connect, 0),
            destination: SocketAddr::new(unknown, 0),
            options: self.options(u.modifiers.asymmetric, remote)?,
        };
        let s = self.create_spec(spec).await?;
        self.created.fetch_add(1, Ordering::Relaxed);
        info!(session = %s.id, listen = %s.listen, connect = %s.connect, "rtpproxy stream created");
        Ok(s)
    }

    fn options(
        &self,
        asymmetric: bool,
        client: Option<SocketAddr>,
    ) -> Result<rtprelay_dataplane::session::SessionOptions, ErrorCode> {
        let mut options =
            validate::options(None, &self.cfg.defaults).map_err(|_| ErrorCode::OutOfMemory)?;
        options.monitor.idle_timeout = Some(self.cfg.ttl);
        options.latching = if asymmetric {
            Latching::Asymmetric
        } else {
            Latching::Symmetric
        };
        options.client = client;
        Ok(options)
    }

    /// `n` on an existing stream: the port pair this command announces (the listen side's for
    /// `listen`, else the connect side's) is replaced by a freshly allocated one, and the old
    /// pair is closed. The data plane cannot re-bind one side of a live session, so the session
    /// is destroyed and created again under the same ID, keeping the other side's port, both
    /// peer addresses (signalled or latched; symmetric streams re-latch on the next packet),
    /// the references (`w`), the notify target and the copy target (`C`). What restarts:
    /// packet counters and media statistics, the TTL, and recording (`R` must be sent again;
    /// the old file is complete). gRPC watchers see the session closed ("destroyed") and
    /// created again.
    async fn new_port(
        &self,
        u: &UpdateLookup,
        s: SessionSnapshot,
        listen: bool,
    ) -> Result<SessionSnapshot, ErrorCode> {
        let moved_to = self.addresses().new_port(&u.modifiers, route_source)?;
        // Read before the destroy: its close event may clear them at any moment after.
        let holders = self.refs.get(&s.id, s.created_us);
        let notify = self.notifier.take(&s.id, s.created_us);
        let old = match self.router.destroy(s.id.clone()).await {
            Ok(Some(old)) => old,
            Ok(None) => return Err(ErrorCode::SessionUnknown),
            Err(_) => return Err(ErrorCode::ShuttingDown),
        };
        let fresh = |a: SocketAddr| SocketAddr::new(moved_to.unwrap_or(a.ip()), 0);
        let (listen_addr, connect_addr) = if listen {
            (fresh(old.listen), old.connect)
        } else {
            (old.listen, fresh(old.connect))
        };
        let spec = SessionSpec {
            id: old.id.clone(),
            protocol: Protocol::Udp,
            listen: listen_addr,
            connect: connect_addr,
            destination: old.destination,
            options: self.options(u.modifiers.asymmetric, old.client)?,
        };
        let new = self.create_spec(spec).await?;
        self.refs.set(&new.id, new.created_us, holders);
        if let Some(target) = notify {
            self.notifier
                .register(new.id.clone(), new.created_us, target);
        }
        if let Some(target) = old.fork.copy_target
            && !matches!(
                self.router.set_copy(new.id.clone(), Some(target)).await,
                Ok(Ok(()))
            )
        {
            warn!(session = %new.id, %target, "copy could not be resumed after a new port");
        }
        let (from, to) = if listen {
            (old.listen, new.listen)
        } else {
            (old.connect, new.connect)
        };
        info!(session = %new.id, %from, %to, "rtpproxy stream moved to a new port");
        Ok(new)
    }

    async fn create_spec(&self, spec: SessionSpec) -> Result<SessionSnapshot, ErrorCode> {
        let id = spec.id.clone();
        match self.router.create(spec).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                warn!(session = %id, error = %e, "rtpproxy create refused");
                Err(match e {
                    CreateError::PortsExhausted { .. } | CreateError::TooManySockets => {
                        ErrorCode::ListenerFailed
                    }
                    CreateError::NotLocal { .. } => ErrorCode::LocalAddressUnavailable,
                    CreateError::ShuttingDown => ErrorCode::ShuttingDown,
                    _ => ErrorCode::ListenerBindFailed,
                })
            }
            Err(_) => Err(ErrorCode::ShuttingDown),
        }
    }

    /// `D[w]`: drops the strong reference (or with `w` the weak one of the command's side) of
    /// every stream the tags name; a stream goes when nothing holds it any more (see
    /// [`super::refs`]). Streams are looked up by the from-tag, then by the to-tag.
    async fn delete(&self, stream: &StreamRef, weak: bool) -> Reply {
        let mut tags = vec![(&stream.from_tag, true)];
        tags.extend(stream.to_tag.as_ref().map(|t| (t, false)));
        for (tag, first) in tags {
            let sessions = match tag.media {
                Some(_) => {
                    let id = session_id::session_id(&stream.call_id, tag);
                    match self.router.get(id).await {
                        Ok(s) => s.into_iter().collect(),
                        Err(_) => return Reply::Error(ErrorCode::ShuttingDown),
                    }
                }
                None => match self
                    .sessions_with_prefix(&session_id::prefix(&stream.call_id, &tag.tag))
                    .await
                {
                    Ok(s) => s,
                    Err(code) => return Reply::Error(code),
                },
            };
            if sessions.is_empty() {
                continue;
            }
            let index = refs::stream_index(first, false);
            for s in sessions {
                if self.refs.release(&s.id, s.created_us, index, weak) {
                    let _ = self.router.destroy(s.id).await;
                } else {
                    let h = self.refs.get(&s.id, s.created_us);
                    info!(session = %s.id, strong = h.strong, weak = ?h.weak, "rtpproxy stream still referenced; kept");
                }
            }
            return Reply::Ok;
        }
        Reply::Error(ErrorCode::SessionUnknown)
    }

    /// `Q`: the classic counters, or the named statistics in the order asked (see
    /// [`super::query`] for what each reports).
    async fn query(&self, stream: &StreamRef, verbose: bool, stats: &[QueryStat]) -> Reply {
        let (side, s) = match self.find(stream).await {
            Ok(Some(found)) => found,
            Ok(None) => return Reply::Error(ErrorCode::SessionUnknown),
            Err(code) => return Reply::Error(code),
        };
        let last = s
            .forward
            .last_activity_us
            .max(s.reverse.last_activity_us)
            .max(s.created_us);
        let idle_s = rtprelay_dataplane::time::unix_now_us().saturating_sub(last) / 1_000_000;
        let ttl = self.cfg.ttl.as_secs().saturating_sub(idle_s) as u32;
        let view = QueryView::new(&s, side == Side::Caller, ttl);
        if stats.is_empty() {
            return Reply::Query {
                verbose,
                counters: view.counters(),
            };
        }
        match view.stats(stats) {
            Ok(values) => Reply::QueryStats { verbose, values },
            Err(code) => {
                warn!(session = %s.id, "Q asked for a statistic the relay does not track");
                Reply::Error(code)
            }
        }
    }

    /// Every rtpproxy session (both ID forms).
    async fn rtpproxy_sessions(&self) -> Result<Vec<SessionSnapshot>, ErrorCode> {
        let mut all = self.sessions_with_prefix(session_id::PLAIN_PREFIX).await?;
        all.extend(self.sessions_with_prefix(session_id::HASHED_PREFIX).await?);
        Ok(all)
    }

    async fn sessions_with_prefix(&self, prefix: &str) -> Result<Vec<SessionSnapshot>, ErrorCode> {
        let query = ListQuery {
            prefix: prefix.to_owned(),
            after: None,
            limit: usize::MAX,
        };
        let pages = self
            .router
            .list_all(query)
            .await
            .map_err(|_| ErrorCode::ShuttingDown)?;
        Ok(pages.into_iter().flat_map(|p| p.sessions).collect())
    }

    async fn info(&self) -> Reply {
        let sessions = match self.rtpproxy_sessions().await {
            Ok(s) => s,
            Err(code) => return Reply::Error(code),
        };
        let (rcvd, sent) = totals(&sessions);
        Reply::Info(Info {
            sessions_created: self.created.load(Ordering::Relaxed),
            active_sessions: sessions.len() as u64,
            active_streams: 2 * sessions.len() as u64,
            packets_received: rcvd,
            packets_transmitted: sent,
            average_load: None,
        })
    }

    async fn global_stats(&self, verbose: bool, names: Vec<String>) -> Reply {
        let sessions = match self.rtpproxy_sessions().await {
            Ok(s) => s,
            Err(code) => return Reply::Error(code),
        };
        let (rcvd, sent) = totals(&sessions);
        let known = [
            ("nsess_created", self.created.load(Ordering::Relaxed)),
            ("nsess_active", sessions.len() as u64),
            ("npkts_rcvd", rcvd),
            ("npkts_relayed", sent),
        ];
        let wanted: Vec<&str> = if names.is_empty() {
            known.iter().map(|k| k.0).collect()
        } else {
            names.iter().map(String::as_str).collect()
        };
        let mut values = Vec::with_capacity(wanted.len());
        for name in wanted {
            match known.iter().find(|k| k.0 == name) {
                Some(&(n, v)) => values.push((n.to_owned(), StatValue::Count(v))),
                None => return Reply::Error(ErrorCode::StatsFailed),
            }
        }
        Reply::Stats { verbose, values }
    }

    async fn delete_all(&self) -> Reply {
        let sessions = match self.rtpproxy_sessions().await {
            Ok(s) => s,
            Err(code) => return Reply::Error(code),
        };
        for s in sessions {
            let _ = self.router.destroy(s.id).await;
        }
        Reply::Ok
    }
}

/// The local address the kernel would send from towards `remote` (`r<addr>`): a connected
/// UDP socket is routed without sending anything, and its local address is the answer.
fn route_source(remote: IpAddr) -> Result<IpAddr, ErrorCode> {
    if remote.is_unspecified() || remote.is_multicast() {
        return Err(ErrorCode::RouteAddressInvalid);
    }
    let any: SocketAddr = if remote.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any).map_err(|_| ErrorCode::NoRouteToRemote)?;
    probe
        .connect(SocketAddr::new(remote, 9))
        .map_err(|_| ErrorCode::NoRouteToRemote)?;
    let local = probe
        .local_addr()
        .map_err(|_| ErrorCode::NoRouteToRemote)?
        .ip();
    if local.is_unspecified() {
        return Err(ErrorCode::RoutedLocalUnavailable);
    }
    Ok(local)
}

fn totals(sessions: &[SessionSnapshot]) -> (u64, u64) {
    sessions.iter().fold((0, 0), |(r, t), s| {
        let c = [s.forward.rtp, s.forward.rtcp, s.reverse.rtp, s.reverse.rtcp];
        (
            r + c.iter().map(|c| c.packets_received).sum::<u64>(),
            t + c.iter().map(|c| c.packets_sent).sum::<u64>(),
        )
    })
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn route_to_loopback_is_loopback() {
        assert_eq!(
            route_source("127.0.0.1".parse().unwrap()),
            Ok("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            route_source("::1".parse().unwrap()),
            Ok("::1".parse().unwrap())
        );
        assert_eq!(
            route_source("0.0.0.0".parse().unwrap()),
            Err(ErrorCode::RouteAddressInvalid)
        );
        assert_eq!(
            route_source("224.0.0.1".parse().unwrap()),
            Err(ErrorCode::RouteAddressInvalid)
        );
    }
}
