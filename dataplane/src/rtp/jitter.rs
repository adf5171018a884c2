//! Interarrival jitter, RFC 3550 section 6.4.1 and appendix A.8.
//!
//! The relay has no RTP clock of its own, so arrival times (relay microseconds) are converted
//! into the stream's timestamp units with its clock rate; without a known rate there is no
//! meaningful jitter and none is reported. The estimate is kept in `f64` rather than the
//! appendix's scaled integer: it is the same filter, `J += (|D| - J) / 16`, without the
//! rounding, and the conversion to milliseconds needs floating point anyway.

/// Jitter estimate of one source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Jitter {
    prev_arrival_us: u64,
    prev_ts: u32,
    /// Clock rate of the previous packet; 0 means there is no previous packet to difference
    /// against (start, restart, or a packet of unknown clock rate in between).
    prev_clock: u32,
    /// The estimate `J`, in units of `clock`.
    units: f64,
    /// The highest `J` so far and the running mean of `J` over all samples, in units of
    /// `clock` (rtpproxy's `rtpa_jmax` / `rtpa_javg`); `f32` keeps a source's state small.
    max_units: f32,
    mean_units: f32,
    clock: u32,
    samples: u64,
}

impl Jitter {
    /// Folds in one packet that arrived at `arrival_us` carrying RTP timestamp `ts`.
    #[inline]
    pub fn update(&mut self, arrival_us: u64, ts: u32, clock: Option<u32>) {
        let hz = match clock {
            Some(hz) if hz > 0 => hz,
            _ => {
                self.prev_clock = 0;
                return;
            }
        };
        if self.prev_clock == hz {
            // D(i,j) = (Rj - Ri) - (Sj - Si), both in timestamp units. The arrival difference is
            // signed so a caller's clock stepping back cannot wrap; the RTP timestamp
            // difference is taken modulo 2^32, as timestamps wrap.
            let arrival = arrival_us.wrapping_sub(self.prev_arrival_us) as i64;
            let sent = ts.wrapping_sub(self.prev_ts) as i32;
            let d = arrival as f64 * f64::from(hz) / 1e6 - f64::from(sent);
            if self.clock != hz && self.clock != 0 {
                // The source switched to a payload type of another clock rate: keep the
                // estimate's duration, in the new units.
                let scale = f64::from(hz) / f64::from(self.clock);
                self.units *= scale;
                self.max_units = (f64::from(self.max_units) * scale) as f32;
                self.mean_units = (f64::from(self.mean_units) * scale) as f32;
            }
            self.clock = hz;
            self.units += (d.abs() - self.units) / 16.0;
            self.samples += 1;
            let j = self.units as f32;
            self.max_units = self.max_units.max(j);
            self.mean_units += (j - self.mean_units) / self.samples as f32;
        }
        self.prev_arrival_us = arrival_us;
        self.prev_ts = ts;
        self.prev_clock = hz;
    }

    /// Forgets the previous packet (not the estimate), so the next one starts a new
    /// difference: after a sequence restart the timestamps are unrelated to the old ones.
    pub fn reset_baseline(&mut self) {
        self.prev_clock = 0;
    }

    /// The estimate in milliseconds, once at least one difference was taken.
    pub fn ms(&self) -> Option<f64> {
        (self.samples > 0 && self.clock > 0).then(|| self.units * 1e3 / f64::from(self.clock))
    }

    /// The highest estimate so far, in milliseconds.
    pub fn max_ms(&self) -> Option<f64> {
        self.units_ms(self.max_units)
    }

    /// The mean of the estimate over all samples, in milliseconds.
    pub fn mean_ms(&self) -> Option<f64> {
        self.units_ms(self.mean_units)
    }

    fn units_ms(&self, units: f32) -> Option<f64> {
        (self.samples > 0 && self.clock > 0).then(|| f64::from(units) * 1e3 / f64::from(self.clock))
    }

    /// The estimate in RTP timestamp units (as a receiver report would carry it).
    pub fn units(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 kHz, 20 ms packets; arrivals chosen on 125 us ticks so each is a whole number of
    /// timestamp units. Transit: 0, 0, +8, -8, 0 -> D: 0, 8, 16, 8.
    /// J1 = 0; J2 = 8/16 = 0.5; J3 = 0.5 + 15.5/16 = 1.46875;
    /// J4 = 1.46875 + (8 - 1.46875)/16 = 1.876953125 units = 0.234619140625 ms.
    #[test]
    fn matches_hand_computed_rfc3550_value() {
        let mut j = Jitter::default();
        let arrivals = [0u64, 20_000, 41_000, 59_000, 80_000];
        for (i, a) in arrivals.iter().enumerate() {
            j.update(1_000_000 + a, 1_000 + 160 * i as u32, Some(8_000));
        }
        assert_eq!(j.units(), Some(1.876953125));
        assert_eq!(j.ms(), Some(0.234619140625));
        // J rose at every sample, so the maximum is the last value; the mean is
        // (0 + 0.5 + 1.46875 + 1.876953125) / 4 units.
        assert_eq!(j.max_ms(), Some(0.234619140625));
        let mean = j.mean_ms().expect("samples");
        assert!((mean - 0.96142578125 / 8.0).abs() < 1e-6, "{mean}");
    }

    #[test]
    fn maximum_outlives_a_calming_stream() {
        let mut j = Jitter::default();
        // One 10 ms late packet among perfectly paced 8 kHz packets: |D| = 80 units for it and
        // for the next (back on time), so J peaks at 80/16 + (80 - 5)/16 = 9.6875 units
        // (1.2109375 ms), then decays.
        for i in 0..200u64 {
            let late = if i == 10 { 10_000 } else { 0 };
            j.update(i * 20_000 + late, (i * 160) as u32, Some(8_000));
        }
        let (now, max, mean) = (j.ms().unwrap(), j.max_ms().unwrap(), j.mean_ms().unwrap());
        assert!(now < 0.001, "{now}");
        assert!((max - 1.2109375).abs() < 1e-6, "{max}");
        assert!(mean > now && mean < max, "{mean}");
    }

    #[test]
    fn perfectly_paced_90khz_video_has_zero_jitter() {
        let mut j = Jitter::default();
        // 30 fps: 3000 units every 33_333.3 us; 100 frames, timestamp wrapping on the way.
        for i in 0..100u64 {
            let ts = (u32::MAX - 100_000).wrapping_add(3_000 * i as u32);
            j.update(i * 100_000 / 3, ts, Some(90_000));
        }
        let ms = j.ms().expect("known clock");
        assert!(ms < 0.001, "{ms}");
    }

    #[test]
    fn unknown_clock_means_no_jitter() {
        let mut j = Jitter::default();
        for i in 0..10u32 {
            j.update(u64::from(i) * 20_000, i * 960, None);
        }
        assert_eq!(j.ms(), None);
        assert_eq!(j.units(), None);
    }

    #[test]
    fn first_packet_gives_no_sample() {
        let mut j = Jitter::default();
        j.update(5, 7, Some(48_000));
        assert_eq!(j.ms(), None);
    }
}
