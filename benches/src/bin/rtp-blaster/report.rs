//! Turning a trial's raw counts into figures: totals, per direction, latency percentiles,
//! jitter across flows, the pass/fail verdict, the JSON record and the human summary.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::trial::Outcome;

/// The pass criteria of a trial (the ramp searches the highest rate that meets them; a single
/// run reports them as a verdict).
#[derive(Debug, Clone, Copy)]
pub struct Criteria {
    /// Loss must stay below this percentage.
    pub max_loss_pct: f64,
    /// The median one-way latency must stay below this.
    pub max_p50_ms: f64,
}

/// Below this fraction of the offered rate the blaster itself was the bottleneck, and the
/// trial says nothing about the relay.
const MIN_SEND_RATIO: f64 = 0.95;
/// Flows listed as the worst ones in the report.
const WORST_FLOWS: usize = 10;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        })
    }

    fn to_json(self) -> Value {
        json!({
            "count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "p999": self.p999, "max": self.max, "mean": round3(self.mean),
        })
    }

    fn human(self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            dur(self.p50),
            dur(self.p90),
            dur(self.p99),
            dur(self.p999),
            dur(self.max)
        )
    }
}

/// Counts over a set of flows (a direction, or everything).
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub flows: usize,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Flows that sent but of which nothing arrived.
    pub silent: usize,
    /// RFC 3550 jitter across flows, microseconds: (median, max, flows with an estimate).
    pub jitter_median_us: f64,
    pub jitter_max_us: f64,
    pub jitter_flows: usize,
}

impl Counts {
    fn over(o: &Outcome, flows: impl Iterator<Item = usize>) -> Self {
        let mut c = Self::default();
        let mut jitters = Vec::new();
        for i in flows {
            let (sent, rx) = (o.sent[i], &o.rx.flows[i]);
            c.flows += 1;
            c.sent += sent;
            c.received += rx.received;
            c.lost += sent.saturating_sub(rx.received);
            c.reordered += rx.reordered;
            c.duplicates += rx.duplicates;
            c.silent += usize::from(sent > 0 && rx.received == 0);
            if let Some(j) = rx.jitter.value_ns() {
                jitters.push(j / 1000.0);
            }
        }
        jitters.sort_by(f64::total_cmp);
        c.jitter_flows = jitters.len();
        c.jitter_max_us = jitters.last().copied().unwrap_or(0.0);
        c.jitter_median_us = median(&jitters);
        c
    }

    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.sent as f64
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "flows": self.flows,
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost,
            "loss_pct": self.loss_pct(),
            "reordered": self.reordered,
            "duplicates": self.duplicates,
            "silent_flows": self.silent,
            "jitter_us": {
                "median": round3(self.jitter_median_us),
                "max": round3(self.jitter_max_us),
                "flows": self.jitter_flows,
            },
        })
    }
}

/// One phase of a `--phases` run: what was offered, what arrived, how late.
#[derive(Debug, Clone)]
pub struct PhaseSummary {
    pub rate: f64,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    /// Flows that sent in this phase but of which nothing sent in it arrived.
    pub silent: usize,
    pub latency: Option<Latency>,
}

impl PhaseSummary {
    /// Per phase; empty for a run at one rate.
    fn all(o: &Outcome) -> Vec<Self> {
        let n = o.phases.len();
        if n < 2 {
            return Vec::new();
        }
        (0..n)
            .map(|k| {
                let mut p = Self {
                    rate: o.phases[k].rate,
                    seconds: o.phases[k].duration.as_secs_f64(),
                    sent: 0,
                    received: 0,
                    silent: 0,
                    latency: o.rx.phase_latency_ns.get(k).and_then(Latency::of),
                };
                for flow in 0..o.flows {
                    let sent = o.sent_per_phase.get(flow * n + k).copied().unwrap_or(0);
                    let got = o.rx.per_flow_phase.get(flow * n + k).copied().unwrap_or(0);
                    p.sent += sent;
                    p.received += got;
                    p.silent += usize::from(sent > 0 && got == 0);
                }
                p
            })
            .collect()
    }

    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.lost() as f64 / self.sent as f64
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "rate": round3(self.rate),
            "seconds": round3(self.seconds),
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost(),
            "loss_pct": self.loss_pct(),
            "silent_flows": self.silent,
            "latency_us": self.latency.map_or(Value::Null, Latency::to_json),
        })
    }
}

