//! Turning a CreateSession request into a data-plane [`SessionSpec`], or saying precisely which
//! field is wrong. Pure: no sockets, so every rule is unit-tested here and the data plane only
//! ever sees well-formed requests.

use std::net::{IpAddr, SocketAddr};

use rtprelay_dataplane::{Protocol, SessionSpec};
use rtprelay_proto::v1;

/// Longest accepted session ID, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A request field that failed validation, with a message naming it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks a caller-chosen session ID: 1 to 128 bytes of printable ASCII without spaces (IDs end
/// up in logs, event streams and the rtpproxy protocol, so control characters are refused).
pub fn session_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() {
        return Err(Invalid("session_id must not be empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Invalid(format!(
            "session_id is {} bytes long; at most {MAX_ID_LEN} are allowed",
            id.len()
        )));
    }
    if let Some(bad) = id.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(Invalid(format!(
            "session_id contains byte 0x{bad:02x}; only printable ASCII without spaces is allowed"
        )));
    }
    Ok(())
}

fn ip(field: &str, address: &str, default: Option<IpAddr>) -> Result<IpAddr, Invalid> {
    let ip = if address.is_empty() {
        default.ok_or_else(|| Invalid(format!("{field}.address is required")))?
    } else {
        address.parse::<IpAddr>().map_err(|_| {
            Invalid(format!(
                "{field}.address {address:?} is not an IPv4 or IPv6 address"
            ))
        })?
    };
    if ip.is_unspecified() {
        return Err(Invalid(format!(
            "{field}.address {ip} is unspecified; name a specific address"
        )));
    }
    if ip.is_multicast() {
        return Err(Invalid(format!(
            "{field}.address {ip} is a multicast address"
        )));
    }
    Ok(ip)
}

