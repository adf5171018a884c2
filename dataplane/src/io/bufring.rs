//! A provided-buffer ring: the pool the kernel picks receive buffers from.
//!
//! Buffers are sized for the largest UDP datagram so nothing is ever truncated. Their memory is
//! reserved, not committed: a 172-byte RTP packet touches one page of its 64 KiB buffer, so the
//! resident cost is about one page per buffer in use. Buffers are laid out with a stride that is
//! not a multiple of the page size, so their headers do not all fall into the same cache sets.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Anonymous, lazily committed memory that is unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The ring of buffer descriptors shared with the kernel, plus the buffers themselves.
pub struct BufRing {
    ring: Mapping,
    buffers: Mapping,
    entries: u16,
    buf_len: u32,
    stride: usize,
    /// Our private tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    /// `entries` must be a power of two (kernel rule), at most 32768.
    pub fn new(entries: u16, buf_len: u32) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer count {entries} is not a power of two up to 32768"),
            ));
        }
        let stride = (buf_len as usize).next_multiple_of(64);
        let ring = Mapping::new(usize::from(entries) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(entries) * stride)?;
        let mut this = Self {
            ring,
            buffers,
            entries,
            buf_len,
            stride,
            tail: 0,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    pub fn ring_addr(&self) -> u64 {
        self.ring.ptr.as_ptr() as u64
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// The bytes of buffer `bid`, `len` long (clamped to the buffer).
    ///
    /// # Safety
    /// The kernel must have finished writing this buffer (its completion was reaped) and must
    /// not be given it again while the slice lives.
    pub unsafe fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.buf_len as usize);
        // SAFETY: bid < entries (checked by the caller's CQE decoding), so the range lies inside
        // the mapping; the caller guarantees the kernel is not writing it.
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.as_ptr().add(self.offset(bid)), len) }
    }

    /// The address of buffer `bid`.
    pub fn addr(&self, bid: u16) -> *const u8 {
        // SAFETY: the offset lies inside the mapping for bid < entries.
        unsafe { self.buffers.ptr.as_ptr().add(self.offset(bid)) }
    }

    /// Hands buffer `bid` back to the kernel (visible after the next [`BufRing::publish`]).
    pub fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let mask = self.entries - 1;
        let base = self.ring.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: (tail & mask) < entries, inside the ring mapping; the kernel only reads entries
        // between its head and the published tail, and this slot lies past the published tail.
        unsafe {
            let entry = &mut *base.add(usize::from(self.tail & mask));
            entry.set_addr(self.addr(bid) as u64);
            entry.set_len(self.buf_len);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer available to the kernel.
    pub fn publish(&self) {
        let base = self.ring.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the tail field overlays the first entry's reserved field, inside the mapping;
        // the kernel reads it with acquire semantics, so release publishes the entries written.
        unsafe {
            let tail = BufRingEntry::tail(base).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn offset(&self, bid: u16) -> usize {
        usize::from(bid) * self.stride
    }
}