/// A trial, summarised.
pub struct Summary {
    pub total: Counts,
    /// Forward, and reverse when both directions ran.
    pub directions: Vec<(&'static str, Counts, Option<Latency>)>,
    pub latency: Option<Latency>,
    /// Per phase of a `--phases` run (empty otherwise).
    pub phases: Vec<PhaseSummary>,
    pub achieved_send_pps: f64,
    pub received_pps: f64,
    /// Why the trial fails the criteria; empty = pass.
    pub failures: Vec<String>,
}

impl Summary {
    pub fn new(o: &Outcome, c: &Criteria) -> Self {
        let n = o.sessions;
        let total = Counts::over(o, 0..o.flows);
        let mut directions = vec![(
            "forward",
            Counts::over(o, 0..n),
            Latency::of(&o.rx.latency_ns[0]),
        )];
        if o.flows > n {
            directions.push((
                "reverse",
                Counts::over(o, n..o.flows),
                o.rx.latency_ns.get(1).and_then(Latency::of),
            ));
        }
        let latency = Latency::of(&o.rx.latency_all());
        let secs = o.send_duration.as_secs_f64();
        let achieved_send_pps = if secs > 0.0 {
            total.sent as f64 / secs
        } else {
            0.0
        };
        let received_pps = if secs > 0.0 {
            total.received as f64 / secs
        } else {
            0.0
        };
        let mut s = Self {
            total,
            directions,
            latency,
            phases: PhaseSummary::all(o),
            achieved_send_pps,
            received_pps,
            failures: Vec::new(),
        };
        s.failures = s.judge(o, c);
        s
    }

    pub fn pass(&self) -> bool {
        self.failures.is_empty()
    }

    fn judge(&self, o: &Outcome, c: &Criteria) -> Vec<String> {
        let mut f = Vec::new();
        let t = &self.total;
        if t.loss_pct() >= c.max_loss_pct {
            f.push(format!(
                "loss {:.3}% >= {}% ({} of {} packets)",
                t.loss_pct(),
                c.max_loss_pct,
                t.lost,
                t.sent
            ));
        }
        if t.silent > 0 {
            f.push(format!("{} silent flow(s)", t.silent));
        }
        if !o.unprimed.is_empty() {
            f.push(format!(
                "{} session(s) never passed their priming packet",
                o.unprimed.len()
            ));
        }
        match self.latency {
            None => f.push("no packet arrived".into()),
            Some(l) if l.p50 >= c.max_p50_ms * 1000.0 => {
                f.push(format!("p50 latency {} >= {} ms", dur(l.p50), c.max_p50_ms))
            }
            Some(_) => {}
        }
        if o.rx.misrouted > 0 {
            f.push(format!(
                "{} packet(s) arrived at another flow's socket",
                o.rx.misrouted
            ));
        }
        let unsent = o.send_dropped + o.send_errors;
        let attempted = t.sent + unsent;
        if attempted > 0 && 100.0 * unsent as f64 / attempted as f64 >= c.max_loss_pct {
            f.push(format!(
                "{unsent} packet(s) could not be sent ({} send errors, e.g. ICMP port \
                 unreachable; {} socket-buffer drops)",
                o.send_errors, o.send_dropped
            ));
        }
        if !o.interrupted && self.achieved_send_pps < MIN_SEND_RATIO * o.offered_pps {
            f.push(format!(
                "the blaster sent only {:.0} of {:.0} pps offered (blaster-limited, not a \
                 relay result)",
                self.achieved_send_pps, o.offered_pps
            ));
        }
        f
    }

