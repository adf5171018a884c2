//! The sans-IO half of the rtpproxy client: the control address, the replies' grammar and the
//! pipelined exchange of numbered commands (which to send, resend or give up, and which reply
//! belongs to which). Tested without sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Resend a command after this long without a reply.
pub const RETRY: Duration = Duration::from_millis(500);
/// Sends of one command (the first and the retransmissions) before it counts as unanswered.
pub const TRIES: u32 = 4;

/// `udp:HOST:PORT`, `udp6:[HOST]:PORT`, `unix:/PATH` or a bare `HOST:PORT`, as Kamailio's `rtpproxy_sock`.
pub fn parse_spec(spec: &str) -> Result<Control> {
    let (scheme, rest) = match spec.split_once(':') {
        Some(("unix", path)) if !path.is_empty() => return Ok(Control::Unix(path.into())),
        Some((s @ ("udp" | "udp6"), rest)) => (s, rest),
        Some(("unix" | "cunix" | "tcp", _)) => {
            bail!("--rtpproxy {spec:?}: supported are udp:, udp6: and unix:/PATH")
        }
        _ => ("", spec),
    };
    let addr: SocketAddr = rest
        .parse()
        .with_context(|| format!("--rtpproxy {spec:?}: expected udp:HOST:PORT"))?;
    if addr.port() == 0
        || (scheme == "udp6" && !addr.is_ipv6())
        || (scheme == "udp" && addr.is_ipv6())
    {
        bail!("--rtpproxy {spec:?}: address family or port does not fit");
    }
    Ok(Control::Udp(addr))
}

/// Where the relay's control socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Datagram mode: `cookie command`, replies matched by cookie.
    Udp(SocketAddr),
    /// Stream mode as Kamailio uses `unix:`: one connection per command, no cookie.
    Unix(PathBuf),
}

