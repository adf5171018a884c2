//! RTP timestamp clock rates.
//!
//! Jitter and remote-reported jitter are expressed in RTP timestamp units, so turning them into
//! milliseconds needs the stream's clock rate. Static payload types carry it in their RFC 3551
//! assignment; dynamic ones (96-127) only get one from signalling, which the control plane
//! passes down through [`ClockMap::set`].

/// First payload type of the dynamic range (RFC 3551 section 3).
pub const DYNAMIC_PT_MIN: u8 = 96;
/// Last payload type of the dynamic range.
pub const DYNAMIC_PT_MAX: u8 = 127;
const DYNAMIC_SLOTS: usize = (DYNAMIC_PT_MAX - DYNAMIC_PT_MIN + 1) as usize;

/// The clock rate RFC 3551 (tables 4 and 5) assigns to a static payload type, or `None` for an
/// unassigned or dynamic one, whose clock the relay cannot guess.
pub const fn static_clock_rate(pt: u8) -> Option<u32> {
    match pt {
        // PCMU, GSM, G723, DVI4/8000, LPC, PCMA, G722 (its RTP clock is 8000 for historical
        // reasons, although it samples at 16 kHz), QCELP, CN, G728, G729.
        0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => Some(8_000),
        6 => Some(16_000),       // DVI4/16000
        10 | 11 => Some(44_100), // L16 stereo and mono
        14 => Some(90_000),      // MPA
        16 => Some(11_025),      // DVI4/11025
        17 => Some(22_050),      // DVI4/22050
        // CelB, JPEG, nv, H261, MPV, MP2T, H263.
        25 | 26 | 28 | 31 | 32 | 33 | 34 => Some(90_000),
        _ => None,
    }
}

/// Clock rates of one session's dynamic payload types.
///
/// An array rather than a map so a lookup on the packet path is one array index; 0 marks "not
/// negotiated". It is allocated by the first rate set: a session whose controller negotiated
/// none (static payload types only) carries 8 bytes instead of 128.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockMap {
    dynamic: Option<Box<[u32; DYNAMIC_SLOTS]>>,
}

impl ClockMap {
    /// Records the negotiated clock of a dynamic payload type; `hz == 0` forgets it.
    ///
    /// Returns `false` (and changes nothing) for a payload type outside 96-127: static types
    /// keep their RFC 3551 rate so a stray signalling value cannot skew their statistics.
    pub fn set(&mut self, pt: u8, hz: u32) -> bool {
        match Self::slot(pt) {
            Some(i) => {
                if hz != 0 || self.dynamic.is_some() {
                    self.dynamic
                        .get_or_insert_with(|| Box::new([0; DYNAMIC_SLOTS]))[i] = hz;
                }
                true
            }
            None => false,
        }
    }

    /// The clock rate to use for `pt`, if known.
    #[inline]
    pub fn clock_rate(&self, pt: u8) -> Option<u32> {
        match Self::slot(pt) {
            Some(i) => match self.dynamic.as_ref().map_or(0, |d| d[i]) {
                0 => None,
                hz => Some(hz),
            },
            None => static_clock_rate(pt),
        }
    }

    #[inline]
    fn slot(pt: u8) -> Option<usize> {
        (DYNAMIC_PT_MIN..=DYNAMIC_PT_MAX)
            .contains(&pt)
            .then(|| usize::from(pt - DYNAMIC_PT_MIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_table_matches_rfc3551() {
        for pt in [0, 3, 4, 5, 7, 8, 9, 12, 13, 15, 18] {
            assert_eq!(static_clock_rate(pt), Some(8_000), "pt {pt}");
        }
        assert_eq!(static_clock_rate(6), Some(16_000));
        assert_eq!(static_clock_rate(10), Some(44_100));
        assert_eq!(static_clock_rate(11), Some(44_100));
        assert_eq!(static_clock_rate(14), Some(90_000));
        assert_eq!(static_clock_rate(16), Some(11_025));
        assert_eq!(static_clock_rate(17), Some(22_050));
        for pt in [25, 26, 28, 31, 32, 33, 34] {
            assert_eq!(static_clock_rate(pt), Some(90_000), "pt {pt}");
        }
        for pt in [1, 2, 19, 20, 24, 27, 29, 30, 35, 72, 95, 96, 127] {
            assert_eq!(static_clock_rate(pt), None, "pt {pt}");
        }
    }

    #[test]
    fn dynamic_types_are_unknown_until_set() {
        let mut map = ClockMap::default();
        assert_eq!(map.clock_rate(96), None);
        assert_eq!(map.clock_rate(127), None);
        assert!(map.set(96, 48_000));
        assert!(map.set(127, 90_000));
        assert_eq!(map.clock_rate(96), Some(48_000));
        assert_eq!(map.clock_rate(127), Some(90_000));
        assert!(map.set(96, 0));
        assert_eq!(map.clock_rate(96), None);
    }

    #[test]
    fn static_types_cannot_be_overridden() {
        let mut map = ClockMap::default();
        assert!(!map.set(0, 16_000));
        assert!(!map.set(95, 16_000));
        assert!(!map.set(128, 16_000));
        assert_eq!(map.clock_rate(0), Some(8_000));
        assert_eq!(map.clock_rate(95), None);
        assert_eq!(map.clock_rate(34), Some(90_000));
    }
}
