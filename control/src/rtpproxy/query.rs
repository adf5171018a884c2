//! `Q` answers from a session snapshot, sans I/O: the classic five counters and rtpproxy's
//! named statistics (`Q[v] callid from_tag [to_tag [stat ...]]`, capability 20150420).
//!
//! rtpproxy reports a stream's figures for the packets *arriving from* the side the command's
//! tags name (its `stream[idx]`): `npkts_ina` and every `rtpa_*` value describe that
//! direction, `npkts_ino` the other one; `nrelayed` and `ndropped` cover the whole session. The
//! mapping onto rtprelay's statistics (the same ones gRPC `GetSessionStatus` reports):
//!
//! | name | value |
//! |---|---|
//! | `ttl` | seconds left before the stream expires without media |
//! | `npkts_ina` / `npkts_ino` | RTP + RTCP datagrams received from this / the other side |
//! | `nrelayed` / `ndropped` | datagrams sent on / dropped, both directions, RTP + RTCP |
//! | `rtpa_nsent` | RTP packets the sources sent, from sequence numbers (RFC 3550 "expected") |
//! | `rtpa_nrcvd` | RTP packets received, duplicates excluded |
//! | `rtpa_ndups` | duplicate RTP packets |
//! | `rtpa_nlost` | `rtpa_nsent - rtpa_nrcvd` per source, never negative |
//! | `rtpa_perrs` | datagrams that were neither valid RTP nor valid RTCP |
//! | `rtpa_jlast` | RFC 3550 jitter of the most recently active source |
//! | `rtpa_jmax` | highest jitter of any source |
//! | `rtpa_javg` | mean jitter, weighted by each source's packets |
//!
//! Jitter is in RTP timestamp units, as rtpproxy prints it, and `0.000000` when no source of a
//! known clock rate has sent two packets. Sums run over the sources the relay still tracks (up
//! to four per direction; an evicted source's figures are gone). `longest_ipi` (longest gap
//! between two packets) is not tracked by the relay and answers E62, which is what rtpproxy
//! answers for a statistic it does not support.

use rtprelay_dataplane::SessionSnapshot;
use rtprelay_dataplane::rtp::{DirectionSnapshot, MediaSnapshot, SourceSnapshot};
use rtprelay_dataplane::stats::DirectionStats;

use super::command::QueryStat;
use super::error::ErrorCode;
use super::reply::{QueryCounters, StatValue};

/// A session's statistics seen from the side a `Q` names.
#[derive(Clone, Copy)]
pub struct QueryView<'a> {
    /// Client -> destination, destination -> client, as in the session snapshot.
    pub forward: &'a DirectionStats,
    pub reverse: &'a DirectionStats,
    pub media: &'a MediaSnapshot,
    /// The tags name the session's caller (its from-tag created it), so "this side" is the
    /// forward direction (client -> destination); otherwise the reverse one.
    pub caller: bool,
    /// Seconds left before expiry.
    pub ttl: u32,
}

impl<'a> QueryView<'a> {
    pub fn new(session: &'a SessionSnapshot, caller: bool, ttl: u32) -> Self {
        Self {
            forward: &session.forward,
            reverse: &session.reverse,
            media: &session.media,
            caller,
            ttl,
        }
    }

    fn directions(&self) -> (&DirectionStats, &DirectionStats) {
        if self.caller {
            (self.forward, self.reverse)
        } else {
            (self.reverse, self.forward)
        }
    }

    /// Media statistics of the packets arriving from this side.
    fn media(&self) -> &DirectionSnapshot {
        if self.caller {
            &self.media.forward
        } else {
            &self.media.reverse
        }
    }

    /// The classic `Q` answer.
    pub fn counters(&self) -> QueryCounters {
        let received = |d: &DirectionStats| d.rtp.packets_received + d.rtcp.packets_received;
        let (this, other) = self.directions();
        let (f, r) = (self.forward, self.reverse);
        let all = [f.rtp, f.rtcp, r.rtp, r.rtcp];
        QueryCounters {
            ttl: self.ttl,
            npkts_ina: received(this),
            npkts_ino: received(other),
            nrelayed: all.iter().map(|c| c.packets_sent).sum(),
            ndropped: all.iter().map(|c| c.dropped.total()).sum(),
        }
    }

