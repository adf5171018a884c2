//! Creating and binding media sockets with socket2.
//!
//! Every socket is bound explicitly to the address the controller named (never the wildcard),
//! non-blocking and close-on-exec, with SO_REUSEADDR off so a port another process holds is
//! reported instead of shared.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// An RTP socket and its RTCP sibling on port + 1.
#[derive(Debug)]
pub struct UdpPair {
    pub rtp: Socket,
    pub rtcp: Socket,
    /// The RTP address actually bound.
    pub addr: SocketAddr,
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

/// Binds a non-blocking UDP socket to exactly `addr`.
pub fn bind_udp(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    enable_rx_timestamps(&socket)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Asks the kernel to stamp every received datagram with its arrival time (SO_TIMESTAMPNS),
/// read back by the I/O layer for jitter and residence time.
fn enable_rx_timestamps(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `ip:port` and `ip:port+1`. `port` must be even and non-zero; if either half is taken,
/// nothing stays bound.
pub fn bind_pair(ip: IpAddr, port: u16) -> Result<UdpPair, BindError> {
    debug_assert!(port % 2 == 0 && port != 0);
    let addr = SocketAddr::new(ip, port);
    let rtp = bind_udp(addr).map_err(|e| classify(e, ip, port))?;
    let rtcp = bind_udp(SocketAddr::new(ip, port + 1)).map_err(|e| classify(e, ip, port))?;
    Ok(UdpPair { rtp, rtcp, addr })
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
            .find(|&p| bind_pair(LO, p).is_ok())
            .expect("a free pair")
    }

    #[test]
    fn binds_both_halves_and_reports_in_use() {
        let port = free_even_port();
        let pair = bind_pair(LO, port).unwrap();
        assert_eq!(pair.addr, SocketAddr::new(LO, port));
        assert_eq!(
            pair.rtcp.local_addr().unwrap().as_socket().unwrap().port(),
            port + 1
        );
        assert!(matches!(bind_pair(LO, port), Err(BindError::InUse { port: p }) if p == port));
        drop(pair);
        assert!(bind_pair(LO, port).is_ok(), "closing frees both ports");
    }

    #[test]
    fn rtcp_half_taken_leaves_nothing_bound() {
        let port = free_even_port();
        let blocker = bind_udp(SocketAddr::new(LO, port + 1)).unwrap();
        assert!(matches!(bind_pair(LO, port), Err(BindError::InUse { .. })));
        // The RTP half must have been released again.
        assert!(bind_udp(SocketAddr::new(LO, port)).is_ok());
        drop(blocker);
    }

    #[test]
    fn foreign_address_is_not_local() {
        // TEST-NET-1 is never assigned to this machine's interfaces.
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(matches!(bind_pair(ip, 40000), Err(BindError::NotLocal(a)) if a == ip));
    }
}
