//! Ring-buffer losses made visible. A record the kernel could not write to
//! the full sample ring is a request (or part of one) that was never judged:
//! an attacker who can fill the ring may hide a request in the burst. The
//! kernel counts them (`samples_kernel.lost`); this keeps the recent figure
//! for `status` and says so in the log, once per interval with losses.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// At most one warning per this while losses go on.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// The window of `lost_last_minute`.
const WINDOW: Duration = Duration::from_secs(60);

/// Follows the kernel's running total of lost sample records.
#[derive(Default)]
pub struct LossWatch {
    /// Totals seen in the last minute (oldest first).
    history: VecDeque<(Instant, u64)>,
    /// The total at the last warning (or the first reading), and when.
    warned: Option<(Instant, u64)>,
    /// Whether a warning was given yet: the first loss warns at once.
    any_warned: bool,
}

impl LossWatch {
    /// Takes the total now; returns the records lost since the last warning
    /// and over how long, when a warning is due.
    pub fn observe(&mut self, total: u64, now: Instant) -> Option<(u64, Duration)> {
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.history.pop_front();
        }
        self.history.push_back((now, total));
        // Counts carried over from an earlier agent (the maps are pinned)
        // are not this agent's news.
        let (at, before) = *self.warned.get_or_insert((now, total));
        let lost = total.saturating_sub(before);
        if lost == 0 || (self.any_warned && now.duration_since(at) < WARN_EVERY) {
            return None;
        }
        self.warned = Some((now, total));
        self.any_warned = true;
        Some((lost, now.duration_since(at)))
    }

    /// Records lost in the last minute (of what this agent saw).
    #[must_use]
    pub fn last_minute(&self) -> u64 {
        match (self.history.front(), self.history.back()) {
            (Some((_, a)), Some((_, b))) => b.saturating_sub(*a),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_warn_at_once_then_once_per_interval_and_age_out() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = LossWatch::default();
        // An earlier agent's losses are not reported.
        assert_eq!(w.observe(500, s(0)), None);
        assert_eq!(w.last_minute(), 0);
        assert_eq!(w.observe(500, s(1)), None);
        // The first loss warns at once.
        assert_eq!(w.observe(530, s(2)), Some((30, Duration::from_secs(2))));
        // More within the interval: counted, warned about later.
        assert_eq!(w.observe(540, s(5)), None);
        assert_eq!(w.observe(545, s(12)), Some((15, Duration::from_secs(10))));
        assert_eq!(w.last_minute(), 45);
        // A quiet minute later the window is empty of losses.
        assert_eq!(w.observe(545, s(80)), None);
        assert_eq!(w.last_minute(), 0);
    }
}
