//! One shard's sessions and sockets: creating, closing and snapshotting sessions, and the
//! per-packet lookup from a socket token to its session.
//!
//! Everything here runs on the shard's own thread. Sessions live in a slab indexed by a small
//! integer, sockets in a table indexed by their I/O token; a packet costs two array lookups and
//! the session's pure forwarding decision.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::ops::Bound;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::fork::{fork_copy, fork_local};
use crate::command::{
    CreateError, EndpointField, ForkError, ListPage, ListQuery, RecordFile, Reply,
};
use crate::config::MediaInterface;
use crate::event::{CloseReason, Event, EventKind, EventSink};
use crate::iface;
use crate::io::{Action, MediaIo, PacketHandler, Received, Token};
use crate::ports::{PortAllocator, PortRange};
use crate::record::Recorder;
use crate::rtp;
use crate::session::monitor::{Due, Monitor, Observed};
use crate::session::peer::{self, Latching};
use crate::session::udp::{UdpRelay, Verdict};
use crate::session::{ForkSnapshot, Leg, Protocol, SessionSnapshot, SessionSpec, SessionState};
use crate::socket::{
    BindError, SocketOptions, UdpPair, bind_pair, bind_tcp_listener, connect_pair,
};
use crate::tcp::TcpSession;
use crate::time::unix_now_us;

struct SocketRef {
    session: u32,
    leg: Leg,
}

struct Closing {
    reason: CloseReason,
    /// Sockets whose pending receive has not ended yet.
    open: u8,
    reply: Option<Reply<Option<SessionSnapshot>>>,
    /// The session never became visible (a create that failed half-way): no Closed event.
    silent: bool,
}

/// `repr(C)` keeps the fields in this order: what every packet reads (closing, fork,
/// generation, connected flags, then the transport with its tokens ahead of the relay state)
/// comes first, contiguous with the relay state's own hot fields; the rest comes after. Keep
/// the size off powers of two (2,032 bytes when this was written): entries of 2,048 bytes
/// would put the same field of every session into the same few cache sets.
#[repr(C)]
struct Entry {
    closing: Option<Closing>,
    /// Allocated the first time the session is forked or recorded: most sessions never are.
    fork: Option<Box<Fork>>,
    generation: u32,
    /// UDP: the connect-side RTP and RTCP sockets are connected to the destination
    /// ([`SocketOptions::connect_destination`]).
    connected: [bool; 2],
    transport: Transport,
    destination: SocketAddr,
    /// Shared with the table's index by ID, so the ID is stored once.
    id: Rc<str>,
    listen: SocketAddr,
    connect: SocketAddr,
    /// Interned per shard (see [`DeviceCache`]): a session holds no copy of its own.
    listen_device: Option<Rc<str>>,
    connect_device: Option<Rc<str>>,
    created_us: u64,
    /// Last control-plane refresh (rtpproxy U/L), counted as activity for the idle timeout.
    refreshed_us: u64,
    monitor: Monitor,
}

/// Media forking (rtpproxy `C`) and recording (rtpproxy `R`) of one UDP session: RTP and RTCP,
/// and only packets the session relays.
#[derive(Default)]
struct Fork {
    copy_target: Option<SocketAddr>,
    copies_sent: u64,
    copies_failed: u64,
    /// The session's key in the shard's [`Recorder`] while recording.
    recording: Option<u64>,
    records_queued: u64,
    records_dropped: u64,
}

impl Fork {
    fn snapshot(&self) -> ForkSnapshot {
        ForkSnapshot {
            copy_target: self.copy_target,
            copies_sent: self.copies_sent,
            copies_failed: self.copies_failed,
            recording: self.recording.is_some(),
            records_queued: self.records_queued,
            records_dropped: self.records_dropped,
        }
    }
}

/// What moves a session's bytes. The table creates, closes, supervises and snapshots both the
/// same way; only the UDP variant sits on the shard's per-packet path. `repr(C)`: a variant's
/// fields stay in the order written, the tokens ahead of the relay state (see [`Entry`]).
// UDP stays inline: boxing it would add a pointer chase to every packet, while the few bytes a
// TCP entry wastes in the slab do not matter.
#[allow(clippy::large_enum_variant)]
#[repr(C)]
enum Transport {
    /// The sockets live in the I/O layer's registered-file table only: the table holds a
    /// reference to each, so the session keeps no descriptor open and 10,000+ sessions fit in a
    /// process's open-files limit. Clearing the slot (`remove_sockets`) closes the socket.
    Udp { tokens: [Token; 4], relay: UdpRelay },
    /// Driven by its own glommio task, which owns the sockets.
    Tcp(TcpSession),
}

/// How long a looked-up device name is trusted. Looking it up costs a netlink dump of every
/// interface address (getifaddrs), which at thousands of creates per second was a large part
/// of a create; addresses move between interfaces rarely, and a session created within this
/// window of a move binds to the old device like one created just before it.
const DEVICE_TTL_US: u64 = 1_000_000;

