//! [`MediaIo`] on a shard-private io_uring.
//!
//! Every socket has one multishot `recvmsg` armed, drawing from one provided-buffer ring; a
//! received buffer is sent on with a `send` carrying its destination address, straight from
//! where the kernel wrote it, and goes back to the ring when that send completes. A forked
//! packet (rtpproxy `C`) gets a second `send` from the same buffer, to the copy target; the
//! buffer's send slot counts its pending sends and the buffer returns to the ring when the last
//! one completes, so forking copies no bytes. Sockets sit in the ring's registered-file table
//! (slot = token) so no per-operation file lookup is paid. The sends produced by one pass go to
//! the kernel in the same `io_uring_enter` that waits for the next packets.
//!
//! Wake-ups: the ring signals an eventfd, which the shard awaits through glommio. The eventfd is
//! disabled while the shard is busy (otherwise its own send completions would double the
//! wake-ups) and re-enabled by [`MediaIo::prepare_sleep`], which re-checks the completion queue
//! afterwards so that no completion is missed between the check and the sleep.
//!
//! Under steady traffic the shard does not sleep through glommio at all: it blocks in
//! [`MediaIo::wait_batch`] for a batch of packets. With deferred task work (the default) the
//! kernel leaves arriving packets queued until the batch is complete or the wait times out, so one
//! wake-up, one pass and one submission serve the whole batch; at one packet per wake-up every
//! design pays several microseconds of scheduling per packet.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tracing::warn;

use super::bufring::BufRing;
use super::cmsg::{TIMESTAMP_SPACE, rx_timestamp_us};
use super::{Action, MediaIo, PacketHandler, Pass, Received, Token};
use crate::sockaddr;
use crate::time::unix_now_us;

/// Tuning of one shard's ring.
#[derive(Debug, Clone)]
pub struct UringConfig {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Receive buffers shared by all sockets of the shard (power of two, at most 32768). Each
    /// holds one datagram of any size; this bounds how many packets a shard can hold at once.
    pub buffers: u16,
    /// Size of the registered-file table: the most sockets (4 per UDP session) a shard can have.
    pub max_sockets: u32,
    /// When the kernel runs receive completion work (see [`TaskRun`]).
    pub task_run: TaskRun,
    /// Packets that waited longer than this in the kernel (the shard was overloaded) are
    /// dropped instead of sent: late media is useless to a phone, and skipping the send lets the
    /// shard catch up instead of carrying seconds of backlog. Zero = never.
    pub max_packet_age: Duration,
}

/// When the kernel runs the completion work of arriving packets (copying them into a buffer
/// and posting the completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskRun {
    /// As each packet arrives, interrupting the shard's thread if it is running.
    Immediate,
    /// As each packet arrives, but without interrupting a running shard
    /// (IORING_SETUP_COOP_TASKRUN): fewer IPIs under load. The default: on Linux 6.18.44 the
    /// deferred mode lost the ring's wake-up after every control command, so a quiet shard
    /// relayed the next packet only at its periodic check (~12 ms late instead of ~0.3 ms).
    #[default]
    Coop,
    /// Only when the shard asks for completions (IORING_SETUP_DEFER_TASKRUN): a shard waiting
    /// for a batch in [`MediaIo::wait_batch`] is woken once for the whole batch instead of
    /// once per packet. Requires creating the ring on the shard's own thread.
    Defer,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            sq_entries: 4096,
            buffers: 4096,
            max_sockets: 65536,
            task_run: TaskRun::default(),
            max_packet_age: Duration::from_millis(200),
        }
    }
}

const BUF_GROUP: u16 = 0;
/// The largest UDP payload plus the `io_uring_recvmsg_out` header and the source address.
const BUF_LEN: u32 =
    (RECVMSG_OUT_HEADER + sockaddr::MAX_SOCKADDR_LEN + TIMESTAMP_SPACE + 65535) as u32;
/// `struct io_uring_recvmsg_out`: name, control and payload lengths and the message flags.
const RECVMSG_OUT_HEADER: usize = 16;

