//! Weak and strong references to rtpproxy streams (the `w` modifier of `U`, `L` and `D`).
//!
//! rtpproxy lets two controllers (or two parts of one, e.g. a B2BUA's legs) share a stream:
//! each stream carries a *strong* flag and two *weak* flags, one per side, and lives as long
//! as any of them is set. As rtpproxy does:
//! - `U` creating a stream sets the strong flag, or with `w` the weak flag of side 0;
//! - `U` on an existing stream sets the strong flag, or with `w` the weak flag of its side;
//!   `L` sets nothing, or with `w` the weak flag of its side;
//! - `D` clears the strong flag, `Dw` only the weak flag of its side; the stream is removed
//!   when no flag is left, and either way the reply is `0`.
//!
//! "Side" is rtpproxy's stream index: 0 for a `U` whose from-tag created the stream, 1 for an
//! `L` (or any command other than `U`) with the same tag order, and the opposite when the tags
//! are swapped. So `Dw call caller_tag callee_tag` clears the weak flag an `Lw` set, and
//! `Dw call callee_tag caller_tag` the one a `Uw` set.
//!
//! The flags live here, in the control plane, keyed by session ID and the session's creation
//! time, so a flag never outlives its stream: the table forgets a stream when the relay closes
//! it (for any reason, including the TTL), and an entry left from an earlier stream with the
//! same ID is ignored. A stream with no entry (e.g. created over gRPC) has the strong flag only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::events::EventHub;

/// rtpproxy's stream index of a command: `first` is true when the stream was found by the
/// command's from-tag (the tag that created it), `update` when the command is `U`.
pub fn stream_index(first: bool, update: bool) -> usize {
    usize::from(first != update)
}

/// The references holding one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holders {
    pub strong: bool,
    pub weak: [bool; 2],
}

impl Default for Holders {
    /// A stream nobody marked: held strongly, as every stream created without `w`.
    fn default() -> Self {
        Self {
            strong: true,
            weak: [false; 2],
        }
    }
}

impl Holders {
    /// A stream a `U` just created.
    pub fn created(weak: bool) -> Self {
        Self {
            strong: !weak,
            weak: [weak, false],
        }
    }

    /// `U` (`update`) or `L` on an existing stream, for side `index`.
    pub fn hold(&mut self, index: usize, weak: bool, update: bool) {
        if weak {
            self.weak[index & 1] = true;
        } else if update {
            self.strong = true;
        }
    }

    /// `D` (or `Dw`) for side `index`; true when nothing holds the stream any more.
    pub fn release(&mut self, index: usize, weak: bool) -> bool {
        if weak {
            self.weak[index & 1] = false;
        } else {
            self.strong = false;
        }
        !self.held()
    }

    pub fn held(&self) -> bool {
        self.strong || self.weak.iter().any(|&w| w)
    }
}

/// The holders of every stream that has an entry, by session ID, with the stream's creation
/// time (µs since the Unix epoch) telling one incarnation of an ID from the next.
#[derive(Debug, Default)]
pub struct RefTable {
    streams: Mutex<HashMap<String, (u64, Holders)>>,
}

