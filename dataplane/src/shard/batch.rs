//! When a shard should wait in the kernel for a batch of packets (sans-IO).
//!
//! A batch wait saves a wake-up per packet but delays the first packet of each batch by up to
//! the wait's limit. It pays only when packets arrive fast enough to fill a batch; below that
//! rate the shard forwards each packet as it wakes, so low-rate media gets no added latency. The
//! rate is measured over short windows of wall-clock time, so the decision follows the load
//! within a millisecond either way.

use std::time::Duration;

/// Length of one rate-measurement window, in microseconds.
const WINDOW_US: u64 = 1_000;

/// Tracks a shard's packet rate and says whether its next wait should be a batch wait.
#[derive(Debug, Clone)]
pub(crate) struct BatchGate {
    min_rate_pps: u64,
    window_start_us: u64,
    window_packets: u64,
    batching: bool,
}

impl BatchGate {
    /// `min_rate_pps` = 0 batches whenever packets are flowing.
    pub(crate) fn new(min_rate_pps: u64, now_us: u64) -> Self {
        Self {
            min_rate_pps,
            window_start_us: now_us,
            window_packets: 0,
            batching: false,
        }
    }

    /// Records one pass of the media loop that handled `packets` at `now_us` (a monotonic
    /// clock) and returns whether the shard should now wait for a batch rather than sleep.
    pub(crate) fn on_pass(&mut self, packets: usize, now_us: u64) -> bool {
        self.window_packets += packets as u64;
        let elapsed = now_us.saturating_sub(self.window_start_us);
        if elapsed >= WINDOW_US {
            let rate = self.window_packets.saturating_mul(1_000_000) / elapsed;
            self.batching = rate >= self.min_rate_pps && self.window_packets > 0;
            self.window_start_us = now_us;
            self.window_packets = 0;
        }
        // An empty pass means the last wait ended without traffic: sleep until some arrives.
        self.batching && packets > 0
    }
}

/// How long a sleep through the executor may last before the shard looks at its ring anyway,
/// for deferred task work, where a lost wake-up through the ring's eventfd would leave the shard
/// asleep with packets waiting (see `DEFER_SLEEP_CHECK` in the shard module). Starts at `base` after any activity and doubles
/// up to `max` while the checks find nothing, so an idle shard wakes rarely; counts the misses
/// a check does find.
#[derive(Debug, Clone)]
pub(crate) struct SleepCheck {
    base: Duration,
    max: Duration,
    next: Duration,
    /// The last sleep ended by the check, not by a wake-up.
    checked: bool,
    missed: u64,
}

impl SleepCheck {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base,
            checked: false,
            missed: 0,
        }
    }

    /// The longest the next sleep may last.
    pub(crate) fn limit(&self) -> Duration {
        self.next
    }

    /// The last sleep ended because `limit` passed.
    pub(crate) fn timed_out(&mut self) {
        self.checked = true;
    }

    /// Records a pass that handled `completions`. Returns the total of missed wake-ups when
    /// this pass found one (completions were waiting when a check, not a wake-up, ended the
    /// sleep).
    pub(crate) fn on_pass(&mut self, completions: usize) -> Option<u64> {
        let checked = std::mem::take(&mut self.checked);
        if completions > 0 {
            self.next = self.base;
            if checked {
                self.missed += 1;
                return Some(self.missed);
            }
        } else if checked {
            self.next = (self.next * 2).min(self.max);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rate_pps` for `ms` milliseconds in passes of `per_pass` packets and returns how
    /// many passes asked for a batch wait.
    fn drive(gate: &mut BatchGate, start_us: u64, rate_pps: u64, per_pass: u64, ms: u64) -> usize {
        let gap_us = per_pass * 1_000_000 / rate_pps;
        let passes = ms * 1_000 / gap_us;
        (1..=passes)
            .filter(|i| gate.on_pass(per_pass as usize, start_us + i * gap_us))
            .count()
    }

    #[test]
    fn low_rates_never_batch() {
        let mut gate = BatchGate::new(40_000, 0);
        // 1000 sessions at 20 ms pacing spread evenly: 50 kpps would batch, 5 kpps must not.
        assert_eq!(drive(&mut gate, 0, 5_000, 1, 50), 0);
    }

    #[test]
    fn high_rates_batch_after_the_first_window() {
        let mut gate = BatchGate::new(40_000, 0);
        let batched = drive(&mut gate, 0, 100_000, 5, 10);
        // 200 passes in 10 ms; only those of the first window forward without a batch wait.
        assert!((175..=185).contains(&batched), "{batched}");
    }

    #[test]
    fn the_decision_follows_the_load_down_and_up() {
        let mut gate = BatchGate::new(40_000, 0);
        drive(&mut gate, 0, 100_000, 5, 5);
        let after_drop = drive(&mut gate, 5_000, 10_000, 1, 5);
        assert!(
            after_drop <= 10,
            "stops batching within a window: {after_drop}"
        );
        let back_up = drive(&mut gate, 10_000, 100_000, 5, 5);
        assert!(back_up >= 80, "resumes within a window: {back_up}");
    }

    #[test]
    fn an_empty_pass_sleeps_and_a_long_idle_resets() {
        let mut gate = BatchGate::new(40_000, 0);
        drive(&mut gate, 0, 100_000, 5, 5);
        assert!(
            !gate.on_pass(0, 5_050),
            "no packets: sleep instead of waiting again"
        );
        assert!(
            !gate.on_pass(1, 1_000_000),
            "one packet after a second idle is no stream"
        );
    }

    #[test]
    fn sleep_checks_back_off_while_idle_and_count_misses() {
        let ms = Duration::from_millis;
        let mut c = SleepCheck::new(ms(10), ms(40));
        assert_eq!(c.on_pass(3), None, "a wake-up is no miss");
        for want in [20, 40, 40] {
            c.timed_out();
            assert_eq!(c.on_pass(0), None);
            assert_eq!(c.limit(), ms(want));
        }
        c.timed_out();
        assert_eq!(c.on_pass(2), Some(1), "work found by a check is a miss");
        assert_eq!(c.limit(), ms(10), "activity restarts the short interval");
        c.timed_out();
        assert_eq!(c.on_pass(1), Some(2));
        assert_eq!(c.on_pass(1), None, "only right after a check");
    }

    #[test]
    fn zero_minimum_batches_any_traffic() {
        let mut gate = BatchGate::new(0, 0);
        assert!(drive(&mut gate, 0, 1_000, 1, 5) >= 3);
    }
}
