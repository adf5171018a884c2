//! Parsers for the individual fields of a command: tags, remote endpoints, payload-type lists,
//! URL-encoded notify tags and the `U`/`L` modifier string. Each failure carries the code
//! documented in [`super::error`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::command::{Bridge, Interface, LocalAddress, Modifiers, Tag};
use super::error::ErrorCode;

/// A decimal number made only of ASCII digits (no sign, unlike `str::parse`), or `None`.
pub fn digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `tag` or `tag;N` with N >= 1. The last `;` separates the index.
pub fn tag(text: &str) -> Result<Tag, ErrorCode> {
    let (tag, media) = match text.rsplit_once(';') {
        Some((tag, index)) => match digits::<u32>(index) {
            Some(n) if n >= 1 => (tag, Some(n)),
            _ => return Err(ErrorCode::BadTag),
        },
        None => (text, None),
    };
    if tag.is_empty() {
        return Err(ErrorCode::BadTag);
    }
    Ok(Tag {
        tag: tag.to_owned(),
        media,
    })
}

/// The remote endpoint of `U`/`L`: a literal of the family chosen by the `6` modifier (as
/// rtpproxy resolves it with that family only) and a decimal port 0-65535.
pub fn remote(addr: &str, port: &str, ipv6: bool) -> Result<SocketAddr, ErrorCode> {
    let ip = if ipv6 {
        addr.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        addr.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    let ip = ip.map_err(|_| ErrorCode::BadRemoteAddress)?;
    let port = digits::<u16>(port).ok_or(ErrorCode::BadRemoteAddress)?;
    Ok(SocketAddr::new(ip, port))
}

/// A comma-separated list of RTP payload types, each 0-127.
pub fn payload_types(text: &str) -> Result<Vec<u8>, ErrorCode> {
    text.split(',')
        .map(|pt| {
            digits::<u8>(pt)
                .filter(|&pt| pt <= 127)
                .ok_or(ErrorCode::BadCodecList)
        })
        .collect()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes `%XX` escapes. The result is written back as one line, so control bytes are refused.
pub fn url_decode(text: &str) -> Result<Vec<u8>, ErrorCode> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                i += 2;
                match (hi, lo) {
                    (Some(hi), Some(lo)) => (hi << 4) | lo,
                    _ => return Err(ErrorCode::BadNotifyTag),
                }
            }
            b => b,
        };
        if b < 0x20 || b == 0x7f {
            return Err(ErrorCode::BadNotifyTag);
        }
        out.push(b);
        i += 1;
    }
    Ok(out)
}

/// Length of the longest prefix of `s` whose bytes satisfy `f`.
fn run(s: &[u8], f: impl Fn(u8) -> bool) -> usize {
    s.iter().position(|&b| !f(b)).unwrap_or(s.len())
}