const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1 << KIND_SHIFT;
const KIND_SEND: u64 = 2 << KIND_SHIFT;
const KIND_CANCEL: u64 = 3 << KIND_SHIFT;
const KIND_NOP: u64 = 4 << KIND_SHIFT;
/// The second send of a forked packet (rtpproxy `C`), from the same buffer as its relay send.
const KIND_COPY: u64 = 5 << KIND_SHIFT;
/// Readiness of the descriptor given to [`MediaIo::watch`].
const KIND_WATCH: u64 = 6 << KIND_SHIFT;
/// A read of a socket's error queue (IP_RECVERR reports), whose content is not needed.
const KIND_ERRQ: u64 = 7 << KIND_SHIFT;
const KIND_MASK: u64 = 0xff << KIND_SHIFT;
/// A pass reads the clock before its first completion and again every this many.
const CLOCK_EVERY: usize = 16;

/// What the pending sends of one receive buffer need; one per buffer. A buffer is in at most
/// two sends at a time: its relay send and, when the session is forked, its copy. Both send the
/// same bytes, each to its own destination.
struct SendSlot {
    data: *const u8,
    len: u32,
    addr: libc::sockaddr_in6,
    /// 0: the sending socket is connected to the destination; the send names no address.
    addr_len: libc::socklen_t,
    copy_addr: libc::sockaddr_in6,
    copy_addr_len: libc::socklen_t,
    tag: u64,
    /// Sends still in flight from this buffer; it goes back to the ring when this reaches 0.
    pending: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    /// No socket in this slot, or its receive has ended after removal.
    Idle,
    /// A multishot receive is pending.
    Armed,
    /// The multishot receive ended on its own (e.g. buffers ran out) and must be re-armed.
    Rearm,
    /// Removed; waiting for the cancelled receive to end.
    Closing,
}

/// A shard's io_uring and the memory it shares with the kernel.
pub struct UringIo {
    // Declared first so it is dropped first: the kernel must let go of the buffers, the send
    // slots and the receive header before they are freed.
    ring: IoUring,
    st: Shared,
    released: Vec<Token>,
    efd: OwnedFd,
    /// The kernel accepts `min_wait_usec` in a wait (IORING_FEAT_MIN_TIMEOUT, Linux 6.12+).
    min_timeout: bool,
    /// The descriptor given to [`MediaIo::watch`].
    watched: Option<RawFd>,
    /// Completion work is deferred until asked for ([`TaskRun::Defer`]).
    defer: bool,
    /// Queued entries that complete while being submitted (sends, copies, error-queue reads):
    /// a wait that also submits them must not count their completions as arrivals.
    queued_inline: usize,
}

/// Everything the kernel may read or write on the ring's behalf, and the per-socket receive
/// state; kept apart from the ring so completions can be handled while the ring is split.
struct Shared {
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    sends: Box<[SendSlot]>,
    sockets: Vec<RecvState>,
    rearm: Vec<Token>,
    /// Sockets whose error queue is to be read (one report per read).
    errq: Vec<Token>,
    /// Where error-queue reads land; their content is discarded.
    errq_scratch: Box<ErrqScratch>,
    /// [`UringConfig::max_packet_age`] in microseconds (0 = no limit).
    max_age_us: u64,
}

/// A send to queue: from socket `via`, buffer `bid` (already filled into its send slot), and
/// the copy's sending socket if the packet is forked.
struct PendingSend {
    via: Token,
    bid: u16,
    copy_via: Option<Token>,
}

