//! Target files: one flow per line, `SRC DST SINK [REVERSE]`, so the load tools can drive any
//! relay whose sessions were set up by someone else (the bench orchestrator, rtpengine's
//! `ng` protocol, a SIP call, by hand).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// One line of a targets file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The local address flow packets leave from (port 0: any free port).
    pub src: SocketAddr,
    /// Where they are sent: the relay's listening side of the session.
    pub dst: SocketAddr,
    /// The local address the relay forwards them to.
    pub sink: SocketAddr,
    /// Where the sink side sends its reverse traffic (the relay's outbound side of the
    /// session); when absent it is learnt from the source address of the priming packet.
    pub reverse: Option<SocketAddr>,
}

/// Reads and validates a targets file. Blank lines and `#` comments are skipped.
pub fn read(path: &Path) -> Result<Vec<Target>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses the text of a targets file.
pub fn parse(text: &str) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let addr = |s: &str| {
            s.parse::<SocketAddr>()
                .with_context(|| format!("line {}: bad address {s:?} (expected IP:PORT)", n + 1))
        };
        let (src, dst, sink, reverse) = match fields[..] {
            [src, dst, sink] => (src, dst, sink, None),
            [src, dst, sink, reverse] => (src, dst, sink, Some(reverse)),
            _ => bail!("line {}: expected `SRC DST SINK [REVERSE]`", n + 1),
        };
        let t = Target {
            src: addr(src)?,
            dst: addr(dst)?,
            sink: addr(sink)?,
            reverse: reverse.map(addr).transpose()?,
        };
        if t.dst.port() == 0 || t.sink.port() == 0 || t.reverse.is_some_and(|r| r.port() == 0) {
            bail!("line {}: only SRC may use port 0", n + 1);
        }
        targets.push(t);
    }
    if targets.is_empty() {
        bail!("no flows listed");
    }
    // Flow indices travel in 24 bits of the payload (above them the schedule phase and the
    // priming mark), two flows per target.
    if targets.len() >= (crate::rtp::FLOW_MASK / 2) as usize {
        bail!("too many flows");
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_three_and_four_columns() {
        let t = parse(
            "# comment\n\n127.0.0.1:0 127.0.0.1:20000 127.0.0.1:45000\n\
             127.0.0.1:40002 127.0.0.1:20004 127.0.0.1:45002 127.0.0.1:20006 # trailing\n",
        )
        .expect("valid");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].reverse, None);
        assert_eq!(t[1].reverse, Some("127.0.0.1:20006".parse().expect("addr")));
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse("").is_err());
        assert!(parse("127.0.0.1:1 127.0.0.1:2").is_err());
        assert!(parse("127.0.0.1:1 127.0.0.1:2 nonsense").is_err());
        assert!(parse("127.0.0.1:1 127.0.0.1:2 127.0.0.1:0").is_err());
    }
}