    /// One named statistic, or the error rtpproxy answers for it.
    pub fn stat(&self, stat: QueryStat) -> Result<StatValue, ErrorCode> {
        let c = self.counters();
        let sources = &self.media().sources;
        let sum = |f: fn(&SourceSnapshot) -> u64| StatValue::Count(sources.iter().map(f).sum());
        Ok(match stat {
            QueryStat::Ttl => StatValue::Count(u64::from(c.ttl)),
            QueryStat::NpktsIna => StatValue::Count(c.npkts_ina),
            QueryStat::NpktsIno => StatValue::Count(c.npkts_ino),
            QueryStat::Nrelayed => StatValue::Count(c.nrelayed),
            QueryStat::Ndropped => StatValue::Count(c.ndropped),
            QueryStat::RtpaNsent => sum(|s| s.expected),
            QueryStat::RtpaNrcvd => sum(unique_received),
            QueryStat::RtpaNdups => sum(|s| s.duplicates),
            QueryStat::RtpaNlost => sum(|s| s.expected.saturating_sub(unique_received(s))),
            QueryStat::RtpaPerrs => StatValue::Count(self.media().non_rtp),
            QueryStat::RtpaJlast => StatValue::Float(jitter_last(sources)),
            QueryStat::RtpaJmax => StatValue::Float(jitter_max(sources)),
            QueryStat::RtpaJavg => StatValue::Float(jitter_mean(sources)),
            QueryStat::LongestIpi => return Err(ErrorCode::QueryFailed),
        })
    }

    /// The values of `stats` in the order asked; the first unsupported one fails the whole
    /// command, as in rtpproxy.
    pub fn stats(&self, stats: &[QueryStat]) -> Result<Vec<(QueryStat, StatValue)>, ErrorCode> {
        stats.iter().map(|&s| Ok((s, self.stat(s)?))).collect()
    }
}

fn unique_received(s: &SourceSnapshot) -> u64 {
    s.packets_received.saturating_sub(s.duplicates)
}

/// Milliseconds to RTP timestamp units of the source's clock; `None` without a clock.
fn units(s: &SourceSnapshot, ms: Option<f64>) -> Option<f64> {
    let hz = s.clock_rate.filter(|&hz| hz > 0)?;
    Some(ms? * f64::from(hz) / 1e3)
}

fn jitter_last(sources: &[SourceSnapshot]) -> f64 {
    sources
        .iter()
        .filter_map(|s| Some((s.last_seen_us, units(s, s.jitter_ms)?)))
        .max_by_key(|&(seen, _)| seen)
        .map_or(0.0, |(_, j)| j)
}

fn jitter_max(sources: &[SourceSnapshot]) -> f64 {
    sources
        .iter()
        .filter_map(|s| units(s, s.jitter_max_ms))
        .fold(0.0, f64::max)
}

