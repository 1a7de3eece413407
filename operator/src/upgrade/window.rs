//! Maintenance windows, pure: whether an automatic upgrade may start now, and if not, when
//! the next window opens. Windows are weekly and in UTC, so that every replica of the operator
//! and every reader of the status agree on them without a time zone database.

use k8s_openapi::jiff::{SignedDuration, Span, Timestamp, civil, tz::TimeZone};
use skein_api::mesh::{MaintenanceWindow, Weekday};

/// Longest window: a week (a longer one is always open).
const MAX_DURATION: SignedDuration = SignedDuration::from_hours(168);

/// One window, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    days: Vec<civil::Weekday>,
    start: civil::Time,
    duration: SignedDuration,
}

impl Window {
    /// Checks `w` (the `index`th window of the spec); the error names the field and the
    /// reason.
    pub fn parse(w: &MaintenanceWindow, index: usize) -> Result<Window, String> {
        let at = |field: &str| format!("spec.updateStrategy.maintenanceWindows[{index}].{field}");
        let start = w
            .start
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
            .filter(|_| w.start.len() == 5)
            .and_then(|(h, m)| civil::Time::new(h, m, 0, 0).ok())
            .ok_or_else(|| format!("{}: {:?} is not a time of day HH:MM", at("start"), w.start))?;
        let duration = parse_duration(&w.duration)
            .filter(|d| *d > SignedDuration::ZERO && *d <= MAX_DURATION)
            .ok_or_else(|| {
                format!("{}: {:?} is not a duration from 1m to 168h (`4h`, `90m`, `1h30m`)", at("duration"), w.duration)
            })?;
        let days = w.days.iter().map(|d| weekday(*d)).collect();
        Ok(Window { days, start, duration })
    }

    /// Where `now` falls: open (`None`), or the next opening after it.
    fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        let today = now.to_zoned(TimeZone::UTC).date();
        let mut next: Option<Timestamp> = None;
        // A window that opened up to a week ago may still be open; the next opening is within
        // a week.
        for offset in -8..=8i32 {
            let Ok(day) = today.checked_add(Span::new().days(offset)) else { continue };
            if !self.days.is_empty() && !self.days.contains(&day.weekday()) {
                continue;
            }
            let Ok(opens) = day.to_datetime(self.start).to_zoned(TimeZone::UTC).map(|z| z.timestamp()) else {
                continue;
            };
            let Ok(closes) = opens.checked_add(self.duration) else { continue };
            if opens <= now && now < closes {
                return None;
            }
            if opens > now && next.is_none_or(|n| opens < n) {
                next = Some(opens);
            }
        }
        next
    }
}

/// `Nh`, `Nm` or `NhMm`.
fn parse_duration(s: &str) -> Option<SignedDuration> {
    let (hours, rest) = match s.split_once('h') {
        Some((h, rest)) => (h.parse::<i64>().ok()?, rest),
        None => (0, s),
    };
    let minutes = match rest {
        "" => 0,
        m => m.strip_suffix('m')?.parse::<i64>().ok()?,
    };
    (!s.is_empty()).then(|| SignedDuration::from_mins(hours * 60 + minutes))
}

fn weekday(d: Weekday) -> civil::Weekday {
    match d {
        Weekday::Monday => civil::Weekday::Monday,
        Weekday::Tuesday => civil::Weekday::Tuesday,
        Weekday::Wednesday => civil::Weekday::Wednesday,
        Weekday::Thursday => civil::Weekday::Thursday,
        Weekday::Friday => civil::Weekday::Friday,
        Weekday::Saturday => civil::Weekday::Saturday,
        Weekday::Sunday => civil::Weekday::Sunday,
    }
}

/// Whether an automatic upgrade may start at `now` under `windows`: `None` when one is open
/// (or there are none), else when the soonest opens.
pub fn closed_until(windows: &[Window], now: Timestamp) -> Option<Timestamp> {
    let mut soonest: Option<Timestamp> = None;
    for w in windows {
        let next = w.next_opening(now)?;
        soonest = Some(soonest.map_or(next, |s| s.min(next)));
    }
    soonest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[Weekday], start: &str, duration: &str) -> Window {
        let w = MaintenanceWindow { days: days.to_vec(), start: start.into(), duration: duration.into() };
        Window::parse(&w, 0).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_window_is_open_from_its_start_for_its_duration_on_its_days() {
        // 2026-12-05 is a Saturday.
        let w = [window(&[Weekday::Saturday, Weekday::Sunday], "02:00", "4h")];
        assert_eq!(closed_until(&w, at("2026-12-05T01:59:59Z")), Some(at("2026-12-05T02:00:00Z")));
        assert_eq!(closed_until(&w, at("2026-12-05T02:00:00Z")), None);
        assert_eq!(closed_until(&w, at("2026-12-06T05:59:59Z")), None);
        assert_eq!(closed_until(&w, at("2026-12-06T06:00:00Z")), Some(at("2026-12-12T02:00:00Z")));
        assert_eq!(closed_until(&w, at("2026-12-03T15:00:00Z")), Some(at("2026-12-05T02:00:00Z")));
    }

    #[test]
    fn windows_cross_midnight_and_the_soonest_of_several_counts() {
        // Friday 22:00 for 6h: open early on Saturday too.
        let w = [window(&[Weekday::Friday], "22:00", "6h"), window(&[], "12:00", "30m")];
        assert_eq!(closed_until(&w, at("2026-12-05T03:59:00Z")), None);
        assert_eq!(closed_until(&w, at("2026-12-05T04:00:00Z")), Some(at("2026-12-05T12:00:00Z")));
        assert_eq!(closed_until(&w, at("2026-12-05T12:29:00Z")), None);
        assert_eq!(closed_until(&[], at("2026-12-05T04:00:00Z")), None, "no windows: any time");
        let week = [window(&[Weekday::Monday], "00:00", "168h")];
        assert_eq!(closed_until(&week, at("2026-12-06T23:59:00Z")), None, "a week-long window never closes");
    }

    #[test]
    fn bad_windows_name_the_field() {
        let bad = |start: &str, duration: &str| {
            let w = MaintenanceWindow { days: vec![], start: start.into(), duration: duration.into() };
            Window::parse(&w, 2).unwrap_err()
        };
        assert!(bad("24:00", "1h").starts_with("spec.updateStrategy.maintenanceWindows[2].start: \"24:00\""));
        assert!(bad("2:00", "1h").contains(".start"));
        assert!(bad("02:00", "0m").starts_with("spec.updateStrategy.maintenanceWindows[2].duration: \"0m\""));
        assert!(bad("02:00", "169h").contains(".duration"));
        assert!(bad("02:00", "1h30").contains(".duration"));
        assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("90m"), Some(SignedDuration::from_mins(90)));
    }
}