/// The device owning each local address a session was bound on, looked up at most once per
/// [`DEVICE_TTL_US`] per address, and interned so sessions share the name.
#[derive(Default)]
struct DeviceCache {
    by_ip: HashMap<IpAddr, (Option<Rc<str>>, u64)>,
}

impl DeviceCache {
    fn lookup(&mut self, ip: IpAddr, now_us: u64) -> std::io::Result<Option<Rc<str>>> {
        if let Some((dev, at)) = self.by_ip.get(&ip)
            && now_us.saturating_sub(*at) < DEVICE_TTL_US
        {
            return Ok(dev.clone());
        }
        let dev: Option<Rc<str>> = iface::device_of(ip)?.map(Rc::from);
        // Keep the old allocation when the name did not change, so sessions keep sharing it.
        let dev = match self.by_ip.get(&ip) {
            Some((Some(old), _)) if dev.as_deref() == Some(&**old) => Some(old.clone()),
            _ => dev,
        };
        self.by_ip.insert(ip, (dev.clone(), now_us));
        Ok(dev)
    }

    fn cached(&self, ip: IpAddr) -> Option<Rc<str>> {
        self.by_ip.get(&ip).and_then(|(d, _)| d.clone())
    }
}

/// Called by a TCP session's task once it has closed its sockets: (slot, generation).
pub(crate) type TcpDone = Rc<dyn Fn(u32, u32)>;

/// The sessions of one shard.
pub(crate) struct SessionTable {
    shard: u32,
    sessions: Vec<Option<Entry>>,
    free_sessions: Vec<u32>,
    next_generation: u32,
    by_id: BTreeMap<Rc<str>, u32>,
    sockets: Vec<Option<SocketRef>>,
    free_tokens: Vec<Token>,
    ports: PortAllocator,
    /// Configured interfaces by address, and the allocators of those with their own range.
    interfaces: HashMap<IpAddr, MediaInterface>,
    iface_ports: HashMap<IpAddr, PortAllocator>,
    devices: DeviceCache,
    sock_opts: SocketOptions,
    events: Arc<dyn EventSink>,
    /// Scratch space for the supervision tick, kept to avoid reallocating every tick.
    due: Vec<Due>,
    /// Set by shutdown: no new session is accepted.
    pub stopping: bool,
    live: usize,
    /// How TCP session tasks report back; set by the shard once the table is shared.
    tcp_done: Option<TcpDone>,
    /// The shard's pcap writer, started by the first recording.
    recorder: Option<Recorder>,
}

/// Packs a send's owner into the 64-bit tag the I/O layer hands back on completion: session
/// slot (32 bits), generation (24 bits), sending leg (8 bits). The generation keeps a completion
/// that arrives after its session closed from being counted on the slot's next session.
fn tag(slot: u32, generation: u32, via: Leg) -> u64 {
    u64::from(slot) | (u64::from(generation & 0xff_ffff) << 32) | ((via as u64) << 56)
}

fn untag(tag: u64) -> (u32, u32, Option<Leg>) {
    (
        tag as u32,
        ((tag >> 32) & 0xff_ffff) as u32,
        Leg::from_index((tag >> 56) as u8),
    )
}