fn jitter_mean(sources: &[SourceSnapshot]) -> f64 {
    let (total, weight) = sources
        .iter()
        .filter_map(|s| Some((units(s, s.jitter_mean_ms)?, s.packets_received as f64)))
        .fold((0.0, 0.0), |(t, w), (j, n)| (t + j * n, w + n));
    if weight > 0.0 { total / weight } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtpproxy::reply::Reply;

    fn source(ssrc: u32, seen: u64, jitter_ms: f64, received: u64) -> SourceSnapshot {
        SourceSnapshot {
            ssrc,
            clock_rate: Some(8_000),
            packets_received: received,
            expected: received + 3,
            duplicates: 1,
            jitter_ms: Some(jitter_ms),
            jitter_max_ms: Some(jitter_ms * 2.0),
            jitter_mean_ms: Some(jitter_ms),
            last_seen_us: seen,
            ..SourceSnapshot::default()
        }
    }

    struct Session {
        forward: DirectionStats,
        reverse: DirectionStats,
        media: MediaSnapshot,
    }

    impl Session {
        fn view(&self, caller: bool, ttl: u32) -> QueryView<'_> {
            QueryView {
                forward: &self.forward,
                reverse: &self.reverse,
                media: &self.media,
                caller,
                ttl,
            }
        }
    }

    /// Caller sent 100 RTP + 2 RTCP, callee 40 RTP; 5 dropped from the callee.
    fn session() -> Session {
        let mut s = Session {
            forward: DirectionStats::default(),
            reverse: DirectionStats::default(),
            media: MediaSnapshot::default(),
        };
        s.forward.rtp.packets_received = 100;
        s.forward.rtp.packets_sent = 100;
        s.forward.rtcp.packets_received = 2;
        s.forward.rtcp.packets_sent = 2;
        s.reverse.rtp.packets_received = 40;
        s.reverse.rtp.packets_sent = 35;
        s.reverse.rtp.dropped.no_client = 5;
        s.media.forward.sources = vec![source(1, 10, 1.0, 60), source(2, 20, 2.0, 40)];
        s.media.forward.non_rtp = 7;
        s.media.reverse.sources = vec![SourceSnapshot {
            clock_rate: None,
            packets_received: 40,
            expected: 40,
            jitter_ms: None,
            ..SourceSnapshot::default()
        }];
        s
    }

    fn render(view: &QueryView, names: &str, verbose: bool) -> String {
        let stats: Vec<QueryStat> = names
            .split(' ')
            .map(|n| QueryStat::from_name(n).expect("known name"))
            .collect();
        match view.stats(&stats) {
            Ok(values) => Reply::QueryStats { verbose, values }.render(),
            Err(code) => Reply::Error(code).render(),
        }
    }

    #[test]
    fn classic_counters_follow_the_named_side() {
        let s = session();
        let caller = s.view(true, 57);
        let reply = Reply::Query {
            verbose: false,
            counters: caller.counters(),
        };
        assert_eq!(reply.render(), "57 102 40 137 5");
        let callee = s.view(false, 57);
        assert_eq!(
            Reply::Query {
                verbose: true,
                counters: callee.counters()
            }
            .render(),
            "ttl=57 npkts_ina=40 npkts_ino=102 nrelayed=137 ndropped=5"
        );
    }

    #[test]
    fn named_statistics_transcript() {
        let s = session();
        let caller = s.view(true, 60);
        // 100 received, 2 of them duplicates, 106 expected: 98 unique, 8 lost.
        assert_eq!(
            render(
                &caller,
                "rtpa_nsent rtpa_nrcvd rtpa_ndups rtpa_nlost rtpa_perrs",
                true
            ),
            "rtpa_nsent=106 rtpa_nrcvd=98 rtpa_ndups=2 rtpa_nlost=8 rtpa_perrs=7"
        );
        // Jitter in 8 kHz units: last = source 2 (seen last) 2 ms = 16; max = 4 ms = 32;
        // mean = (1 ms * 60 + 2 ms * 40) / 100 = 1.4 ms = 11.2.
        assert_eq!(
            render(&caller, "rtpa_jlast rtpa_jmax rtpa_javg", false),
            "16.000000 32.000000 11.200000"
        );
        assert_eq!(
            render(&caller, "ttl npkts_ina npkts_ino nrelayed ndropped", true),
            "ttl=60 npkts_ina=102 npkts_ino=40 nrelayed=137 ndropped=5"
        );
        // The callee's source has no known clock: no jitter, and nothing lost.
        let callee = s.view(false, 60);
        assert_eq!(
            render(&callee, "rtpa_jlast rtpa_jmax rtpa_javg rtpa_nlost", false),
            "0.000000 0.000000 0.000000 0"
        );
        assert_eq!(render(&callee, "ttl longest_ipi", true), "E62");
    }
}
