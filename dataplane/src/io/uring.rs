//! [`MediaIo`] on a shard-private io_uring.
//!
//! Every socket has one multishot `recvmsg` armed, drawing from one provided-buffer ring; a
//! received buffer is sent on with `sendmsg` straight from where the kernel wrote it and goes back
//! to the ring when that send completes. Sockets sit in the ring's registered-file table (slot =
//! token) so no per-operation file lookup is paid. All sends produced by one pass go to the
//! kernel in one `io_uring_enter`.
//!
//! Wake-ups: the ring signals an eventfd, which the shard awaits through glommio. The eventfd is
//! disabled while the shard is busy (otherwise its own send completions would double the
//! wake-ups) and re-enabled by [`MediaIo::prepare_sleep`], which re-checks the completion queue
//! afterwards so that no completion is missed between the check and the sleep.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tracing::warn;

use super::bufring::BufRing;
use super::{Action, MediaIo, PacketHandler, Token};
use crate::sockaddr;

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
    /// Ask the kernel to run completion work only when the shard enters the kernel anyway
    /// (IORING_SETUP_COOP_TASKRUN), saving an interrupt per wake-up at some latency cost.
    pub coop_taskrun: bool,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            sq_entries: 4096,
            buffers: 4096,
            max_sockets: 65536,
            coop_taskrun: false,
        }
    }
}

const BUF_GROUP: u16 = 0;
/// The largest UDP payload plus the `io_uring_recvmsg_out` header and the source address.
const BUF_LEN: u32 = (RECVMSG_OUT_HEADER + sockaddr::MAX_SOCKADDR_LEN + 65535) as u32;
/// `struct io_uring_recvmsg_out`: name, control and payload lengths and the message flags.
const RECVMSG_OUT_HEADER: usize = 16;

const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1 << KIND_SHIFT;
const KIND_SEND: u64 = 2 << KIND_SHIFT;
const KIND_CANCEL: u64 = 3 << KIND_SHIFT;
const KIND_NOP: u64 = 4 << KIND_SHIFT;
const KIND_MASK: u64 = 0xff << KIND_SHIFT;

