//! Raw `sockaddr` encoding and decoding for the per-packet path.
//!
//! io_uring hands received source addresses over as raw bytes inside the receive buffer, and a
//! `sendmsg` needs a raw destination address in memory that outlives the submission. Going
//! through `socket2::SockAddr` would be correct but copies a 128-byte `sockaddr_storage` twice per
//! packet; these two small functions do only what is needed and are tested against the kernel's
//! own layout (via `socket2`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Bytes a received source address may need: a `sockaddr_in6`.
pub const MAX_SOCKADDR_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Decodes a `sockaddr_in` or `sockaddr_in6` as written by the kernel. Returns `None` for any
/// other family or a buffer too short for its family, so a malformed name can never panic.
pub fn decode(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
    match i32::from(family) {
        libc::AF_INET if raw.len() >= std::mem::size_of::<libc::sockaddr_in>() => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if raw.len() >= MAX_SOCKADDR_LEN => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            // Like std, flowinfo is kept exactly as it sits in `sin6_flowinfo` (no byte swap).
            let flowinfo = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            let scope_id = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flowinfo,
                scope_id,
            )))
        }
        _ => None,
    }
}

/// Encodes `addr` into `out` (which must hold a `sockaddr_in6`) and returns the length to pass to
/// the kernel.
pub fn encode(addr: &SocketAddr, out: &mut libc::sockaddr_in6) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in (16 bytes) fits inside sockaddr_in6 (28 bytes); both are plain
            // C structs with no invalid bit patterns, and the write is unaligned-safe.
            unsafe {
                std::ptr::write_unaligned((out as *mut libc::sockaddr_in6).cast(), sin);
            }
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            *out = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            MAX_SOCKADDR_LEN as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kernel_bytes(addr: SocketAddr) -> Vec<u8> {
        let sa = socket2::SockAddr::from(addr);
        // SAFETY: as_ptr points at `len` initialised bytes owned by `sa`.
        unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize).to_vec() }
    }

    fn encoded_bytes(addr: SocketAddr) -> Vec<u8> {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut out: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let len = encode(&addr, &mut out) as usize;
        // SAFETY: `out` is at least `len` bytes long.
        unsafe { std::slice::from_raw_parts((&raw const out).cast::<u8>(), len).to_vec() }
    }

    #[test]
    fn decodes_what_the_kernel_layout_holds() {
        for s in [
            "127.0.0.1:16384",
            "[::1]:30000",
            "[fe80::1%2]:5",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = s.parse().unwrap();
            assert_eq!(decode(&kernel_bytes(addr)), Some(addr), "{s}");
        }
    }

    #[test]
    fn rejects_short_and_foreign_names() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[2]), None);
        let v4 = kernel_bytes("10.0.0.1:1".parse().unwrap());
        assert_eq!(decode(&v4[..15]), None);
        let mut unix = v4.clone();
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(decode(&unix), None);
    }

    proptest! {
        #[test]
        fn encode_matches_kernel_layout_v4(ip: [u8; 4], port: u16) {
            let addr = SocketAddr::from((Ipv4Addr::from(ip), port));
            prop_assert_eq!(encoded_bytes(addr), kernel_bytes(addr));
            prop_assert_eq!(decode(&encoded_bytes(addr)), Some(addr));
        }

        #[test]
        fn encode_matches_kernel_layout_v6(ip: [u8; 16], port: u16, flow in 0u32..(1 << 20), scope: u32) {
            let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope));
            prop_assert_eq!(encoded_bytes(addr), kernel_bytes(addr));
            prop_assert_eq!(decode(&encoded_bytes(addr)), Some(addr));
        }

        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&raw);
        }
    }
}