    pub fn to_json(&self, o: &Outcome, per_flow: bool) -> Value {
        let mut v = json!({
            "sessions": o.sessions,
            "flows": o.flows,
            "offered_pps": round3(o.offered_pps),
            "per_flow_pps": round3(o.per_flow_pps),
            "seconds": o.seconds,
            "send_seconds": round3(o.send_duration.as_secs_f64()),
            "interrupted": o.interrupted,
            "achieved_send_pps": round3(self.achieved_send_pps),
            "received_pps": round3(self.received_pps),
            "sent": self.total.sent,
            "received": self.total.received,
            "lost": self.total.lost,
            "loss_pct": self.total.loss_pct(),
            "reordered": self.total.reordered,
            "duplicates": self.total.duplicates,
            "silent_flows": self.total.silent,
            "unprimed_sessions": o.unprimed.len(),
            "reverse_address_mismatch": o.reverse_mismatch,
            "misrouted": o.rx.misrouted,
            "invalid": o.rx.invalid,
            "late_priming_packets": o.rx.priming,
            "receive_errors": o.rx.errors,
            "send_dropped": o.send_dropped,
            "send_errors": o.send_errors,
            "send_skipped": o.send_skipped,
            "latency_us": self.latency.map_or(Value::Null, Latency::to_json),
            "jitter_us": {
                "median": round3(self.total.jitter_median_us),
                "max": round3(self.total.jitter_max_us),
                "flows": self.total.jitter_flows,
            },
            "directions": self.directions.iter().map(|(name, c, l)| {
                let mut d = c.to_json();
                d["latency_us"] = l.map_or(Value::Null, Latency::to_json);
                (name.to_string(), d)
            }).collect::<serde_json::Map<_, _>>(),
            "pass": self.pass(),
            "failures": self.failures,
            "phases": if self.phases.is_empty() {
                Value::Null
            } else {
                self.phases.iter().map(PhaseSummary::to_json).collect()
            },
            "worst_flows": worst_flows(o, WORST_FLOWS),
            "relay_counters": o.relay.as_ref().map_or(Value::Null, |r| r.to_json()),
            "relay_query": o.relay_query.map_or(Value::Null, |q| q.to_json()),
            "sessions_left": o.sessions_left,
            "cleanup_error": o.cleanup_error,
        });
        if per_flow {
            v["per_flow"] = Value::Array((0..o.flows).map(|i| flow_json(o, i)).collect());
        }
        v
    }

