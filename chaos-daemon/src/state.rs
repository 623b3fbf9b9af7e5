//! What the daemon remembers across restarts, in its state directory:
//! - `state.json`: the faults (definitions, who applied them, rule slots, deadlines) and the
//!   cls_bpf filters it attached. Rewritten whole on every change, atomically: a temporary file,
//!   fsync, rename over the old one. A crash leaves the old or the new file, never a torn one.
//! - `history.jsonl`: the audit trail, one JSON [`Event`] per line, appended. A crash can tear
//!   only the last line, which readers skip; it is rewritten (atomically, like the state) to its
//!   newest `history_limit` lines when it grows to twice that.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    kernel::{NlFilter, ShapingRecord},
    spec::FaultSpec,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// `/proc/sys/kernel/random/boot_id` when written: deadlines are CLOCK_MONOTONIC times and
    /// pins live in memory, so neither means anything after a reboot.
    pub boot_id: String,
    pub next_id: u64,
    /// In order of application (which breaks precedence ties).
    pub faults: Vec<Record>,
    pub filters: Vec<NlFilter>,
    /// The qdiscs delay and bandwidth faults took, with what was there before.
    #[serde(default)]
    pub shaping: ShapingRecord,
}

/// One fault as the daemon keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub spec: FaultSpec,
    pub slot: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    pub applied_by: Actor,
    /// Unix time, milliseconds.
    pub applied_at: u64,
    /// CLOCK_MONOTONIC ns at which it takes effect.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns at which it ends in the kernel (`NO_DEADLINE`: never).
    pub deadline_ns: u64,
    /// Whether it is in the kernel (a scheduled fault is not until `start_ns`).
    pub started: bool,
    /// `start_ns` and `deadline_ns` as Unix times in milliseconds, for people.
    pub starts_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Who asked, from the control socket's SO_PEERCRED; all `None` for the daemon itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.uid, self.pid, &self.comm) {
            (None, _, _) => write!(f, "chaos-daemon"),
            (Some(uid), pid, comm) => {
                write!(f, "uid {uid}")?;
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                if let Some(comm) = comm {
                    write!(f, " ({comm})")?;
                }
                Ok(())
            }
        }
    }
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time, milliseconds.
    pub at: u64,
    pub actor: Actor,
    /// `apply`, `remove`, `clear`, `remove-experiment`, `start`, `expire`, `adopt`, `cleanup`...
    pub action: String,
    /// Faults (or the experiment) concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// `ok`, `refused: <why>` or `error: <why>`.
    pub result: String,
    /// Faults that ended, with their final counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<Ended>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub name: String,
    pub reason: String,
    pub matched: u64,
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicated: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reset: u64,
}

impl Ended {
    pub fn new(name: &str, reason: &str, c: &chaos_common::Counters) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
            matched: c.matched,
            dropped: c.dropped,
            duplicated: c.duplicated,
            corrupted: c.corrupted,
            reset: c.reset,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub struct Store {
    dir: PathBuf,
    history_limit: usize,
    history_lines: usize,
}

impl Store {
    /// Opens the state directory, creating it if missing (the daemon checks it first with
    /// [`crate::fsutil::state_dir`], which makes it mode 0700 without following a link).
    pub fn open(dir: &Path, history_limit: usize) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut store = Self { dir: dir.into(), history_limit: history_limit.max(1), history_lines: 0 };
        // A crash mid-append leaves a line without its newline: end it, so the next event
        // starts on a line of its own and only the torn one is lost.
        let path = store.path("history.jsonl");
        if std::fs::read(&path).is_ok_and(|b| b.last().is_some_and(|c| *c != b'\n')) {
            OpenOptions::new().append(true).open(&path)?.write_all(b"\n")?;
        }
        store.history_lines = store.read_history().len();
        Ok(store)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn load(&self) -> io::Result<Option<State>> {
        match std::fs::read(self.path("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.path("state.json").display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, state: &State) -> io::Result<()> {
        write_atomically(&self.path("state.json"), &serde_json::to_vec_pretty(state)?)
    }

    pub fn append(&mut self, event: &Event) -> io::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let mut file = OpenOptions::new().create(true).append(true).open(self.path("history.jsonl"))?;
        // One write of a whole line with O_APPEND: lines never interleave.
        file.write_all(&line)?;
        self.history_lines += 1;
        if self.history_lines >= 2 * self.history_limit {
            let keep = self.read_history();
            let keep = &keep[keep.len().saturating_sub(self.history_limit)..];
            let mut text = Vec::new();
            for e in keep {
                text.extend(serde_json::to_vec(e)?);
                text.push(b'\n');
            }
            write_atomically(&self.path("history.jsonl"), &text)?;
            self.history_lines = keep.len();
        }
        Ok(())
    }

    /// The newest `limit` events, oldest first.
    pub fn history(&self, limit: usize) -> Vec<Event> {
        let all = self.read_history();
        all[all.len().saturating_sub(limit)..].to_vec()
    }

    fn read_history(&self) -> Vec<Event> {
        let Ok(file) = File::open(self.path("history.jsonl")) else { return Vec::new() };
        // A line torn by a crash does not parse and is skipped.
        BufReader::new(file).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    // The data is flushed before the rename, so no crash can leave a torn file under the real
    // name. The rename itself is not made durable (no fsync of the directory, which would
    // add half a millisecond to every change): it is atomic for every reader, and only a power
    // loss can undo it, after which the file is read as a previous boot's anyway (boot_id),
    // old or new alike.
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so deadlines compare in the kernel.
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_survives_a_torn_line_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("chaos-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir, 3).unwrap();
        let event = |n: u64| Event {
            at: n,
            actor: Actor::default(),
            action: "apply".into(),
            faults: vec![format!("f{n}")],
            result: "ok".into(),
            ended: vec![],
        };
        store.append(&event(1)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("history.jsonl"))
            .unwrap()
            .write_all(b"{\"at\": 2, \"act")
            .unwrap();
        // A restarted daemon skips the torn line and loses nothing else.
        let mut store = Store::open(&dir, 3).unwrap();
        store.append(&event(3)).unwrap();
        assert_eq!(store.history(10).iter().map(|e| e.at).collect::<Vec<_>>(), [1, 3]);
        for n in 4..=8 {
            store.append(&event(n)).unwrap();
        }
        let at: Vec<u64> = store.history(10).iter().map(|e| e.at).collect();
        assert!(at.len() <= 6 && at.ends_with(&[6, 7, 8]), "{at:?}");
        assert_eq!(store.history(2).iter().map(|e| e.at).collect::<Vec<_>>(), [7, 8]);

        assert!(store.load().unwrap().is_none());
        let state = State { boot_id: "b".into(), next_id: 7, ..Default::default() };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap().unwrap().next_id, 7);
        assert!(!dir.join("state.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
