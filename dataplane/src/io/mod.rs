//! The shard's batched media I/O, behind a thin trait.
//!
//! The hot path is: many sockets, a few packets each per wake-up, every packet sent on from
//! another socket. Per-socket readiness + per-socket `recvmmsg` pays a syscall per active socket;
//! one io_uring with a multishot receive on every socket, fed from one shared ring of provided
//! buffers, pays one `io_uring_enter` per wake-up for all of them, and the received buffer is
//! sent on as it is (no copy). The trait keeps the shard's session logic independent of that
//! mechanism, so another implementation (e.g. `recvmmsg`/`sendmmsg` for kernels without
//! io_uring) can be slotted in.

pub mod bufring;
pub mod cmsg;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// A shard-local socket handle: an index into the shard's socket table, also used by the I/O
/// layer as its registered-file slot.
pub type Token = u32;

/// What one [`MediaIo::process`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Completions handled: receives, sends and the rest.
    pub completions: usize,
    /// Datagrams received among them; what tells steady traffic from a lone packet.
    pub packets: usize,
    /// The descriptor given to [`MediaIo::watch`] became readable.
    pub watched: bool,
}

/// What the handler wants done with a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Release the buffer.
    Drop,
    /// Send the payload unchanged from socket `via` to `to`; `tag` comes back in
    /// [`PacketHandler::on_send_failed`] if the kernel refuses it.
    Send {
        via: Token,
        to: SocketAddr,
        /// `via` is connected to `to`: send without an address, on the socket's cached route.
        connected: bool,
        tag: u64,
        /// Also send the same bytes from socket `.0` to `.1` (media forking, rtpproxy `C`).
        /// The buffer is shared by both sends and goes back to the pool when both completed;
        /// the copy's completion comes back in [`PacketHandler::on_copy_sent`] with `tag`.
        copy: Option<(Token, SocketAddr)>,
    },
}

/// One received datagram, as handed to [`PacketHandler::on_packet`].
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub token: Token,
    pub from: SocketAddr,
    pub payload: &'a [u8],
    pub truncated: bool,
    /// Kernel receive timestamp, microseconds since the Unix epoch.
    pub arrival_us: u64,
    /// When the shard took it from the ring (read once per few packets of a pass), same clock.
    /// A send it asks for is handed to the kernel in the system call that follows the pass, so
    /// `now_us - arrival_us` is the packet's residence in the relay.
    pub now_us: u64,
    /// It waited in the kernel longer than the configured maximum packet age.
    pub late: bool,
}

/// The shard's side of the I/O loop: decides per packet and accounts for the results.
pub trait PacketHandler {
    /// A datagram arrived (see [`Received`]).
    fn on_packet(&mut self, packet: Received<'_>) -> Action;
    /// A send of `len` bytes requested by [`Action::Send`] failed. Successful sends are not
    /// reported: the handler counts a send when it asks for it, while the session's state is
    /// still in cache, and takes it back here.
    fn on_send_failed(&mut self, tag: u64, len: usize, error: io::Error);
    /// The copy requested alongside an [`Action::Send`] completed or failed.
    fn on_copy_sent(&mut self, tag: u64, result: io::Result<usize>);
    /// A receive on `token` failed with `errno`, typically an ICMP error the kernel queued on
    /// the socket (port or host unreachable); receiving goes on.
    fn on_socket_error(&mut self, token: Token, errno: i32);
    /// A socket passed to [`MediaIo::remove_sockets`] is no longer referenced by any pending
    /// receive: once the caller has closed its descriptor, its port is free.
    fn on_socket_released(&mut self, token: Token);
}

/// A batched packet path owned by one shard.
pub trait MediaIo {
    /// Starts receiving on bound, non-blocking UDP sockets, given as (token, descriptor); the
    /// caller keeps owning the descriptors. Runs of consecutive tokens enter the file table in
    /// one system call, so a session's sockets cost one when their tokens follow each other.
    /// The receives reach the kernel with the next [`MediaIo::flush`] (or wait, or nudge). On
    /// failure, returns how many of `sockets` (a prefix) were added, and why the next was not.
    fn add_sockets(&mut self, sockets: &[(Token, RawFd)]) -> Result<(), (usize, io::Error)>;
    /// Stops receiving on `tokens`. [`PacketHandler::on_socket_released`] follows for each
    /// from a later [`MediaIo::process`]; a token must not be reused before that. The sockets
    /// leave the file table at once (a run of consecutive tokens in one system call); the
    /// cancellations of their receives reach the kernel with the next flush.
    fn remove_sockets(&mut self, tokens: &[Token]);
    /// Handles up to `budget` completions and says how many completions and packets it
    /// handled. The resulting sends are queued, not submitted: they go out with the next
    /// [`MediaIo::wait_batch`], [`MediaIo::prepare_sleep`] or [`MediaIo::flush`], so a wake-up
    /// costs one system call that both sends and waits.
    fn process(&mut self, handler: &mut dyn PacketHandler, budget: usize) -> io::Result<Pass>;
    /// Blocks the thread in the kernel until `packets` more datagrams have arrived, or
    /// `min_wait` has passed and at least one has, or `max_wait` has passed. Under steady
    /// traffic this turns a wake-up per packet into one per batch; `max_wait` is the latency
    /// it may add. Does nothing useful unless [`MediaIo::process`] follows.
    fn wait_batch(
        &mut self,
        packets: usize,
        min_wait: Duration,
        max_wait: Duration,
    ) -> io::Result<()>;
    /// Makes the wake-up descriptor ([`MediaIo::wake_fd`]) fire on the next completion. Returns
    /// `false` if completions are already waiting, in which case the caller must not sleep.
    fn prepare_sleep(&mut self) -> io::Result<bool>;
    /// Also ends waits (see [`Pass::watched`]) when `fd` becomes readable: the shard's doorbell,
    /// so a shard waiting on its ring still answers commands at once. Must not be an eventfd
    /// with deferred task work (see the shard's doorbell module).
    fn watch(&mut self, fd: RawFd) -> io::Result<()>;
    /// Submits what [`MediaIo::process`], [`MediaIo::add_sockets`] and
    /// [`MediaIo::remove_sockets`] queued. Needed before the shard awaits anything but its own
    /// ring (a timer, another task), or that work would wait with it.
    fn flush(&mut self) -> io::Result<()>;
    /// Called after waking, before processing, to stop completions from signalling the wake-up
    /// descriptor while the shard is busy anyway.
    fn woke(&mut self);
    /// Forces a wake-up of a sleeping shard (e.g. to shut down).
    fn nudge(&mut self) -> io::Result<()>;
    /// A descriptor that becomes readable when the shard should call [`MediaIo::process`].
    fn wake_fd(&self) -> RawFd;
}
