//! Which local address each port pair of a stream is bound to: the default media address, an
//! explicit one (`l<addr>`, `r<addr>`), or one of the two bridged interfaces (`i`, `e`).
//!
//! rtpproxy's bridge mode (`rtpproxy -l internal/external`) relays between two networks: the
//! `i` and `e` modifiers of `U` say which network each leg is on. The first letter is the
//! network of the command's sender, the second that of the other party, which is also the
//! network of the port the reply announces (the port the other party will send to); a single
//! letter sets the sender's network and leaves the other on the internal one. So for a call
//! from the internal network to the outside, Kamailio sends `Uie` (caller inside, callee
//! outside) and rtprelay binds the caller's port pair (the listen side, announced by `L`) to
//! the internal address and the callee's (the connect side, announced by `U`) to the external
//! one.
//!
//! In rtprelay the two networks are the `[rtpproxy] internal` and `external` addresses. When
//! they are configured, a stream without `i`/`e` uses the internal address for both legs, as
//! rtpproxy does (or the default address of the other family for a stream of the other
//! family). Without them, `i` answers E12 and `e` E11, as rtpproxy answers when it has no
//! external interface. `l`/`r` override all of this and bind both legs to their address.
//!
//! The first letter's network must be of the stream's address family (the sender's address is
//! in the command), else E36; the second may be of either, so IPv4 and IPv6 networks can be
//! bridged.
//!
//! Ports are allocated when a stream is created, both legs at once; `i`/`e` on a later `U` or
//! `L` change nothing, except with `n` and both letters: the re-allocated port then moves to
//! the second letter's network, as in rtpproxy.
//!
//! Everything here is pure: the `r` lookup (a routing-table query) is passed in.

use std::net::IpAddr;

use super::command::{Bridge, Interface, LocalAddress, Modifiers};
use super::error::ErrorCode;

/// The two networks of bridge mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeAddresses {
    pub internal: IpAddr,
    pub external: IpAddr,
}

/// The relay's local addresses as far as rtpproxy streams are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddresses {
    /// For IPv4 streams (also announced in replies).
    pub v4: IpAddr,
    /// For IPv6 streams, if the relay has one.
    pub v6: Option<IpAddr>,
    /// Bridge mode, when configured.
    pub bridge: Option<BridgeAddresses>,
}

/// The local addresses of a new stream's two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legs {
    /// The listen side: faces the caller (the `U` sender), announced by `L`.
    pub listen: IpAddr,
    /// The connect side: faces the callee, announced by `U`.
    pub connect: IpAddr,
}

impl LocalAddresses {
    fn interface(&self, b: BridgeAddresses, i: Interface) -> IpAddr {
        match i {
            Interface::Internal => b.internal,
            Interface::External => b.external,
        }
    }

    /// `i`/`e` need bridge mode; the code is the one rtpproxy gives for the first letter.
    pub fn check(&self, mods: &Modifiers) -> Result<(), ErrorCode> {
        match (mods.bridge, self.bridge) {
            (Some(b), None) => Err(match b.first {
                Interface::External => ErrorCode::BadExternalBridge,
                Interface::Internal => ErrorCode::BadInternalBridge,
            }),
            _ => Ok(()),
        }
    }

    /// The default address for a stream of this family.
    fn for_family(&self, ipv6: bool) -> Result<IpAddr, ErrorCode> {
        if ipv6 {
            self.v6.ok_or(ErrorCode::NoAddressForFamily)
        } else {
            Ok(self.v4)
        }
    }

    fn explicit(
        mods: &Modifiers,
        route: impl FnOnce(IpAddr) -> Result<IpAddr, ErrorCode>,
    ) -> Result<Option<IpAddr>, ErrorCode> {
        match mods.local {
            Some(LocalAddress::Bind(ip)) => Ok(Some(ip)),
            Some(LocalAddress::RouteTo(remote)) => route(remote).map(Some),
            None => Ok(None),
        }
    }

    /// Where a new stream's legs are bound; `ipv6` is the stream's family (`6`, or an IPv6
    /// remote address).
    pub fn new_stream(
        &self,
        mods: &Modifiers,
        ipv6: bool,
        route: impl FnOnce(IpAddr) -> Result<IpAddr, ErrorCode>,
    ) -> Result<Legs, ErrorCode> {
        self.check(mods)?;
        if let Some(ip) = Self::explicit(mods, route)? {
            return Ok(Legs {
                listen: ip,
                connect: ip,
            });
        }
        match (self.bridge, mods.bridge) {
            (Some(b), Some(Bridge { first, second })) => {
                let legs = Legs {
                    listen: self.interface(b, first),
                    connect: self.interface(b, second.unwrap_or(Interface::Internal)),
                };
                // The sender's leg must speak the family of the address it signalled; the
                // other leg may be of either (bridging IPv4 and IPv6 networks).
                if legs.listen.is_ipv6() != ipv6 {
                    return Err(ErrorCode::NoAddressForFamily);
                }
                Ok(legs)
            }
            (Some(b), None) if b.internal.is_ipv6() == ipv6 => Ok(Legs {
                listen: b.internal,
                connect: b.internal,
            }),
            _ => {
                let ip = self.for_family(ipv6)?;
                Ok(Legs {
                    listen: ip,
                    connect: ip,
                })
            }
        }
    }

