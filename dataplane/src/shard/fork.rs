//! Where a relayed packet's fork goes (rtpproxy `C` and `R`): RTP and RTCP alike, each kept
//! on its own port as rtpproxy keeps them.

use std::net::SocketAddr;

use crate::io::Token;
use crate::session::Leg;

/// Where a relayed packet arriving on `leg` is copied (rtpproxy `C`): RTP to the target from
/// the connect-side RTP socket, RTCP to the target's port + 1 from the connect-side RTCP
/// socket, as rtpproxy sends a remote copy's RTCP. `None` when port + 1 does not exist.
pub(super) fn fork_copy(
    leg: Leg,
    target: SocketAddr,
    tokens: &[Token; 4],
) -> Option<(Token, SocketAddr)> {
    if leg.is_rtcp() {
        let port = target.port().checked_add(1)?;
        Some((
            tokens[Leg::OutRtcp as usize],
            SocketAddr::new(target.ip(), port),
        ))
    } else {
        Some((tokens[Leg::OutRtp as usize], target))
    }
}

/// The relay socket a packet arriving on `leg` was received by, as a recording shows it.
pub(super) fn fork_local(leg: Leg, listen: SocketAddr, connect: SocketAddr) -> SocketAddr {
    let mut local = match leg {
        Leg::ListenRtp | Leg::ListenRtcp => listen,
        Leg::OutRtp | Leg::OutRtcp => connect,
    };
    if leg.is_rtcp() {
        local.set_port(local.port().wrapping_add(1));
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn rtcp_copies_go_to_port_plus_one_from_the_rtcp_socket() {
        let tokens = [10, 11, 12, 13];
        let t = a("192.0.2.1:9000");
        assert_eq!(fork_copy(Leg::ListenRtp, t, &tokens), Some((12, t)));
        assert_eq!(fork_copy(Leg::OutRtp, t, &tokens), Some((12, t)));
        let rtcp = Some((13, a("192.0.2.1:9001")));
        assert_eq!(fork_copy(Leg::ListenRtcp, t, &tokens), rtcp);
        assert_eq!(fork_copy(Leg::OutRtcp, t, &tokens), rtcp);
        let top = a("192.0.2.1:65535");
        assert_eq!(fork_copy(Leg::OutRtcp, top, &tokens), None);
        assert_eq!(fork_copy(Leg::OutRtp, top, &tokens), Some((12, top)));
    }

    #[test]
    fn recordings_show_the_receiving_socket() {
        let (l, c) = (a("10.0.0.1:4000"), a("10.0.0.2:5000"));
        assert_eq!(fork_local(Leg::ListenRtp, l, c), l);
        assert_eq!(fork_local(Leg::ListenRtcp, l, c), a("10.0.0.1:4001"));
        assert_eq!(fork_local(Leg::OutRtp, l, c), c);
        assert_eq!(fork_local(Leg::OutRtcp, l, c), a("10.0.0.2:5001"));
    }
}
