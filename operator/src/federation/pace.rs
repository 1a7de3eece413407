//! Pacing of work whose cost grows with what it covers (a peer's view of thousands of
//! Services, a Gateway listing every exported host): after a quiet spell it runs at once; in a
//! burst of changes it runs at most once per interval, the interval being a multiple of what
//! the last run cost, so that it takes a bounded share of the time however fast things change.

use std::time::{Duration, Instant};

/// When the next run of one kind of work may start.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Runs take at most 1 / `share` of the time.
    share: u32,
    /// The longest wait, whatever a run costs.
    max_wait: Duration,
    last: Option<(Instant, Duration)>,
}

impl Pace {
    /// Runs taking at most 1 / `share` of the time, never waiting longer than `max_wait`.
    pub const fn new(share: u32, max_wait: Duration) -> Self {
        Self { share, max_wait, last: None }
    }

    /// A run that ended at `at` took `took`.
    pub fn record(&mut self, at: Instant, took: Duration) {
        self.last = Some((at, took));
    }

    /// How long to wait, at `now`, before the next run (`None`: run now).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let (at, took) = self.last?;
        let interval = (took * self.share).min(self.max_wait);
        interval.checked_sub(now.saturating_duration_since(at)).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_paced_to_a_share_of_their_cost_and_never_wait_long() {
        let mut pace = Pace::new(5, Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(pace.wait(t0), None, "the first run is at once");
        pace.record(t0, Duration::from_millis(10));
        assert_eq!(pace.wait(t0), Some(Duration::from_millis(50)));
        assert_eq!(pace.wait(t0 + Duration::from_millis(20)), Some(Duration::from_millis(30)));
        assert_eq!(pace.wait(t0 + Duration::from_millis(50)), None, "after a quiet spell: at once");
        pace.record(t0, Duration::from_secs(2));
        assert_eq!(pace.wait(t0), Some(Duration::from_millis(500)), "an expensive run waits at most max_wait");
        assert_eq!(pace.wait(t0 + Duration::from_secs(1)), None);
    }
}
