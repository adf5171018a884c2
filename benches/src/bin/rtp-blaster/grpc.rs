//! Sessions through rtprelay's gRPC API: creating one per flow before a trial and removing them
//! afterwards, also when the trial fails or is interrupted.
//!
//! Every RPC is bounded in time, creation and removal run a few dozen requests in parallel (so
//! thousands of sessions do not take minutes), and removal ends with a sweep of everything
//! carrying the trial's ID prefix: a create that timed out on our side may still have succeeded
//! on the relay, and such a session must not outlive the run.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rtprelay_benches::sys;
use rtprelay_proto::v1::relay_client::RelayClient;
use rtprelay_proto::v1::{
    CreateSessionRequest, DestroySessionRequest, DirectionStats, Endpoint, ListSessionsRequest,
    Protocol, SessionInfo, SessionOptions,
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

/// Bound for each single RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the relay's API plus the runtime that drives it. The data path never touches
/// either; they only run between trials.
pub struct Grpc {
    rt: Runtime,
    client: RelayClient<Channel>,
    /// Parallel requests during creation and removal.
    concurrency: usize,
    /// Upper bound for removing one trial's sessions, sweep included.
    cleanup_timeout: Duration,
}

/// What a session is created with, apart from its destination.
#[derive(Debug, Clone)]
pub struct SessionTemplate {
    pub listen_ip: IpAddr,
    pub connect_ip: IpAddr,
    pub idle_timeout_ms: Option<u32>,
    /// Payload type and clock rate, passed on for a dynamic payload type so the relay can
    /// compute jitter for it too.
    pub payload_type: u8,
    pub clock_rate: u32,
}

/// The addresses a created session gives the blaster.
#[derive(Debug, Clone, Copy)]
pub struct SessionAddrs {
    /// Where the source sends (the session's `listen`).
    pub listen: SocketAddr,
    /// Where the relay sends from, and where reverse traffic goes (the session's `connect`).
    pub connect: SocketAddr,
}

impl Grpc {
    pub fn connect(url: &str, concurrency: usize, cleanup_timeout: Duration) -> Result<Self> {
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .with_context(|| format!("bad --grpc URL {url:?}"))?
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        let channel = rt
            .block_on(endpoint.connect())
            .with_context(|| format!("cannot connect to the relay's gRPC API at {url}"))?;
        Ok(Self {
            rt,
            client: RelayClient::new(channel),
            concurrency: concurrency.max(1),
            cleanup_timeout,
        })
    }

    /// Creates one UDP session per sink, IDs `{prefix}-{i}`. The returned guard owns them: it
    /// removes them when dropped unless [`Sessions::remove`] already did.
    pub fn create<'a>(
        &'a self,
        prefix: &str,
        template: &SessionTemplate,
        sinks: &[SocketAddr],
    ) -> Result<(Sessions<'a>, Vec<SessionAddrs>)> {
        let mut sessions = Sessions {
            grpc: self,
            prefix: prefix.to_owned(),
            ids: Vec::with_capacity(sinks.len()),
            removed: false,
        };
        let requests: Vec<CreateSessionRequest> = sinks
            .iter()
            .enumerate()
            .map(|(i, sink)| create_request(&format!("{prefix}-{i}"), template, *sink))
            .collect();
        let created = self
            .rt
            .block_on(create_all(
                self.client.clone(),
                requests,
                self.concurrency,
                &mut sessions.ids,
            ))
            .with_context(|| format!("creating {} sessions", sinks.len()))?;
        let addrs = created
            .iter()
            .map(|info| {
                Ok(SessionAddrs {
                    listen: socket_addr(info.listen.as_ref(), "listen")?,
                    connect: socket_addr(info.connect.as_ref(), "connect")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .context("CreateSession answer")?;
        Ok((sessions, addrs))
    }

    /// How many sessions with this ID prefix the relay has.
    pub fn count(&self, prefix: &str) -> Result<u64> {
        let mut client = self.client.clone();
        let req = ListSessionsRequest {
            page_size: 1,
            page_token: String::new(),
            id_prefix: prefix.to_owned(),
        };
        let resp = self
            .rt
            .block_on(client.list_sessions(req))
            .context("ListSessions")?;
        Ok(resp.into_inner().total)
    }
}

/// A trial's sessions on the relay.
pub struct Sessions<'a> {
    grpc: &'a Grpc,
    prefix: String,
    /// Sessions known to exist (created and not yet removed).
    ids: Vec<String>,
    removed: bool,
}

/// The relay's final counters of a trial's sessions, summed (a cross-check of the sink's view:
/// where the blaster saw loss, these say whether the relay dropped the packets and why).
#[derive(Debug, Default, Clone)]
pub struct RelayCounters {
    pub sessions: usize,
    pub forward: DirCounters,
    pub reverse: DirCounters,
}

#[derive(Debug, Default, Clone)]
pub struct DirCounters {
    pub received: u64,
    pub sent: u64,
    pub dropped: HashMap<&'static str, u64>,
    /// Highest per-session relay residence p99, microseconds.
    pub max_residence_p99_us: u64,
    /// Highest per-session jitter the relay measured on arrival, milliseconds.
    pub max_jitter_ms: f64,
}

impl DirCounters {
    fn add(&mut self, d: &DirectionStats) {
        if let Some(rtp) = &d.rtp {
            self.received += rtp.packets_received;
            self.sent += rtp.packets_sent;
            if let Some(x) = &rtp.dropped {
                for (name, v) in [
                    ("unexpected_source", x.unexpected_source),
                    ("no_client", x.no_client),
                    ("send_error", x.send_error),
                    ("truncated", x.truncated),
                    ("not_rtp", x.not_rtp),
                    ("no_destination", x.no_destination),
                    ("late", x.late),
                ] {
                    *self.dropped.entry(name).or_default() += v;
                }
            }
        }
        if let Some(r) = &d.residence {
            self.max_residence_p99_us = self.max_residence_p99_us.max(r.p99_us);
        }
        self.max_jitter_ms = self.max_jitter_ms.max(d.jitter_ms);
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    fn to_json(&self) -> Value {
        let dropped: serde_json::Map<String, Value> = self
            .dropped
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        json!({
            "packets_received": self.received,
            "packets_sent": self.sent,
            "dropped": dropped,
            "max_residence_p99_us": self.max_residence_p99_us,
            "max_jitter_ms": self.max_jitter_ms,
        })
    }
}

impl RelayCounters {
    pub fn to_json(&self) -> Value {
        json!({
            "sessions": self.sessions,
            "forward": self.forward.to_json(),
            "reverse": self.reverse.to_json(),
        })
    }
}

/// The outcome of removing a trial's sessions.
pub struct Removal {
    pub counters: RelayCounters,
    /// Sessions with the trial's prefix still on the relay afterwards (should be 0).
    pub left: u64,
}

impl Sessions<'_> {
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Removes every session of the trial, bounded by the cleanup timeout, and returns their
    /// final counters.
    pub fn remove(&mut self) -> Result<Removal> {
        self.removed = true;
        let grpc = self.grpc;
        let ids = std::mem::take(&mut self.ids);
        let work = remove_all(grpc.client.clone(), ids, &self.prefix, grpc.concurrency);
        let timeout = grpc.cleanup_timeout;
        grpc.rt
            .block_on(async { tokio::time::timeout(timeout, work).await })
            .map_err(|_| {
                anyhow!(
                    "removing the sessions took longer than {} s; some with prefix {:?} may be left",
                    timeout.as_secs(),
                    self.prefix
                )
            })?
    }
}

impl Drop for Sessions<'_> {
    /// The error and interrupt path: best effort, bounded, and loud if something is left.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        eprintln!(
            "rtp-blaster: removing {} session(s) with prefix {:?}",
            self.ids.len(),
            self.prefix
        );
        match self.remove() {
            Ok(r) if r.left == 0 => {}
            Ok(r) => eprintln!(
                "rtp-blaster: warning: {} session(s) with prefix {:?} are still on the relay",
                r.left, self.prefix
            ),
            Err(e) => eprintln!("rtp-blaster: warning: {e:#}"),
        }
    }
}

