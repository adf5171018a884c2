//! RTP/RTCP awareness for the forwarding path (sans-IO, zero-copy).
//!
//! The relay forwards media untouched, yet operators need to know how each call is doing:
//! loss, reordering and jitter on the leg into the relay, what the far ends report, and the
//! round-trip time of each leg. [`SessionMedia::on_packet`] gets all of that from headers the
//! relay already holds in its receive buffer: packets are parsed in place with `rtp-types` and
//! `rtcp-types`, state is inline per session, and nothing on that path allocates, blocks or
//! calls the OS. Statistics leave through [`SessionMedia::snapshot`] as plain data.
//!
//! Layout: [`packet`] demultiplexes, [`seq`] and [`jitter`] are the RFC 3550 appendix A.1 and
//! A.8 algorithms, [`clock`] maps payload types to clock rates, `stream` tracks the SSRCs of a
//! direction, `rtcp` reads RTCP and times each leg, and [`snapshot`] holds the reported types.

pub mod clock;
pub mod jitter;
pub mod packet;
mod rtcp;
pub mod seq;
mod session;
pub mod snapshot;
mod stream;

#[cfg(test)]
mod tests;

pub use clock::{ClockMap, static_clock_rate};
pub use packet::PacketClass;
pub use session::{Direction, SessionMedia};
pub use snapshot::{
    DirectionSnapshot, MediaSnapshot, RemoteReport, RtcpCounters, RttSnapshot, SourceSnapshot,
};
pub use stream::MAX_SOURCES;