impl SessionTable {
    pub fn new(
        shard: u32,
        shards: u32,
        range: PortRange,
        max_sockets: u32,
        sock_opts: SocketOptions,
        interfaces: &[MediaInterface],
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            shard,
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            next_generation: 0,
            by_id: BTreeMap::new(),
            sockets: (0..max_sockets).map(|_| None).collect(),
            free_tokens: (0..max_sockets).rev().collect(),
            tcp_done: None,
            ports: PortAllocator::new(range, shard, shards),
            iface_ports: interfaces
                .iter()
                .filter_map(|i| Some((i.address, PortAllocator::new(i.ports?, shard, shards))))
                .collect(),
            interfaces: interfaces.iter().map(|i| (i.address, i.clone())).collect(),
            devices: DeviceCache::default(),
            sock_opts,
            events,
            due: Vec::new(),
            stopping: false,
            live: 0,
            recorder: None,
        }
    }

    /// Sessions that exist, including those still closing.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn create(
        &mut self,
        io: &mut dyn MediaIo,
        spec: SessionSpec,
    ) -> Result<SessionSnapshot, CreateError> {
        if self.stopping {
            return Err(CreateError::ShuttingDown);
        }
        if self.by_id.contains_key(spec.id.as_str()) {
            return Err(CreateError::AlreadyExists(spec.id));
        }
        if spec.protocol == Protocol::Tcp {
            return self.create_tcp(spec);
        }
        if self.free_tokens.len() < 4 {
            return Err(CreateError::TooManySockets);
        }
        let listen = self.bind(EndpointField::Listen, spec.listen)?;
        let out = self.bind(EndpointField::Connect, spec.connect)?;
        // Only a strict session never sends from, nor accepts on, its connect side anything
        // but the destination; the others learn or change it later.
        let connected = match (peer::known(spec.destination), spec.options.latching) {
            (Some(rtp), Latching::Strict) if self.sock_opts.connect_destination => {
                match peer::rtcp_beside(rtp) {
                    Some(rtcp) => connect_pair(&out, [rtp, rtcp]),
                    None => [false; 2],
                }
            }
            _ => [false; 2],
        };
        self.allocator(listen.addr.ip())
            .claim(listen.addr.ip(), listen.addr.port());
        self.allocator(out.addr.ip())
            .claim(out.addr.ip(), out.addr.port());

        let slot = self.free_sessions.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            (self.sessions.len() - 1) as u32
        });
        // Checked above: at least four tokens are free. In ascending order, so that four
        // consecutive tokens (the usual case) enter the ring's file table in one system call.
        let mut tokens = [0; 4];
        for token in &mut tokens {
            *token = self.free_tokens.pop().unwrap_or_default();
        }
        tokens.sort_unstable();
        for (leg, &token) in Leg::ALL.into_iter().zip(&tokens) {
            self.sockets[token as usize] = Some(SocketRef { session: slot, leg });
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let (listen_addr, connect_addr) = (listen.addr, out.addr);
        let listen_device = self.bound_device(&listen);
        let connect_device = self.bound_device(&out);
        let sockets = [listen.rtp, listen.rtcp, out.rtp, out.rtcp];
        let id: Rc<str> = Rc::from(spec.id.as_str());
        let created_us = unix_now_us();
        let entry = Entry {
            monitor: Monitor::new(spec.options.monitor.clone(), created_us),
            refreshed_us: created_us,
            id: id.clone(),
            generation: self.next_generation,
            listen: listen_addr,
            connect: connect_addr,
            destination: spec.destination,
            listen_device,
            connect_device,
            created_us,
            transport: Transport::Udp {
                relay: {
                    let mut relay = UdpRelay::with_peers(
                        spec.options.latching,
                        spec.options.client,
                        Some(spec.destination),
                    );
                    relay.configure(&spec.options.clock_rates, spec.options.drop_non_rtp);
                    relay
                },
                tokens,
            },
            connected,
            closing: None,
            fork: None,
        };
        self.sessions[slot as usize] = Some(entry);
        self.live += 1;

        // Our descriptors are closed when `sockets` drops at the end of this function: from
        // then on only the registered-file table keeps each socket (and its port) alive.
        let registering: [(Token, RawFd); 4] =
            std::array::from_fn(|k| (tokens[k], sockets[k].as_raw_fd()));
        if let Err((k, source)) = io.add_sockets(&registering) {
            warn!(session = %spec.id, error = %source, "registering a socket failed; rolling back");
            // Sockets 0..k have a receive pending and are released through the I/O layer;
            // k.. were never registered and are released now.
            for &t in &tokens[k..] {
                self.sockets[t as usize] = None;
                self.free_tokens.push(t);
            }
            self.begin_close(io, slot, CloseReason::Destroyed, None, k as u8, true);
            let field = if k < 2 {
                EndpointField::Listen
            } else {
                EndpointField::Connect
            };
            return Err(CreateError::Socket { field, source });
        }
        self.by_id.insert(id, slot);
        let snapshot = self.snapshot(slot, SessionState::Forwarding);
        info!(
            session = %spec.id, shard = self.shard, listen = %listen_addr, connect = %connect_addr,
            destination = %spec.destination,
            listen_device = snapshot.listen_device.as_deref().unwrap_or("-"),
            connect_device = snapshot.connect_device.as_deref().unwrap_or("-"),
            "session created"
        );
        if self.events.wanted() {
            self.emit(&spec.id, EventKind::Created(Box::new(snapshot.clone())));
        }
        Ok(snapshot)
    }

    /// Starts closing `id`; the reply is sent once its ports are free. Replies `None` at once if
    /// the session is unknown or already closing.
    pub fn destroy(
        &mut self,
        io: &mut dyn MediaIo,
        id: &str,
        reply: Reply<Option<SessionSnapshot>>,
    ) {
        match self.open_slot(id) {
            Some(slot) => self.begin_close(io, slot, CloseReason::Destroyed, Some(reply), 4, false),
            None => {
                let _ = reply.send(None);
            }
        }
    }

    /// Closes every session for shutdown.
    pub fn close_all(&mut self, io: &mut dyn MediaIo) {
        self.stopping = true;
        let open: Vec<u32> = self
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.closing.is_none()))
            .map(|(i, _)| i as u32)
            .collect();
        for slot in open {
            self.begin_close(io, slot, CloseReason::Shutdown, None, 4, false);
        }
    }

    /// New signalled peer addresses for `id` (rtpproxy U/L on a re-INVITE); also counts as
    /// activity for the idle timeout, as rtpproxy's U/L refresh its TTL.
    pub fn update(
        &mut self,
        id: &str,
        client: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    ) -> Option<SessionSnapshot> {
        let slot = self.open_slot(id)?;
        let entry = self.sessions[slot as usize].as_mut()?;
        if let Transport::Udp { relay, .. } = &mut entry.transport {
            relay.resignal(client, destination);
        }
        entry.refreshed_us = unix_now_us();
        Some(self.snapshot(slot, SessionState::Forwarding))
    }

    /// The slot of the open UDP session `id`, which copying and recording need.
    fn open_udp_slot(&self, id: &str) -> Result<u32, ForkError> {
        let slot = self.open_slot(id).ok_or(ForkError::UnknownSession)?;
        match self.sessions[slot as usize].as_ref().map(|e| &e.transport) {
            Some(Transport::Udp { .. }) => Ok(slot),
            Some(Transport::Tcp(_)) => Err(ForkError::NotUdp),
            None => Err(ForkError::UnknownSession),
        }
    }

    /// Starts (`Some`) or stops (`None`) copying `id`'s relayed RTP to `target`. Copies leave
    /// from the session's connect-side RTP socket, so the target must be of its family.
    pub fn set_copy(&mut self, id: &str, target: Option<SocketAddr>) -> Result<(), ForkError> {
        let slot = self.open_udp_slot(id)?;
        let entry = self.sessions[slot as usize]
            .as_mut()
            .ok_or(ForkError::UnknownSession)?;
        if let Some(t) = target
            && t.is_ipv4() != entry.connect.is_ipv4()
        {
            return Err(ForkError::FamilyMismatch(t));
        }
        if entry.fork.as_ref().and_then(|f| f.copy_target) != target {
            info!(session = %entry.id, target = ?target, "media copy target set");
        }
        entry.fork.get_or_insert_default().copy_target = target;
        Ok(())
    }

    /// Starts (`Some`) or stops (`None`) recording `id`'s relayed RTP into a pcap file.
    pub fn set_record(&mut self, id: &str, file: Option<RecordFile>) -> Result<(), ForkError> {
        let slot = self.open_udp_slot(id)?;
        let entry = self.sessions[slot as usize]
            .as_mut()
            .ok_or(ForkError::UnknownSession)?;
        let Some(file) = file else {
            if let Some(key) = entry.fork.as_mut().and_then(|f| f.recording.take())
                && let Some(r) = &self.recorder
            {
                r.close(key);
            }
            return Ok(());
        };
        if entry.fork.as_ref().is_some_and(|f| f.recording.is_some()) {
            return Ok(());
        }
        let recorder = match &mut self.recorder {
            Some(r) => r,
            None => self
                .recorder
                .insert(Recorder::start(self.shard).map_err(ForkError::Writer)?),
        };
        let key = u64::from(slot) | (u64::from(entry.generation) << 32);
        recorder.open(key, file.file, file.path);
        entry.fork.get_or_insert_default().recording = Some(key);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<SessionSnapshot> {
        self.open_slot(id)
            .map(|slot| self.snapshot(slot, SessionState::Forwarding))
    }

    pub fn list(&self, query: &ListQuery) -> ListPage {
        let from = match &query.after {
            Some(after) if after.as_str() >= query.prefix.as_str() => {
                Bound::Excluded(after.as_str())
            }
            _ => Bound::Included(query.prefix.as_str()),
        };
        let matching = |(id, _): &(&Rc<str>, &u32)| id.starts_with(&query.prefix);
        let open = |(_, slot): &(&Rc<str>, &u32)| {
            self.sessions[**slot as usize]
                .as_ref()
                .is_some_and(|e| e.closing.is_none())
        };
        let total = self
            .by_id
            .range::<str, _>((Bound::Included(query.prefix.as_str()), Bound::Unbounded))
            .take_while(matching)
            .filter(open)
            .count();
        let sessions = self
            .by_id
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(matching)
            .filter(open)
            .take(query.limit)
            .map(|(_, slot)| self.snapshot(*slot, SessionState::Forwarding))
            .collect();
        ListPage { sessions, total }
    }

    /// Supervises the open sessions of share `part` of `parts` (slots `part`, `part + parts`,
    /// ...) at `now_us`: periodic statistics, alerts, idle timeouts. In shares, so the media
    /// path can run between them instead of waiting for all sessions at once.
    pub fn tick_part(&mut self, io: &mut dyn MediaIo, now_us: u64, part: usize, parts: usize) {
        let mut due = std::mem::take(&mut self.due);
        for slot in (part..self.sessions.len()).step_by(parts.max(1)) {
            let slot = slot as u32;
            let Some(entry) = self.sessions[slot as usize].as_mut() else {
                continue;
            };
            if entry.closing.is_some() {
                continue;
            }
            let observed = match &entry.transport {
                Transport::Udp { relay, .. } => Observed {
                    now_us,
                    last_activity_us: relay
                        .forward
                        .last_activity_us
                        .max(relay.reverse.last_activity_us)
                        .max(entry.refreshed_us),
                    ..relay.observe()
                },
                Transport::Tcp(tcp) => {
                    let s = tcp.shared.borrow();
                    let (fe, fr, fj) = s.media.totals(rtp::Direction::Forward);
                    let (re, rr, rj) = s.media.totals(rtp::Direction::Reverse);
                    // Connection state is the task's business; the supervisor only sees
                    // activity and media quality, so it never moves a TCP session's state.
                    Observed {
                        now_us,
                        last_activity_us: s
                            .forward
                            .last_activity_us
                            .max(s.reverse.last_activity_us)
                            .max(entry.refreshed_us),
                        expected: [fe, re],
                        received: [fr, rr],
                        jitter_ms: [fj, rj],
                        ..Observed::default()
                    }
                }
            };
            due.clear();
            entry.monitor.tick(&observed, &mut due);
            for d in due.drain(..) {
                self.act(io, slot, d);
            }
        }
        self.due = due;
    }

    fn act(&mut self, io: &mut dyn MediaIo, slot: u32, due: Due) {
        let Some(entry) = self.sessions[slot as usize].as_ref() else {
            return;
        };
        let id = entry.id.clone();
        let id = &*id;
        match due {
            Due::Stats => {
                let snapshot = self
                    .events
                    .wanted()
                    .then(|| self.snapshot(slot, SessionState::Forwarding));
                // Interval figures of the next update cover what happens from now on.
                if let Some(entry) = self.sessions[slot as usize].as_mut() {
                    match &mut entry.transport {
                        Transport::Udp { relay, .. } => {
                            relay.media.take_interval();
                        }
                        Transport::Tcp(tcp) => {
                            tcp.shared.borrow_mut().media.take_interval();
                        }
                    }
                }
                if let Some(snapshot) = snapshot {
                    self.emit(id, EventKind::StatsUpdate(Box::new(snapshot)));
                }
            }
            Due::IdleTimeout => {
                info!(session = %id, "no media for the idle timeout; closing");
                self.begin_close(io, slot, CloseReason::Timeout, None, 4, false);
            }
            Due::State { from, to, reason } => {
                warn!(session = %id, ?from, ?to, reason, "session state changed");
                self.emit(id, EventKind::StateChanged { from, to, reason });
            }
            Due::Error { new } => {
                let last = match &entry.transport {
                    Transport::Udp { relay, .. } => relay.last_error().map(|e| e.to_string()),
                    Transport::Tcp(_) => None,
                }
                .unwrap_or_default();
                let message = format!("{new} send(s) failed; last: {last}");
                warn!(session = %id, "{message}");
                self.emit(id, EventKind::Error(message));
            }
            Due::Alert {
                kind,
                direction,
                active,
                value,
                threshold,
            } => {
                warn!(session = %id, ?kind, ?direction, active, value, threshold, "media alert");
                self.emit(
                    id,
                    EventKind::Alert {
                        kind,
                        direction,
                        active,
                        value,
                        threshold,
                    },
                );
            }
        }
    }

    fn open_slot(&self, id: &str) -> Option<u32> {
        let slot = *self.by_id.get(id)?;
        let entry = self.sessions[slot as usize].as_ref()?;
        entry.closing.is_none().then_some(slot)
    }

    fn bind(&mut self, field: EndpointField, want: SocketAddr) -> Result<UdpPair, CreateError> {
        let classify = |e: BindError| match e {
            BindError::InUse { port } => CreateError::PortInUse { field, port },
            BindError::NotLocal(address) => CreateError::NotLocal { field, address },
            BindError::Io(source) => CreateError::Socket { field, source },
        };
        // Bind to the device that owns the address; an address no interface lists exactly
        // (e.g. 127.0.0.2 inside 127.0.0.0/8) is left to the kernel to accept or refuse.
        let device = if self.sock_opts.bind_device {
            self.devices
                .lookup(want.ip(), unix_now_us())
                .map_err(|source| CreateError::Socket { field, source })?
        } else {
            None
        };
        let mut opts = self.sock_opts.clone();
        if let Some(dscp) = self.interfaces.get(&want.ip()).and_then(|i| i.dscp) {
            opts.dscp = dscp;
        }
        let (device, opts) = (device.as_deref(), &opts);
        if want.port() != 0 {
            return bind_pair(want.ip(), want.port(), device, opts).map_err(classify);
        }
        let ports = self.iface_ports.get(&want.ip()).unwrap_or(&self.ports);
        for port in ports.candidates(want.ip()) {
            match bind_pair(want.ip(), port, device, opts) {
                Ok(pair) => return Ok(pair),
                Err(BindError::InUse { .. }) => {
                    debug!(%field, port, "port pair held elsewhere; trying the next");
                }
                Err(e) => return Err(classify(e)),
            }
        }
        Err(CreateError::PortsExhausted { field })
    }

    /// The device `pair` is bound to, as the shard's interned name.
    fn bound_device(&self, pair: &UdpPair) -> Option<Rc<str>> {
        if !pair.device_bound {
            return None;
        }
        self.devices.cached(pair.addr.ip())
    }

    /// The port allocator for `ip`: its interface's own range, or the default.
    fn allocator(&mut self, ip: IpAddr) -> &mut PortAllocator {
        self.iface_ports.get_mut(&ip).unwrap_or(&mut self.ports)
    }

    fn begin_close(
        &mut self,
        io: &mut dyn MediaIo,
        slot: u32,
        reason: CloseReason,
        reply: Option<Reply<Option<SessionSnapshot>>>,
        registered: u8,
        silent: bool,
    ) {
        let Some(entry) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        // No packet of a closing session is relayed any more: the recording is complete.
        if let Some(key) = entry.fork.as_mut().and_then(|f| f.recording.take())
            && let Some(r) = &self.recorder
        {
            r.close(key);
        }
        entry.closing = Some(Closing {
            reason,
            open: registered,
            reply,
            silent,
        });
        let tokens = match &entry.transport {
            Transport::Udp { tokens, .. } => *tokens,
            Transport::Tcp(tcp) => {
                // The task closes its sockets and then calls `tcp_finished`.
                tcp.close();
                return;
            }
        };
        // Clearing a registered slot drops the last reference but the pending receive's: the
        // port is free once that receive has ended (see `on_socket_released`). The cancellations
        // reach the kernel with the caller's next flush (the control task's after a burst of
        // commands, the supervisor's after each share of its tick); their completions wake the
        // media task.
        io.remove_sockets(&tokens[..usize::from(registered)]);
        if registered == 0 {
            self.finish_close(slot);
        }
    }

    fn finish_close(&mut self, slot: u32) {
        let snapshot = self.snapshot(slot, SessionState::Closed);
        let Some(mut entry) = self.sessions[slot as usize].take() else {
            return;
        };
        self.free_sessions.push(slot);
        self.live -= 1;
        self.allocator(entry.listen.ip())
            .release(entry.listen.ip(), entry.listen.port());
        self.allocator(entry.connect.ip())
            .release(entry.connect.ip(), entry.connect.port());
        if self.by_id.get(&*entry.id) == Some(&slot) {
            self.by_id.remove(&*entry.id);
        }
        let Some(closing) = entry.closing.take() else {
            return;
        };
        if !closing.silent {
            info!(session = %entry.id, reason = closing.reason.as_str(), "session closed");
        }
        if !closing.silent && self.events.wanted() {
            self.emit(
                &entry.id,
                EventKind::Closed {
                    reason: closing.reason,
                    session: Box::new(snapshot.clone()),
                },
            );
        }
        if let Some(reply) = closing.reply {
            let _ = reply.send(Some(snapshot));
        }
    }

    fn snapshot(&self, slot: u32, state: SessionState) -> SessionSnapshot {
        let Some(e) = self.sessions[slot as usize].as_ref() else {
            unreachable!("snapshot of an empty slot");
        };
        let relay = match &e.transport {
            Transport::Udp { relay, .. } => relay,
            Transport::Tcp(tcp) => return self.tcp_snapshot(e, tcp, state),
        };
        SessionSnapshot {
            id: e.id.to_string(),
            protocol: Protocol::Udp,
            // Open sessions report what their supervisor concluded (forwarding or error).
            state: if state == SessionState::Closed {
                state
            } else {
                e.monitor.state()
            },
            listen: e.listen,
            connect: e.connect,
            destination: relay.destination().unwrap_or(e.destination),
            client: relay.client(),
            client_rtcp: relay.client_rtcp(),
            last_error: relay.last_error().map(|f| (f.to_string(), f.at_us)),
            listen_advertised: self.advertised(e.listen.ip()),
            connect_advertised: self.advertised(e.connect.ip()),
            listen_device: e.listen_device.as_deref().map(str::to_owned),
            connect_device: e.connect_device.as_deref().map(str::to_owned),
            created_us: e.created_us,
            forward: relay.forward,
            reverse: relay.reverse,
            forward_residence: relay.forward_residence.summary(),
            reverse_residence: relay.reverse_residence.summary(),
            media: relay.media.snapshot(),
            shard: self.shard,
            tcp: None,
            fork: e.fork.as_deref().map(Fork::snapshot).unwrap_or_default(),
        }
    }

    /// The address peers must use for `ip`, when its interface advertises one (NAT).
    fn advertised(&self, ip: IpAddr) -> Option<IpAddr> {
        self.interfaces.get(&ip).and_then(|i| i.advertised)
    }

    fn tcp_snapshot(&self, e: &Entry, tcp: &TcpSession, state: SessionState) -> SessionSnapshot {
        let s = tcp.shared.borrow();
        SessionSnapshot {
            id: e.id.to_string(),
            protocol: Protocol::Tcp,
            state: if state == SessionState::Closed {
                state
            } else {
                s.state
            },
            listen: e.listen,
            connect: e.connect,
            destination: e.destination,
            client: s.client,
            client_rtcp: None,
            last_error: s.last_error.clone(),
            listen_advertised: self.advertised(e.listen.ip()),
            connect_advertised: self.advertised(e.connect.ip()),
            listen_device: None,
            connect_device: None,
            created_us: e.created_us,
            forward: s.forward,
            reverse: s.reverse,
            forward_residence: Default::default(),
            reverse_residence: Default::default(),
            media: s.media.snapshot(),
            shard: self.shard,
            tcp: Some((s.framing, s.counters)),
            fork: ForkSnapshot::default(),
        }
    }

    /// Sets how TCP session tasks report that they have closed their sockets.
    pub fn set_tcp_done(&mut self, done: TcpDone) {
        self.tcp_done = Some(done);
    }

    /// A TCP session's task has closed every socket: the session is gone (its own decision,
    /// e.g. the client left, or the end of a close the table started).
    pub fn tcp_finished(&mut self, slot: u32, generation: u32) {
        let Some(entry) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        if entry.closing.is_none() {
            let reason = match &entry.transport {
                Transport::Tcp(tcp) => tcp.shared.borrow().close_reason,
                Transport::Udp { .. } => None,
            };
            entry.closing = Some(Closing {
                reason: reason.unwrap_or(CloseReason::Destroyed),
                open: 0,
                reply: None,
                silent: false,
            });
        }
        self.finish_close(slot);
    }

    fn create_tcp(&mut self, spec: SessionSpec) -> Result<SessionSnapshot, CreateError> {
        let Some(done) = self.tcp_done.clone() else {
            return Err(CreateError::Unsupported { protocol: "TCP" });
        };
        let mut opts = self.sock_opts.clone();
        if let Some(dscp) = self.interfaces.get(&spec.listen.ip()).and_then(|i| i.dscp) {
            opts.dscp = dscp;
        }
        let field = EndpointField::Listen;
        let classify = |e: BindError| match e {
            BindError::InUse { port } => CreateError::PortInUse { field, port },
            BindError::NotLocal(address) => CreateError::NotLocal { field, address },
            BindError::Io(source) => CreateError::Socket { field, source },
        };
        // One port per TCP session; the allocator's even ports keep UDP and TCP sessions in
        // the same numbering (the odd sibling stays unused).
        let listener = if spec.listen.port() != 0 {
            bind_tcp_listener(spec.listen, &opts).map_err(classify)?
        } else {
            let ip = spec.listen.ip();
            let ports = self.iface_ports.get(&ip).unwrap_or(&self.ports);
            let mut found = None;
            for port in ports.candidates(ip) {
                match bind_tcp_listener(SocketAddr::new(ip, port), &opts) {
                    Ok(l) => {
                        found = Some(l);
                        break;
                    }
                    Err(BindError::InUse { .. }) => {
                        debug!(%field, port, "tcp port held elsewhere; trying the next");
                    }
                    Err(e) => return Err(classify(e)),
                }
            }
            found.ok_or(CreateError::PortsExhausted { field })?
        };
        let listen = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| CreateError::Socket {
                field,
                source: std::io::Error::other("listen socket has no address"),
            })?;
        self.allocator(listen.ip())
            .claim(listen.ip(), listen.port());
        let slot = self.free_sessions.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            (self.sessions.len() - 1) as u32
        });
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let mut media = crate::rtp::SessionMedia::new();
        for &(pt, hz) in &spec.options.clock_rates {
            media.set_clock_rate(pt, hz);
        }
        let tcp = crate::tcp::spawn(crate::tcp::driver::SpawnArgs {
            id: spec.id.clone(),
            listener,
            connect: spec.connect,
            destination: spec.destination,
            options: spec.options.tcp.clone(),
            media,
            events: self.events.clone(),
            done: Box::new(move || done(slot, generation)),
        });
        let created_us = unix_now_us();
        let id: Rc<str> = Rc::from(spec.id.as_str());
        self.sessions[slot as usize] = Some(Entry {
            monitor: Monitor::new(spec.options.monitor.clone(), created_us),
            refreshed_us: created_us,
            id: id.clone(),
            generation,
            listen,
            connect: spec.connect,
            destination: spec.destination,
            listen_device: None,
            connect_device: None,
            created_us,
            transport: Transport::Tcp(tcp),
            connected: [false; 2],
            closing: None,
            fork: None,
        });
        self.live += 1;
        self.by_id.insert(id, slot);
        let snapshot = self.snapshot(slot, SessionState::Connecting);
        info!(
            session = %spec.id, shard = self.shard, listen = %listen, connect = %spec.connect,
            destination = %spec.destination, framing = ?spec.options.tcp.framing,
            "tcp session created"
        );
        if self.events.wanted() {
            self.emit(&spec.id, EventKind::Created(Box::new(snapshot.clone())));
        }
        Ok(snapshot)
    }

    fn emit(&self, id: &str, kind: EventKind) {
        self.events.emit(Event {
            session_id: id.to_owned(),
            at_us: unix_now_us(),
            kind,
        });
    }
}