    /// The human summary of one trial.
    pub fn human(&self, o: &Outcome) -> String {
        let mut s = String::new();
        let t = &self.total;
        let _ = writeln!(
            s,
            "  {} session(s), {} flow(s), {:.0} pps offered ({:.1} pps per flow), sent {:.0} pps \
             for {:.1} s{}",
            o.sessions,
            o.flows,
            o.offered_pps,
            o.per_flow_pps,
            self.achieved_send_pps,
            o.send_duration.as_secs_f64(),
            if o.interrupted { " (interrupted)" } else { "" }
        );
        let _ = writeln!(
            s,
            "  sent {}  received {}  lost {} ({:.4}%)  reordered {}  duplicates {}  silent \
             flows {}",
            t.sent,
            t.received,
            t.lost,
            t.loss_pct(),
            t.reordered,
            t.duplicates,
            t.silent
        );
        if let Some(l) = self.latency {
            let _ = writeln!(s, "  latency  {}", l.human());
        }
        let _ = writeln!(
            s,
            "  jitter   median {}  max {} (RFC 3550, over {} flows)",
            dur(t.jitter_median_us),
            dur(t.jitter_max_us),
            t.jitter_flows
        );
        if self.directions.len() > 1 {
            for (name, c, l) in &self.directions {
                let _ = writeln!(
                    s,
                    "  {name:<8} lost {} of {} ({:.4}%), silent {}, p50 {}, p99 {}, jitter max {}",
                    c.lost,
                    c.sent,
                    c.loss_pct(),
                    c.silent,
                    l.map_or("-".into(), |l| dur(l.p50)),
                    l.map_or("-".into(), |l| dur(l.p99)),
                    dur(c.jitter_max_us)
                );
            }
        }
        for (k, p) in self.phases.iter().enumerate() {
            let _ = writeln!(
                s,
                "  phase {} {:.0} pps for {:.1} s: lost {} of {} ({:.4}%), silent flows {}, \
                 latency {}",
                k + 1,
                p.rate,
                p.seconds,
                p.lost(),
                p.sent,
                p.loss_pct(),
                p.silent,
                p.latency.map_or("-".into(), Latency::human)
            );
        }
        let extra: Vec<String> = [
            ("unprimed sessions", o.unprimed.len() as u64),
            ("misrouted", o.rx.misrouted),
            ("invalid", o.rx.invalid),
            ("send errors", o.send_errors),
            ("send drops", o.send_dropped),
            ("skipped behind schedule", o.send_skipped),
            ("receive errors", o.rx.errors),
        ]
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
        if !extra.is_empty() {
            let _ = writeln!(s, "  !! {}", extra.join(", "));
        }
        if let Some(r) = &o.relay {
            let _ = writeln!(
                s,
                "  relay    forward rx {} tx {} dropped {}; reverse rx {} tx {} dropped {}; \
                 residence p99 <= {} us",
                r.forward.received,
                r.forward.sent,
                r.forward.dropped_total(),
                r.reverse.received,
                r.reverse.sent,
                r.reverse.dropped_total(),
                r.forward
                    .max_residence_p99_us
                    .max(r.reverse.max_residence_p99_us)
            );
        }
        if let Some(q) = o.relay_query {
            let _ = writeln!(
                s,
                "  relay    (Q over {} call(s)) received {} relayed {} dropped {}",
                q.calls, q.received, q.relayed, q.dropped
            );
        }
        if let Some(e) = &o.cleanup_error {
            let _ = writeln!(s, "  !! removing the sessions failed: {e}");
        }
        if let Some(left) = o.sessions_left.filter(|&l| l > 0) {
            let _ = writeln!(
                s,
                "  !! {left} session(s) could not be removed from the relay"
            );
        }
        if self.pass() {
            let _ = writeln!(s, "  verdict  PASS");
        } else {
            let _ = writeln!(s, "  verdict  FAIL: {}", self.failures.join("; "));
        }
        s
    }
}

/// The flows with the most loss (then the highest jitter).
fn worst_flows(o: &Outcome, count: usize) -> Value {
    let mut order: Vec<usize> = (0..o.flows).collect();
    let lost = |i: usize| o.sent[i].saturating_sub(o.rx.flows[i].received);
    let jitter = |i: usize| o.rx.flows[i].jitter.value_ns().unwrap_or(0.0);
    order.sort_by(|&a, &b| lost(b).cmp(&lost(a)).then(jitter(b).total_cmp(&jitter(a))));
    Value::Array(
        order
            .into_iter()
            .take(count)
            .map(|i| flow_json(o, i))
            .collect(),
    )
}

fn flow_json(o: &Outcome, i: usize) -> Value {
    let session = i % o.sessions.max(1);
    let rx = &o.rx.flows[i];
    json!({
        "flow": i,
        "session": session,
        "session_id": o.session_ids.get(session),
        "direction": if i < o.sessions { "forward" } else { "reverse" },
        "sent": o.sent[i],
        "received": rx.received,
        "lost": o.sent[i].saturating_sub(rx.received),
        "reordered": rx.reordered,
        "duplicates": rx.duplicates,
        "jitter_us": rx.jitter.value_ns().map(|j| round3(j / 1000.0)),
    })
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Microseconds, printed in the unit that keeps them readable.
pub fn dur(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_units() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
        assert_eq!(dur(12.34), "12.3 us");
        assert_eq!(dur(1500.0), "1.50 ms");
        assert_eq!(dur(2_500_000.0), "2.50 s");
    }
}