    /// Where `n` re-binds the announced port of an existing stream: `l`/`r`, or with both
    /// `i`/`e` letters the second one's network; `None` keeps the current address.
    pub fn new_port(
        &self,
        mods: &Modifiers,
        route: impl FnOnce(IpAddr) -> Result<IpAddr, ErrorCode>,
    ) -> Result<Option<IpAddr>, ErrorCode> {
        self.check(mods)?;
        if let Some(ip) = Self::explicit(mods, route)? {
            return Ok(Some(ip));
        }
        Ok(match (self.bridge, mods.bridge) {
            (
                Some(b),
                Some(Bridge {
                    second: Some(second),
                    ..
                }),
            ) => Some(self.interface(b, second)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtpproxy::fields;

    const INT: &str = "10.0.0.1";
    const EXT: &str = "192.0.2.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn addrs(bridge: bool) -> LocalAddresses {
        LocalAddresses {
            v4: ip("10.9.9.9"),
            v6: Some(ip("2001:db8::9")),
            bridge: bridge.then(|| BridgeAddresses {
                internal: ip(INT),
                external: ip(EXT),
            }),
        }
    }

    fn no_route(_: IpAddr) -> Result<IpAddr, ErrorCode> {
        Err(ErrorCode::NoRouteToRemote)
    }

    fn legs(bridge: bool, mods: &str, ipv6: bool) -> Result<(String, String), ErrorCode> {
        let mods = fields::modifiers(mods).expect("modifiers parse");
        addrs(bridge)
            .new_stream(&mods, ipv6, |_| Ok(ip("172.16.0.1")))
            .map(|l| (l.listen.to_string(), l.connect.to_string()))
    }

    #[test]
    fn letters_bind_the_senders_leg_then_the_other() {
        let pair = |a: &str, b: &str| Ok((a.to_owned(), b.to_owned()));
        assert_eq!(legs(true, "ie", false), pair(INT, EXT));
        assert_eq!(legs(true, "ei", false), pair(EXT, INT));
        assert_eq!(legs(true, "ee", false), pair(EXT, EXT));
        assert_eq!(
            legs(true, "e", false),
            pair(EXT, INT),
            "one letter: other leg inside"
        );
        assert_eq!(legs(true, "i", false), pair(INT, INT));
        assert_eq!(legs(true, "", false), pair(INT, INT), "bridge mode default");
        assert_eq!(
            legs(true, "6", true),
            pair("2001:db8::9", "2001:db8::9"),
            "other family: its default"
        );
        assert_eq!(
            legs(true, "iel10.1.1.1", false),
            pair("10.1.1.1", "10.1.1.1")
        );
        assert_eq!(
            legs(true, "r1.2.3.4ie", false),
            pair("172.16.0.1", "172.16.0.1")
        );
    }

    #[test]
    fn without_bridge_mode_letters_are_errors() {
        assert_eq!(
            legs(false, "", false),
            Ok(("10.9.9.9".into(), "10.9.9.9".into()))
        );
        assert_eq!(legs(false, "ie", false), Err(ErrorCode::BadInternalBridge));
        assert_eq!(legs(true, "6ie", true), Err(ErrorCode::NoAddressForFamily));
        assert_eq!(legs(false, "e", false), Err(ErrorCode::BadExternalBridge));
        assert_eq!(legs(false, "ae", false), Err(ErrorCode::BadExternalBridge));
        let no_v6 = LocalAddresses {
            v6: None,
            ..addrs(false)
        };
        let mods = fields::modifiers("6").expect("mods");
        assert_eq!(
            no_v6.new_stream(&mods, true, no_route),
            Err(ErrorCode::NoAddressForFamily)
        );
        let mods = fields::modifiers("r1.2.3.4").expect("mods");
        assert_eq!(
            addrs(false).new_stream(&mods, false, no_route),
            Err(ErrorCode::NoRouteToRemote)
        );
    }

    #[test]
    fn new_port_moves_only_with_two_letters_or_an_address() {
        let a = addrs(true);
        let new_port = |m: &str| a.new_port(&fields::modifiers(m).expect("mods"), no_route);
        assert_eq!(new_port("n"), Ok(None));
        assert_eq!(new_port("ne"), Ok(None), "one letter keeps the address");
        assert_eq!(new_port("nie"), Ok(Some(ip(EXT))));
        assert_eq!(new_port("nei"), Ok(Some(ip(INT))));
        assert_eq!(new_port("nl10.2.2.2"), Ok(Some(ip("10.2.2.2"))));
        assert_eq!(
            addrs(false).new_port(&fields::modifiers("ni").expect("mods"), no_route),
            Err(ErrorCode::BadInternalBridge)
        );
    }
}
