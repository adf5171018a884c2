//! Typed replies and their exact text. Rendering is bounded: a reply that would not fit in
//! [`MAX_REPLY_BODY_LEN`] becomes `E25` (global replies) or `E26` (per-session replies), as in
//! rtpproxy, instead of a truncated or oversized datagram.

use std::fmt::Write;
use std::net::IpAddr;

use super::capabilities::BASE_VERSION;
use super::command::QueryStat;
use super::error::ErrorCode;
use super::frame::MAX_REPLY_BODY_LEN;

/// A counter's value; rtpproxy prints jitter and timings as `%f`, counts as integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatValue {
    Count(u64),
    Float(f64),
}

impl std::fmt::Display for StatValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Count(n) => write!(f, "{n}"),
            // C's "%f" spellings for the non-finite values; Rust would print "NaN".
            Self::Float(x) if x.is_nan() => f.write_str("nan"),
            Self::Float(x) if x.is_infinite() => f.write_str(if x > 0.0 { "inf" } else { "-inf" }),
            Self::Float(x) => write!(f, "{x:.6}"),
        }
    }
}

/// The classic five `Q` counters, in wire order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryCounters {
    /// Seconds left before the session expires without media.
    pub ttl: u32,
    /// Packets received from this side (the side named by the from-tag).
    pub npkts_ina: u64,
    /// Packets received from the other side.
    pub npkts_ino: u64,
    pub nrelayed: u64,
    pub ndropped: u64,
}

/// The `I` block; `average_load` is present only for `Il`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Info {
    pub sessions_created: u64,
    pub active_sessions: u64,
    pub active_streams: u64,
    pub packets_received: u64,
    pub packets_transmitted: u64,
    pub average_load: Option<f64>,
}

/// One reply, before framing.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `20040107`, the answer to `V`.
    Version,
    /// `1` / `0`, the answer to `VF`.
    Feature(bool),
    /// `0`: success of D, X, P, S, R, C, N; also `L` on an unknown session.
    Ok,
    /// `PORT ADDR`, `PORT ADDR 6` for IPv6, or `PORT` alone when no address applies (`None` or
    /// an unspecified one), which is how rtpproxy answers `U`/`L`.
    Port { port: u16, addr: Option<IpAddr> },
    /// `E<n>`.
    Error(ErrorCode),
    /// `Q`: `ttl npkts_ina npkts_ino nrelayed ndropped`, or `name=value` with `verbose`.
    Query {
        verbose: bool,
        counters: QueryCounters,
    },
    /// `Q` with statistic names: values in the order asked, `name=value` with `verbose`.
    QueryStats {
        verbose: bool,
        values: Vec<(QueryStat, StatValue)>,
    },
    /// `I`: one `label: value` line per figure.
    Info(Info),
    /// `G`: values in the order asked, `name=value` with `verbose`.
    Stats {
        verbose: bool,
        values: Vec<(String, StatValue)>,
    },
}

fn named<'a>(
    out: &mut String,
    verbose: bool,
    values: impl Iterator<Item = (&'a str, StatValue)>,
) -> std::fmt::Result {
    for (i, (name, value)) in values.enumerate() {
        let sep = if i == 0 { "" } else { " " };
        if verbose {
            write!(out, "{sep}{name}={value}")?;
        } else {
            write!(out, "{sep}{value}")?;
        }
        if out.len() > MAX_REPLY_BODY_LEN {
            break;
        }
    }
    Ok(())
}

impl Reply {
    fn too_big(&self) -> ErrorCode {
        match self {
            Self::Query { .. } | Self::QueryStats { .. } => ErrorCode::SessionReplyTooBig,
            _ => ErrorCode::ReplyTooBig,
        }
    }

    fn write_to(&self, out: &mut String) -> std::fmt::Result {
        match self {
            Self::Version => out.push_str(BASE_VERSION),
            Self::Feature(yes) => out.push_str(if *yes { "1" } else { "0" }),
            Self::Ok => out.push('0'),
            Self::Port { port, addr } => match addr.filter(|a| !a.is_unspecified()) {
                None => write!(out, "{port}")?,
                Some(a @ IpAddr::V4(_)) => write!(out, "{port} {a}")?,
                Some(a @ IpAddr::V6(_)) => write!(out, "{port} {a} 6")?,
            },
            Self::Error(code) => write!(out, "{code}")?,
            Self::Query {
                verbose,
                counters: c,
            } => {
                let values = [
                    ("ttl", StatValue::Count(u64::from(c.ttl))),
                    ("npkts_ina", StatValue::Count(c.npkts_ina)),
                    ("npkts_ino", StatValue::Count(c.npkts_ino)),
                    ("nrelayed", StatValue::Count(c.nrelayed)),
                    ("ndropped", StatValue::Count(c.ndropped)),
                ];
                named(out, *verbose, values.into_iter())?;
            }
            Self::QueryStats { verbose, values } => {
                named(out, *verbose, values.iter().map(|(s, v)| (s.name(), *v)))?;
            }
            Self::Info(i) => {
                write!(
                    out,
                    "sessions created: {}\nactive sessions: {}\nactive streams: {}\n\
                     packets received: {}\npackets transmitted: {}",
                    i.sessions_created,
                    i.active_sessions,
                    i.active_streams,
                    i.packets_received,
                    i.packets_transmitted
                )?;
                if let Some(load) = i.average_load {
                    write!(out, "\naverage load: {}", StatValue::Float(load))?;
                }
            }
            Self::Stats { verbose, values } => {
                named(out, *verbose, values.iter().map(|(n, v)| (n.as_str(), *v)))?;
            }
        }
        Ok(())
    }

    /// The reply body without cookie or newline (see [`super::frame::format_reply`]); never
    /// longer than [`MAX_REPLY_BODY_LEN`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.write_to(&mut out).is_err() || out.len() > MAX_REPLY_BODY_LEN {
            return self.too_big().to_string();
        }
        out
    }
}

impl From<ErrorCode> for Reply {
    fn from(code: ErrorCode) -> Self {
        Self::Error(code)
    }
}