impl UringIo {
    pub fn new(cfg: &UringConfig) -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };

        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(u32::from(cfg.buffers).max(cfg.sq_entries) * 4)
            .setup_submit_all();
        match cfg.task_run {
            TaskRun::Immediate => {}
            TaskRun::Coop => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            TaskRun::Defer => {
                builder
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
        }
        let ring = builder.build(cfg.sq_entries)?;
        let min_timeout = ring.params().is_feature_min_timeout();
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        ring.submitter().register_files_sparse(cfg.max_sockets)?;

        let bufs = BufRing::new(cfg.buffers, BUF_LEN)?;
        // SAFETY: the ring memory stays mapped until after the io_uring is dropped (field order).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufs.entries(),
                BUF_GROUP,
                0,
            )?;
        }

        // SAFETY: an all-zero msghdr is valid; only the lengths are set, so the kernel reserves
        // room for the source address and the receive timestamp in front of every payload.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = sockaddr::MAX_SOCKADDR_LEN as libc::socklen_t;
        recv_hdr.msg_controllen = TIMESTAMP_SPACE as _;

        let sends = (0..cfg.buffers)
            .map(|_| SendSlot {
                data: std::ptr::null(),
                len: 0,
                // SAFETY: an all-zero sockaddr_in6 is a valid value.
                addr: unsafe { std::mem::zeroed() },
                addr_len: 0,
                // SAFETY: as above.
                copy_addr: unsafe { std::mem::zeroed() },
                copy_addr_len: 0,
                tag: 0,
                pending: 0,
            })
            .collect();

        let mut this = Self {
            ring,
            st: Shared {
                bufs,
                recv_hdr,
                sends,
                sockets: vec![RecvState::Idle; cfg.max_sockets as usize],
                rearm: Vec::new(),
                errq: Vec::new(),
                errq_scratch: ErrqScratch::new(),
                max_age_us: cfg.max_packet_age.as_micros() as u64,
            },
            released: Vec::new(),
            efd,
            min_timeout,
            watched: None,
            defer: cfg.task_run == TaskRun::Defer,
            queued_inline: 0,
        };
        this.ring.completion().disable_eventfd();
        Ok(this)
    }

    /// Queues `entry`, submitting first if the submission queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points only at memory owned by `self` that
            // outlives the ring (see the field order).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }
}

impl UringIo {
    /// Submits what is queued and runs every piece of deferred completion work the kernel
    /// holds. A plain enter runs at most 20 (IO_LOCAL_TW_DEFAULT_MAX) and a wait's own run is
    /// capped by its count; a leftover item stays in the kernel's retry list, no longer flagged
    /// (IORING_SQ_TASKRUN is cleared when a run starts) and no longer signalled, and while it
    /// waits its socket queues no new work: that socket would go silent. So ask for more
    /// completions than can exist, with a zero timeout.
    fn run_deferred(&mut self) -> io::Result<()> {
        if self.defer {
            let ts = types::Timespec::new();
            let args = types::SubmitArgs::new().timespec(&ts);
            let want = self.ring.completion().len() + RUN_ALL_DEFERRED;
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => Ok(()),
                Err(e) if is_wait_end(&e) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            self.ring.submit().map(drop)
        }
    }
}

/// More completions than a shard's ring can hold (see [`UringIo::run_deferred`]).
const RUN_ALL_DEFERRED: usize = 1 << 20;

/// A wait that ended by its timeout, a signal or a full completion queue: not a failure, the
/// caller handles whatever completions are there.
fn is_wait_end(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
    )
}

/// Pushes `entry` through a split ring, submitting when the queue is full.
fn push_split(
    submitter: &io_uring::Submitter<'_>,
    sq: &mut io_uring::SubmissionQueue<'_>,
    entry: &squeue::Entry,
) -> io::Result<()> {
    loop {
        // SAFETY: as in `UringIo::push`.
        if unsafe { sq.push(entry) }.is_ok() {
            return Ok(());
        }
        sq.sync();
        submitter.submit()?;
        sq.sync();
    }
}

