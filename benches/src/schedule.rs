//! When each packet of a run is due: one aggregate rate, or phases of different rates.
//!
//! Phases exist to show overload and recovery in one run (e.g. half the relay's capacity, then
//! twice it, then half again): the sender tags every packet with its phase and the sink counts
//! each phase apart, so loss and latency during and after the overload are separate figures.
//! Packet `m` of the run is due at the time the rate schedule reaches `m` packets; within a
//! phase that is `start + (m - first) / rate`, exactly the single-rate pacing.

use std::time::Duration;

use anyhow::{Result, bail};

/// The most phases a run may have (the phase index travels in 7 bits of every packet).
pub const MAX_PHASES: usize = 16;

/// One stretch of constant aggregate rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    /// Packets per second over all streams.
    pub rate: f64,
    pub duration: Duration,
}

/// A whole run's rate over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    phases: Vec<Phase>,
    /// Per phase: packets due before it starts, and its start.
    starts: Vec<(u64, Duration)>,
    total: u64,
}

impl Schedule {
    /// A run at one rate.
    pub fn constant(rate: f64, duration: Duration) -> Result<Self> {
        Self::new(vec![Phase { rate, duration }])
    }

    /// Phases run back to back. Every rate must be positive and finite, every duration above 0.
    pub fn new(phases: Vec<Phase>) -> Result<Self> {
        if phases.is_empty() || phases.len() > MAX_PHASES {
            bail!("a run needs 1 to {MAX_PHASES} phases, not {}", phases.len());
        }
        let mut starts = Vec::with_capacity(phases.len());
        let (mut packets, mut at) = (0u64, Duration::ZERO);
        for p in &phases {
            if !(p.rate.is_finite() && p.rate > 0.0) || p.duration.is_zero() {
                bail!(
                    "a phase needs a positive rate and duration, not {} pps for {:?}",
                    p.rate,
                    p.duration
                );
            }
            starts.push((packets, at));
            packets += (p.rate * p.duration.as_secs_f64()).ceil() as u64;
            at += p.duration;
        }
        Ok(Self {
            phases,
            starts,
            total: packets,
        })
    }

