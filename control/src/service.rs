//! The `rtprelay.v1.Relay` gRPC service.
//!
//! Each call validates its input here, routes it to the owning shard and maps the shard's answer
//! to a precise status. Every refused request is logged and counted by status code
//! (GetRelayStats), so a misbehaving controller shows up in figures, not only in logs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rtprelay_dataplane::ListQuery;
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_server::Relay;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::convert;
use crate::events::{EventHub, EventStream};
use crate::router::{Router, Unavailable};
use crate::validate;

/// Default and largest page of ListSessions.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

/// The service state shared by all calls.
pub struct RelayService {
    router: Router,
    events: EventHub,
    media_address: IpAddr,
    defaults: validate::SessionDefaults,
    stopping: AtomicBool,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl RelayService {
    pub fn new(
        router: Router,
        events: EventHub,
        media_address: IpAddr,
        defaults: validate::SessionDefaults,
    ) -> Arc<Self> {
        Arc::new(Self {
            router,
            events,
            media_address,
            defaults,
            stopping: AtomicBool::new(false),
            refused: Mutex::new(BTreeMap::new()),
        })
    }

    /// Refuses every further request with UNAVAILABLE (called when shutdown starts).
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn refuse(&self, call: &str, status: Status) -> Status {
        warn!(call, code = ?status.code(), message = status.message(), "request refused");
        if let Ok(mut refused) = self.refused.lock() {
            *refused.entry(format!("{:?}", status.code())).or_default() += 1;
        }
        status
    }

    fn check_running(&self, call: &str) -> Result<(), Status> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(self.refuse(call, Status::unavailable("the relay is shutting down")));
        }
        Ok(())
    }

    fn id(&self, call: &str, id: &str) -> Result<(), Status> {
        validate::session_id(id).map_err(|e| self.refuse(call, Status::invalid_argument(e.0)))
    }

    fn unavailable(&self, call: &str, e: Unavailable) -> Status {
        self.refuse(call, Status::unavailable(e.to_string()))
    }

    fn not_found(&self, call: &str, id: &str) -> Status {
        self.refuse(call, Status::not_found(format!("no session {id:?}")))
    }
}

/// The tonic-facing wrapper (tonic wants the service by value; the state is shared).
#[derive(Clone)]
pub struct Service(pub Arc<RelayService>);

#[tonic::async_trait]
impl Relay for Service {
    async fn create_session(
        &self,
        request: Request<v1::CreateSessionRequest>,
    ) -> Result<Response<v1::CreateSessionResponse>, Status> {
        const CALL: &str = "CreateSession";
        let s = &self.0;
        s.check_running(CALL)?;
        let spec = validate::create_request(request.get_ref(), s.media_address, &s.defaults)
            .map_err(|e| s.refuse(CALL, Status::invalid_argument(e.0)))?;
        match s.router.create(spec).await {
            Ok(Ok(snapshot)) => Ok(Response::new(v1::CreateSessionResponse {
                session: Some(convert::session(&snapshot)),
            })),
            Ok(Err(e)) => Err(s.refuse(CALL, convert::create_error(&e))),
            Err(e) => Err(s.unavailable(CALL, e)),
        }
    }

    async fn destroy_session(
        &self,
        request: Request<v1::DestroySessionRequest>,
    ) -> Result<Response<v1::DestroySessionResponse>, Status> {
        const CALL: &str = "DestroySession";
        let s = &self.0;
        s.check_running(CALL)?;
        let id = request.into_inner().session_id;
        s.id(CALL, &id)?;
        match s.router.destroy(id.clone()).await {
            Ok(Some(snapshot)) => Ok(Response::new(v1::DestroySessionResponse {
                session: Some(convert::session(&snapshot)),
            })),
            Ok(None) => Err(s.not_found(CALL, &id)),
            Err(e) => Err(s.unavailable(CALL, e)),
        }
    }

    async fn get_session_status(
        &self,
        request: Request<v1::GetSessionStatusRequest>,
    ) -> Result<Response<v1::GetSessionStatusResponse>, Status> {
        const CALL: &str = "GetSessionStatus";
        let s = &self.0;
        s.check_running(CALL)?;
        let id = request.into_inner().session_id;
        s.id(CALL, &id)?;
        match s.router.get(id.clone()).await {
            Ok(Some(snapshot)) => Ok(Response::new(v1::GetSessionStatusResponse {
                session: Some(convert::session(&snapshot)),
            })),
            Ok(None) => Err(s.not_found(CALL, &id)),
            Err(e) => Err(s.unavailable(CALL, e)),
        }
    }

    async fn list_sessions(
        &self,
        request: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        const CALL: &str = "ListSessions";
        let s = &self.0;
        s.check_running(CALL)?;
        let req = request.into_inner();
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let query = ListQuery {
            prefix: req.id_prefix,
            after: (!req.page_token.is_empty()).then_some(req.page_token),
            // One more than asked, to know whether another page follows.
            limit: limit + 1,
        };
        let pages = s
            .router
            .list_all(query)
            .await
            .map_err(|e| s.unavailable(CALL, e))?;
        let total = pages.iter().map(|p| p.total as u64).sum();
        let mut sessions: Vec<_> = pages.into_iter().flat_map(|p| p.sessions).collect();
        sessions.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let next_page_token = if sessions.len() > limit {
            sessions.truncate(limit);
            sessions.last().map(|s| s.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListSessionsResponse {
            sessions: sessions.iter().map(convert::session).collect(),
            next_page_token,
            total,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        const CALL: &str = "WatchEvents";
        let s = &self.0;
        s.check_running(CALL)?;
        let ids = request.into_inner().session_ids;
        for id in &ids {
            s.id(CALL, id)?;
        }
        info!(filter = ids.len(), "event watcher subscribed");
        Ok(Response::new(s.events.watch(ids)))
    }

    async fn get_relay_stats(
        &self,
        _request: Request<v1::GetRelayStatsRequest>,
    ) -> Result<Response<v1::GetRelayStatsResponse>, Status> {
        const CALL: &str = "GetRelayStats";
        let s = &self.0;
        let query = ListQuery {
            limit: 0,
            ..ListQuery::default()
        };
        let pages = s
            .router
            .list_all(query)
            .await
            .map_err(|e| s.unavailable(CALL, e))?;
        let refused = s
            .refused
            .lock()
            .map(|r| r.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        Ok(Response::new(v1::GetRelayStatsResponse {
            sessions_per_shard: pages.iter().map(|p| p.total as u64).collect(),
            refused_requests: refused,
            watchdog_kicks_per_shard: s.router.watchdog_kicks(),
        }))
    }
}
