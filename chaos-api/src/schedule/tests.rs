use jiff::civil::DateTime;

use super::*;

fn parse(text: &str) -> Schedule {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A UTC time as Unix milliseconds: `2026-03-02T10:07`.
fn utc(text: &str) -> u64 {
    in_zone(text, "UTC")
}

fn in_zone(text: &str, zone: &str) -> u64 {
    let dt: DateTime = text.parse().unwrap();
    TimeZone::get(zone).unwrap().to_ambiguous_timestamp(dt).earlier().unwrap().as_millisecond() as u64
}

/// The next `n` runs of a UTC line after `from`, as UTC times.
fn runs(line: &str, from: &str, n: usize) -> Vec<String> {
    let s = parse(&format!("CRON_TZ=UTC {line}"));
    let mut at = utc(from);
    let mut out = Vec::new();
    for _ in 0..n {
        at = s.next_after(at, 0).unwrap_or_else(|| panic!("{line}: none after {at}"));
        let ts = Timestamp::from_millisecond(at as i64).unwrap();
        out.push(ts.to_zoned_datetime(TimeZone::UTC).datetime().strftime("%Y-%m-%dT%H:%M %a").to_string());
    }
    out
}

#[test]
fn cron_lines() {
    assert_eq!(
        runs("*/15 * * * *", "2026-03-02T10:07:30", 4),
        ["2026-03-02T10:15 Mon", "2026-03-02T10:30 Mon", "2026-03-02T10:45 Mon", "2026-03-02T11:00 Mon"]
    );
    // Strictly after: on a run's own minute, the next one.
    assert_eq!(runs("*/15 * * * *", "2026-03-02T10:15", 1), ["2026-03-02T10:30 Mon"]);
    assert_eq!(runs("*/15 * * * *", "2026-03-02T10:14:59.999", 1), ["2026-03-02T10:15 Mon"]);
    // Weekdays at 2:00: Friday 6 March, then Monday 9 March.
    assert_eq!(
        runs("0 2 * * 1-5", "2026-03-05T03:00", 3),
        ["2026-03-06T02:00 Fri", "2026-03-09T02:00 Mon", "2026-03-10T02:00 Tue"]
    );
    assert_eq!(runs("0 2 * * MON-fri", "2026-03-05T03:00", 2), runs("0 2 * * 1-5", "2026-03-05T03:00", 2));
    assert_eq!(
        runs("30 9 1,15 jan,Jul ?", "2026-03-01T00:00", 3),
        ["2026-07-01T09:30 Wed", "2026-07-15T09:30 Wed", "2027-01-01T09:30 Fri"]
    );
    assert_eq!(
        runs("0 0-6/3 * * *", "2026-03-02T01:00", 3),
        ["2026-03-02T03:00 Mon", "2026-03-02T06:00 Mon", "2026-03-03T00:00 Tue"]
    );
    // `N/step` is `N-max/step`.
    assert_eq!(runs("50/5 23 * * *", "2026-03-02T23:51", 2), ["2026-03-02T23:55 Mon", "2026-03-03T23:50 Tue"]);
    assert_eq!(runs("0 0 29 2 *", "2026-03-01T00:00", 1), ["2028-02-29T00:00 Tue"]);
}

#[test]
fn day_of_month_or_day_of_week() {
    // Both restricted: the 13th, or any Friday.
    assert_eq!(
        runs("0 12 13 * 5", "2026-03-01T00:00", 4),
        ["2026-03-06T12:00 Fri", "2026-03-13T12:00 Fri", "2026-03-20T12:00 Fri", "2026-03-27T12:00 Fri"]
    );
    assert_eq!(
        runs("0 12 13 * 5", "2026-04-01T00:00", 3),
        ["2026-04-03T12:00 Fri", "2026-04-10T12:00 Fri", "2026-04-13T12:00 Mon"]
    );
    // One of them `*` or `?`: both must hold (the other one alone, then).
    assert_eq!(runs("0 12 * * 5", "2026-04-01T00:00", 1), ["2026-04-03T12:00 Fri"]);
    assert_eq!(runs("0 12 13 * ?", "2026-04-01T00:00", 1), ["2026-04-13T12:00 Mon"]);
    // A step on `*` restricts (robfig clears its star): the 1st, 11th, 21st and 31st, or Fridays.
    assert_eq!(
        runs("0 12 */10 * 5", "2026-04-01T00:00", 4),
        ["2026-04-01T12:00 Wed", "2026-04-03T12:00 Fri", "2026-04-10T12:00 Fri", "2026-04-11T12:00 Sat"]
    );
}

#[test]
fn descriptors() {
    assert_eq!(runs("@hourly", "2026-03-02T10:07", 1), ["2026-03-02T11:00 Mon"]);
    assert_eq!(runs("@daily", "2026-03-02T10:07", 1), ["2026-03-03T00:00 Tue"]);
    assert_eq!(runs("@midnight", "2026-03-02T10:07", 1), ["2026-03-03T00:00 Tue"]);
    assert_eq!(runs("@weekly", "2026-03-02T10:07", 1), ["2026-03-08T00:00 Sun"]);
    assert_eq!(runs("@monthly", "2026-03-02T10:07", 1), ["2026-04-01T00:00 Wed"]);
    assert_eq!(runs("@yearly", "2026-03-02T10:07", 1), ["2027-01-01T00:00 Fri"]);
    assert_eq!(runs("@annually", "2026-03-02T10:07", 1), ["2027-01-01T00:00 Fri"]);
}

#[test]
fn never_again() {
    assert_eq!(parse("0 0 30 2 *").next_after(utc("2026-01-01T00:00"), 0), None);
    assert_eq!(parse("0 0 31 4,6,9,11 *").next_after(utc("2026-01-01T00:00"), 0), None);
}

#[test]
fn every() {
    let s = parse("@every 20s");
    assert_eq!(s, Schedule::Every(Duration::from_secs(20)));
    let anchor = 1_000_000;
    assert_eq!(s.next_after(anchor, anchor), Some(anchor + 20_000));
    assert_eq!(s.next_after(anchor + 19_999, anchor), Some(anchor + 20_000));
    assert_eq!(s.next_after(anchor + 20_000, anchor), Some(anchor + 40_000));
    assert_eq!(s.next_after(anchor + 65_000, anchor), Some(anchor + 80_000));
    // Before the anchor: still its first tick.
    assert_eq!(s.next_after(0, anchor), Some(anchor + 20_000));
    assert_eq!(parse("@every 1h30m"), Schedule::Every(Duration::from_secs(5400)));
    assert_eq!(parse("CRON_TZ=Europe/Paris @every 5m"), Schedule::Every(Duration::from_secs(300)));
    assert_eq!(parse("@every 1s").next_after(u64::MAX - 10, 0), None);
}

#[test]
fn time_zones_and_dst() {
    let paris = parse("CRON_TZ=Europe/Paris 30 2 * * *");
    // 2:30 in Paris is 1:30 UTC in winter.
    assert_eq!(paris.next_after(utc("2026-03-27T12:00"), 0), Some(utc("2026-03-28T01:30")));
    // 29 March 2026 has no 2:30 in Paris (2:00 jumps to 3:00): that day is skipped.
    assert_eq!(paris.next_after(utc("2026-03-28T02:00"), 0), Some(in_zone("2026-03-30T02:30", "Europe/Paris")));
    // 25 October 2026 has 2:30 twice: it runs once, at the first.
    let first = in_zone("2026-10-25T02:30", "Europe/Paris");
    assert_eq!(first, utc("2026-10-25T00:30"));
    assert_eq!(paris.next_after(utc("2026-10-24T12:00"), 0), Some(first));
    assert_eq!(paris.next_after(first, 0), Some(utc("2026-10-26T01:30")));
    assert_eq!(
        parse("TZ=America/New_York 0 9 * * *").next_after(utc("2026-07-01T00:00"), 0),
        Some(utc("2026-07-01T13:00"))
    );
}

#[test]
fn reads_back_as_written() {
    for (text, shown) in [
        ("  */15   * * * * ", "*/15 * * * *"),
        ("CRON_TZ=Europe/Paris  0 2 * * 1-5", "CRON_TZ=Europe/Paris 0 2 * * 1-5"),
        ("TZ=UTC @daily", "TZ=UTC @daily"),
        ("@every 90m", "@every 1h30m"),
        ("@every 3600s", "@every 1h"),
    ] {
        assert_eq!(parse(text).to_string(), shown);
        assert_eq!(parse(shown).to_string(), shown);
    }
}

#[test]
fn bad_lines_say_which_field_and_value() {
    for (text, expected) in [
        ("", "'' has 0 fields: a cron line has 5"),
        ("* * * *", "'* * * *' has 4 fields"),
        ("0 * * * * *", "'0 * * * * *' has 6 fields"),
        ("60 * * * *", "minute '60': 60 is outside 0-59"),
        ("* 24 * * *", "hour '24': 24 is outside 0-23"),
        ("* * 0 * *", "day of month '0': 0 is outside 1-31"),
        ("* * * 13 *", "month '13': 13 is outside 1-12"),
        ("* * * foo *", "month 'foo': 'foo' is not a number or a name JAN-DEC"),
        ("* * * * 7", "day of week '7': 7 is outside 0-6"),
        ("* * * * SUNDAY", "day of week 'SUNDAY': 'SUNDAY' is not a number or a name SUN-SAT"),
        ("*/0 * * * *", "minute '*/0': the step '0' of '*/0' is not a positive number"),
        ("5-1 * * * *", "minute '5-1': '5-1' starts after it ends"),
        ("1,,2 * * * *", "minute '1,,2': '' is not a number"),
        ("1-2-3 * * * *", "minute '1-2-3': '2-3' is not a number"),
        ("-1 * * * *", "minute '-1': '' is not a number"),
        ("@often", "'@often' is not a descriptor"),
        ("@DAILY", "'@DAILY' is not a descriptor"),
        ("@every 500ms", "@every: '500ms' is not a whole number of seconds, 1s or more"),
        ("@every 1.5s", "@every: '1.5s' is not a whole number of seconds"),
        ("@every 0", "@every: '0' is not a whole number"),
        ("@every soon", "@every: 'soon' is not a duration"),
        ("CRON_TZ=Mars/Olympus 0 * * * *", "CRON_TZ=Mars/Olympus: 'Mars/Olympus' is not a time zone"),
        ("TZ=UTC", "TZ=UTC is not followed by a schedule"),
    ] {
        let e = text.parse::<Schedule>().map(|s| format!("accepted: {s:?}")).unwrap_or_else(|e| e);
        assert!(e.starts_with(expected), "{text}: {e}");
    }
    let spec = ScheduleSpec { cron: "61 * * * *".into(), history_limit: None };
    assert_eq!(spec.validate().unwrap_err().to_string(), "schedule.cron: minute '61': 61 is outside 0-59");
}
