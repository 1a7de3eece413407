//! Durations as Istio writes them: `1.5s`, `500ms`, `2m`, `1h`.
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

/// Parses `<number><unit>` with unit `h`, `m`, `s`, `ms`, `us`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(|| format!("duration {s:?} has no unit"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("duration {s:?} is not a number"))?;
    let secs = match unit {
        "h" => n * 3600.0,
        "m" => n * 60.0,
        "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        _ => return Err(format!("duration {s:?} has unknown unit {unit:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("duration {s:?} must be non-negative"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("duration {s:?}: {e}"))
}

/// Formats as milliseconds, exact for every value `parse` yields from config.
pub fn format(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// serde: deserialize.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// serde: serialize.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// `Option<Duration>` fields written as Istio durations.
pub(crate) mod opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| super::parse(&s).map_err(D::Error::custom)).transpose()
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }
}