impl MediaIo for UringIo {
    fn add_sockets(&mut self, sockets: &[(Token, RawFd)]) -> Result<(), (usize, io::Error)> {
        let mut added = 0;
        for run in consecutive_runs(sockets, |&(token, _)| token) {
            let first = run[0].0;
            if let Some(&(token, _)) = run
                .iter()
                .find(|(t, _)| self.st.sockets.get(*t as usize) != Some(&RecvState::Idle))
            {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("socket slot {token} is not free"),
                );
                return Err((added, e));
            }
            let fds: Vec<RawFd> = run.iter().map(|&(_, fd)| fd).collect();
            // The kernel stops at the first slot it cannot update and reports how many it did.
            let done = self
                .ring
                .submitter()
                .register_files_update(first, &fds)
                .map_err(|e| (added, e))?;
            for &(token, _) in &run[..done.min(run.len())] {
                // Submitted with the next flush, wait or pass (see the trait), together with
                // the receives of the other commands handled meanwhile: one system call for all.
                // Datagrams arriving meanwhile wait in the bound socket.
                let entry = self.st.recv_entry(token);
                self.push(&entry).map_err(|e| (added, e))?;
                self.st.sockets[token as usize] = RecvState::Armed;
                added += 1;
            }
            if done < run.len() {
                let e = io::Error::other(format!(
                    "the kernel registered {done} of {} sockets from slot {first}",
                    run.len()
                ));
                return Err((added, e));
            }
        }
        Ok(())
    }

    fn remove_sockets(&mut self, tokens: &[Token]) {
        const CLEAR: [RawFd; 4] = [-1; 4];
        for run in consecutive_runs(tokens, |&token| token) {
            for chunk in run.chunks(CLEAR.len()) {
                if let Err(e) = self
                    .ring
                    .submitter()
                    .register_files_update(chunk[0], &CLEAR[..chunk.len()])
                {
                    warn!(token = chunk[0], error = %e, "failed to clear registered socket slots");
                }
            }
        }
        let mut released = false;
        for &token in tokens {
            let Some(state) = self.st.sockets.get(token as usize).copied() else {
                continue;
            };
            match state {
                RecvState::Armed => {
                    self.st.sockets[token as usize] = RecvState::Closing;
                    let cancel = opcode::AsyncCancel::new(KIND_RECV | u64::from(token))
                        .build()
                        .user_data(KIND_CANCEL | u64::from(token));
                    // Submitted with the next flush, like the receives of `add_sockets`.
                    if let Err(e) = self.push(&cancel) {
                        warn!(token, error = %e, "failed to cancel a socket's receive");
                    }
                }
                RecvState::Rearm | RecvState::Idle => {
                    self.st.sockets[token as usize] = RecvState::Idle;
                    self.released.push(token);
                    released = true;
                }
                RecvState::Closing => {}
            }
        }
        if released && let Err(e) = self.nudge() {
            warn!(error = %e, "failed to wake the shard for a socket release");
        }
    }

    fn process(&mut self, handler: &mut dyn PacketHandler, budget: usize) -> io::Result<Pass> {
        for token in self.released.drain(..) {
            handler.on_socket_released(token);
        }
        // With deferred task work, arrived packets become completions only when asked for.
        if self.ring.submission().taskrun() {
            self.ring.submitter().submit()?;
        }
        let (submitter, mut sq, mut cq) = self.ring.split();
        let mut pass = Pass::default();
        let mut inline = 0;
        let mut now_us = 0;
        while pass.completions < budget {
            let Some(cqe) = cq.next() else { break };
            // The clock is read once per few completions: a pass of a full budget takes
            // hundreds of microseconds, which a residence time must not hide.
            if pass.completions % CLOCK_EVERY == 0 {
                now_us = unix_now_us();
            }
            pass.completions += 1;
            match cqe.user_data() & KIND_MASK {
                KIND_RECV => {
                    if cqueue::buffer_select(cqe.flags()).is_some() {
                        pass.packets += 1;
                    }
                    if let Some(send) = self.st.on_recv(&cqe, handler, now_us) {
                        if let Some(copy_via) = send.copy_via {
                            push_split(
                                &submitter,
                                &mut sq,
                                &self.st.copy_entry(copy_via, send.bid),
                            )?;
                            inline += 1;
                        }
                        push_split(&submitter, &mut sq, &self.st.send_entry(send))?;
                        inline += 1;
                    }
                }
                KIND_SEND => self.st.on_send_done(&cqe, handler, false),
                KIND_COPY => self.st.on_send_done(&cqe, handler, true),
                KIND_ERRQ => {
                    // A report was read: there may be more. Stops at EAGAIN.
                    let token = (cqe.user_data() & 0xffff_ffff) as Token;
                    if cqe.result() >= 0
                        && self.st.sockets.get(token as usize) == Some(&RecvState::Armed)
                    {
                        self.st.errq.push(token);
                    }
                }
                KIND_WATCH => {
                    pass.watched = true;
                    if let (Some(fd), false) = (self.watched, cqueue::more(cqe.flags())) {
                        push_split(&submitter, &mut sq, &watch_entry(fd))?;
                    }
                }
                _ => {} // cancellations and nudges carry no work
            }
        }
        cq.sync();
        for token in std::mem::take(&mut self.st.rearm) {
            if self.st.sockets[token as usize] == RecvState::Rearm {
                push_split(&submitter, &mut sq, &self.st.recv_entry(token))?;
                self.st.sockets[token as usize] = RecvState::Armed;
            }
        }
        for token in std::mem::take(&mut self.st.errq) {
            push_split(&submitter, &mut sq, &self.st.errq_entry(token))?;
            inline += 1;
        }
        self.st.bufs.publish();
        sq.sync();
        self.queued_inline += inline;
        Ok(pass)
    }

    fn wait_batch(
        &mut self,
        packets: usize,
        min_wait: Duration,
        max_wait: Duration,
    ) -> io::Result<()> {
        // Completions already posted, and those of the sends this enter submits, do not count
        // towards the batch. (If something else submitted the sends meanwhile, the wait asks
        // for that many packets too many: it ends by its timeout, which bounds the cost.)
        let want = self.ring.completion().len() + std::mem::take(&mut self.queued_inline) + packets;
        let ts = types::Timespec::from(max_wait);
        let mut args = types::SubmitArgs::new().timespec(&ts);
        if self.min_timeout && !min_wait.is_zero() {
            args = args.min_wait_usec(u32::try_from(min_wait.as_micros()).unwrap_or(u32::MAX));
        }
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if is_wait_end(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn prepare_sleep(&mut self) -> io::Result<bool> {
        self.st.bufs.publish();
        self.queued_inline = 0;
        self.ring.completion().enable_eventfd();
        // Flushes anything queued and runs all deferred completion work. Order matters: with
        // deferred task work the eventfd fires only when such work goes from none to some, so
        // none may be left pending once the eventfd is enabled. Work that arrives from now on
        // finds it enabled and signals it.
        self.run_deferred()?;
        // IORING_SQ_TASKRUN is no reason to stay awake: the kernel sets it when work arrives
        // and clears it only when a run starts, so work that arrived during the run above and
        // was run by it leaves the flag set with nothing pending. Trusting it kept an idle
        // shard spinning here until the next packet (forever, when that shard's core was also
        // the sender's, at equal real-time priority); any real work signals the eventfd.
        if !self.ring.completion().is_empty() || !self.released.is_empty() {
            self.ring.completion().disable_eventfd();
            return Ok(false);
        }
        Ok(true)
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        self.watched = Some(fd);
        self.push(&watch_entry(fd))?;
        self.ring.submit()?;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.queued_inline = 0;
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn woke(&mut self) {
        self.ring.completion().disable_eventfd();
    }

    fn nudge(&mut self) -> io::Result<()> {
        self.push(&opcode::Nop::new().build().user_data(KIND_NOP))?;
        self.ring.submit()?;
        Ok(())
    }

    fn wake_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
}

/// Splits `items` into maximal runs whose tokens count up by one (`[4, 5, 9, 2, 3]` gives
/// `[4, 5]`, `[9]`, `[2, 3]`), the shape one file-table update can take.
fn consecutive_runs<T>(items: &[T], token: impl Fn(&T) -> Token) -> impl Iterator<Item = &[T]> {
    items.chunk_by(move |a, b| token(a).checked_add(1) == Some(token(b)))
}

/// A multishot readiness poll of `fd`: a completion each time it becomes readable.
fn watch_entry(fd: RawFd) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(KIND_WATCH)
}

/// Landing space of error-queue reads (see [`KIND_ERRQ`]); shared by all of them, since what
/// they read is thrown away.
struct ErrqScratch {
    hdr: libc::msghdr,
    iov: libc::iovec,
    data: [u8; 64],
    control: [u8; 512],
}

impl ErrqScratch {
    fn new() -> Box<Self> {
        // SAFETY: all-zero msghdr/iovec are valid values; the pointers are set below, into the
        // box, whose heap address does not move.
        let mut s: Box<Self> = Box::new(Self {
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            data: [0; 64],
            control: [0; 512],
        });
        s.iov.iov_base = s.data.as_mut_ptr().cast();
        s.iov.iov_len = s.data.len();
        s.hdr.msg_iov = &raw mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = s.control.as_mut_ptr().cast();
        s.hdr.msg_controllen = s.control.len() as _;
        s
    }
}

impl Shared {
    /// Reads one report from `token`'s error queue, without waiting.
    fn errq_entry(&mut self, token: Token) -> squeue::Entry {
        opcode::RecvMsg::new(types::Fixed(token), &raw mut self.errq_scratch.hdr)
            .flags((libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) as u32)
            .build()
            .user_data(KIND_ERRQ | u64::from(token))
    }

    fn recv_entry(&self, token: Token) -> squeue::Entry {
        opcode::RecvMsgMulti::new(types::Fixed(token), &raw const *self.recv_hdr, BUF_GROUP)
            .build()
            .user_data(KIND_RECV | u64::from(token))
    }

    fn send_entry(&self, send: PendingSend) -> squeue::Entry {
        let slot = &self.sends[usize::from(send.bid)];
        // A plain send with a destination address: unlike SendMsg, the kernel copies in neither
        // a msghdr nor an iovec per packet. On a connected socket, without one: the kernel
        // then copies in no address and looks up no route.
        let mut op = opcode::Send::new(types::Fixed(send.via), slot.data, slot.len);
        if slot.addr_len != 0 {
            op = op
                .dest_addr((&raw const slot.addr).cast())
                .dest_addr_len(slot.addr_len);
        }
        // Media is late if it waits: a full socket buffer drops (and counts) the packet.
        op.flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(KIND_SEND | u64::from(send.bid))
    }

    fn copy_entry(&self, via: Token, bid: u16) -> squeue::Entry {
        let slot = &self.sends[usize::from(bid)];
        opcode::Send::new(types::Fixed(via), slot.data, slot.len)
            .dest_addr((&raw const slot.copy_addr).cast())
            .dest_addr_len(slot.copy_addr_len)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(KIND_COPY | u64::from(bid))
    }

    /// Handles one receive completion: hands the packet to `handler` and returns the send it
    /// asked for (its buffer then stays out of the ring until the send completes), or gives the
    /// buffer back. Also notices the end of a multishot receive.
    fn on_recv(
        &mut self,
        cqe: &cqueue::Entry,
        handler: &mut dyn PacketHandler,
        now_us: u64,
    ) -> Option<PendingSend> {
        let token = (cqe.user_data() & 0xffff_ffff) as Token;
        let (res, flags) = (cqe.result(), cqe.flags());
        let state = self.sockets.get(token as usize).copied();
        let mut send = None;
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res >= 0 && state == Some(RecvState::Armed) && bid < self.bufs.entries() {
                send = self.deliver(token, bid, res as usize, handler, now_us);
            }
            if send.is_none() {
                self.bufs.push(bid);
            }
        }
        if !cqueue::more(flags) {
            match state {
                Some(RecvState::Closing) => {
                    self.sockets[token as usize] = RecvState::Idle;
                    handler.on_socket_released(token);
                }
                Some(RecvState::Armed) => {
                    if res < 0 && res != -libc::ENOBUFS {
                        // A queued ICMP error (IP_RECVERR) ends the receive: report it, re-arm.
                        handler.on_socket_error(token, -res);
                        // Its report stays in the socket's error queue, charged to the receive
                        // buffer (enough of them and media is dropped) and keeping EPOLLERR
                        // set: read the queue empty.
                        self.errq.push(token);
                    }
                    self.sockets[token as usize] = RecvState::Rearm;
                    self.rearm.push(token);
                }
                _ => {}
            }
        }
        send
    }

    fn deliver(
        &mut self,
        token: Token,
        bid: u16,
        len: usize,
        handler: &mut dyn PacketHandler,
        now_us: u64,
    ) -> Option<PendingSend> {
        // SAFETY: the kernel finished writing `bid` (its CQE is reaped) and gets it back only
        // through `bufs.push`, after this packet was dropped or its send completed.
        let buf = unsafe { self.bufs.slice(bid, len) };
        let msg = types::RecvMsgOut::parse(buf, &self.recv_hdr).ok()?;
        let from = sockaddr::decode(msg.name_data())?;
        let arrival_us = rx_timestamp_us(msg.control_data()).unwrap_or(now_us);
        let payload = msg.payload_data();
        let packet = Received {
            token,
            from,
            payload,
            truncated: msg.is_payload_truncated(),
            arrival_us,
            now_us,
            late: self.max_age_us != 0 && now_us.saturating_sub(arrival_us) > self.max_age_us,
        };
        let Action::Send {
            via,
            to,
            connected,
            tag,
            copy,
        } = handler.on_packet(packet)
        else {
            return None;
        };
        let slot = &mut self.sends[usize::from(bid)];
        let to = (!connected).then_some(&to);
        fill_send_slot(slot, to, tag, payload.as_ptr(), payload.len());
        slot.pending = 1;
        let copy_via = copy.map(|(copy_via, copy_to)| {
            fill_copy(slot, &copy_to);
            slot.pending = 2;
            copy_via
        });
        Some(PendingSend { via, bid, copy_via })
    }

    /// One send of buffer `bid` completed (the copy if `copy`); the buffer goes back to the
    /// ring once its last pending send is done.
    fn on_send_done(&mut self, cqe: &cqueue::Entry, handler: &mut dyn PacketHandler, copy: bool) {
        let bid = (cqe.user_data() & 0xffff) as u16;
        let Some(slot) = self.sends.get_mut(usize::from(bid)) else {
            return;
        };
        let res = cqe.result();
        if copy {
            let result = if res >= 0 {
                Ok(res as usize)
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
            handler.on_copy_sent(slot.tag, result);
        } else if res < 0 {
            let error = io::Error::from_raw_os_error(-res);
            handler.on_send_failed(slot.tag, slot.len as usize, error);
        }
        slot.pending = slot.pending.saturating_sub(1);
        if slot.pending == 0 {
            self.bufs.push(bid);
        }
    }
}

/// `to` is `None` when the sending socket is connected to the destination.
fn fill_send_slot(
    slot: &mut SendSlot,
    to: Option<&SocketAddr>,
    tag: u64,
    ptr: *const u8,
    len: usize,
) {
    slot.addr_len = to.map_or(0, |to| sockaddr::encode(to, &mut slot.addr));
    slot.data = ptr;
    // Buffers hold at most one UDP datagram (< 64 KiB).
    slot.len = len as u32;
    slot.tag = tag;
}

/// Sets the destination of the slot's copy, which sends the same bytes (`fill_send_slot` first).
fn fill_copy(slot: &mut SendSlot, to: &SocketAddr) {
    slot.copy_addr_len = sockaddr::encode(to, &mut slot.copy_addr);
}

#[cfg(test)]
mod tests {
    use super::consecutive_runs;

    fn runs(tokens: &[u32]) -> Vec<Vec<u32>> {
        consecutive_runs(tokens, |&t| t)
            .map(<[u32]>::to_vec)
            .collect()
    }

    #[test]
    fn consecutive_tokens_form_one_run_and_gaps_split() {
        assert_eq!(runs(&[4, 5, 6, 7]), [vec![4, 5, 6, 7]]);
        assert_eq!(runs(&[4, 5, 9, 2, 3]), [vec![4, 5], vec![9], vec![2, 3]]);
        assert_eq!(runs(&[7, 6]), [vec![7], vec![6]], "descending is no run");
        assert_eq!(
            runs(&[u32::MAX, 0]),
            [vec![u32::MAX], vec![0]],
            "no wrap-around"
        );
        assert!(runs(&[]).is_empty());
    }
}