/// The relay address of a `U`/`L` reply: `PORT`, `PORT ADDR` or `PORT ADDR 6` (rtpengine
/// also says `PORT ADDR 4`). A reply with only a port means the relay's own address, i.e. the
/// one the command went to.
pub fn media_address(reply: &str, fallback: IpAddr) -> Result<SocketAddr, String> {
    let mut words = reply.split_whitespace();
    let first = words.next().ok_or("empty reply")?;
    if first.starts_with('E') {
        return Err(format!("relay error {first}"));
    }
    let port: u16 = first.parse().map_err(|_| "not a port")?;
    if port == 0 {
        return Err("no such call (port 0)".into());
    }
    let ip = match (words.next(), words.next(), words.next()) {
        (None, None, None) => fallback,
        (Some(a), None | Some("4" | "6"), None) => a.parse().map_err(|_| "not an address")?,
        _ => return Err("unexpected words".into()),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The five numbers of a plain `Q` reply (`ttl npkts_ina npkts_ino nrelayed ndropped`).
pub fn query_counts(reply: &str) -> Option<[u64; 5]> {
    let mut out = [0u64; 5];
    let mut words = reply.split_whitespace();
    for slot in &mut out {
        // rtpproxy prints the TTL signed; a negative one is still a live call.
        let w = words.next()?;
        *slot = w
            .parse()
            .ok()
            .or_else(|| w.parse::<i64>().ok().map(|_| 0))?;
    }
    words.next().is_none().then_some(out)
}

/// What a `D` reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// E50 (legacy E8): the call is already gone, e.g. timed out.
    Unknown,
    Failed,
}

pub fn delete_outcome(reply: &str) -> DeleteOutcome {
    match reply.trim() {
        "0" => DeleteOutcome::Deleted,
        "E50" | "E8" => DeleteOutcome::Unknown,
        _ => DeleteOutcome::Failed,
    }
}

/// One pipelined exchange of numbered commands: which to (re)send when, and which reply
/// belongs to which command. No I/O; the caller sends what [`Exchange::due`] returns and feeds
/// every datagram it receives to [`Exchange::on_datagram`].
pub struct Exchange {
    replies: Vec<Option<String>>,
    /// The next command never sent.
    next: usize,
    /// Commands in flight, by cookie: (index, last send, sends so far).
    inflight: HashMap<String, (usize, Instant, u32)>,
    window: usize,
    cookie_base: String,
    first_cookie: u64,
}

impl Exchange {
    pub fn new(commands: usize, cookie_base: &str, first_cookie: u64, window: usize) -> Self {
        Self {
            replies: vec![None; commands],
            next: 0,
            inflight: HashMap::new(),
            window: window.max(1),
            cookie_base: cookie_base.to_owned(),
            first_cookie,
        }
    }

    /// The (cookie, command index) pairs to send now: new commands while the window has room,
    /// and retransmissions of those unanswered for [`RETRY`]. A command sent [`TRIES`] times
    /// without a reply is given up (its reply stays `None`).
    pub fn due(&mut self, now: Instant) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        self.inflight.retain(|cookie, (i, sent, tries)| {
            if now.duration_since(*sent) < RETRY {
                return true;
            }
            if *tries >= TRIES {
                return false;
            }
            *sent = now;
            *tries += 1;
            out.push((cookie.clone(), *i));
            true
        });
        while self.inflight.len() < self.window && self.next < self.replies.len() {
            let i = self.next;
            self.next += 1;
            let cookie = format!("{}_{}", self.cookie_base, self.first_cookie + i as u64);
            self.inflight.insert(cookie.clone(), (i, now, 1));
            out.push((cookie, i));
        }
        out
    }

    /// Takes a reply datagram (`cookie body\n`); anything else, or a cookie not in flight (a
    /// late duplicate), is ignored.
    pub fn on_datagram(&mut self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Some((cookie, body)) = text.split_once(' ') else {
            return;
        };
        if let Some((i, _, _)) = self.inflight.remove(cookie) {
            self.replies[i] = Some(body.trim_end().to_owned());
        }
    }

    pub fn done(&self) -> bool {
        self.inflight.is_empty() && self.next == self.replies.len()
    }

    pub fn into_replies(self) -> Vec<Option<String>> {
        self.replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn media_replies_with_and_without_address() {
        let a = |r: &str| media_address(r, LOCAL);
        assert_eq!(a("35000"), Ok("127.0.0.1:35000".parse().expect("addr")));
        assert_eq!(
            a("35000 10.0.0.1"),
            Ok("10.0.0.1:35000".parse().expect("addr"))
        );
        assert_eq!(a("35000 ::1 6"), Ok("[::1]:35000".parse().expect("addr")));
        assert_eq!(
            a("30000 127.0.0.1 4"),
            Ok("127.0.0.1:30000".parse().expect("addr"))
        );
        for bad in [
            "",
            "0",
            "E50",
            "E71",
            "x 1.2.3.4",
            "35000 nope",
            "35000 1.2.3.4 6 7",
            "70000",
        ] {
            assert!(a(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn query_and_delete_replies() {
        assert_eq!(query_counts("58 100 99 199 1"), Some([58, 100, 99, 199, 1]));
        assert_eq!(query_counts("-1 5 5 10 0"), Some([0, 5, 5, 10, 0]));
        assert_eq!(query_counts("58 100 99 199"), None);
        assert_eq!(query_counts("E50"), None);
        assert_eq!(query_counts("1 2 3 4 5 6"), None);
        assert_eq!(delete_outcome("0"), DeleteOutcome::Deleted);
        assert_eq!(delete_outcome("E50"), DeleteOutcome::Unknown);
        assert_eq!(delete_outcome("E8"), DeleteOutcome::Unknown);
        assert_eq!(delete_outcome("E99"), DeleteOutcome::Failed);
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("udp:127.0.0.1:7722").expect("udp"),
            Control::Udp("127.0.0.1:7722".parse().expect("addr"))
        );
        assert_eq!(
            parse_spec("udp6:[::1]:7722").expect("udp6"),
            Control::Udp("[::1]:7722".parse().expect("addr"))
        );
        assert!(parse_spec("127.0.0.1:7722").is_ok());
        assert_eq!(
            parse_spec("unix:/run/rtpproxy.sock").expect("unix"),
            Control::Unix("/run/rtpproxy.sock".into())
        );
        for bad in [
            "unix:",
            "cunix:/run/rtpproxy.sock",
            "tcp:127.0.0.1:7722",
            "udp:[::1]:7722",
            "udp6:127.0.0.1:1",
            "udp:1.2.3.4:0",
            "x",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        /// Whatever a relay (or anyone on the path) answers, the reply parsers return a value
        /// or an error, never panic; and a datagram never completes a command it does not name.
        #[test]
        fn replies_never_panic(
            text in "\\PC{0,40}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = media_address(&text, LOCAL);
            let _ = query_counts(&text);
            let _ = delete_outcome(&text);
            let mut ex = Exchange::new(2, "b1", 1, 2);
            let _ = ex.due(Instant::now());
            ex.on_datagram(&bytes);
            ex.on_datagram(text.as_bytes());
            let named = |c: &str| {
                let prefix = format!("{c} ");
                text.starts_with(&prefix) || bytes.starts_with(prefix.as_bytes())
            };
            let replies = ex.into_replies();
            proptest::prop_assert!(replies[0].is_none() || named("b1_1"));
            proptest::prop_assert!(replies[1].is_none() || named("b1_2"));
        }
    }

    #[test]
    fn exchange_windows_matches_and_retransmits() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(3, "b1", 10, 2);
        let first = ex.due(t0);
        assert_eq!(
            first,
            vec![("b1_10".to_owned(), 0), ("b1_11".to_owned(), 1)]
        );
        assert!(ex.due(t0).is_empty(), "window full, nothing due");
        // A reply for an unknown cookie and garbage change nothing.
        ex.on_datagram(b"b1_99 0\n");
        ex.on_datagram(&[0xff, 0x20, 0x30]);
        ex.on_datagram(b"b1_11 35000 127.0.0.1\n");
        assert_eq!(ex.due(t0), vec![("b1_12".to_owned(), 2)]);
        // The duplicate of an answered command is ignored.
        ex.on_datagram(b"b1_11 E50\n");
        // After RETRY the unanswered ones go again, with their cookies.
        let mut again = ex.due(t0 + RETRY);
        again.sort();
        assert_eq!(
            again,
            vec![("b1_10".to_owned(), 0), ("b1_12".to_owned(), 2)]
        );
        ex.on_datagram(b"b1_12 0\n");
        // Command 0 never answers: given up after TRIES sends in all.
        let mut t = t0 + RETRY;
        for _ in 2..TRIES {
            t += RETRY;
            assert_eq!(ex.due(t), vec![("b1_10".to_owned(), 0)]);
        }
        assert!(!ex.done());
        assert!(ex.due(t + RETRY).is_empty());
        assert!(ex.done());
        assert_eq!(
            ex.into_replies(),
            vec![
                None,
                Some("35000 127.0.0.1".to_owned()),
                Some("0".to_owned())
            ]
        );
    }
}
