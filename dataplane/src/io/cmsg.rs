//! Reading the kernel's receive timestamp out of a received message's control data.
//!
//! Media sockets have SO_TIMESTAMPNS on, so every datagram carries the moment the kernel
//! received it. That is the packet's arrival time for jitter and the start of its residence
//! time in the relay; it includes any time spent queued in the socket, which is exactly the
//! delay an overloaded relay adds.

/// Control-message space to reserve per datagram: one `cmsghdr` plus a `timespec`.
pub const TIMESTAMP_SPACE: usize = CMSG_HDR + TIMESPEC;

const CMSG_HDR: usize = std::mem::size_of::<libc::cmsghdr>();
const TIMESPEC: usize = std::mem::size_of::<libc::timespec>();

/// Microseconds since the Unix epoch of the SCM_TIMESTAMPNS message in `control`, if any.
pub fn rx_timestamp_us(control: &[u8]) -> Option<u64> {
    let mut rest = control;
    while rest.len() >= CMSG_HDR {
        let len = usize::from_ne_bytes(rest[..8].try_into().ok()?);
        let level = i32::from_ne_bytes(rest[8..12].try_into().ok()?);
        let kind = i32::from_ne_bytes(rest[12..16].try_into().ok()?);
        if len < CMSG_HDR || len > rest.len() {
            return None;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS && len >= CMSG_HDR + TIMESPEC
        {
            let sec = i64::from_ne_bytes(rest[CMSG_HDR..CMSG_HDR + 8].try_into().ok()?);
            let nsec = i64::from_ne_bytes(rest[CMSG_HDR + 8..CMSG_HDR + 16].try_into().ok()?);
            return u64::try_from(sec)
                .ok()?
                .checked_mul(1_000_000)?
                .checked_add(u64::try_from(nsec).ok()? / 1000);
        }
        rest = rest.get(len.next_multiple_of(8)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(CMSG_HDR + data.len()).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(8), 0);
        v
    }

    fn timespec(sec: i64, nsec: i64) -> Vec<u8> {
        [sec.to_ne_bytes(), nsec.to_ne_bytes()].concat()
    }

    #[test]
    fn finds_the_timestamp() {
        let c = cmsg(
            libc::SOL_SOCKET,
            libc::SCM_TIMESTAMPNS,
            &timespec(1_700_000_000, 123_456_789),
        );
        assert_eq!(c.len(), TIMESTAMP_SPACE);
        assert_eq!(rx_timestamp_us(&c), Some(1_700_000_000_123_456));
    }

    #[test]
    fn skips_other_messages_and_rejects_garbage() {
        let mut c = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0xb8, 0, 0, 0]);
        c.extend(cmsg(
            libc::SOL_SOCKET,
            libc::SCM_TIMESTAMPNS,
            &timespec(2, 5_000),
        ));
        assert_eq!(rx_timestamp_us(&c), Some(2_000_005));
        assert_eq!(rx_timestamp_us(&[]), None);
        let mut bad = cmsg(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &timespec(1, 0));
        bad[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(rx_timestamp_us(&bad), None, "length beyond the buffer");
        let neg = cmsg(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &timespec(-1, 0));
        assert_eq!(rx_timestamp_us(&neg), None);
    }

    proptest! {
        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = rx_timestamp_us(&raw);
        }
    }
}