impl SessionTable {
    /// The session a send's tag names, unless its slot has since been reused (generation).
    fn tagged_entry(&mut self, tag: u64) -> Option<&mut Entry> {
        let (slot, generation, _) = untag(tag);
        let entry = self.sessions.get_mut(slot as usize)?.as_mut()?;
        (entry.generation & 0xff_ffff == generation).then_some(entry)
    }
}

impl PacketHandler for SessionTable {
    fn on_packet(&mut self, p: Received<'_>) -> Action {
        let Some(Some(sref)) = self.sockets.get(p.token as usize) else {
            return Action::Drop;
        };
        let (slot, leg) = (sref.session, sref.leg);
        let Some(Some(entry)) = self.sessions.get_mut(slot as usize) else {
            return Action::Drop;
        };
        if entry.closing.is_some() {
            return Action::Drop;
        }
        let out_connected = entry.connected;
        let Transport::Udp { relay, tokens } = &mut entry.transport else {
            return Action::Drop;
        };
        match relay.on_receive(leg, p.from, p.payload, p.truncated, p.arrival_us) {
            Verdict::Send { .. } if p.late => {
                relay.drop_late(leg);
                Action::Drop
            }
            Verdict::Send { via, to } => {
                // A strict session's destination is fixed, so this holds whenever the socket is
                // connected; checked anyway, as a send without an address goes to the peer.
                let connected = match via {
                    Leg::OutRtp => out_connected[0] && to == entry.destination,
                    Leg::OutRtcp => {
                        out_connected[1] && Some(to) == peer::rtcp_beside(entry.destination)
                    }
                    Leg::ListenRtp | Leg::ListenRtcp => false,
                };
                let mut copy = None;
                if let Some(fork) = entry.fork.as_deref_mut() {
                    copy = fork.copy_target.and_then(|t| fork_copy(leg, t, tokens));
                    if let Some(key) = fork.recording
                        && let Some(recorder) = self.recorder.as_mut()
                    {
                        let local = fork_local(leg, entry.listen, entry.connect);
                        if recorder.record(key, p.arrival_us, p.from, local, p.payload) {
                            fork.records_queued += 1;
                        } else {
                            fork.records_dropped += 1;
                        }
                    }
                }
                // Counted now, while the session's state is in cache; a failure is taken
                // back when its completion comes.
                relay.on_sent(
                    via,
                    p.payload.len(),
                    Some(p.now_us.saturating_sub(p.arrival_us)),
                );
                Action::Send {
                    via: tokens[via as usize],
                    to,
                    connected,
                    tag: tag(slot, entry.generation, via),
                    copy,
                }
            }
            Verdict::Drop(_) => Action::Drop,
        }
    }

