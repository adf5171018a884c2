//! `C`, `R` and `N`: copying and recording a stream's media.

use std::net::SocketAddr;

use rtprelay_dataplane::command::RecordFile;
use tracing::{info, warn};

use super::Executor;
use crate::rtpproxy::command::StreamRef;
use crate::rtpproxy::error::ErrorCode;
use crate::rtpproxy::reply::Reply;

impl Executor {
    /// `C`: every packet the stream relays (both directions) is also sent to `target`, RTCP to
    /// its port + 1 as rtpproxy does. `C[s]` changes nothing, as in rtpproxy, whose `s` only
    /// matters for local files.
    pub(super) async fn copy(&self, stream: &StreamRef, target: &str) -> Reply {
        let Some(target) = copy_target(target) else {
            warn!(target, "C target is not udp:IP:PORT; refused");
            return Reply::Error(ErrorCode::CopyFailed);
        };
        let s = match self.find(stream).await {
            Ok(Some((_, s))) => s,
            Ok(None) => return Reply::Error(ErrorCode::SessionUnknown),
            Err(code) => return Reply::Error(code),
        };
        match self.router.set_copy(s.id.clone(), Some(target)).await {
            Ok(Ok(())) => {
                info!(session = %s.id, %target, "rtpproxy copy started");
                Reply::Ok
            }
            Ok(Err(e)) => {
                warn!(session = %s.id, error = %e, "rtpproxy copy refused");
                Reply::Error(ErrorCode::CopyFailed)
            }
            Err(_) => Reply::Error(ErrorCode::ShuttingDown),
        }
    }

    /// `R`: records the stream's RTP and RTCP (both directions) into one pcap file in
    /// `record_dir`: rtpproxy's single-file pcap recording (`Rs`). `R` without `s` does the
    /// same; rtpproxy would write separate RTP and RTCP files per direction instead.
    pub(super) async fn record(&self, stream: &StreamRef) -> Reply {
        let Some(dir) = &self.cfg.record_dir else {
            warn!("R refused: recording disabled ([rtpproxy] record_dir is empty)");
            return Reply::Error(ErrorCode::CopyFailed);
        };
        let s = match self.find(stream).await {
            Ok(Some((_, s))) => s,
            Ok(None) => return Reply::Error(ErrorCode::SessionUnknown),
            Err(code) => return Reply::Error(code),
        };
        let path = dir.join(record_file_name(&s.id));
        // Creating a file may block on the disk: keep it off the async workers.
        let create_path = path.clone();
        let file =
            match tokio::task::spawn_blocking(move || std::fs::File::create(create_path)).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    warn!(path = %path.display(), error = %e, "creating the recording failed");
                    return Reply::Error(ErrorCode::CopyFailed);
                }
                Err(_) => return Reply::Error(ErrorCode::ShuttingDown),
            };
        let file = RecordFile {
            file,
            path: path.clone(),
        };
        match self.router.set_record(s.id.clone(), Some(file)).await {
            Ok(Ok(())) => {
                info!(session = %s.id, path = %path.display(), "rtpproxy recording started");
                Reply::Ok
            }
            Ok(Err(e)) => {
                warn!(session = %s.id, error = %e, "rtpproxy recording refused");
                Reply::Error(ErrorCode::CopyFailed)
            }
            Err(_) => Reply::Error(ErrorCode::ShuttingDown),
        }
    }

    /// `N`: stops recording and copying the stream (the file is flushed and closed).
    pub(super) async fn stop_forks(&self, stream: &StreamRef) -> Reply {
        let s = match self.find(stream).await {
            Ok(Some((_, s))) => s,
            Ok(None) => return Reply::Error(ErrorCode::SessionUnknown),
            Err(code) => return Reply::Error(code),
        };
        let copy = self.router.set_copy(s.id.clone(), None).await;
        let record = self.router.set_record(s.id.clone(), None).await;
        match (copy, record) {
            (Ok(Ok(())), Ok(Ok(()))) => Reply::Ok,
            (Ok(Err(_)), _) | (_, Ok(Err(_))) => Reply::Error(ErrorCode::SessionUnknown),
            _ => Reply::Error(ErrorCode::ShuttingDown),
        }
    }
}

/// Parses a `C` target: `udp:IP:PORT`, `udp6:[IP]:PORT` or plain `IP:PORT`. Files (and
/// anything else) are not supported.
fn copy_target(target: &str) -> Option<SocketAddr> {
    let addr = target
        .strip_prefix("udp:")
        .or_else(|| target.strip_prefix("udp6:"))
        .unwrap_or(target);
    let addr: SocketAddr = addr.parse().ok()?;
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

/// The pcap file name of session `id`: the ID with anything but `[A-Za-z0-9._-]` replaced by
/// `_` (no path separators, no leading dot), capped in length, plus its hash so that IDs that
/// sanitise alike still get distinct files.
fn record_file_name(id: &str) -> String {
    let clean: String = id
        .chars()
        .take(160)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.');
    format!("{clean}-{:016x}.pcap", crate::router::hash_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_targets() {
        let v4: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(copy_target("udp:127.0.0.1:9000"), Some(v4));
        assert_eq!(copy_target("127.0.0.1:9000"), Some(v4));
        assert_eq!(
            copy_target("udp6:[::1]:9000"),
            Some("[::1]:9000".parse().unwrap())
        );
        for bad in [
            "",
            "/tmp/file.rtp",
            "tcp:127.0.0.1:9000",
            "udp:127.0.0.1",
            "udp:0.0.0.0:9000",
            "udp:127.0.0.1:0",
        ] {
            assert_eq!(copy_target(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn record_names_are_safe() {
        let n = record_file_name("rtpp:../../etc/passwd;1");
        assert!(
            !n.contains('/') && !n.starts_with('.') && n.ends_with(".pcap"),
            "{n}"
        );
        assert_ne!(record_file_name("a/b"), record_file_name("a:b"));
    }
}
