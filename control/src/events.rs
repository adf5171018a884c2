//! Fan-out of data-plane events to gRPC watchers.
//!
//! Shards publish into a bounded broadcast channel and never wait: a watcher that reads too
//! slowly loses its oldest events and is told how many (a `lagged` event), so it can neither
//! block a shard nor other watchers, nor grow memory without bound. Events are converted to
//! their gRPC form once, not once per watcher.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use rtprelay_dataplane::{Event, EventSink};
use rtprelay_proto::v1;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::convert;
use rtprelay_dataplane::time::unix_now_us;

/// `None` marks the end of the stream (the relay is stopping).
type Item = Option<Arc<v1::SessionEvent>>;

/// The event bus. Cloning shares it.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Item>,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::SessionEvent, Status>> + Send>>;

impl EventHub {
    /// `capacity` events are kept for the slowest watcher before it starts to lag.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// A stream of the events of `ids` (all sessions if empty), from now on.
    pub fn watch(&self, ids: Vec<String>) -> EventStream {
        let filter: HashSet<String> = ids.into_iter().collect();
        let stream = BroadcastStream::new(self.tx.subscribe())
            .take_while(|item| !matches!(item, Ok(None)))
            .filter_map(move |item| match item {
                Ok(Some(ev)) => (filter.is_empty() || filter.contains(&ev.session_id))
                    .then(|| Ok((*ev).clone())),
                Ok(None) => None,
                Err(BroadcastStreamRecvError::Lagged(dropped)) => Some(Ok(v1::SessionEvent {
                    session_id: String::new(),
                    timestamp_unix_us: unix_now_us(),
                    kind: Some(v1::session_event::Kind::Lagged(v1::Lagged { dropped })),
                })),
            });
        Box::pin(stream)
    }

    /// A raw subscription for in-process consumers; `None` marks the end.
    pub fn subscribe(&self) -> broadcast::Receiver<Option<Arc<v1::SessionEvent>>> {
        self.tx.subscribe()
    }

    /// Calls `on_closed` for every session that closes from now on, until the hub closes. For
    /// in-process followers that keep per-session state outside the data plane. If the
    /// follower falls behind and events are lost, that is logged as `who` with `consequence`.
    pub async fn follow_closed(
        &self,
        who: &str,
        consequence: &str,
        mut on_closed: impl FnMut(&str, &v1::Closed),
    ) {
        let mut rx = self.subscribe();
        loop {
            let event = match rx.recv().await {
                Ok(Some(e)) => e,
                Ok(None) | Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, who, consequence, "fell behind the event stream");
                    continue;
                }
            };
            if let Some(v1::session_event::Kind::Closed(closed)) = &event.kind {
                on_closed(&event.session_id, closed);
            }
        }
    }

    /// Ends every watcher's stream after the events already published.
    pub fn close(&self) {
        let _ = self.tx.send(None);
    }
}

impl EventSink for EventHub {
    fn emit(&self, event: Event) {
        // Without a receiver the channel drops the event anyway: skip converting it.
        if self.tx.receiver_count() == 0 {
            return;
        }
        // A receiver that left meanwhile is not an error either.
        let _ = self.tx.send(Some(Arc::new(convert::event(&event))));
    }

    fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}
