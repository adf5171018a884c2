//! Creating and binding media sockets with socket2.
//!
//! Every socket is bound explicitly to the address the controller named (never the wildcard),
//! non-blocking and close-on-exec, with SO_REUSEADDR off so a port another process holds is
//! reported instead of shared.

use std::io;
use std::net::{IpAddr, SocketAddr};

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

/// An RTP socket and its RTCP sibling on port + 1.
#[derive(Debug)]
pub struct UdpPair {
    pub rtp: Socket,
    pub rtcp: Socket,
    /// The RTP address actually bound.
    pub addr: SocketAddr,
    /// Whether both are bound to the device passed to [`bind_pair`] (false without one, or
    /// when the kernel refused device binding).
    pub device_bound: bool,
}

/// Why a pair could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something (this relay or another program) holds the port or port + 1.
    #[error("port {port} or {} is already in use", port + 1)]
    InUse { port: u16 },
    /// No local interface owns the address.
    #[error("address {0} is not assigned to any local interface")]
    NotLocal(IpAddr),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How media sockets are set up, beyond their address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// Bind each socket to the interface that owns its address (SO_BINDTODEVICE), so egress
    /// leaves through it even when the routing table would pick another interface.
    pub bind_device: bool,
    /// DSCP of outbound media (IPv4 TOS / IPv6 traffic class = dscp << 2); 46 is EF.
    pub dscp: u8,
    /// Allow addresses no local interface owns (IP_FREEBIND), for floating/VRRP addresses.
    pub freebind: bool,
    /// Receive buffer per socket in bytes (0 = the kernel default).
    pub rcvbuf: usize,
    /// Connect a session's connect-side sockets to its destination when only the destination
    /// may answer (gRPC's strict latching): sends then take the socket's cached route instead
    /// of a route lookup per packet, and the kernel drops other senders before the relay sees
    /// them, so those are no longer counted per session (the kernel counts them as UDP
    /// NoPorts and answers with ICMP port unreachable).
    pub connect_destination: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            bind_device: true,
            dscp: 46,
            freebind: false,
            rcvbuf: 0,
            connect_destination: false,
        }
    }
}

/// Set once the kernel refused SO_BINDTODEVICE (no CAP_NET_RAW): the relay then binds by
/// source address only, and says so once.
static NO_DEVICE_BINDING: AtomicBool = AtomicBool::new(false);

/// Binds a non-blocking UDP socket to exactly `addr`, bound to `device` when given.
pub fn bind_udp(
    addr: SocketAddr,
    device: Option<&str>,
    opts: &SocketOptions,
) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    set_family_options(&socket, addr, opts)?;
    if opts.rcvbuf > 0 {
        set_rcvbuf(&socket, opts.rcvbuf);
    }
    if let Some(dev) = device
        && !NO_DEVICE_BINDING.load(Ordering::Relaxed)
        && let Err(e) = socket.bind_device(Some(dev.as_bytes()))
    {
        if e.raw_os_error() == Some(libc::EPERM) {
            if !NO_DEVICE_BINDING.swap(true, Ordering::Relaxed) {
                warn!(
                    device = dev,
                    "SO_BINDTODEVICE needs CAP_NET_RAW, which this process lacks: media sockets \
                     are bound by source address only from now on"
                );
            }
        } else {
            return Err(e);
        }
    }
    enable_rx_timestamps(&socket)?;
    enable_icmp_errors(&socket, addr.is_ipv6())?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Tries SO_BINDTODEVICE once on a scratch socket, so a relay without CAP_NET_RAW says at
/// start-up, not at the first call, that it falls back to binding by source address only.
pub fn probe_device_binding() -> bool {
    let probe = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .and_then(|s| s.bind_device(Some(b"lo")));
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            NO_DEVICE_BINDING.store(true, Ordering::Relaxed);
            warn!(
                "no CAP_NET_RAW: media sockets cannot be bound to their interface \
                 (SO_BINDTODEVICE); binding by source address only, so egress follows the routing table"
            );
            false
        }
        _ => true,
    }
}

/// Whether device binding is in effect (false after the kernel refused it once).
pub fn device_binding_available() -> bool {
    !NO_DEVICE_BINDING.load(Ordering::Relaxed)
}

/// IPv6-only for IPv6 sockets, the media DSCP (IPv4 TOS / IPv6 traffic class) and, when
/// allowed, free binding to an address no interface owns.
fn set_family_options(socket: &Socket, addr: SocketAddr, opts: &SocketOptions) -> io::Result<()> {
    let tos = u32::from(opts.dscp) << 2;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_tclass_v6(tos)?;
        if opts.freebind {
            socket.set_freebind_v6(true)?;
        }
    } else {
        socket.set_tos_v4(tos)?;
        if opts.freebind {
            socket.set_freebind_v4(true)?;
        }
    }
    Ok(())
}

/// Sets an integer socket option socket2 has no method for.
fn set_int_option(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A larger receive buffer absorbs bursts while the reader is busy (a shard's media, the
/// rtpproxy control socket); root may exceed rmem_max.
pub fn set_rcvbuf(socket: &Socket, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        // Not privileged: the kernel caps this at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(bytes);
    }
}

/// Makes ICMP errors (port or host unreachable) for what this socket sent visible to it even
/// though it is not connected (IP_RECVERR / IPV6_RECVERR), so an unreachable peer is noticed
/// within one packet instead of never.
fn enable_icmp_errors(socket: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)
    } else {
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_RECVERR, 1)
    }
}