/// Memory a pending `sendmsg` points into; one per receive buffer, because a buffer is in at
/// most one send at a time.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in6,
    tag: u64,
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
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    sends: Box<[SendSlot]>,
    sockets: Vec<RecvState>,
    rearm: Vec<Token>,
    released: Vec<Token>,
    efd: OwnedFd,
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
        if cfg.coop_taskrun {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        let ring = builder.build(cfg.sq_entries)?;
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

        // SAFETY: an all-zero msghdr is valid; only the name length is set, so the kernel
        // reserves room for the source address in front of every payload.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = sockaddr::MAX_SOCKADDR_LEN as libc::socklen_t;

        let sends = (0..cfg.buffers)
            .map(|_| SendSlot {
                // SAFETY: all-zero msghdr/iovec/sockaddr_in6 are valid values.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: unsafe { std::mem::zeroed() },
                tag: 0,
            })
            .collect();

        let mut this = Self {
            ring,
            bufs,
            recv_hdr,
            sends,
            sockets: vec![RecvState::Idle; cfg.max_sockets as usize],
            rearm: Vec::new(),
            released: Vec::new(),
            efd,
        };
        this.ring.completion().disable_eventfd();
        Ok(this)
    }

    fn recv_entry(&self, token: Token) -> squeue::Entry {
        opcode::RecvMsgMulti::new(types::Fixed(token), &raw const *self.recv_hdr, BUF_GROUP)
            .build()
            .user_data(KIND_RECV | u64::from(token))
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
    fn add_socket(&mut self, token: Token, fd: RawFd) -> io::Result<()> {
        let state = self.sockets.get(token as usize).copied();
        if state != Some(RecvState::Idle) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket slot {token} is not free"),
            ));
        }
        self.ring.submitter().register_files_update(token, &[fd])?;
        let entry = self.recv_entry(token);
        self.push(&entry)?;
        self.ring.submit()?;
        self.sockets[token as usize] = RecvState::Armed;
        Ok(())
    }

    fn remove_socket(&mut self, token: Token) {
        let Some(state) = self.sockets.get(token as usize).copied() else {
            return;
        };
        if let Err(e) = self.ring.submitter().register_files_update(token, &[-1]) {
            warn!(token, error = %e, "failed to clear a registered socket slot");
        }
        match state {
            RecvState::Armed => {
                self.sockets[token as usize] = RecvState::Closing;
                let cancel = opcode::AsyncCancel::new(KIND_RECV | u64::from(token))
                    .build()
                    .user_data(KIND_CANCEL | u64::from(token));
                if let Err(e) = self
                    .push(&cancel)
                    .and_then(|()| self.ring.submit().map(drop))
                {
                    warn!(token, error = %e, "failed to cancel a socket's receive");
                }
            }
            RecvState::Rearm | RecvState::Idle => {
                self.sockets[token as usize] = RecvState::Idle;
                self.released.push(token);
                if let Err(e) = self.nudge() {
                    warn!(token, error = %e, "failed to wake the shard for a socket release");
                }
            }
            RecvState::Closing => {}
        }
    }

    fn process(&mut self, handler: &mut dyn PacketHandler, budget: usize) -> io::Result<usize> {
        for token in self.released.drain(..) {
            handler.on_socket_released(token);
        }
        let (submitter, mut sq, mut cq) = self.ring.split();
        let mut handled = 0;
        while handled < budget {
            let Some(cqe) = cq.next() else { break };
            handled += 1;
            let user_data = cqe.user_data();
            let res = cqe.result();
            let flags = cqe.flags();
            match user_data & KIND_MASK {
                KIND_RECV => {
                    let token = (user_data & 0xffff_ffff) as Token;
                    let state = self.sockets.get(token as usize).copied();
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        let mut send = None;
                        if res >= 0 && state == Some(RecvState::Armed) && bid < self.bufs.entries()
                        {
                            // SAFETY: the kernel finished writing `bid` (its CQE is reaped) and
                            // gets it back only via `bufs.push` below or on send completion.
                            let buf = unsafe { self.bufs.slice(bid, res as usize) };
                            if let Ok(msg) = types::RecvMsgOut::parse(buf, &self.recv_hdr)
                                && let Some(from) = sockaddr::decode(msg.name_data())
                            {
                                let payload = msg.payload_data();
                                let action = handler.on_packet(
                                    token,
                                    from,
                                    payload,
                                    msg.is_payload_truncated(),
                                );
                                if let Action::Send { via, to, tag } = action {
                                    send = Some((via, to, tag, payload.as_ptr(), payload.len()));
                                }
                            }
                        }
                        match send {
                            Some((via, to, tag, ptr, len)) => {
                                let slot = &mut self.sends[usize::from(bid)];
                                fill_send_slot(slot, &to, tag, ptr, len);
                                let entry =
                                    opcode::SendMsg::new(types::Fixed(via), &raw const slot.hdr)
                                        .flags(libc::MSG_DONTWAIT as u32)
                                        .build()
                                        .user_data(KIND_SEND | u64::from(bid));
                                push_split(&submitter, &mut sq, &entry)?;
                            }
                            None => self.bufs.push(bid),
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
                                    let err = io::Error::from_raw_os_error(-res);
                                    warn!(token, error = %err, "socket receive ended; re-arming");
                                }
                                self.sockets[token as usize] = RecvState::Rearm;
                                self.rearm.push(token);
                            }
                            _ => {}
                        }
                    }
                }
                KIND_SEND => {
                    let bid = (user_data & 0xffff) as u16;
                    if let Some(slot) = self.sends.get(usize::from(bid)) {
                        let result = if res >= 0 {
                            Ok(res as usize)
                        } else {
                            Err(io::Error::from_raw_os_error(-res))
                        };
                        handler.on_sent(slot.tag, result);
                        self.bufs.push(bid);
                    }
                }
                _ => {} // cancellations and nudges carry no work
            }
        }
        cq.sync();
        for token in self.rearm.drain(..) {
            if self.sockets[token as usize] == RecvState::Rearm {
                let entry = opcode::RecvMsgMulti::new(
                    types::Fixed(token),
                    &raw const *self.recv_hdr,
                    BUF_GROUP,
                )
                .build()
                .user_data(KIND_RECV | u64::from(token));
                push_split(&submitter, &mut sq, &entry)?;
                self.sockets[token as usize] = RecvState::Armed;
            }
        }
        self.bufs.publish();
        sq.sync();
        if !sq.is_empty() || sq.taskrun() {
            drop(sq);
            submitter.submit()?;
        }
        Ok(handled)
    }

    fn prepare_sleep(&mut self) -> io::Result<bool> {
        self.bufs.publish();
        self.ring.completion().enable_eventfd();
        // Flushes anything queued and, if the kernel has deferred completion work, runs it.
        self.ring.submit()?;
        if !self.ring.completion().is_empty() || !self.released.is_empty() {
            self.ring.completion().disable_eventfd();
            return Ok(false);
        }
        Ok(true)
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

fn fill_send_slot(slot: &mut SendSlot, to: &SocketAddr, tag: u64, ptr: *const u8, len: usize) {
    let namelen = sockaddr::encode(to, &mut slot.addr);
    slot.iov = libc::iovec {
        iov_base: ptr.cast_mut().cast(),
        iov_len: len,
    };
    slot.hdr.msg_name = (&raw mut slot.addr).cast();
    slot.hdr.msg_namelen = namelen;
    slot.hdr.msg_iov = &raw mut slot.iov;
    slot.hdr.msg_iovlen = 1;
    slot.hdr.msg_control = std::ptr::null_mut();
    slot.hdr.msg_controllen = 0;
    slot.tag = tag;
}
