//! Commands a shard accepts from the control plane, and their replies.
//!
//! The control plane routes a command to the shard that owns the session ID, pushes it onto that
//! shard's channel and wakes the shard; the reply comes back on a oneshot channel.

use tokio::sync::oneshot;

use crate::session::{SessionSnapshot, SessionSpec};

/// Which endpoint of a create request an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointField {
    Listen,
    Connect,
}

impl std::fmt::Display for EndpointField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointField::Listen => "listen",
            EndpointField::Connect => "connect",
        })
    }
}

/// Why a session could not be created. A failed create leaves nothing behind.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("session {0:?} already exists")]
    AlreadyExists(String),
    #[error("{field} address {address} is not assigned to any local interface")]
    NotLocal {
        field: EndpointField,
        address: std::net::IpAddr,
    },
    #[error("{field} port {port} (or its RTCP port {}) is already in use", port + 1)]
    PortInUse { field: EndpointField, port: u16 },
    #[error("no free even port pair left in the media port range for the {field} address")]
    PortsExhausted { field: EndpointField },
    #[error("this shard has no free socket slot left (max sockets reached)")]
    TooManySockets,
    #[error("{protocol} sessions are not implemented yet")]
    Unsupported { protocol: &'static str },
    #[error("{field} socket: {source}")]
    Socket {
        field: EndpointField,
        source: std::io::Error,
    },
    #[error("the relay is shutting down")]
    ShuttingDown,
}

/// A page request for listing sessions.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only IDs with this prefix.
    pub prefix: String,
    /// Only IDs strictly greater than this (the previous page's last ID).
    pub after: Option<String>,
    /// At most this many sessions.
    pub limit: usize,
}

/// One shard's answer to a [`ListQuery`].
#[derive(Debug, Default)]
pub struct ListPage {
    /// Sorted by ID.
    pub sessions: Vec<SessionSnapshot>,
    /// All sessions of this shard matching the prefix (ignoring `after` and `limit`).
    pub total: usize,
}

/// Why forking or recording a session's media was refused.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("no such session")]
    UnknownSession,
    #[error("only UDP sessions can be copied or recorded")]
    NotUdp,
    #[error("copy target {0} is not of the session's address family")]
    FamilyMismatch(std::net::SocketAddr),
    #[error("starting the pcap writer failed: {0}")]
    Writer(std::io::Error),
}

/// A pcap file opened by the control plane for a recording, with its path for logs.
#[derive(Debug)]
pub struct RecordFile {
    pub file: std::fs::File,
    pub path: std::path::PathBuf,
}

pub type Reply<T> = oneshot::Sender<T>;

/// A control-plane request to one shard.
// Commands are rare control messages moved once through a channel; their size is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Command {
    Create {
        spec: SessionSpec,
        reply: Reply<Result<SessionSnapshot, CreateError>>,
    },
    /// Replies with the final snapshot once every socket of the session is closed, so the
    /// ports are free when the reply arrives; `None` if the ID is unknown.
    Destroy {
        id: String,
        reply: Reply<Option<SessionSnapshot>>,
    },
    Get {
        id: String,
        reply: Reply<Option<SessionSnapshot>>,
    },
    /// New signalled peer addresses (either may be `None` = unchanged); replies with the
    /// session, or `None` if the ID is unknown.
    Update {
        id: String,
        client: Option<std::net::SocketAddr>,
        destination: Option<std::net::SocketAddr>,
        reply: Reply<Option<SessionSnapshot>>,
    },
    /// Also send every relayed packet of `id` (both directions) to `target`: RTP from the
    /// session's connect-side RTP socket, RTCP to `target`'s port + 1 from its RTCP socket;
    /// `None` stops copying.
    SetCopy {
        id: String,
        target: Option<std::net::SocketAddr>,
        reply: Reply<Result<(), ForkError>>,
    },
    /// Record every relayed RTP and RTCP packet of `id` (both directions) into `file`; `None` stops
    /// recording and closes the file. Starting while already recording keeps the first file.
    SetRecord {
        id: String,
        file: Option<RecordFile>,
        reply: Reply<Result<(), ForkError>>,
    },
    List {
        query: ListQuery,
        reply: Reply<ListPage>,
    },
    /// Closes every session (each emits Closed with reason "shutdown") and stops the shard;
    /// replies when done.
    Shutdown { reply: Reply<()> },
}
