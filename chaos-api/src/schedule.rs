//! Recurring experiments: when an experiment runs again. `@every 5m` (Go durations, as Chaos
//! Mesh's cron library reads them), a cron line of five fields (minute, hour, day of month,
//! month, day of week; `*`, lists, ranges, steps, month and day names), or one of
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`; optionally
//! prefixed with `CRON_TZ=Zone` or `TZ=Zone`. Cron lines are read in the daemon's local time
//! zone unless the prefix names one, as Chaos Mesh's controller reads them in its own.

use std::{fmt, time::Duration};

use jiff::{
    Timestamp,
    civil::Date,
    tz::{AmbiguousOffset, TimeZone},
};
use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// A schedule as submitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `@every 5m`, a five-field cron line, or a `@daily`-style descriptor.
    pub cron: String,
    /// How many of the experiment's last runs it keeps to show (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_limit: Option<u32>,
}

/// A validated schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// At the anchor (when the experiment was applied) plus each multiple of this.
    Every(std::time::Duration),
    Cron(Box<Cron>),
}

/// A cron line's fields as sets, and its time zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Cron {
    /// Bit n set: minute n (0-59), hour n (0-23), day of month n (1-31), month n (1-12), day of
    /// week n (0-6, Sunday 0).
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether the day of month or of week was `*` or `?`: then a day must match both fields;
    /// when neither was, either (cron's rule, as robfig/cron has it).
    any_day: bool,
    any_weekday: bool,
    zone: TimeZone,
    /// The line as given, spaces normalized: what `Display` gives back.
    text: String,
}

/// How far `next_after` looks for a date the line names before saying there is none.
const SEARCH_DAYS: i32 = 5 * 366;

/// The shortest `@every` (robfig/cron rounds shorter ones up to it; refused here instead).
const MIN_EVERY: Duration = Duration::from_secs(1);

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for the values from `min` on (`jan` is 1, `sun` is 0), case-insensitive.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day of month", min: 1, max: 31, names: &[] },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    },
    // 0-6 only: robfig/cron refuses 7 for Sunday.
    Field { name: "day of week", min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] },
];

impl Field {
    /// The set a field's text names, and whether it was `*` or `?` (a step clears that).
    fn parse(&self, text: &str) -> Result<(u64, bool), String> {
        let bad = |why: String| format!("{} '{text}': {why}", self.name);
        let mut bits = 0;
        let mut star = false;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    let step = step
                        .parse::<u32>()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| bad(format!("the step '{step}' of '{part}' is not a positive number")))?;
                    (range, Some(step))
                }
                None => (part, None),
            };
            let (lo, hi) = match range.split_once('-') {
                _ if range == "*" || range == "?" => {
                    star |= step.is_none_or(|s| s == 1);
                    (self.min, self.max)
                }
                Some((lo, hi)) => (self.value(lo).map_err(bad)?, self.value(hi).map_err(bad)?),
                // `N/step` is `N-max/step`.
                None if step.is_some() => (self.value(range).map_err(bad)?, self.max),
                None => {
                    let n = self.value(range).map_err(bad)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(bad(format!("'{range}' starts after it ends")));
            }
            bits |= (lo..=hi).step_by(step.unwrap_or(1) as usize).fold(0, |b, n| b | 1 << n);
        }
        Ok((bits, star))
    }

    fn value(&self, text: &str) -> Result<u32, String> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            return Ok(self.min + i as u32);
        }
        let n: u32 = text.parse().map_err(|_| {
            let names = match self.names {
                [] => String::new(),
                names => format!(" or a name {}-{}", names[0].to_uppercase(), names[names.len() - 1].to_uppercase()),
            };
            format!("'{text}' is not a number{names}")
        })?;
        if !(self.min..=self.max).contains(&n) {
            return Err(format!("{n} is outside {}-{}", self.min, self.max));
        }
        Ok(n)
    }
}

/// The `@` descriptors as the cron lines they stand for.
const DESCRIPTORS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut rest = text.trim();
        let mut zone = None;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(after) = rest.strip_prefix(prefix) {
                let (name, line) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
                let tz = TimeZone::get(name).map_err(|_| {
                    format!(
                        "{prefix}{name}: '{name}' is not a time zone this host knows (an IANA name, e.g. Europe/Paris)"
                    )
                })?;
                zone = Some((format!("{prefix}{name}"), tz));
                rest = line.trim();
                if rest.is_empty() {
                    return Err(format!("{prefix}{name} is not followed by a schedule"));
                }
                break;
            }
        }
        if let Some(every) = rest.strip_prefix("@every") {
            // A zone changes nothing for an interval: it is dropped.
            let d = crate::chaos_mesh::go_duration("@every", every.trim()).map_err(|e| e.to_string())?;
            if d < MIN_EVERY || d.subsec_nanos() != 0 {
                return Err(format!("@every: '{}' is not a whole number of seconds, 1s or more", every.trim()));
            }
            return Ok(Schedule::Every(d));
        }
        let line = match rest.strip_prefix('@') {
            Some(_) => DESCRIPTORS.iter().find(|(d, _)| *d == rest).map(|(_, line)| *line).ok_or_else(|| {
                format!(
                    "'{rest}' is not a descriptor (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or \
                     @every DURATION)"
                )
            })?,
            None => rest,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "'{line}' has {} fields: a cron line has 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            ));
        }
        let mut sets = [(0, false); 5];
        for ((set, field), text) in sets.iter_mut().zip(&FIELDS).zip(&fields) {
            *set = field.parse(text)?;
        }
        let words = if rest.starts_with('@') { rest.to_owned() } else { fields.join(" ") };
        let (text, zone) = match zone {
            Some((prefix, tz)) => (format!("{prefix} {words}"), tz),
            None => (words, TimeZone::system()),
        };
        Ok(Schedule::Cron(Box::new(Cron {
            minutes: sets[0].0,
            hours: sets[1].0,
            days: sets[2].0,
            months: sets[3].0,
            weekdays: sets[4].0,
            any_day: sets[2].1,
            any_weekday: sets[4].1,
            zone,
            text,
        })))
    }
}

impl fmt::Display for Schedule {
    /// The schedule's text as it reads back: `@every 1h30m`, `CRON_TZ=Europe/Paris 0 2 * * 1-5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => {
                let s = d.as_secs();
                f.write_str("@every ")?;
                for (n, unit) in [(s / 3600, "h"), (s / 60 % 60, "m"), (s % 60, "s")] {
                    if n > 0 {
                        write!(f, "{n}{unit}")?;
                    }
                }
                Ok(())
            }
            Schedule::Cron(c) => f.write_str(&c.text),
        }
    }
}