fn create_request(id: &str, t: &SessionTemplate, sink: SocketAddr) -> CreateSessionRequest {
    let mut options = SessionOptions {
        idle_timeout_ms: t.idle_timeout_ms,
        ..Default::default()
    };
    if t.payload_type >= 96 {
        options
            .clock_rates
            .insert(u32::from(t.payload_type), t.clock_rate);
    }
    CreateSessionRequest {
        session_id: id.to_owned(),
        listen: Some(any_port(t.listen_ip)),
        connect: Some(any_port(t.connect_ip)),
        destination: Some(Endpoint {
            address: sink.ip().to_string(),
            port: u32::from(sink.port()),
        }),
        protocol: Protocol::Udp as i32,
        options: Some(options),
    }
}

fn any_port(ip: IpAddr) -> Endpoint {
    Endpoint {
        address: ip.to_string(),
        port: 0,
    }
}

fn socket_addr(e: Option<&Endpoint>, what: &str) -> Result<SocketAddr> {
    let e = e.with_context(|| format!("no {what} endpoint"))?;
    let ip: IpAddr = e
        .address
        .parse()
        .with_context(|| format!("bad {what} address {:?}", e.address))?;
    let port = u16::try_from(e.port)
        .ok()
        .filter(|&p| p != 0)
        .with_context(|| format!("bad {what} port {}", e.port))?;
    Ok(SocketAddr::new(ip, port))
}