/// Asks the kernel to stamp every received datagram with its arrival time (SO_TIMESTAMPNS),
/// read back by the I/O layer for jitter and residence time.
fn enable_rx_timestamps(socket: &Socket) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Binds `ip:port` and `ip:port+1` (to `device` when given). `port` must be even and
/// non-zero; if either half is taken, nothing stays bound.
pub fn bind_pair(
    ip: IpAddr,
    port: u16,
    device: Option<&str>,
    opts: &SocketOptions,
) -> Result<UdpPair, BindError> {
    debug_assert!(port % 2 == 0 && port != 0);
    let addr = SocketAddr::new(ip, port);
    let rtp = bind_udp(addr, device, opts).map_err(|e| classify(e, ip, port))?;
    let rtcp =
        bind_udp(SocketAddr::new(ip, port + 1), device, opts).map_err(|e| classify(e, ip, port))?;
    Ok(UdpPair {
        rtp,
        rtcp,
        addr,
        device_bound: device.is_some() && device_binding_available(),
    })
}

/// Connects `pair`'s RTP and RTCP sockets to `peers[0]` and `peers[1]`. Returns which of the
/// two are connected; a failure (no route to the peer yet) leaves that socket unconnected,
/// which works as before, only slower.
pub fn connect_pair(pair: &UdpPair, peers: [SocketAddr; 2]) -> [bool; 2] {
    let sockets = [&pair.rtp, &pair.rtcp];
    std::array::from_fn(|k| match sockets[k].connect(&peers[k].into()) {
        Ok(()) => true,
        Err(e) => {
            warn!(
                local = %pair.addr, peer = %peers[k], error = %e,
                "connecting a media socket failed; it sends unconnected"
            );
            false
        }
    })
}

/// Binds a non-blocking TCP listening socket to exactly `addr` (port non-zero) with the media
/// DSCP. SO_REUSEADDR is on so a closed session's port is reusable at once although its last
/// connection may linger in TIME_WAIT; Linux still refuses a second listener on the port.
pub fn bind_tcp_listener(addr: SocketAddr, opts: &SocketOptions) -> Result<Socket, BindError> {
    let setup = || -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        set_family_options(&socket, addr, opts)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(16)?;
        Ok(socket)
    };
    setup().map_err(|e| classify(e, addr.ip(), addr.port()))
}

fn classify(e: io::Error, ip: IpAddr, port: u16) -> BindError {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => BindError::InUse { port },
        Some(libc::EADDRNOTAVAIL) => BindError::NotLocal(ip),
        _ => BindError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn free_even_port() -> u16 {
        // Try even ports in a high, rarely used window until a pair binds.
        (50000..52000)
            .step_by(2)
            .find(|&p| bind_pair(LO, p, None, &SocketOptions::default()).is_ok())
            .expect("a free pair")
    }

    #[test]
    fn binds_both_halves_and_reports_in_use() {
        let port = free_even_port();
        let pair = bind_pair(LO, port, Some("lo"), &SocketOptions::default()).unwrap();
        assert!(pair.device_bound);
        assert_eq!(pair.addr, SocketAddr::new(LO, port));
        assert_eq!(
            pair.rtcp.local_addr().unwrap().as_socket().unwrap().port(),
            port + 1
        );
        assert!(
            matches!(bind_pair(LO, port, None, &SocketOptions::default()), Err(BindError::InUse { port: p }) if p == port)
        );
        drop(pair);
        assert!(
            bind_pair(LO, port, None, &SocketOptions::default()).is_ok(),
            "closing frees both ports"
        );
    }

    #[test]
    fn rtcp_half_taken_leaves_nothing_bound() {
        let port = free_even_port();
        let blocker = bind_udp(
            SocketAddr::new(LO, port + 1),
            None,
            &SocketOptions::default(),
        )
        .unwrap();
        assert!(matches!(
            bind_pair(LO, port, None, &SocketOptions::default()),
            Err(BindError::InUse { .. })
        ));
        // The RTP half must have been released again.
        assert!(bind_udp(SocketAddr::new(LO, port), None, &SocketOptions::default()).is_ok());
        drop(blocker);
    }

    #[test]
    fn dscp_is_set_on_both_families() {
        let opts = SocketOptions {
            dscp: 10,
            ..SocketOptions::default()
        };
        let v4 = bind_udp("127.0.0.1:0".parse().unwrap(), None, &opts).unwrap();
        assert_eq!(v4.tos_v4().unwrap(), 40);
        let v6 = bind_udp("[::1]:0".parse().unwrap(), None, &opts).unwrap();
        assert_eq!(v6.tclass_v6().unwrap(), 40);
    }

    #[test]
    fn foreign_address_is_not_local() {
        // TEST-NET-1 is never assigned to this machine's interfaces.
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(
            matches!(bind_pair(ip, 40000, None, &SocketOptions::default()), Err(BindError::NotLocal(a)) if a == ip)
        );
    }
}
