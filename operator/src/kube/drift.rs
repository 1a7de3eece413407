//! Drift repair without fights. The operator puts back what another writer changed in its
//! objects (a deleted Deployment, a hand-edited ConfigMap), but another controller that keeps
//! rewriting the same field (a CA injector rewriting a webhook's `caBundle`, an autoscaler or
//! `kubectl scale` changing replicas) must not get a 1:1 hot loop. The first repairs in a
//! window are immediate; after that each repair of the same object waits twice as long as the
//! one before (up to five minutes) until the other writer has been quiet for a while, and the
//! caller is told to announce it (a Warning Event naming the other writer).
//!
//! A difference is a repair only when what the operator wants has not changed since it last
//! applied the object: a spec change is applied at once, whatever the history.

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Repairs of one object allowed in [`WINDOW`] before back-off starts.
const FREE_REPAIRS: usize = 3;
/// The window [`FREE_REPAIRS`] counts in.
const WINDOW: Duration = Duration::from_secs(60);
/// First back-off; doubles per further repair.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// Longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What to do about an object whose live state differs from the desired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply now.
    Apply,
    /// Apply now; repairs of this object are being throttled from here on, `next` is the
    /// earliest next repair (announce it).
    ApplyAndBackOff {
        /// Delay before another repair of this object is allowed.
        next: Duration,
    },
    /// Not now: another writer keeps changing it; look again in `retry_in`.
    Hold {
        /// Time left until the next repair is allowed.
        retry_in: Duration,
    },
}

#[derive(Default)]
struct Entry {
    /// Hash of the desired body last applied.
    applied: u64,
    /// Times of recent repairs (desired unchanged, live changed by someone else).
    repairs: VecDeque<Instant>,
    /// No repair before this.
    hold_until: Option<Instant>,
    /// The last repair.
    last_repair: Option<Instant>,
    /// Current back-off step.
    backoff: Duration,
}

/// Per-object repair history, shared by every reconcile of the process.
#[derive(Default)]
pub struct DriftGuard {
    entries: Mutex<HashMap<String, Entry>>,
}

/// A stable hash of a desired body.
pub fn fingerprint(body: &serde_json::Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.to_string().hash(&mut h);
    h.finish()
}

impl DriftGuard {
    /// `key` (namespace and `Kind/name`) differs from its desired body (fingerprint `desired`)
    /// at `now`: apply, apply and back off, or hold.
    pub fn judge(&self, key: &str, desired: u64, now: Instant) -> Verdict {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = entries.entry(key.to_string()).or_default();
        if e.applied != desired {
            // First apply, or the operator wants something new: never throttled.
            *e = Entry { applied: desired, ..Entry::default() };
            return Verdict::Apply;
        }
        if let Some(until) = e.hold_until
            && now < until
        {
            return Verdict::Hold { retry_in: until - now };
        }
        // A quiet spell (no repair for the window, or twice the back-off) forgives the past.
        let quiet = e.last_repair.is_none_or(|t| now.duration_since(t) > WINDOW.max(e.backoff * 2));
        if quiet {
            e.repairs.clear();
            e.backoff = Duration::ZERO;
        }
        e.last_repair = Some(now);
        while e.repairs.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
            e.repairs.pop_front();
        }
        e.repairs.push_back(now);
        if e.backoff.is_zero() && e.repairs.len() <= FREE_REPAIRS {
            e.hold_until = None;
            return Verdict::Apply;
        }
        e.backoff = if e.backoff.is_zero() { FIRST_BACKOFF } else { (e.backoff * 2).min(MAX_BACKOFF) };
        e.hold_until = Some(now + e.backoff);
        Verdict::ApplyAndBackOff { next: e.backoff }
    }

    /// Records that `key` was applied with `desired` (or found equal to it).
    pub fn applied(&self, key: &str, desired: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = entries.entry(key.to_string()).or_default();
        if e.applied != desired {
            *e = Entry { applied: desired, ..Entry::default() };
        }
    }
}

/// The field manager that wrote `live` most recently other than `ours` (from
/// `metadata.managedFields`), to name the other writer.
pub fn other_writer(live: &serde_json::Value, ours: &str) -> Option<String> {
    let fields = live["metadata"]["managedFields"].as_array()?;
    fields
        .iter()
        .filter(|f| f["manager"].as_str().is_some_and(|m| m != ours))
        .max_by(|a, b| a["time"].as_str().unwrap_or("").cmp(b["time"].as_str().unwrap_or("")))
        .and_then(|f| f["manager"].as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_repairs_back_off_and_a_spec_change_resets() {
        let g = DriftGuard::default();
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        // First apply, then three free repairs.
        assert_eq!(g.judge("d", 1, s(0)), Verdict::Apply);
        for i in 1..=FREE_REPAIRS as u64 {
            assert_eq!(g.judge("d", 1, s(i)), Verdict::Apply, "repair {i}");
        }
        // The fourth within a minute: applied, and the next one waits 10 s, then 20 s.
        assert_eq!(g.judge("d", 1, s(4)), Verdict::ApplyAndBackOff { next: FIRST_BACKOFF });
        assert_eq!(g.judge("d", 1, s(5)), Verdict::Hold { retry_in: Duration::from_secs(9) });
        assert_eq!(g.judge("d", 1, s(14)), Verdict::ApplyAndBackOff { next: Duration::from_secs(20) });
        assert!(matches!(g.judge("d", 1, s(20)), Verdict::Hold { .. }));
        // Capped at five minutes.
        let mut t = 34;
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            if let Verdict::ApplyAndBackOff { next } = g.judge("d", 1, s(t)) {
                last = next;
                t += next.as_secs();
            }
        }
        assert_eq!(last, MAX_BACKOFF);
        // What the operator wants changed: applied at once, history forgotten.
        assert_eq!(g.judge("d", 2, s(t - 1)), Verdict::Apply);
        assert_eq!(g.judge("d", 2, s(t)), Verdict::Apply);
        // Other objects are independent.
        assert_eq!(g.judge("other", 1, s(t)), Verdict::Apply);
    }

    #[test]
    fn quiet_periods_forgive_old_repairs() {
        let g = DriftGuard::default();
        let t0 = Instant::now();
        g.applied("d", 7);
        for i in 0..10u64 {
            // One repair every two minutes never triggers back-off.
            assert_eq!(g.judge("d", 7, t0 + Duration::from_secs(120 * i)), Verdict::Apply);
        }
    }

    #[test]
    fn the_other_writer_is_the_latest_foreign_manager() {
        let live = serde_json::json!({"metadata": {"managedFields": [
            {"manager": "skein-operator", "time": "2026-12-03T10:00:05Z"},
            {"manager": "kubectl-edit", "time": "2026-12-03T09:00:00Z"},
            {"manager": "cainjector", "time": "2026-12-03T10:00:04Z"},
        ]}});
        assert_eq!(other_writer(&live, "skein-operator").as_deref(), Some("cainjector"));
        assert_eq!(other_writer(&serde_json::json!({}), "skein-operator"), None);
    }
}