/// Creates the sessions with up to `concurrency` requests in flight, pushing every created ID to
/// `created` as soon as it exists (so the caller can remove them whatever happens next). Stops
/// at the first failure or on a stop request, after the requests in flight have finished.
async fn create_all(
    client: RelayClient<Channel>,
    requests: Vec<CreateSessionRequest>,
    concurrency: usize,
    created: &mut Vec<String>,
) -> Result<Vec<SessionInfo>> {
    let total = requests.len();
    let mut infos: Vec<Option<SessionInfo>> = vec![None; total];
    let mut tasks = JoinSet::new();
    let mut pending = requests.into_iter().enumerate();
    let mut failure: Option<anyhow::Error> = None;
    loop {
        while failure.is_none() && tasks.len() < concurrency {
            if sys::stop_requested() {
                failure = Some(anyhow!("interrupted while creating sessions"));
                break;
            }
            let Some((i, req)) = pending.next() else {
                break;
            };
            let mut client = client.clone();
            tasks.spawn(async move {
                let id = req.session_id.clone();
                let resp = tokio::time::timeout(RPC_TIMEOUT, client.create_session(req)).await;
                (i, id, resp)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (i, id, resp) = done.context("CreateSession task")?;
        match resp {
            Ok(Ok(resp)) => {
                created.push(id.clone());
                match resp.into_inner().session {
                    Some(info) => infos[i] = Some(info),
                    None => {
                        failure.get_or_insert(anyhow!("CreateSession {id}: empty answer"));
                    }
                }
            }
            Ok(Err(status)) => {
                failure.get_or_insert(anyhow!(
                    "CreateSession {id}: {:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
            Err(_) => {
                failure.get_or_insert(anyhow!(
                    "CreateSession {id}: no answer within {RPC_TIMEOUT:?}"
                ));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| info.with_context(|| format!("session {i} was not created")))
        .collect()
}

/// Destroys `ids` (up to `concurrency` at a time), then sweeps whatever else carries `prefix`,
/// and counts what is left.
async fn remove_all(
    client: RelayClient<Channel>,
    ids: Vec<String>,
    prefix: &str,
    concurrency: usize,
) -> Result<Removal> {
    let mut counters = RelayCounters::default();
    destroy_many(&client, ids, concurrency, &mut counters).await;
    // The sweep: sessions whose create timed out on our side, or whose destroy failed.
    // Prefixes are `{run}-t{n}`; the trailing dash keeps `-t1` from matching `-t10`.
    let prefix = format!("{prefix}-");
    for _ in 0..3 {
        let leftovers = list_ids(&client, &prefix).await?;
        if leftovers.is_empty() {
            break;
        }
        destroy_many(&client, leftovers, concurrency, &mut counters).await;
    }
    let mut c = client.clone();
    let req = ListSessionsRequest {
        page_size: 1,
        page_token: String::new(),
        id_prefix: prefix.clone(),
    };
    let left = c
        .list_sessions(req)
        .await
        .context("ListSessions after removal")?
        .into_inner()
        .total;
    Ok(Removal { counters, left })
}

async fn destroy_many(
    client: &RelayClient<Channel>,
    ids: Vec<String>,
    concurrency: usize,
    counters: &mut RelayCounters,
) {
    let mut tasks = JoinSet::new();
    let mut pending = ids.into_iter();
    let mut failures = 0usize;
    let mut first_error = None;
    loop {
        while tasks.len() < concurrency {
            let Some(id) = pending.next() else { break };
            let mut client = client.clone();
            tasks.spawn(async move {
                let req = DestroySessionRequest {
                    session_id: id.clone(),
                };
                (id, client.destroy_session(req).await)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let Ok((id, resp)) = done else {
            failures += 1;
            continue;
        };
        match resp {
            Ok(resp) => {
                if let Some(info) = resp.into_inner().session {
                    counters.sessions += 1;
                    if let Some(f) = &info.forward {
                        counters.forward.add(f);
                    }
                    if let Some(r) = &info.reverse {
                        counters.reverse.add(r);
                    }
                }
            }
            // Already gone (e.g. closed by the relay's idle timeout): nothing to remove.
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                failures += 1;
                first_error.get_or_insert(format!("DestroySession {id}: {status}"));
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("rtp-blaster: {failures} session removal(s) failed, e.g. {e}");
    }
}

/// IDs of all sessions starting with `prefix`, following the pages.
async fn list_ids(client: &RelayClient<Channel>, prefix: &str) -> Result<Vec<String>> {
    let mut client = client.clone();
    let mut ids = Vec::new();
    let mut token = String::new();
    // Bounded: a relay that keeps returning page tokens must not keep us here forever.
    for _ in 0..10_000 {
        let req = ListSessionsRequest {
            page_size: 1000,
            page_token: std::mem::take(&mut token),
            id_prefix: prefix.to_owned(),
        };
        let resp = client
            .list_sessions(req)
            .await
            .context("ListSessions")?
            .into_inner();
        ids.extend(resp.sessions.into_iter().map(|s| s.session_id));
        if resp.next_page_token.is_empty() {
            return Ok(ids);
        }
        token = resp.next_page_token;
    }
    bail!("ListSessions never reached its last page")
}
