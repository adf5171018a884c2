//! Per-session supervision on the shard's timer (sans-IO): when to publish statistics, when the
//! session has been idle too long, and when quality alerts are raised or cleared.
//!
//! Alerts are edge-triggered: one event when a threshold is crossed and one when the condition
//! clears, never one per tick, so a flapping call cannot flood controllers.

use std::time::Duration;

use super::SessionState;

/// How long a session in error waits without new errors before it counts as forwarding again
/// (ICMP errors are rate-limited to about one a second, so a shorter wait would flap).
const RECOVERY_QUIET_US: u64 = 3_000_000;

/// Which way media flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> destination.
    Forward,
    /// Destination -> client.
    Reverse,
    /// Both (used for "no media").
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    HighLoss,
    HighJitter,
    NoMedia,
}

/// Resolved supervision settings of one session (server defaults already applied).
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    pub stats_interval: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Loss alert threshold in percent, evaluated over `loss_window`.
    pub loss_pct: Option<f64>,
    pub loss_window: Duration,
    pub jitter_ms: Option<f64>,
    pub no_media: Option<Duration>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            stats_interval: None,
            idle_timeout: None,
            loss_pct: None,
            loss_window: Duration::from_secs(5),
            jitter_ms: None,
            no_media: None,
        }
    }
}

/// What the session looks like at a tick.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    pub now_us: u64,
    /// Last packet in either direction, or the creation time if none yet.
    pub last_activity_us: u64,
    /// Cumulative RTP packets expected and received (RFC 3550), forward then reverse.
    pub expected: [u64; 2],
    pub received: [u64; 2],
    /// Highest current jitter across the direction's streams, if known.
    pub jitter_ms: [Option<f64>; 2],
    /// Sends the kernel refused so far.
    pub send_errors: u64,
    /// Errors saying the destination is unreachable (ICMP, failed sends to it) so far.
    pub destination_errors: u64,
    /// The most recent error: errno and when.
    pub last_error: Option<(i32, u64)>,
    /// Last packet from the destination.
    pub destination_heard_us: u64,
}

/// Something the shard must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    /// Publish a StatsUpdate.
    Stats,
    /// Close the session: idle for longer than its timeout.
    IdleTimeout,
    /// `new` sends failed since the last Error event (at most one per second).
    Error { new: u64 },
    /// The session's state changes.
    State {
        from: SessionState,
        to: SessionState,
        reason: String,
    },
    Alert {
        kind: AlertKind,
        direction: Direction,
        active: bool,
        value: f64,
        threshold: f64,
    },
}

/// Supervision state of one session.
#[derive(Debug, Clone)]
pub struct Monitor {
    cfg: MonitorConfig,
    next_stats_us: u64,
    window_start_us: u64,
    window_base: [(u64, u64); 2],
    loss_active: [bool; 2],
    jitter_active: [bool; 2],
    no_media_active: bool,
    reported_errors: u64,
    last_error_event_us: u64,
    state: SessionState,
    destination_errors_seen: u64,
    last_destination_error_us: u64,
}

