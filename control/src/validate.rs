//! Turning a CreateSession request into a data-plane [`SessionSpec`], or saying precisely which
//! field is wrong. Pure: no sockets, so every rule is unit-tested here and the data plane only
//! ever sees well-formed requests.

use std::net::{IpAddr, SocketAddr};

use std::time::Duration;

use rtprelay_dataplane::session::SessionOptions;
use rtprelay_dataplane::session::monitor::MonitorConfig;
use rtprelay_dataplane::tcp::{TcpFraming, TcpOptions};
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
    if let IpAddr::V4(v4) = ip
        && v4.is_broadcast()
    {
        return Err(Invalid(format!(
            "{field}.address {ip} is the broadcast address"
        )));
    }
    if let IpAddr::V6(v6) = ip
        && v6.is_unicast_link_local()
    {
        // A link-local address is ambiguous without a scope (interface), which an Endpoint
        // cannot carry; the kernel would refuse it with EINVAL.
        return Err(Invalid(format!(
            "{field}.address {ip} is link-local; use a global or unique-local address"
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

/// Server-wide defaults for session options a request leaves unset; 0 turns a feature off.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDefaults {
    pub stats_interval_ms: u32,
    pub idle_timeout_ms: u32,
    pub loss_pct: f64,
    pub loss_window_ms: u32,
    pub jitter_ms: f64,
    pub no_media_ms: u32,
}

impl Default for SessionDefaults {
    fn default() -> Self {
        Self {
            stats_interval_ms: 5000,
            idle_timeout_ms: 60_000,
            loss_pct: 5.0,
            loss_window_ms: 5000,
            jitter_ms: 50.0,
            no_media_ms: 0,
        }
    }
}

fn off_if_zero(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

fn threshold(field: &str, value: f64, max: f64) -> Result<Option<f64>, Invalid> {
    if !value.is_finite() || value < 0.0 || value > max {
        return Err(Invalid(format!("{field} {value} is out of range 0-{max}")));
    }
    Ok((value > 0.0).then_some(value))
}

/// Resolves the request's options against the server defaults.
pub fn options(
    o: Option<&v1::SessionOptions>,
    d: &SessionDefaults,
) -> Result<SessionOptions, Invalid> {
    let default = v1::SessionOptions::default();
    let o = o.unwrap_or(&default);
    let a = o.alerts.unwrap_or_default();
    let stats = o.stats_interval_ms.unwrap_or(d.stats_interval_ms);
    if stats > 0 && stats < 100 {
        return Err(Invalid(format!(
            "options.stats_interval_ms {stats} is below the minimum of 100 (0 turns it off)"
        )));
    }
    let window = a.loss_window_ms.unwrap_or(d.loss_window_ms);
    if window < 100 {
        return Err(Invalid(format!(
            "options.alerts.loss_window_ms {window} is below the minimum of 100"
        )));
    }
    let monitor = MonitorConfig {
        stats_interval: off_if_zero(stats),
        idle_timeout: off_if_zero(o.idle_timeout_ms.unwrap_or(d.idle_timeout_ms)),
        loss_pct: threshold(
            "options.alerts.loss_pct",
            a.loss_pct.unwrap_or(d.loss_pct),
            100.0,
        )?,
        loss_window: Duration::from_millis(u64::from(window)),
        jitter_ms: threshold(
            "options.alerts.jitter_ms",
            a.jitter_ms.unwrap_or(d.jitter_ms),
            60_000.0,
        )?,
        no_media: off_if_zero(a.no_media_ms.unwrap_or(d.no_media_ms)),
    };
    let mut clock_rates = Vec::with_capacity(o.clock_rates.len());
    for (&pt, &hz) in &o.clock_rates {
        let pt = u8::try_from(pt)
            .ok()
            .filter(|pt| *pt <= 127)
            .ok_or_else(|| {
                Invalid(format!(
                    "options.clock_rates: payload type {pt} is out of range 0-127"
                ))
            })?;
        if hz == 0 || hz > 1_000_000 {
            return Err(Invalid(format!(
                "options.clock_rates: clock rate {hz} Hz for payload type {pt} is out of range 1-1000000"
            )));
        }
        clock_rates.push((pt, hz));
    }
    clock_rates.sort_unstable();
    let drop_non_rtp = match v1::NonRtpPolicy::try_from(o.non_rtp) {
        Ok(v1::NonRtpPolicy::Relay) => false,
        Ok(v1::NonRtpPolicy::Drop) => true,
        Err(_) => {
            return Err(Invalid(format!(
                "options.non_rtp {} is not a known policy",
                o.non_rtp
            )));
        }
    };
    let tcp = tcp_options(o)?;
    Ok(SessionOptions {
        monitor,
        clock_rates,
        drop_non_rtp,
        tcp,
        ..SessionOptions::default()
    })
}

/// TCP options; ignored by UDP sessions but checked for every request, so a bad value is
/// reported whatever the protocol.
fn tcp_options(o: &v1::SessionOptions) -> Result<TcpOptions, Invalid> {
    let d = TcpOptions::default();
    let ms = |field: &str, v: Option<u32>, default: Duration, min: u32| match v {
        None => Ok(default),
        Some(v) if v < min || v > 3_600_000 => Err(Invalid(format!(
            "options.{field} {v} is out of range {min}-3600000"
        ))),
        Some(v) => Ok(Duration::from_millis(u64::from(v))),
    };
    let framing = match v1::TcpFraming::try_from(o.tcp_framing) {
        Ok(v1::TcpFraming::Rfc4571) => TcpFraming::Rfc4571,
        Ok(v1::TcpFraming::Interleaved) => TcpFraming::Interleaved,
        Ok(v1::TcpFraming::None) => TcpFraming::None,
        Err(_) => {
            return Err(Invalid(format!(
                "options.tcp_framing {} is not a known framing",
                o.tcp_framing
            )));
        }
    };
    let backoff_initial = ms(
        "tcp_backoff_initial_ms",
        o.tcp_backoff_initial_ms,
        d.backoff_initial,
        10,
    )?;
    let backoff_max = ms(
        "tcp_backoff_max_ms",
        o.tcp_backoff_max_ms,
        d.backoff_max.max(backoff_initial),
        10,
    )?;
    if backoff_max < backoff_initial {
        return Err(Invalid(format!(
            "options.tcp_backoff_max_ms {} is below tcp_backoff_initial_ms {}",
            backoff_max.as_millis(),
            backoff_initial.as_millis()
        )));
    }
    Ok(TcpOptions {
        framing,
        connect_timeout: ms(
            "tcp_connect_timeout_ms",
            o.tcp_connect_timeout_ms,
            d.connect_timeout,
            10,
        )?,
        backoff_initial,
        backoff_max,
        client_reconnect: o.tcp_client_reconnect,
        ..d
    })
}

/// Validates the whole request. `media_address` stands in for empty local addresses.
pub fn create_request(
    req: &v1::CreateSessionRequest,
    media_address: IpAddr,
    defaults: &SessionDefaults,
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
        options: options(req.options.as_ref(), defaults)?,
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
            options: None,
        }
    }

    fn err(r: v1::CreateSessionRequest) -> String {
        create_request(&r, MEDIA, &SessionDefaults::default())
            .unwrap_err()
            .0
    }

    #[test]
    fn a_good_request_becomes_a_spec() {
        let spec = create_request(&req(), MEDIA, &SessionDefaults::default()).unwrap();
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
        let spec = create_request(&r, MEDIA, &SessionDefaults::default()).unwrap();
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
        assert!(create_request(&r, MEDIA, &SessionDefaults::default()).is_ok());
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
            (
                |r| r.listen = ep("fe80::1", 0),
                "listen.address fe80::1 is link-local",
            ),
            (
                |r| r.destination = ep("fe80::2", 4000),
                "destination.address fe80::2 is link-local",
            ),
            (
                |r| r.connect = ep("255.255.255.255", 0),
                "connect.address 255.255.255.255 is the broadcast",
            ),
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
    fn tcp_is_accepted_with_its_options() {
        let mut r = req();
        r.protocol = v1::Protocol::Tcp as i32;
        r.options = Some(v1::SessionOptions {
            tcp_framing: v1::TcpFraming::Interleaved as i32,
            tcp_backoff_initial_ms: Some(100),
            tcp_backoff_max_ms: Some(400),
            tcp_connect_timeout_ms: Some(500),
            tcp_client_reconnect: true,
            ..Default::default()
        });
        let spec = create_request(&r, MEDIA, &SessionDefaults::default()).unwrap();
        assert_eq!(spec.protocol, Protocol::Tcp);
        let t = spec.options.tcp;
        assert_eq!(t.framing, TcpFraming::Interleaved);
        assert_eq!(t.backoff_initial, Duration::from_millis(100));
        assert_eq!(t.backoff_max, Duration::from_millis(400));
        assert_eq!(t.connect_timeout, Duration::from_millis(500));
        assert!(t.client_reconnect);
        r.options = Some(v1::SessionOptions {
            tcp_backoff_initial_ms: Some(5000),
            tcp_backoff_max_ms: Some(1000),
            ..Default::default()
        });
        assert!(err(r.clone()).contains("tcp_backoff_max_ms 1000 is below"));
        r.options = Some(v1::SessionOptions {
            tcp_framing: 7,
            ..Default::default()
        });
        assert!(err(r).contains("options.tcp_framing 7"));
    }

    #[test]
    fn ipv6_and_bridging_are_accepted() {
        let mut r = req();
        r.listen = ep("::1", 0);
        r.connect = ep("::1", 0);
        r.destination = ep("::1", 5000);
        assert!(create_request(&r, MEDIA, &SessionDefaults::default()).is_ok());
        r.connect = ep("127.0.0.1", 0);
        r.destination = ep("127.0.0.1", 5000);
        assert!(
            create_request(&r, MEDIA, &SessionDefaults::default()).is_ok(),
            "v6 listen with v4 outbound is a valid bridge"
        );
    }

    #[test]
    fn options_take_defaults_and_explicit_zero_turns_off() {
        let d = SessionDefaults::default();
        let o = options(None, &d).unwrap();
        assert_eq!(o.monitor.stats_interval, Some(Duration::from_secs(5)));
        assert_eq!(o.monitor.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(o.monitor.loss_pct, Some(5.0));
        assert_eq!(o.monitor.no_media, None);
        let explicit = v1::SessionOptions {
            stats_interval_ms: Some(0),
            idle_timeout_ms: Some(0),
            alerts: Some(v1::AlertThresholds {
                loss_pct: Some(3.0),
                loss_window_ms: Some(1000),
                jitter_ms: Some(0.0),
                no_media_ms: Some(2000),
            }),
            clock_rates: [(111, 48000), (96, 90000)].into(),
            non_rtp: v1::NonRtpPolicy::Drop as i32,
            ..Default::default()
        };
        let o = options(Some(&explicit), &d).unwrap();
        assert_eq!(
            (
                o.monitor.stats_interval,
                o.monitor.idle_timeout,
                o.monitor.jitter_ms
            ),
            (None, None, None)
        );
        assert_eq!(o.monitor.loss_pct, Some(3.0));
        assert_eq!(o.monitor.loss_window, Duration::from_secs(1));
        assert_eq!(o.monitor.no_media, Some(Duration::from_secs(2)));
        assert_eq!(o.clock_rates, vec![(96, 90000), (111, 48000)]);
        assert!(o.drop_non_rtp);
    }

    #[test]
    fn bad_options_are_named() {
        let d = SessionDefaults::default();
        let bad = |o: v1::SessionOptions| options(Some(&o), &d).unwrap_err().0;
        assert!(
            bad(v1::SessionOptions {
                stats_interval_ms: Some(50),
                ..Default::default()
            })
            .contains("stats_interval_ms 50")
        );
        let alerts = |a: v1::AlertThresholds| v1::SessionOptions {
            alerts: Some(a),
            ..Default::default()
        };
        assert!(
            bad(alerts(v1::AlertThresholds {
                loss_pct: Some(120.0),
                ..Default::default()
            }))
            .contains("loss_pct")
        );
        assert!(
            bad(alerts(v1::AlertThresholds {
                jitter_ms: Some(f64::NAN),
                ..Default::default()
            }))
            .contains("jitter_ms")
        );
        assert!(
            bad(alerts(v1::AlertThresholds {
                loss_window_ms: Some(10),
                ..Default::default()
            }))
            .contains("loss_window_ms")
        );
        assert!(
            bad(v1::SessionOptions {
                clock_rates: [(300, 8000)].into(),
                ..Default::default()
            })
            .contains("payload type 300")
        );
        assert!(
            bad(v1::SessionOptions {
                clock_rates: [(96, 0)].into(),
                ..Default::default()
            })
            .contains("clock rate 0")
        );
        assert!(
            bad(v1::SessionOptions {
                non_rtp: 7,
                ..Default::default()
            })
            .contains("non_rtp 7")
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
                destination: ep(&da, dp), protocol: proto, options: None,
            };
            if let Ok(spec) = create_request(&r, MEDIA, &SessionDefaults::default()) {
                prop_assert!(spec.listen.port() % 2 == 0 && spec.connect.port() % 2 == 0);
                prop_assert!(spec.destination.port() >= 1 && spec.destination.port() <= 65534);
            }
        }
    }
}