    /// Parses `RATE:SECONDS[,RATE:SECONDS...]`, e.g. `50000:3,200000:3,50000:5`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut phases = Vec::new();
        for part in spec.split(',') {
            let Some((rate, secs)) = part.trim().split_once(':') else {
                bail!("phase `{part}` is not RATE:SECONDS");
            };
            let (Ok(rate), Ok(secs)) = (rate.trim().parse::<f64>(), secs.trim().parse::<f64>())
            else {
                bail!("phase `{part}` is not RATE:SECONDS (numbers)");
            };
            if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
                bail!("phase `{part}`: seconds must be in (0, 3600]");
            }
            phases.push(Phase {
                rate,
                duration: Duration::from_secs_f64(secs),
            });
        }
        Self::new(phases)
    }

    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Packets due over the whole run.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn duration(&self) -> Duration {
        let (_, start) = self.starts[self.starts.len() - 1];
        start + self.phases[self.phases.len() - 1].duration
    }

    /// The phase running at `elapsed` (the last one after the end).
    fn phase_at(&self, elapsed: Duration) -> usize {
        self.starts
            .partition_point(|&(_, start)| start <= elapsed)
            .saturating_sub(1)
    }

    /// Packets due by `elapsed`: packet `m` is due once the schedule reaches it, so one is due
    /// at the very start (as with a single rate, `floor(rate * t) + 1`).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let k = self.phase_at(elapsed);
        let (first, start) = self.starts[k];
        let in_phase = (self.phases[k].rate * (elapsed - start).as_secs_f64()) as u64 + 1;
        (first + in_phase).min(self.phase_end(k))
    }

    /// The phase packet `m` belongs to.
    pub fn phase_of(&self, m: u64) -> usize {
        self.starts
            .partition_point(|&(first, _)| first <= m)
            .saturating_sub(1)
    }

    /// The first packet of the phase running at `elapsed`: a sender still behind with the
    /// previous phase's packets skips them there, so every phase is offered at its own rate.
    pub fn first_of_phase_at(&self, elapsed: Duration) -> u64 {
        self.starts[self.phase_at(elapsed)].0
    }

    /// The first packet after phase `k` (the run's total after the last phase).
    pub fn phase_end(&self, k: usize) -> u64 {
        self.starts.get(k + 1).map_or(self.total, |&(next, _)| next)
    }

    /// When packet `m` is due.
    pub fn time_of(&self, m: u64) -> Duration {
        let k = self.phase_of(m);
        let (first, start) = self.starts[k];
        start + Duration::from_secs_f64((m - first) as f64 / self.phases[k].rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_constant_rate_paces_as_before() {
        let s = Schedule::constant(1000.0, Duration::from_secs(2)).unwrap();
        assert_eq!(s.total(), 2000);
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_by(ms(10)), 11);
        assert_eq!(s.due_by(ms(5000)), 2000);
        assert!(s.time_of(500).abs_diff(ms(500)) < Duration::from_micros(1));
        assert_eq!(s.phase_of(1999), 0);
        assert_eq!(s.duration(), Duration::from_secs(2));
    }

    #[test]
    fn phases_follow_each_other() {
        let s = Schedule::parse("1000:1, 4000:0.5,1000:1").unwrap();
        assert_eq!(s.phases().len(), 3);
        assert_eq!(s.total(), 1000 + 2000 + 1000);
        assert_eq!(s.duration(), ms(2500));
        // The first phase ends with its own packets; the second starts on time.
        assert_eq!(s.due_by(ms(999)), 1000);
        assert_eq!(s.due_by(ms(1000)), 1001);
        assert_eq!(s.due_by(ms(1100)), 1000 + 401);
        assert_eq!(s.due_by(ms(1500)), 3001);
        assert_eq!(s.phase_of(999), 0);
        assert_eq!(s.phase_of(1000), 1);
        assert_eq!(s.phase_of(2999), 1);
        assert_eq!(s.phase_of(3000), 2);
        assert_eq!(s.first_of_phase_at(ms(1200)), 1000);
        assert_eq!(s.first_of_phase_at(ms(9000)), 3000);
        let near = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(1);
        assert!(near(s.time_of(1000), ms(1000)));
        assert!(near(s.time_of(1400), ms(1100)));
        assert!(near(s.time_of(3500), ms(2000)));
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            "", "1000", "x:1", "1000:0", "0:1", "-5:1", "1000:nan", "inf:1",
        ] {
            assert!(Schedule::parse(spec).is_err(), "{spec:?} accepted");
        }
        let many = vec!["10:1"; MAX_PHASES + 1].join(",");
        assert!(Schedule::parse(&many).is_err());
    }

    proptest::proptest! {
        /// Due counts never go down, never pass the total, and agree with `time_of`.
        #[test]
        fn due_counts_agree_with_due_times(
            rates in proptest::collection::vec(1.0f64..100_000.0, 1..5),
            secs in proptest::collection::vec(0.01f64..2.0, 5),
            probes in proptest::collection::vec(0u64..12_000_000, 20),
        ) {
            let phases = rates.iter().zip(&secs).map(|(&rate, &s)| Phase {
                rate,
                duration: Duration::from_secs_f64(s),
            }).collect();
            let s = Schedule::new(phases).unwrap();
            let mut probes = probes;
            probes.sort_unstable();
            let mut last = 0;
            for us in probes {
                let due = s.due_by(Duration::from_micros(us));
                proptest::prop_assert!(due >= last && due <= s.total());
                last = due;
            }
            for m in [0, s.total() / 3, s.total().saturating_sub(1)] {
                // Packet m is due at time_of(m): by then at least m + 1 packets are due.
                let t = s.time_of(m) + Duration::from_micros(1);
                proptest::prop_assert!(s.due_by(t) > m, "m {} due_by {}", m, s.due_by(t));
            }
        }
    }
}
