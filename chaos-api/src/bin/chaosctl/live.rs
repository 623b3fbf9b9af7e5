//! Following faults as they run: `chaosctl watch` (a refreshing table of counters and time
//! left) and `chaosctl apply --wait` (a progress line until the applied faults end, then their
//! final counters).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use tokio::signal::unix::{Signal, SignalKind, signal};

use chaos_api::{
    api::{Ended, FaultState, FaultView, Faults, History, unix_ms},
    client::{Client, ClientError},
};

use super::{Output, counts, describe, state};

/// What `watch` shows of a fault, with its packets per second since the last refresh.
fn row(f: &FaultView, before: Option<&FaultView>, seconds: f64) -> [String; 6] {
    let per_second = |now: u64, then: Option<u64>| match then {
        Some(then) if seconds > 0.0 => format!("{:.0}/s", now.saturating_sub(then) as f64 / seconds),
        _ => "-".into(),
    };
    [
        f.name.clone(),
        describe(&f.spec),
        state(f),
        format!("{} ({})", f.matched, per_second(f.matched, before.map(|b| b.matched))),
        format!("{} ({})", f.dropped, per_second(f.dropped, before.map(|b| b.dropped))),
        counts(f.matched, f.dropped, [f.duplicated, f.corrupted, f.reset, f.answered]),
    ]
}

/// `chaosctl watch`: every `interval`, the faults (only `names` if given) with their counters,
/// rates and time left, until Ctrl-C (`count` refreshes, if given). On a terminal the table is
/// redrawn in place; otherwise (and with `-o json`, one JSON object per line) each refresh is
/// printed after the last.
pub async fn watch(
    client: &Client<'_>,
    names: &[String],
    interval: Duration,
    count: Option<u64>,
    output: Output,
) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal() && matches!(output, Output::Table);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut last: BTreeMap<String, FaultView> = BTreeMap::new();
    let mut last_at = std::time::Instant::now();
    let mut shown = 0u64;
    loop {
        let list: Faults = client.get("/v1/faults").await?;
        let faults: Vec<FaultView> =
            list.faults.into_iter().filter(|f| names.is_empty() || names.contains(&f.name)).collect();
        let seconds = last_at.elapsed().as_secs_f64();
        last_at = std::time::Instant::now();
        let mut out = String::new();
        match output {
            Output::Json => {
                out = serde_json::to_string(&serde_json::json!({ "at": unix_ms(), "faults": faults }))? + "\n";
            }
            Output::Table => {
                if terminal {
                    // Home, clear the screen: the table is redrawn in place.
                    out += "\x1b[H\x1b[2J";
                }
                let header = format!("{}, every {:?} (Ctrl-C to quit)", super::plural(faults.len(), "fault"), interval);
                let rows: Vec<[String; 6]> = faults.iter().map(|f| row(f, last.get(&f.name), seconds)).collect();
                out += &header;
                out += "\n";
                out += &super::table(&["NAME", "ACTION", "STATE", "MATCHED", "DROPPED", "COUNTERS"], &rows);
                if !terminal {
                    out += "\n";
                }
            }
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        last = faults.into_iter().map(|f| (f.name.clone(), f)).collect();
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

/// How `apply --wait` ended.
pub enum Waited {
    /// Every fault ended by itself (expired, or its target went).
    Ended(Vec<Ended>),
    /// Ctrl-C: the faults still running were removed.
    Interrupted(Vec<Ended>),
}

/// `apply --wait`: shows progress on stderr until every fault of `names` has ended (on a
/// terminal one line, redrawn; otherwise a line as each fault starts, every 10 s, and as it
/// ends), then returns their final counters from the audit trail. On Ctrl-C (`interrupt`,
/// listened to since before the faults were applied) the faults still running are removed:
/// stopping the wait stops the experiment.
pub async fn wait(client: &Client<'_>, names: &[String], mut interrupt: Signal) -> anyhow::Result<Waited> {
    let terminal = std::io::stderr().is_terminal();
    // Off a terminal (a log, a pipe): the state each fault was last reported in, and when.
    let mut reported: BTreeMap<String, FaultState> = BTreeMap::new();
    let mut reported_at = std::time::Instant::now();
    loop {
        let list: Faults = client.get("/v1/faults").await?;
        let running: Vec<&FaultView> = list.faults.iter().filter(|f| names.contains(&f.name)).collect();
        if !terminal {
            let every = reported_at.elapsed() >= Duration::from_secs(10);
            let mut lines = String::new();
            for f in &running {
                if every || reported.get(&f.name) != Some(&f.state) {
                    let c = counts(f.matched, f.dropped, [f.duplicated, f.corrupted, f.reset, f.answered]);
                    lines += &format!("{}: {} ({}), {c}\n", f.name, f.state, state(f));
                    reported.insert(f.name.clone(), f.state);
                }
            }
            reported.retain(|name, _| {
                let here = running.iter().any(|f| f.name == *name);
                if !here {
                    lines += &format!("{name}: ended\n");
                }
                here
            });
            if every {
                reported_at = std::time::Instant::now();
            }
            // Each as it happens, not when the buffer fills.
            let mut stderr = std::io::stderr().lock();
            stderr.write_all(lines.as_bytes())?;
            stderr.flush()?;
        }
        if running.is_empty() {
            if terminal {
                eprint!("\r\x1b[K");
            }
            return Ok(Waited::Ended(ended(client, names).await?));
        }
        if terminal {
            let parts: Vec<String> = running
                .iter()
                .map(|f| {
                    let c = counts(f.matched, f.dropped, [f.duplicated, f.corrupted, f.reset, f.answered]);
                    format!("{} {}, {c}", f.name, state(f))
                })
                .collect();
            // Carriage return and clear the line: one progress line, redrawn.
            eprint!("\r\x1b[K{}", parts.join(" | "));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = interrupt.recv() => {
                if terminal {
                    eprintln!();
                }
                let mut removed = Vec::new();
                for f in running {
                    match client.delete::<FaultView>(&format!("/v1/faults/{}", f.name)).await {
                        Ok(v) => removed.push(Ended::new(&v.name, "removed: the wait was interrupted", &v.counters())),
                        // Ended meanwhile: its end is in the trail.
                        Err(ClientError::Refused { status: 404, .. }) => {
                            removed.extend(ended(client, std::slice::from_ref(&f.name)).await?)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                return Ok(Waited::Interrupted(removed));
            }
        }
    }
}

/// The last end recorded for each of `names`, from the audit trail.
async fn ended(client: &Client<'_>, names: &[String]) -> anyhow::Result<Vec<Ended>> {
    let history: History = client.get("/v1/history?limit=1000").await?;
    let mut found: BTreeMap<&str, Ended> = BTreeMap::new();
    for e in history.events.into_iter().flat_map(|e| e.ended) {
        if let Some(name) = names.iter().find(|n| **n == e.name) {
            found.insert(name, e);
        }
    }
    Ok(names.iter().filter_map(|n| found.remove(n.as_str())).collect())
}
