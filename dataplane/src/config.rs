//! Data-plane settings.

use std::time::Duration;

use crate::io::uring::UringConfig;
use crate::ports::PortRange;
use crate::socket::SocketOptions;

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Number of shards (pinned threads). Each owns a disjoint share of the sessions.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th available core (wrapping). Off only for debugging.
    pub pin_cores: bool,
    /// Media ports handed out for port 0.
    pub port_range: PortRange,
    pub uring: UringConfig,
    /// How long a shard's task runs before glommio may switch to another (timers, commands).
    /// Under overload the media task yields at this granularity, which bounds how late a control
    /// command or timer can be.
    pub preempt: Duration,
    /// Completions handled per pass before the media task checks whether to yield.
    pub budget: usize,
    /// How a shard under steady traffic waits for the next packets.
    pub batch: BatchWait,
    /// How often each shard supervises its sessions (statistics, alerts, idle timeouts).
    pub tick: Duration,
    /// Device binding, DSCP, free binding and buffer size of media sockets.
    pub sockets: SocketOptions,
    /// Named media interfaces with their own settings; other addresses use the defaults.
    pub interfaces: Vec<MediaInterface>,
}

/// Under steady traffic a shard waits in the kernel for a batch of packets instead of going
/// back to sleep after each one, so one wake-up (and one trip through the executor) pays for many
/// packets: the per-packet CPU cost then approaches what the kernel itself needs. Below
/// `min_rate_pps` each packet still wakes the shard at once, so low-rate media gets no added
/// latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWait {
    /// Packets to wait for; 0 turns batching off (every packet wakes the shard).
    pub packets: usize,
    /// Longest wait for a batch: the most latency batching adds to a packet.
    pub max_wait: Duration,
    /// Return once this has passed and at least one packet is there (0 = only on `packets` or
    /// `max_wait`). Needs Linux 6.12+; ignored on older kernels.
    pub min_wait: Duration,
    /// Batch only while the shard receives at least this many packets per second (measured
    /// over 1 ms windows): below it a batch would hold few packets for the added latency.
    pub min_rate_pps: u64,
    /// After a packet, keep waiting for the next one on the shard's own ring (one system call
    /// per wake-up) for this long before going back to sleep through the executor, whose
    /// wake-up path costs several system calls more. Zero sleeps through the executor at once.
    pub linger: Duration,
    /// After a packet, spin on the ring in user space for this long instead of sleeping: the
    /// next packet is taken without a wake-up. Waking a thread whose core went idle costs tens of
    /// microseconds on a virtual machine (a halted vCPU is rescheduled by the host), more than
    /// the relay's own work; spinning removes that from the latency at the price of keeping the
    /// core busy for the whole window, so it is for cores reserved for the relay. Zero = off.
    pub busy_poll: Duration,
}

impl Default for BatchWait {
    fn default() -> Self {
        Self {
            packets: 32,
            max_wait: Duration::from_micros(100),
            min_wait: Duration::ZERO,
            min_rate_pps: 80_000,
            linger: Duration::from_millis(10),
            busy_poll: Duration::ZERO,
        }
    }
}

/// A configured media address (in the spirit of rtpengine's `interface=name/local!advertised`).
/// Controllers still name addresses; a session's listen or connect address that matches one
/// takes its port range, DSCP and advertised address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInterface {
    pub name: String,
    pub address: std::net::IpAddr,
    /// The address peers must send to when it differs from the local one (1:1 NAT).
    pub advertised: Option<std::net::IpAddr>,
    /// Ports for this address; `None` = the default media range.
    pub ports: Option<PortRange>,
    /// DSCP for media leaving from this address; `None` = the default.
    pub dscp: Option<u8>,
}

impl DataplaneConfig {
    pub fn new(shards: usize, port_range: PortRange) -> Self {
        Self {
            shards,
            pin_cores: true,
            port_range,
            uring: UringConfig::default(),
            preempt: Duration::from_millis(2),
            budget: 256,
            batch: BatchWait::default(),
            tick: Duration::from_millis(100),
            sockets: SocketOptions::default(),
            interfaces: Vec::new(),
        }
    }
}