/// A local endpoint (listen or connect): even port or 0, address defaulting to the media address.
fn local(field: &str, ep: Option<&v1::Endpoint>, default: IpAddr) -> Result<SocketAddr, Invalid> {
    let (address, port) = ep.map_or(("", 0), |e| (e.address.as_str(), e.port));
    let ip = ip(field, address, Some(default))?;
    let port =
        u16::try_from(port).map_err(|_| Invalid(format!("{field}.port {port} is out of range")))?;
    if port % 2 == 1 {
        return Err(Invalid(format!(
            "{field}.port {port} is odd; RTP ports are even (RTCP uses port+1), or 0 to allocate"
        )));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Validates the whole request. `media_address` stands in for empty local addresses.
pub fn create_request(
    req: &v1::CreateSessionRequest,
    media_address: IpAddr,
) -> Result<SessionSpec, Invalid> {
    session_id(&req.session_id)?;
    let protocol = match v1::Protocol::try_from(req.protocol) {
        Ok(v1::Protocol::Unspecified | v1::Protocol::Udp) => Protocol::Udp,
        Ok(v1::Protocol::Tcp) => Protocol::Tcp,
        Err(_) => {
            return Err(Invalid(format!(
                "protocol {} is not a known protocol",
                req.protocol
            )));
        }
    };
    let listen = local("listen", req.listen.as_ref(), media_address)?;
    let connect = local("connect", req.connect.as_ref(), media_address)?;
    let dest = req
        .destination
        .as_ref()
        .ok_or_else(|| Invalid("destination is required".into()))?;
    let dest_ip = ip("destination", &dest.address, None)?;
    if dest.port == 0 || dest.port > 65534 {
        return Err(Invalid(format!(
            "destination.port {} is out of range 1-65534 (RTCP goes to port+1)",
            dest.port
        )));
    }
    if dest_ip.is_ipv4() != connect.is_ipv4() {
        return Err(Invalid(format!(
            "destination.address {dest_ip} and connect.address {} are of different IP families",
            connect.ip()
        )));
    }
    Ok(SessionSpec {
        id: req.session_id.clone(),
        protocol,
        listen,
        connect,
        destination: SocketAddr::new(dest_ip, dest.port as u16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MEDIA: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ep(address: &str, port: u32) -> Option<v1::Endpoint> {
        Some(v1::Endpoint {
            address: address.into(),
            port,
        })
    }

    fn req() -> v1::CreateSessionRequest {
        v1::CreateSessionRequest {
            session_id: "call-1;1".into(),
            listen: ep("127.0.0.1", 0),
            connect: ep("127.0.0.1", 30000),
            destination: ep("127.0.0.1", 40000),
            protocol: v1::Protocol::Udp as i32,
        }
    }

    fn err(r: v1::CreateSessionRequest) -> String {
        create_request(&r, MEDIA).unwrap_err().0
    }

    #[test]
    fn a_good_request_becomes_a_spec() {
        let spec = create_request(&req(), MEDIA).unwrap();
        assert_eq!(spec.id, "call-1;1");
        assert_eq!(spec.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(spec.connect, "127.0.0.1:30000".parse().unwrap());
        assert_eq!(spec.destination, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(spec.protocol, Protocol::Udp);
    }

    #[test]
    fn empty_local_endpoints_use_the_media_address() {
        let mut r = req();
        r.listen = None;
        r.connect = ep("", 0);
        let spec = create_request(&r, MEDIA).unwrap();
        assert_eq!(spec.listen, SocketAddr::new(MEDIA, 0));
        assert_eq!(spec.connect, SocketAddr::new(MEDIA, 0));
    }

    #[test]
    fn ids_are_checked() {
        let mut r = req();
        r.session_id = String::new();
        assert!(err(r.clone()).contains("must not be empty"));
        r.session_id = "x".repeat(129);
        assert!(err(r.clone()).contains("129 bytes"));
        r.session_id = "x".repeat(128);
        assert!(create_request(&r, MEDIA).is_ok());
        r.session_id = "has space".into();
        assert!(err(r.clone()).contains("0x20"));
        r.session_id = "nul\0".into();
        assert!(err(r).contains("0x00"));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut v1::CreateSessionRequest);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |r| r.listen = ep("localhost", 0),
                "listen.address \"localhost\"",
            ),
            (|r| r.connect = ep("300.1.1.1", 0), "connect.address"),
            (
                |r| r.listen = ep("0.0.0.0", 0),
                "listen.address 0.0.0.0 is unspecified",
            ),
            (
                |r| r.connect = ep("224.0.0.1", 0),
                "connect.address 224.0.0.1 is a multicast",
            ),
            (
                |r| r.listen = ep("127.0.0.1", 30001),
                "listen.port 30001 is odd",
            ),
            (
                |r| r.connect = ep("127.0.0.1", 70000),
                "connect.port 70000 is out of range",
            ),
            (|r| r.destination = None, "destination is required"),
            (
                |r| r.destination = ep("", 40000),
                "destination.address is required",
            ),
            (|r| r.destination = ep("127.0.0.1", 0), "destination.port 0"),
            (
                |r| r.destination = ep("127.0.0.1", 65535),
                "destination.port 65535",
            ),
            (|r| r.destination = ep("::1", 4000), "different IP families"),
            (|r| r.protocol = 9, "protocol 9"),
        ];
        for (mutate, expected) in cases {
            let mut r = req();
            mutate(&mut r);
            let message = err(r);
            assert!(
                message.contains(expected),
                "{message:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn ipv6_and_bridging_are_accepted() {
        let mut r = req();
        r.listen = ep("::1", 0);
        r.connect = ep("::1", 0);
        r.destination = ep("::1", 5000);
        assert!(create_request(&r, MEDIA).is_ok());
        r.connect = ep("127.0.0.1", 0);
        r.destination = ep("127.0.0.1", 5000);
        assert!(
            create_request(&r, MEDIA).is_ok(),
            "v6 listen with v4 outbound is a valid bridge"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(
            id in ".{0,140}", la in ".{0,20}", lp: u32, ca in ".{0,20}", cp: u32,
            da in ".{0,20}", dp: u32, proto: i32,
        ) {
            let r = v1::CreateSessionRequest {
                session_id: id, listen: ep(&la, lp), connect: ep(&ca, cp),
                destination: ep(&da, dp), protocol: proto,
            };
            if let Ok(spec) = create_request(&r, MEDIA) {
                prop_assert!(spec.listen.port() % 2 == 0 && spec.connect.port() % 2 == 0);
                prop_assert!(spec.destination.port() >= 1 && spec.destination.port() <= 65534);
            }
        }
    }
}
