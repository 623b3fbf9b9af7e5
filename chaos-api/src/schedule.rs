//! Recurring experiments: when an experiment runs again. `@every 5m` (Go durations, as Chaos
//! Mesh's cron library reads them), a cron line of five fields (minute, hour, day of month,
//! month, day of week; `*`, lists, ranges, steps, month and day names), or one of
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`; optionally
//! prefixed with `CRON_TZ=Zone` or `TZ=Zone`. Cron lines are read in the daemon's local time
//! zone unless the prefix names one, as Chaos Mesh's controller reads them in its own.

use serde::{Deserialize, Serialize};

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
    // Filled in by the implementation.
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let _ = text;
        unimplemented!("schedule: parse")
    }
}

impl Schedule {
    /// The first run strictly after `after_ms` (Unix milliseconds); `anchor_ms` is when the
    /// experiment was applied (`@every` counts from it). `None`: it never runs again (a cron
    /// line no date satisfies, such as `0 0 30 2 *`).
    pub fn next_after(&self, after_ms: u64, anchor_ms: u64) -> Option<u64> {
        let _ = (after_ms, anchor_ms);
        unimplemented!("schedule: next_after")
    }
}