impl RefTable {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (u64, Holders)>) -> T) -> Option<T> {
        match self.streams.lock() {
            Ok(mut map) => Some(f(&mut map)),
            Err(_) => {
                warn!("rtpproxy reference table poisoned; treating streams as strongly held");
                None
            }
        }
    }

    /// Records a stream a `U` just created.
    pub fn created(&self, id: &str, created_us: u64, weak: bool) {
        self.with(|m| m.insert(id.to_owned(), (created_us, Holders::created(weak))));
    }

    /// The current holders of a stream (default if it has no entry or a stale one).
    pub fn get(&self, id: &str, created_us: u64) -> Holders {
        self.with(|m| match m.get(id) {
            Some(&(at, h)) if at == created_us => h,
            _ => Holders::default(),
        })
        .unwrap_or_default()
    }

    fn update(&self, id: &str, created_us: u64, f: impl FnOnce(&mut Holders) -> bool) -> bool {
        self.with(|m| {
            let entry = m
                .entry(id.to_owned())
                .or_insert((created_us, Holders::default()));
            if entry.0 != created_us {
                *entry = (created_us, Holders::default());
            }
            f(&mut entry.1)
        })
        .unwrap_or(true)
    }

    /// `U`/`L` on an existing stream.
    pub fn hold(&self, id: &str, created_us: u64, index: usize, weak: bool, update: bool) {
        self.update(id, created_us, |h| {
            h.hold(index, weak, update);
            true
        });
    }

    /// `D[w]`; true when the stream must be destroyed now. A poisoned table deletes, as
    /// before weak references existed.
    pub fn release(&self, id: &str, created_us: u64, index: usize, weak: bool) -> bool {
        self.update(id, created_us, |h| h.release(index, weak))
    }

    /// Sets the holders of a stream recreated under the same ID (`n`), read with
    /// [`RefTable::get`] before the old one was destroyed: its close event may be handled
    /// before or after this.
    pub fn set(&self, id: &str, created_us: u64, holders: Holders) {
        self.with(|m| m.insert(id.to_owned(), (created_us, holders)));
    }

    /// The relay closed the stream: its entry goes, unless it already belongs to a newer one.
    pub fn forget(&self, id: &str, created_us: u64) {
        self.with(|m| {
            if m.get(id).is_some_and(|&(at, _)| at == created_us) {
                m.remove(id);
            }
        });
    }

    pub fn len(&self) -> usize {
        self.with(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows session events and forgets every closed stream. Ends when the hub closes.
    pub async fn run(self: Arc<Self>, hub: EventHub) {
        hub.follow_closed(
            "rtpproxy reference table",
            "entries of closed streams may linger",
            |id, closed| {
                let created = closed.session.as_ref().map_or(0, |s| s.created_unix_us);
                self.forget(id, created);
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: bool = true;
    const L: bool = false;

    #[test]
    fn stream_index_is_rtpproxys() {
        // U by the creating tag: side 0; L with the same tag order: side 1; swapped: opposite.
        assert_eq!(stream_index(true, U), 0);
        assert_eq!(stream_index(true, L), 1);
        assert_eq!(stream_index(false, U), 1);
        assert_eq!(stream_index(false, L), 0);
    }

    #[test]
    fn a_weak_stream_lives_until_its_last_weak_reference_goes() {
        // Uw creates (weak[0]); Lw adds weak[1]; D (strong) changes nothing that holds it.
        let mut h = Holders::created(true);
        h.hold(stream_index(true, L), true, false);
        assert_eq!(h.weak, [true, true]);
        assert!(!h.release(0, false), "no strong reference to drop");
        // Dw with the caller's tag first clears side 1 (the Lw), swapped tags side 0.
        assert!(!h.release(stream_index(true, L), true));
        assert!(h.release(stream_index(false, L), true));
    }

    #[test]
    fn strong_and_weak_references_are_independent() {
        let mut h = Holders::created(false);
        h.hold(1, true, false);
        assert!(!h.release(1, false), "the weak reference still holds it");
        assert!(h.release(1, true));
        // A plain L adds nothing; a plain U restores the strong flag.
        let mut h = Holders::created(true);
        h.hold(1, false, false);
        assert_eq!(h, Holders::created(true));
        h.hold(0, false, true);
        assert!(h.strong);
    }

    #[test]
    fn table_ignores_stale_entries_and_forgets_closed_streams() {
        let t = RefTable::default();
        t.created("s", 10, true);
        assert_eq!(t.get("s", 10), Holders::created(true));
        // Another incarnation of the same ID starts strongly held.
        assert_eq!(t.get("s", 11), Holders::default());
        // Closing an older incarnation leaves the entry alone.
        t.forget("s", 9);
        assert_eq!(t.len(), 1);
        let h = t.get("s", 10);
        t.forget("s", 10);
        t.set("s", 12, h);
        assert_eq!(t.get("s", 12), Holders::created(true));
        t.forget("s", 10);
        assert_eq!(
            t.len(),
            1,
            "the old incarnation's close is not the new one's"
        );
        assert!(t.release("s", 12, 0, true));
        t.forget("s", 12);
        assert!(t.is_empty());
        // No entry: a plain D deletes.
        assert!(t.release("grpc-made", 5, 1, false));
    }
}