const DIRS: [Direction; 2] = [Direction::Forward, Direction::Reverse];

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Monitor {
    pub fn new(cfg: MonitorConfig, now_us: u64) -> Self {
        let next_stats_us = cfg
            .stats_interval
            .map_or(u64::MAX, |i| now_us.saturating_add(us(i)));
        Self {
            cfg,
            next_stats_us,
            window_start_us: now_us,
            window_base: [(0, 0); 2],
            loss_active: [false; 2],
            jitter_active: [false; 2],
            no_media_active: false,
            reported_errors: 0,
            last_error_event_us: 0,
            state: SessionState::Forwarding,
            destination_errors_seen: 0,
            last_destination_error_us: 0,
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }

    /// Forwarding, or Error while the destination is unreachable.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Error when the destination is reported unreachable; back to forwarding when it answers,
    /// or when no error has come for [`RECOVERY_QUIET_US`].
    fn track_reachability(&mut self, o: &Observed, out: &mut Vec<Due>) {
        if o.destination_errors > self.destination_errors_seen {
            self.destination_errors_seen = o.destination_errors;
            self.last_destination_error_us = o.last_error.map_or(o.now_us, |e| e.1);
            if self.state == SessionState::Forwarding {
                let errno = o.last_error.map_or(libc::EHOSTUNREACH, |e| e.0);
                let reason = format!(
                    "destination unreachable: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
                out.push(self.move_to(SessionState::Error, reason));
            }
        } else if self.state == SessionState::Error {
            if o.destination_heard_us > self.last_destination_error_us {
                out.push(self.move_to(SessionState::Forwarding, "destination answered".into()));
            } else if o.now_us >= self.last_destination_error_us + RECOVERY_QUIET_US {
                let reason = "no destination error for 3 s".into();
                out.push(self.move_to(SessionState::Forwarding, reason));
            }
        }
    }

    fn move_to(&mut self, to: SessionState, reason: String) -> Due {
        let from = std::mem::replace(&mut self.state, to);
        Due::State { from, to, reason }
    }

    /// Evaluates the session at `o.now_us` and appends what is due to `out`.
    pub fn tick(&mut self, o: &Observed, out: &mut Vec<Due>) {
        let idle_us = o.now_us.saturating_sub(o.last_activity_us);
        if let Some(timeout) = self.cfg.idle_timeout
            && idle_us >= us(timeout)
        {
            out.push(Due::IdleTimeout);
            return;
        }
        self.track_reachability(o, out);
        if o.send_errors > self.reported_errors
            && o.now_us >= self.last_error_event_us.saturating_add(1_000_000)
        {
            out.push(Due::Error {
                new: o.send_errors - self.reported_errors,
            });
            self.reported_errors = o.send_errors;
            self.last_error_event_us = o.now_us;
        }
        if o.now_us >= self.next_stats_us {
            out.push(Due::Stats);
            let interval = self.cfg.stats_interval.map_or(u64::MAX, us);
            self.next_stats_us = self
                .next_stats_us
                .saturating_add(interval)
                .max(o.now_us + 1);
        }
        if let Some(limit) = self.cfg.no_media {
            let idle = idle_us >= us(limit);
            if idle != self.no_media_active {
                self.no_media_active = idle;
                out.push(Due::Alert {
                    kind: AlertKind::NoMedia,
                    direction: Direction::Both,
                    active: idle,
                    value: idle_us as f64 / 1000.0,
                    threshold: us(limit) as f64 / 1000.0,
                });
            }
        }
        if let Some(threshold) = self.cfg.jitter_ms {
            for (i, dir) in DIRS.into_iter().enumerate() {
                let Some(jitter) = o.jitter_ms[i] else {
                    continue;
                };
                let high = jitter > threshold;
                if high != self.jitter_active[i] {
                    self.jitter_active[i] = high;
                    out.push(Due::Alert {
                        kind: AlertKind::HighJitter,
                        direction: dir,
                        active: high,
                        value: jitter,
                        threshold,
                    });
                }
            }
        }
        if o.now_us
            >= self
                .window_start_us
                .saturating_add(us(self.cfg.loss_window))
        {
            self.close_loss_window(o, out);
        }
    }

    fn close_loss_window(&mut self, o: &Observed, out: &mut Vec<Due>) {
        for (i, dir) in DIRS.into_iter().enumerate() {
            let (base_expected, base_received) = self.window_base[i];
            let expected = o.expected[i].saturating_sub(base_expected);
            let received = o.received[i].saturating_sub(base_received);
            self.window_base[i] = (o.expected[i], o.received[i]);
            let Some(threshold) = self.cfg.loss_pct else {
                continue;
            };
            if expected == 0 {
                continue; // no media in this window: no verdict on loss
            }
            let loss = expected.saturating_sub(received) as f64 * 100.0 / expected as f64;
            let high = loss > threshold;
            if high != self.loss_active[i] {
                self.loss_active[i] = high;
                out.push(Due::Alert {
                    kind: AlertKind::HighLoss,
                    direction: dir,
                    active: high,
                    value: loss,
                    threshold,
                });
            }
        }
        self.window_start_us = o.now_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn cfg() -> MonitorConfig {
        MonitorConfig {
            stats_interval: Some(Duration::from_secs(2)),
            idle_timeout: Some(Duration::from_secs(60)),
            loss_pct: Some(3.0),
            loss_window: Duration::from_secs(1),
            jitter_ms: Some(30.0),
            no_media: Some(Duration::from_secs(5)),
        }
    }

    fn at(now: u64, last: u64) -> Observed {
        Observed {
            now_us: now,
            last_activity_us: last,
            ..Observed::default()
        }
    }

    fn tick(m: &mut Monitor, o: Observed) -> Vec<Due> {
        let mut out = Vec::new();
        m.tick(&o, &mut out);
        out
    }

    #[test]
    fn stats_are_due_every_interval() {
        let mut m = Monitor::new(cfg(), 0);
        assert!(!tick(&mut m, at(S, S)).contains(&Due::Stats));
        assert!(tick(&mut m, at(2 * S, 2 * S)).contains(&Due::Stats));
        assert!(!tick(&mut m, at(3 * S, 3 * S)).contains(&Due::Stats));
        assert!(tick(&mut m, at(4 * S + 1, 4 * S)).contains(&Due::Stats));
        let mut off = Monitor::new(MonitorConfig::default(), 0);
        assert!(tick(&mut off, at(1000 * S, 1000 * S)).is_empty());
    }

    #[test]
    fn send_errors_are_reported_at_most_once_a_second() {
        let mut m = Monitor::new(MonitorConfig::default(), 0);
        let mut o = at(2 * S, 2 * S);
        o.send_errors = 3;
        assert_eq!(tick(&mut m, o), vec![Due::Error { new: 3 }]);
        o.now_us += S / 2;
        o.send_errors = 10;
        assert!(tick(&mut m, o).is_empty(), "rate-limited");
        o.now_us += S / 2;
        assert_eq!(tick(&mut m, o), vec![Due::Error { new: 7 }]);
        o.now_us += 5 * S;
        assert!(tick(&mut m, o).is_empty(), "nothing new");
    }

    #[test]
    fn unreachable_destination_is_an_error_until_it_answers_or_goes_quiet() {
        let mut m = Monitor::new(MonitorConfig::default(), 0);
        let mut o = at(S, S);
        o.destination_errors = 1;
        o.last_error = Some((libc::ECONNREFUSED, S));
        let d = tick(&mut m, o);
        assert!(
            matches!(&d[..], [Due::State { from: SessionState::Forwarding, to: SessionState::Error, reason }] if reason.contains("Connection refused")),
            "{d:?}"
        );
        assert_eq!(m.state(), SessionState::Error);
        o.now_us = 2 * S;
        assert!(tick(&mut m, o).is_empty(), "still in error, no new event");
        // The destination answers.
        o.destination_heard_us = 2 * S + 1;
        let d = tick(&mut m, o);
        assert!(
            matches!(
                &d[..],
                [Due::State {
                    to: SessionState::Forwarding,
                    ..
                }]
            ),
            "{d:?}"
        );
        // Errors again, then 3 s of quiet.
        o.destination_errors = 2;
        o.last_error = Some((libc::EHOSTUNREACH, 3 * S));
        o.now_us = 3 * S;
        assert_eq!(tick(&mut m, o).len(), 1);
        o.now_us = 6 * S - 1;
        assert!(tick(&mut m, o).is_empty());
        o.now_us = 6 * S;
        let d = tick(&mut m, o);
        assert!(
            matches!(&d[..], [Due::State { to: SessionState::Forwarding, reason, .. }] if reason.contains("3 s")),
            "{d:?}"
        );
    }

    #[test]
    fn idle_timeout_wins_over_everything() {
        let mut m = Monitor::new(cfg(), 0);
        assert_eq!(tick(&mut m, at(61 * S, S)), vec![Due::IdleTimeout]);
    }

    #[test]
    fn loss_alert_fires_once_and_clears() {
        let mut m = Monitor::new(cfg(), 0);
        let mut o = at(S, S);
        // 5% loss in the first window.
        o.expected = [100, 0];
        o.received = [95, 0];
        let alerts: Vec<_> = tick(&mut m, o)
            .into_iter()
            .filter(|d| matches!(d, Due::Alert { .. }))
            .collect();
        assert_eq!(alerts.len(), 1);
        assert!(
            matches!(alerts[0], Due::Alert { kind: AlertKind::HighLoss, direction: Direction::Forward, active: true, value, .. } if (value - 5.0).abs() < 1e-9)
        );
        // Still lossy: no repeat.
        o.now_us = 2 * S;
        o.expected = [200, 0];
        o.received = [190, 0];
        assert!(
            tick(&mut m, o)
                .iter()
                .all(|d| !matches!(d, Due::Alert { .. }))
        );
        // Clean window: cleared once.
        o.now_us = 3 * S;
        o.expected = [300, 0];
        o.received = [290, 0];
        let cleared = tick(&mut m, o);
        assert!(cleared.iter().any(|d| matches!(
            d,
            Due::Alert {
                kind: AlertKind::HighLoss,
                active: false,
                ..
            }
        )));
    }

    #[test]
    fn jitter_and_no_media_alerts_are_edge_triggered() {
        let mut m = Monitor::new(cfg(), 0);
        let mut o = at(S / 2, S / 2);
        o.jitter_ms = [Some(10.0), Some(45.0)];
        let d = tick(&mut m, o);
        assert!(d.iter().any(|d| matches!(
            d,
            Due::Alert {
                kind: AlertKind::HighJitter,
                direction: Direction::Reverse,
                active: true,
                ..
            }
        )));
        assert!(tick(&mut m, o).is_empty(), "no repeat while still high");
        o.jitter_ms = [None, Some(20.0)];
        assert!(tick(&mut m, o).iter().any(|d| matches!(
            d,
            Due::Alert {
                kind: AlertKind::HighJitter,
                active: false,
                ..
            }
        )));

        let silent = at(S / 2 + 6 * S, S / 2);
        let d = tick(&mut m, silent);
        assert!(d.iter().any(|d| matches!(
            d,
            Due::Alert {
                kind: AlertKind::NoMedia,
                active: true,
                ..
            }
        )));
        let back = at(S / 2 + 7 * S, S / 2 + 7 * S);
        assert!(tick(&mut m, back).iter().any(|d| matches!(
            d,
            Due::Alert {
                kind: AlertKind::NoMedia,
                active: false,
                ..
            }
        )));
    }
}
