//! rtprelay's control plane: the gRPC service, request validation, the session-to-shard router
//! and the event fan-out. It talks to the data plane only through commands and events, and knows
//! nothing of how the data plane moves packets.

pub mod convert;
pub mod events;
pub mod router;
pub mod rtpproxy;
pub mod service;
pub mod validate;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rtprelay_proto::v1::relay_server::RelayServer;
use tokio_stream::StreamExt;
use tracing::{info, warn};

pub use events::EventHub;
pub use router::Router;
pub use service::{RelayService, Service};

/// Serves the gRPC API on `addr` until `shutdown` completes, then waits for open calls to end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<RelayService>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(address = ?addr, "gRPC control API listening");
    // Nagle off: a reply is written as several small HTTP/2 frames, and with Nagle on, the
    // last of them waited for the client's delayed ACK: ~40 ms per DestroySession of a session
    // with media statistics (a larger reply), capping a caller at ~25 destroys per second.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error = %e, "could not disable Nagle on a gRPC connection");
            }
        })
    });
    tonic::transport::Server::builder()
        .add_service(RelayServer::new(Service(service)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Builds the service around running shards.
pub fn service(
    router: Router,
    events: EventHub,
    media_address: IpAddr,
    defaults: validate::SessionDefaults,
) -> Arc<RelayService> {
    RelayService::new(router, events, media_address, defaults)
}