impl ScheduleSpec {
    /// The schedule, or `schedule.cron: why not`.
    pub fn validate(&self) -> Result<Schedule, SpecError> {
        self.cron.parse().map_err(|e| SpecError::new("schedule.cron", e))
    }
}

impl Schedule {
    /// The first run strictly after `after_ms` (Unix milliseconds); `anchor_ms` is when the
    /// experiment was applied (`@every` counts from it). `None`: it never runs again (a cron
    /// line no date satisfies, such as `0 0 30 2 *`).
    pub fn next_after(&self, after_ms: u64, anchor_ms: u64) -> Option<u64> {
        match self {
            Schedule::Every(d) => {
                let step = d.as_millis() as u64;
                let k = after_ms.saturating_sub(anchor_ms) / step + 1;
                anchor_ms.checked_add(k.checked_mul(step)?)
            }
            Schedule::Cron(c) => c.next_after(after_ms),
        }
    }
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        let day = self.days & 1 << date.day() != 0;
        let weekday = self.weekdays & 1 << date.weekday().to_sunday_zero_offset() != 0;
        if self.any_day || self.any_weekday { day && weekday } else { day || weekday }
    }

    /// Local minutes in order, each at its instant: one missing in a DST gap is skipped, one
    /// that happens twice (a fold) runs once, at the first.
    fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = Timestamp::from_millisecond(i64::try_from(after_ms).ok()?).ok()?;
        // From the day before: in a fold, a local time of that day can still be ahead.
        let mut date = after.to_zoned_datetime(self.zone.clone()).date().yesterday().ok()?;
        for _ in 0..SEARCH_DAYS {
            if self.months & 1 << date.month() != 0 && self.day_matches(date) {
                for hour in (0..24).filter(|h| self.hours & 1 << h != 0) {
                    for minute in (0..60).filter(|m| self.minutes & 1 << m != 0) {
                        let local = date.at(hour, minute, 0, 0);
                        let ambiguous = self.zone.to_ambiguous_timestamp(local);
                        if let AmbiguousOffset::Gap { .. } = ambiguous.offset() {
                            continue;
                        }
                        let at = ambiguous.earlier().ok()?.as_millisecond();
                        if at > after.as_millisecond() {
                            return u64::try_from(at).ok();
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests;
