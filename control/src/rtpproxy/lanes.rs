//! Which lane of the UDP listener runs a command.
//!
//! The listener executes commands of different calls in parallel (a controller with many
//! workers, or many calls set up at once, should not wait behind one slow session creation),
//! but the commands of one call in arrival order: two commands for one call racing each other
//! (a `D` overtaking its `U`, two workers' `U` and `L` crossing) would answer and leave state
//! that no sequential relay could. So each command goes to the lane its call-ID hashes to;
//! commands that name no call (`V`, `VF`, `I`, `G`, `X`) take lane 0.

use std::hash::{DefaultHasher, Hash, Hasher};

/// The lane (`0..lanes`) for `command` (the text after the cookie).
pub fn lane_of(command: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut words = command.split_ascii_whitespace();
    let verb = words
        .next()
        .and_then(|w| w.bytes().next())
        .map(|b| b.to_ascii_uppercase());
    // Every command that names a call has the call-ID as its first argument. Kamailio may
    // append `;<via-branch>`: the same call, so the same lane.
    let call = match verb {
        Some(b'U' | b'L' | b'D' | b'Q' | b'R' | b'C' | b'P' | b'S' | b'N') => {
            words.next().map(|c| c.split(';').next().unwrap_or(c))
        }
        _ => None,
    };
    let Some(call) = call else { return 0 };
    // DefaultHasher::new() has fixed keys: one call-ID always gets the same lane.
    let mut h = DefaultHasher::new();
    call.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_call_keeps_one_lane() {
        let lane = lane_of("U call-1@host 10.0.0.1 4000 ftag;1", 16);
        for other in [
            "L call-1@host 10.0.0.2 4002 ftag;1 ttag;1",
            "Uw6 call-1@host ::1 4000 ftag;1",
            "d call-1@host ftag;1",
            "Qv call-1@host ftag;1 ttag;1 rtpa_nsent",
            "U call-1@host;z9hG4bK776 10.0.0.1 4000 ftag;1",
            "R call-1@host ftag",
            "C call-1@host udp:10.0.0.9:5000 ftag",
            "P call-1@host prompt 0 ftag",
            "S call-1@host ftag",
            "N call-1@host ftag",
        ] {
            assert_eq!(lane_of(other, 16), lane, "{other}");
        }
        for global in ["V", "VF 20050322", "I", "Ib", "G nsess_created", "X", ""] {
            assert_eq!(lane_of(global, 16), 0, "{global:?}");
        }
    }

    #[test]
    fn calls_spread_over_the_lanes() {
        let mut used = [0u32; 16];
        for i in 0..1600 {
            used[lane_of(&format!("U c{i} 10.0.0.1 4000 t;1"), 16)] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }

    proptest! {
        #[test]
        fn any_text_gets_a_lane_in_range(text in "\\PC{0,80}", lanes in 0usize..64) {
            prop_assert!(lane_of(&text, lanes) < lanes.max(1));
        }
    }
}
