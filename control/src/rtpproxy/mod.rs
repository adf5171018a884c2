//! The rtpproxy control protocol, sans I/O: what Kamailio's and OpenSIPS's `rtpproxy` modules
//! send and expect, turned into typed commands and replies so the relay can stand in for
//! rtpproxy without either proxy noticing.
//!
//! Nothing here touches a socket, a clock or the data plane; the listener that wires it up
//! does, roughly:
//!
//! 1. [`frame::split`] the datagram (cookie + command) or stream line (command);
//! 2. in datagram mode, [`cache::ReplyCache::begin`]: resend a cached reply, ignore a command
//!    still executing, or go on;
//! 3. [`parse::parse`] the text into a [`Command`], or answer the [`ErrorCode`];
//! 4. execute, using [`session_id`] to name relay sessions, into a [`Reply`];
//! 5. [`frame::format_reply`] with [`Reply::render`], store it with
//!    [`cache::ReplyCache::finish`], send it.
//!
//! The pure parts of execution live beside the executor: [`bridge`] picks the local address
//! of each leg (`l`, `r`, `i`/`e`), [`refs`] keeps the weak/strong references of `w`, and
//! [`query`] turns a session snapshot into `Q` answers.

pub mod bridge;
pub mod cache;
pub mod capabilities;
pub mod command;
pub mod error;
pub mod executor;
mod fields;
pub mod frame;
pub mod lanes;
pub mod notify;
pub mod parse;
pub mod query;
pub mod refs;
pub mod reply;
pub mod server;
pub mod session_id;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod reply_tests;
#[cfg(test)]
mod tests;

pub use cache::{Lookup, ReplyCache};
pub use command::{Command, Modifiers, StreamRef, Tag, UpdateLookup};
pub use error::ErrorCode;
pub use frame::{Frame, FrameError, Mode};
pub use parse::parse;
pub use reply::Reply;
