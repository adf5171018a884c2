//! Timeout notifications: when a stream created with `U ... notify_socket notify_tag` expires
//! for lack of media, the controller's notify socket gets `<notify_tag>\n`, as rtpproxy does,
//! so the proxy can tear the dialog down. Only sockets on the configured allow-list are ever
//! contacted: the socket comes from the network and must not make the relay connect anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::events::EventHub;

/// Where and what to notify for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub socket: String,
    pub tag: Vec<u8>,
}

/// Pending notifications by session ID, with the session's creation time (µs since the Unix
/// epoch): a session recreated under the same ID (`n`) must not lose its target to the close
/// event of its previous incarnation, which may be processed after the new registration.
#[derive(Debug, Default)]
pub struct Notifier {
    allow: Vec<String>,
    pending: Mutex<HashMap<String, (u64, Target)>>,
}

impl Notifier {
    /// `allow`: notify sockets that may be used, as `tcp:HOST:PORT` or `unix:/path`.
    pub fn new(allow: Vec<String>) -> Self {
        Self {
            allow,
            pending: Mutex::default(),
        }
    }

    /// Whether timeout notification is available at all (VF 20081224).
    pub fn enabled(&self) -> bool {
        !self.allow.is_empty()
    }

    pub fn allowed(&self, socket: &str) -> bool {
        self.allow.iter().any(|a| a == socket)
    }

    /// Remembers that `session` (created at `created_us`) must be notified on timeout.
    pub fn register(&self, session: String, created_us: u64, target: Target) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(session, (created_us, target));
        }
    }

    /// The target of the incarnation of `session` created at `created_us`, removed: on its
    /// close, or before it is destroyed to be created again (`n`), to be registered anew.
    pub fn take(&self, session: &str, created_us: u64) -> Option<Target> {
        let mut p = self.pending.lock().ok()?;
        if p.get(session)?.0 != created_us {
            return None;
        }
        p.remove(session).map(|(_, t)| t)
    }

    /// Follows session events: a session closed for "timeout" notifies its target; any other
    /// close just forgets it. Ends when the event hub closes.
    pub async fn run(self: Arc<Self>, hub: EventHub) {
        hub.follow_closed(
            "rtpproxy notifier",
            "some timeouts may go unreported",
            |id, closed| {
                let created = closed.session.as_ref().map_or(0, |s| s.created_unix_us);
                let Some(target) = self.take(id, created) else {
                    return;
                };
                if closed.reason != "timeout" {
                    return;
                }
                let session = id.to_owned();
                tokio::spawn(async move {
                    match send(&target).await {
                        Ok(()) => {
                            info!(session, socket = target.socket, "timeout notification sent")
                        }
                        Err(e) => {
                            warn!(session, socket = target.socket, error = %e, "timeout notification failed")
                        }
                    }
                });
            },
        )
        .await;
    }
}

/// Connects to the notify socket, writes the tag and a newline, and closes.
async fn send(target: &Target) -> std::io::Result<()> {
    let mut line = target.tag.clone();
    line.push(b'\n');
    let io = async {
        if let Some(addr) = target.socket.strip_prefix("tcp:") {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&line).await?;
            s.shutdown().await
        } else if let Some(path) = target.socket.strip_prefix("unix:") {
            let mut s = tokio::net::UnixStream::connect(path).await?;
            s.write_all(&line).await?;
            s.shutdown().await
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "unknown notify socket kind",
            ))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "notify socket did not answer")
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            socket: "tcp:127.0.0.1:1".into(),
            tag: b"t".to_vec(),
        }
    }

    #[test]
    fn a_recreated_session_keeps_its_target_past_the_old_close() {
        let n = Notifier::new(vec!["tcp:127.0.0.1:1".into()]);
        n.register("s".into(), 10, target());
        let t = n.take("s", 10).expect("registered");
        n.register("s".into(), 20, t);
        assert_eq!(n.take("s", 10), None, "the old incarnation's close");
        assert_eq!(n.take("s", 20), Some(target()));
        assert_eq!(n.take("s", 20), None);
    }
}
