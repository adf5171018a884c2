//! Reconnect delays (sans-IO): exponential from an initial delay up to a cap, with jitter so
//! that many sessions losing the same destination at once do not reconnect in lockstep.

use std::time::Duration;

/// Fraction of each delay that is randomised: a delay is `base * (1 - JITTER .. 1 + JITTER)`,
/// never above the cap.
const JITTER: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    /// xorshift64 state; jitter needs no cryptographic quality.
    rng: u64,
}

impl Backoff {
    /// `seed` only varies the jitter (e.g. a hash of the session ID); 0 is replaced.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempt: 0,
            // splitmix64 spreads nearby seeds (e.g. similar session IDs) over the state space;
            // xorshift must not start at 0.
            rng: {
                let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)).max(1)
            },
        }
    }

    /// The delay before the next attempt, and advances the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        let base = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let unit = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64; // 0..1
        let scaled = base.as_secs_f64() * (1.0 - JITTER + 2.0 * JITTER * unit);
        Duration::from_secs_f64(scaled).min(self.max)
    }

    /// Starts again from the initial delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts failed since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, base_ms: u64) -> bool {
        let ms = d.as_secs_f64() * 1000.0;
        ms >= base_ms as f64 * (1.0 - JITTER) - 1e-6 && ms <= base_ms as f64 * (1.0 + JITTER) + 1e-6
    }

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 42);
        for want in [1000, 2000, 4000, 8000, 16000] {
            let d = b.next_delay();
            assert!(within(d, want), "{d:?} vs {want} ms");
        }
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(30), "{d:?}");
            assert!(d >= Duration::from_secs(27), "{d:?}");
        }
        b.reset();
        assert!(within(b.next_delay(), 1000));
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn jitter_varies_between_seeds() {
        let a = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 1).next_delay();
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 2).next_delay();
        assert_ne!(a, b);
    }

    #[test]
    fn degenerate_settings_do_not_panic() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, 0);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_millis(1));
        }
    }
}