/// An `l`/`r` address as rtpproxy delimits it: a run of digits and dots, or `[...]` for IPv6.
/// Returns the address and the bytes consumed.
fn modifier_address(s: &[u8]) -> Option<(IpAddr, usize)> {
    if s.first() == Some(&b'[') {
        let len = run(&s[1..], |b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if s.get(1 + len) != Some(&b']') {
            return None;
        }
        let ip = std::str::from_utf8(&s[1..1 + len])
            .ok()?
            .parse::<Ipv6Addr>()
            .ok()?;
        Some((IpAddr::V6(ip), len + 2))
    } else {
        let len = run(s, |b| b.is_ascii_digit() || b == b'.');
        let ip = std::str::from_utf8(&s[..len])
            .ok()?
            .parse::<Ipv4Addr>()
            .ok()?;
        Some((IpAddr::V4(ip), len))
    }
}

fn add_interface(mods: &mut Modifiers, side: Interface) -> Result<(), ErrorCode> {
    mods.bridge = match mods.bridge {
        None => Some(Bridge {
            first: side,
            second: None,
        }),
        Some(Bridge {
            first,
            second: None,
        }) => Some(Bridge {
            first,
            second: Some(side),
        }),
        Some(_) => {
            return Err(match side {
                Interface::External => ErrorCode::BadExternalBridge,
                Interface::Internal => ErrorCode::BadInternalBridge,
            });
        }
    };
    Ok(())
}

/// The modifier string of `U`/`L` (everything after the command letter), case-insensitive.
/// Value-taking modifiers (`z`, `c`, `l`, `r`) consume as many value bytes as fit, exactly as
/// rtpproxy does, so `c0,86` is the list 0,86 and not 0,8 followed by `6`.
pub fn modifiers(text: &str) -> Result<Modifiers, ErrorCode> {
    let s = text.as_bytes();
    let mut mods = Modifiers::default();
    let mut i = 0;
    while let Some(&m) = s.get(i) {
        i += 1;
        let rest = &s[i..];
        match m.to_ascii_lowercase() {
            b'a' => mods.asymmetric = true,
            b's' => mods.asymmetric = false,
            b'w' => mods.weak = true,
            b'n' => mods.new_port = true,
            b'6' => mods.ipv6 = true,
            b'e' => add_interface(&mut mods, Interface::External)?,
            b'i' => add_interface(&mut mods, Interface::Internal)?,
            b'z' => {
                let len = run(rest, |b| b.is_ascii_digit());
                let value = std::str::from_utf8(&rest[..len])
                    .ok()
                    .and_then(digits::<u16>);
                match value {
                    Some(ms @ 1..=999) => mods.ptime_ms = Some(ms),
                    _ => return Err(ErrorCode::BadPtime),
                }
                i += len;
            }
            b'c' => {
                let len = run(rest, |b| b.is_ascii_digit() || b == b',');
                if len == 0 || mods.codecs.is_some() {
                    return Err(ErrorCode::BadCodecList);
                }
                let list =
                    std::str::from_utf8(&rest[..len]).map_err(|_| ErrorCode::BadCodecList)?;
                mods.codecs = Some(payload_types(list)?);
                i += len;
            }
            b'l' | b'r' => {
                let bind = m.eq_ignore_ascii_case(&b'l');
                let Some((ip, len)) = modifier_address(rest) else {
                    return Err(if bind {
                        ErrorCode::BadLocalModifier
                    } else {
                        ErrorCode::BadRouteModifier
                    });
                };
                mods.local = Some(if bind {
                    LocalAddress::Bind(ip)
                } else {
                    LocalAddress::RouteTo(ip)
                });
                i += len;
            }
            _ => return Err(ErrorCode::UnknownModifier),
        }
    }
    Ok(mods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_media_index() {
        let t = tag("29838E2ETag1;1").expect("tag");
        assert_eq!(
            (t.tag.as_str(), t.media, t.index()),
            ("29838E2ETag1", Some(1), 1)
        );
        let t = tag("abc").expect("tag");
        assert_eq!((t.media, t.index()), (None, 1));
        assert_eq!(tag("a;b;2").expect("tag").tag, "a;b");
        for bad in [";1", "a;0", "a;", "a;x", "a;+1", "a;99999999999"] {
            assert_eq!(tag(bad), Err(ErrorCode::BadTag), "{bad}");
        }
    }

    #[test]
    fn remote_endpoints() {
        assert_eq!(
            remote("127.0.0.1", "15070", false),
            Ok("127.0.0.1:15070".parse().expect("addr"))
        );
        assert_eq!(
            remote("::1", "0", true),
            Ok("[::1]:0".parse().expect("addr"))
        );
        for (a, p, v6) in [
            ("::1", "1", false),
            ("1.2.3.4", "1", true),
            ("1.2.3.4", "65536", false),
            ("1.2.3.4", "+1", false),
            ("host", "1", false),
            ("1.2.3.4", "", false),
        ] {
            assert_eq!(
                remote(a, p, v6),
                Err(ErrorCode::BadRemoteAddress),
                "{a} {p}"
            );
        }
    }

    #[test]
    fn notify_tags_are_url_decoded() {
        assert_eq!(url_decode("h%3A1%2f2"), Ok(b"h:1/2".to_vec()));
        for bad in ["%", "%4", "%zz", "a%0a", "%7F"] {
            assert_eq!(url_decode(bad), Err(ErrorCode::BadNotifyTag), "{bad}");
        }
    }

    #[test]
    fn modifier_values_and_errors() {
        let m = modifiers("c8,0,101").expect("mods");
        assert_eq!(m.codecs, Some(vec![8, 0, 101]));
        let m = modifiers("Ez20Il10.0.0.1c0,86W").expect("mods");
        assert_eq!(
            m.bridge,
            Some(Bridge {
                first: Interface::External,
                second: Some(Interface::Internal)
            })
        );
        assert_eq!(m.ptime_ms, Some(20));
        assert_eq!(
            m.local,
            Some(LocalAddress::Bind("10.0.0.1".parse().expect("ip")))
        );
        assert_eq!(m.codecs, Some(vec![0, 86]));
        assert!(m.weak);
        let m = modifiers("r[2001:db8::1]6asn").expect("mods");
        assert_eq!(
            m.local,
            Some(LocalAddress::RouteTo("2001:db8::1".parse().expect("ip")))
        );
        assert!(m.ipv6 && !m.asymmetric && m.new_port);
        let cases = [
            ("iei", ErrorCode::BadInternalBridge),
            ("iee", ErrorCode::BadExternalBridge),
            ("z", ErrorCode::BadPtime),
            ("z0", ErrorCode::BadPtime),
            ("z1000", ErrorCode::BadPtime),
            ("c", ErrorCode::BadCodecList),
            ("c128", ErrorCode::BadCodecList),
            ("c8,,0", ErrorCode::BadCodecList),
            ("c8c0", ErrorCode::BadCodecList),
            ("c8,", ErrorCode::BadCodecList),
            ("l", ErrorCode::BadLocalModifier),
            ("l1.2.3", ErrorCode::BadLocalModifier),
            ("l[::1", ErrorCode::BadLocalModifier),
            ("r", ErrorCode::BadRouteModifier),
            ("rx", ErrorCode::BadRouteModifier),
            ("x", ErrorCode::UnknownModifier),
            ("é", ErrorCode::UnknownModifier),
        ];
        for (text, code) in cases {
            assert_eq!(modifiers(text), Err(code), "{text}");
        }
    }
}