    fn on_copy_sent(&mut self, tag: u64, result: std::io::Result<usize>) {
        let Some(entry) = self.tagged_entry(tag) else {
            return;
        };
        match result {
            Ok(_) => entry.fork.get_or_insert_default().copies_sent += 1,
            Err(e) => {
                debug!(session = %entry.id, error = %e, "media copy failed");
                entry.fork.get_or_insert_default().copies_failed += 1;
            }
        }
    }

    fn on_send_failed(&mut self, tag: u64, len: usize, error: std::io::Error) {
        let Some(leg) = untag(tag).2 else { return };
        let Some(entry) = self.tagged_entry(tag) else {
            return;
        };
        let Transport::Udp { relay, .. } = &mut entry.transport else {
            return;
        };
        debug!(session = %entry.id, %error, "send failed");
        let errno = error.raw_os_error().unwrap_or(libc::EIO);
        relay.on_send_failed(leg, len, errno, unix_now_us());
    }

    fn on_socket_error(&mut self, token: Token, errno: i32) {
        let Some(Some(sref)) = self.sockets.get(token as usize) else {
            return;
        };
        let (slot, leg) = (sref.session, sref.leg);
        if let Some(Some(entry)) = self.sessions.get_mut(slot as usize) {
            debug!(session = %entry.id, ?leg, errno, "socket error");
            if let Transport::Udp { relay, .. } = &mut entry.transport {
                relay.on_socket_error(leg, errno, unix_now_us());
            }
        }
    }

    fn on_socket_released(&mut self, token: Token) {
        let Some(sref) = self.sockets.get_mut(token as usize).and_then(Option::take) else {
            return;
        };
        self.free_tokens.push(token);
        let Some(Some(entry)) = self.sessions.get_mut(sref.session as usize) else {
            return;
        };
        let Some(closing) = entry.closing.as_mut() else {
            return;
        };
        closing.open = closing.open.saturating_sub(1);
        if closing.open == 0 {
            self.finish_close(sref.session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (slot, generation, leg) in [
            (0, 0, Leg::ListenRtp),
            (u32::MAX, 0xff_ffff, Leg::OutRtcp),
            (7, 1 << 24 | 5, Leg::OutRtp),
        ] {
            let (s, g, l) = untag(tag(slot, generation, leg));
            assert_eq!((s, g, l), (slot, generation & 0xff_ffff, Some(leg)));
        }
    }

    /// A session's slab entry is most of its memory (bar: 4 KiB per session with 10,000
    /// sessions, statistics included); rarely used parts belong behind a pointer.
    #[test]
    fn a_session_entry_stays_small() {
        let size = std::mem::size_of::<Entry>();
        assert!(size <= 2048, "Entry is {size} bytes");
    }
}
