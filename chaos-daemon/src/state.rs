//! What the daemon remembers across restarts, in its state directory:
//! - `state.json`: the faults (definitions, who applied them, rule slots, deadlines) and the
//!   cls_bpf filters and qdiscs it added, as of a [`Change`] of the journal (`journal_seq`).
//!   Written whole at start and when the journal has grown, atomically: a temporary file,
//!   fsync, rename over the old one. A crash leaves the old or the new file, never a torn one.
//! - `journal.jsonl`: each change since, one [`Change`] per line (the records it adds or
//!   replaces, the names it drops), appended and made durable (fdatasync) before the daemon
//!   answers: one small synchronous write per change, whatever the number of faults. The state
//!   is the snapshot with the journal's later lines applied in order; a torn last line was
//!   never acknowledged, and is ignored.
//! - `history.jsonl`: the audit trail, one JSON [`Event`] per line, appended. A crash or a full
//!   disk can tear only the last line; any line that is not an event is skipped (and reported
//!   at open), never the lines after it, and the next event starts on a line of its own. It is
//!   rewritten (atomically, like the state) to the newest events of each [`Budget`] when either
//!   kind grows to twice its budget.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

// The audit trail's types are the API's (`GET /v1/history`): chaosctl reads them without the
// daemon's crate.
pub use chaos_api::api::{Actor, Ended, Event, MAX_COMM, unix_ms};

use crate::{
    kernel::{NlFilter, ShapingRecord},
    spec::FaultSpec,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// `/proc/sys/kernel/random/boot_id` when written: deadlines are CLOCK_MONOTONIC times and
    /// pins live in memory, so neither means anything after a reboot.
    pub boot_id: String,
    /// The last journal line this snapshot holds: later ones are applied over it.
    #[serde(default)]
    pub journal_seq: u64,
    pub next_id: u64,
    /// In order of application (which breaks precedence ties).
    pub faults: Vec<Record>,
    pub filters: Vec<NlFilter>,
    /// The qdiscs delay and bandwidth faults took, with what was there before.
    #[serde(default)]
    pub shaping: ShapingRecord,
}

/// One change of the state: a line of the journal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    /// Faults added, or changed (started, their cgroups followed): whole records, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub put: Vec<Record>,
    /// Faults taken out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<Dropped>,
    pub next_id: u64,
    /// The kernel side, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<NlFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaping: Option<ShapingRecord>,
    /// What the audit trail says of the change: appended to `history.jsonl` after this line,
    /// and again at the next start if a crash came in between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

/// A fault taken out, and the rule slot it had: a rule the kernel still holds there at the
/// next start (the daemon died before the kernel took it out) is this fault's, already
/// recorded as ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub name: String,
    pub slot: u32,
}

impl State {
    /// Applies a journal line. Records keep their order of application: a new one goes last,
    /// a changed one stays where it was.
    fn apply(&mut self, change: Change) {
        let dropped: std::collections::HashSet<&str> = change.drop.iter().map(|d| d.name.as_str()).collect();
        self.faults.retain(|r| !dropped.contains(r.name.as_str()));
        let mut at: std::collections::HashMap<String, usize> =
            self.faults.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
        for record in change.put {
            match at.get(&record.name) {
                Some(&i) => self.faults[i] = record,
                None => {
                    at.insert(record.name.clone(), self.faults.len());
                    self.faults.push(record);
                }
            }
        }
        self.next_id = change.next_id;
        self.journal_seq = change.seq;
        if let Some(filters) = change.filters {
            self.filters = filters;
        }
        if let Some(shaping) = change.shaping {
            self.shaping = shaping;
        }
    }
}

/// One fault as the daemon keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub spec: SpecText,
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

/// A fault's spec as applied, kept as its JSON text: the struct has a field for every option
/// (728 bytes), the text of a partition about 100 bytes, so 10,000 faults hold 6 MB less. It
/// is written to the state file as it is, and checked (parsed as a spec) when read from it.
#[derive(Clone, Debug)]
pub struct SpecText(Box<serde_json::value::RawValue>);

impl SpecText {
    pub fn new(spec: &FaultSpec) -> Self {
        Self(serde_json::value::to_raw_value(spec).expect("a spec is plain data"))
    }

    /// The spec (parsed again: as made by [`Self::new`], or checked when read).
    pub fn get(&self) -> FaultSpec {
        serde_json::from_str(self.0.get()).expect("the text of a spec")
    }
}

impl Default for SpecText {
    fn default() -> Self {
        Self::new(&FaultSpec::default())
    }
}

impl PartialEq for SpecText {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for SpecText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SpecText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FaultSpec::deserialize(d).map(|spec| Self::new(&spec))
    }
}

/// How many events the history keeps: the newest `accepted` events that are not refusals, and
/// separately the newest `refused` refusals, so that no flood of refused requests can push a
/// real change out. The file is trimmed to these when either kind reaches twice its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub accepted: usize,
    pub refused: usize,
}

impl Budget {
    /// `history_limit` events, and a tenth as many refusals (at least one of each).
    pub fn of(history_limit: usize) -> Self {
        Self { accepted: history_limit.max(1), refused: (history_limit / 10).max(1) }
    }
}

/// What one line of the history holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Accepted,
    Refused,
    /// Not an event: torn by a crash or a full disk, or garbage.
    Bad,
    Empty,
}

impl Line {
    fn of(bytes: &[u8]) -> Self {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Line::Empty;
        }
        match serde_json::from_slice::<Event>(bytes) {
            Ok(e) if e.is_refusal() => Line::Refused,
            Ok(_) => Line::Accepted,
            Err(_) => Line::Bad,
        }
    }
}

pub struct Store {
    dir: PathBuf,
    /// The journal's last line, and its size: past [`COMPACT_AT`] (and the snapshot's size)
    /// the next snapshot starts it afresh.
    seq: u64,
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// The kernel side as last written, so that a change writes it only when it changed.
    filters: Vec<NlFilter>,
    shaping: ShapingRecord,
    /// From [`Self::load`]: the slots of faults the journal took out since the snapshot, and
    /// the events of its last line (which a crash may have kept from the history).
    dropped: Vec<u32>,
    last_events: Vec<Event>,
    budget: Budget,
    /// Events in history.jsonl now, by kind.
    accepted: usize,
    refused: usize,
    /// The file may not end with a newline (it did not at open, or a write failed): the next
    /// append ends that line first, so every event starts on a line of its own.
    torn: bool,
}

const HISTORY: &str = "history.jsonl";
const SNAPSHOT: &str = "state.json";
const JOURNAL: &str = "journal.jsonl";
/// The experiments the daemon follows (selectors, schedules): few and small, written whole.
const EXPERIMENTS: &str = "experiments.json";
/// A journal larger than this and than the snapshot is folded into a new snapshot.
const COMPACT_AT: u64 = 1 << 20;

impl Store {
    /// Opens the state directory, creating it if missing (the daemon checks it first with
    /// [`crate::fsutil::state_dir`], which makes it mode 0700 without following a link).
    pub fn open(dir: &Path, history_limit: usize) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut store = Self {
            dir: dir.into(),
            seq: 0,
            journal_bytes: 0,
            snapshot_bytes: 0,
            filters: Vec::new(),
            shaping: ShapingRecord::default(),
            dropped: Vec::new(),
            last_events: Vec::new(),
            budget: Budget::of(history_limit),
            accepted: 0,
            refused: 0,
            torn: false,
        };
        store.journal_bytes = std::fs::symlink_metadata(store.path(JOURNAL)).map_or(0, |m| m.len());
        let path = store.path(HISTORY);
        let scan = match open_nofollow(&path) {
            Ok(file) => scan(file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Scan::default(),
            Err(e) => return Err(e),
        };
        let bad = scan.count(Line::Bad);
        if bad > 0 {
            tracing::warn!("{}: skipping {bad} lines that are not events (torn or damaged)", path.display());
        }
        (store.accepted, store.refused, store.torn) =
            (scan.count(Line::Accepted), scan.count(Line::Refused), scan.torn);
        Ok(store)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the followed experiments whole, atomically; none removes the file.
    pub fn save_experiments<T: Serialize>(&mut self, experiments: &[T]) -> io::Result<()> {
        let path = self.path(EXPERIMENTS);
        if experiments.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        write_atomically(&path, &serde_json::to_vec(experiments)?)
    }

    /// The experiments [`Self::save_experiments`] wrote, if any.
    pub fn load_experiments<T: serde::de::DeserializeOwned>(&self) -> io::Result<Vec<T>> {
        let path = self.path(EXPERIMENTS);
        let mut bytes = Vec::new();
        match open_nofollow(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// Reads the history without the store, from another thread: see [`HistoryReader`].
    pub fn reader(&self) -> HistoryReader {
        HistoryReader { path: self.path(HISTORY), max: self.budget.accepted }
    }

    /// The state as the last daemon left it: the snapshot with the journal's later lines
    /// applied. `None` when there is neither.
    pub fn load(&mut self) -> io::Result<Option<State>> {
        let path = self.path(SNAPSHOT);
        let mut bytes = Vec::new();
        let snapshot = match open_nofollow(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => Some(
                serde_json::from_slice::<State>(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let changes = self.journal()?;
        if snapshot.is_none() && changes.is_empty() {
            return Ok(None);
        }
        let mut state = snapshot.unwrap_or_default();
        for change in changes {
            if change.seq > state.journal_seq {
                self.dropped.extend(change.drop.iter().map(|d| d.slot));
                self.last_events.clone_from(&change.events);
                state.apply(change);
            }
        }
        // Numbers go on from there, so that no line of this journal is read as a later one.
        self.seq = state.journal_seq;
        Ok(Some(state))
    }

    /// The journal's changes. Only the end can be torn (a write cut short by a crash, never
    /// acknowledged: a failed append is cut off again by [`Self::record`]): it is cut off here
    /// too. A bad line before it is damage, and refused.
    fn journal(&mut self) -> io::Result<Vec<Change>> {
        let path = self.path(JOURNAL);
        let mut bytes = Vec::new();
        match open_nofollow(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut changes = Vec::new();
        for (i, line) in bytes[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            changes.push(serde_json::from_slice::<Change>(line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: line {}: {e}", path.display(), i + 1))
            })?);
        }
        if whole < bytes.len() {
            tracing::warn!("{}: cutting off a torn last line (a change never acknowledged)", path.display());
            OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&path)?.set_len(whole as u64)?;
        }
        self.journal_bytes = whole as u64;
        Ok(changes)
    }

    /// Writes `state` whole (a new snapshot) and starts the journal afresh.
    pub fn save(&mut self, state: &State) -> io::Result<()> {
        let state = State { journal_seq: self.seq, ..state.clone() };
        let bytes = serde_json::to_vec_pretty(&state)?;
        write_atomically(&self.path(SNAPSHOT), &bytes)?;
        // The snapshot holds every line: a crash before this truncation replays lines it
        // already has, which `journal_seq` skips.
        match std::fs::remove_file(self.path(JOURNAL)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        (self.journal_bytes, self.snapshot_bytes) = (0, bytes.len() as u64);
        (self.filters, self.shaping) = (state.filters, state.shaping);
        Ok(())
    }

    /// Records one change: a line appended to the journal, made durable (fdatasync) when
    /// `durable`. On error the change is not recorded (a partial line is a torn last line,
    /// ignored when read, and ended before the next one).
    pub fn record(
        &mut self,
        (put, drop): (Vec<Record>, Vec<Dropped>),
        next_id: u64,
        (filters, shaping): (Vec<NlFilter>, ShapingRecord),
        events: Vec<Event>,
        durable: bool,
    ) -> io::Result<()> {
        let change = Change {
            seq: self.seq + 1,
            put,
            drop,
            next_id,
            filters: (filters != self.filters).then(|| filters.clone()),
            shaping: (shaping != self.shaping).then(|| shaping.clone()),
            events,
        };
        let mut line = serde_json::to_vec(&change)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(JOURNAL))?;
        if crate::crashpoint::reached(crate::crashpoint::Point::JournalHalf) {
            let _ = file.write_all(&line[..line.len() / 2]);
            crate::crashpoint::die(crate::crashpoint::Point::JournalHalf);
        }
        let written = file.write_all(&line).and_then(|()| if durable { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // What was written of it goes, so that every line of the journal is a whole change.
            if let Err(cut) = file.set_len(self.journal_bytes) {
                tracing::error!("cutting a failed change off the journal: {cut}");
            }
            return Err(e);
        }
        self.journal_bytes += line.len() as u64;
        self.seq = change.seq;
        (self.filters, self.shaping) = (filters, shaping);
        Ok(())
    }

    /// The slots of faults the journal took out since the snapshot (from [`Self::load`]).
    pub fn dropped_slots(&self) -> &[u32] {
        &self.dropped
    }

    /// Appends the events of the journal's last change that the history lacks: a daemon that
    /// died between the two writes. Returns how many.
    pub fn recover_history(&mut self) -> io::Result<usize> {
        let pending = std::mem::take(&mut self.last_events);
        if pending.is_empty() {
            return Ok(0);
        }
        let tail = self.reader().read(pending.len() + 16)?;
        let missing: Vec<Event> = pending.into_iter().filter(|e| !tail.contains(e)).collect();
        for event in &missing {
            self.append(event)?;
        }
        Ok(missing.len())
    }

    /// Whether the kernel side differs from what was last recorded.
    pub fn kernel_changed(&self, (filters, shaping): &(Vec<NlFilter>, ShapingRecord)) -> bool {
        *filters != self.filters || *shaping != self.shaping
    }

    /// Whether the journal has grown enough to be folded into a new snapshot.
    pub fn wants_snapshot(&self) -> bool {
        self.journal_bytes > COMPACT_AT && self.journal_bytes > self.snapshot_bytes
    }

    pub fn append(&mut self, event: &Event) -> io::Result<()> {
        let mut line = Vec::new();
        if self.torn {
            // At worst an empty line, which readers pass over.
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, event)?;
        line.push(b'\n');
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(HISTORY))
            // One write of a whole line with O_APPEND: lines never interleave.
            .and_then(|mut file| file.write_all(&line));
        // A failed write may have left part of the line.
        self.torn = written.is_err();
        written?;
        match event.is_refusal() {
            true => self.refused += 1,
            false => self.accepted += 1,
        }
        if self.accepted >= 2 * self.budget.accepted || self.refused >= 2 * self.budget.refused {
            self.trim()?;
        }
        Ok(())
    }

    /// Rewrites the history to the newest events of each budget, dropping lines that are not
    /// events. Two passes over the file, a line at a time: classify, then copy what is kept.
    fn trim(&mut self) -> io::Result<()> {
        let path = self.path(HISTORY);
        let scan = scan(open_nofollow(&path)?)?;
        let (mut accepted, mut refused) = (0, 0);
        let mut keep = vec![false; scan.lines.len()];
        for (i, line) in scan.lines.iter().enumerate().rev() {
            keep[i] = match line {
                Line::Accepted if accepted < self.budget.accepted => {
                    accepted += 1;
                    true
                }
                Line::Refused if refused < self.budget.refused => {
                    refused += 1;
                    true
                }
                _ => false,
            };
        }
        let mut reader = BufReader::new(open_nofollow(&path)?);
        let mut text = Vec::new();
        let mut line = Vec::new();
        for keep in keep {
            line.clear();
            reader.read_until(b'\n', &mut line)?;
            if keep {
                text.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(&line));
                text.push(b'\n');
            }
        }
        write_atomically(&path, &text)?;
        let bad = scan.count(Line::Bad);
        if bad > 0 {
            tracing::warn!("{}: dropped {bad} lines that are not events (torn or damaged)", path.display());
        }
        (self.accepted, self.refused, self.torn) = (accepted, refused, false);
        Ok(())
    }
}

/// The history's lines, classified.
#[derive(Default)]
struct Scan {
    lines: Vec<Line>,
    /// The last line has no newline.
    torn: bool,
}

impl Scan {
    fn count(&self, kind: Line) -> usize {
        self.lines.iter().filter(|l| **l == kind).count()
    }
}

/// Splits on newline bytes (not `lines()`, which stops at the first line that is not UTF-8).
fn scan(file: File) -> io::Result<Scan> {
    let mut reader = BufReader::new(file);
    let mut scan = Scan::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(scan);
        }
        scan.torn = line.last() != Some(&b'\n');
        scan.lines.push(Line::of(&line));
    }
}

/// Reads the audit trail from its file without the engine: appends are single `O_APPEND`
/// writes and trims are atomic renames, so a reader sees whole lines of one version of the file
/// (a line being written does not parse, and is passed over like a torn one).
#[derive(Clone, Debug)]
pub struct HistoryReader {
    path: PathBuf,
    /// The most events one read returns: `history_limit`.
    max: usize,
}

impl HistoryReader {
    /// The most events [`Self::read`] returns.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The newest `limit` events (at most [`Self::max`]), oldest first. Reads the file from its
    /// end in chunks, so memory grows with `limit`, not with the file. Lines that are not
    /// events are skipped.
    pub fn read(&self, limit: usize) -> io::Result<Vec<Event>> {
        let limit = limit.min(self.max);
        let file = match open_nofollow(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut events = Vec::new();
        let mut pos = file.metadata()?.len();
        // Bytes from `pos` up to the newest line not yet taken: a part of a line.
        let mut buf: Vec<u8> = Vec::new();
        // Passing over a line longer than any event (damage): its bytes are not kept.
        let mut skipping = false;
        while events.len() < limit {
            if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
                if let Ok(event) = serde_json::from_slice(&buf[i + 1..]) {
                    events.push(event);
                }
                buf.truncate(i);
                continue;
            }
            if pos == 0 {
                if let Ok(event) = serde_json::from_slice(&buf) {
                    events.push(event);
                }
                break;
            }
            if buf.len() > MAX_LINE {
                (buf, skipping) = (Vec::new(), true);
            }
            // At least as much as is held, so that a long line costs no more than linear time.
            let n = (pos.min(CHUNK.max(buf.len()) as u64)) as usize;
            pos -= n as u64;
            let mut chunk = vec![0; n + buf.len()];
            file.read_exact_at(&mut chunk[..n], pos)?;
            chunk[n..].copy_from_slice(&buf);
            if skipping {
                // Up to the newline that ends the line before the long one, if in this chunk.
                match chunk.iter().rposition(|b| *b == b'\n') {
                    Some(end) => {
                        chunk.truncate(end);
                        skipping = false;
                    }
                    None => chunk.clear(),
                }
            }
            buf = chunk;
        }
        events.reverse();
        Ok(events)
    }
}

const CHUNK: usize = 64 << 10;
/// Longer than any event the daemon writes (a request body is at most 16 MiB).
const MAX_LINE: usize = 32 << 20;

/// Opens an existing file for reading, refusing a symlink in its place.
fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A new file of our own: whatever is left at that name (a crash's leftover, a symlink
    // planted there) is removed, not written through.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
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

/// A started fault with no deadline, for the unit tests.
#[cfg(test)]
pub(crate) fn test_record(name: &str, slot: u32) -> Record {
    Record {
        name: name.into(),
        spec: Default::default(),
        slot,
        experiment: None,
        applied_by: Actor::default(),
        applied_at: 0,
        start_ns: 0,
        deadline_ns: u64::MAX,
        started: true,
        starts_at: 0,
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_api::api::AuditAction;

    /// A state directory of its own, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("chaos-state-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }

        fn history(&self) -> Vec<u8> {
            std::fs::read(self.0.join(HISTORY)).unwrap()
        }

        /// The events the file holds, read on its own (not by the reader, which is capped).
        fn events(&self) -> Vec<Event> {
            self.history().split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect()
        }

        fn write(&self, bytes: &[u8]) {
            OpenOptions::new().append(true).open(self.0.join(HISTORY)).unwrap().write_all(bytes).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn event(n: u64) -> Event {
        Event {
            at: n,
            actor: Actor { uid: Some(0), pid: Some(1), comm: Some("chaosctl".into()) },
            action: AuditAction::Apply,
            faults: vec![format!("f{n}")],
            experiment: None,
            result: "ok".into(),
            ended: vec![],
        }
    }

    use super::test_record as record;

    fn names(state: &State) -> Vec<&str> {
        state.faults.iter().map(|r| r.name.as_str()).collect()
    }

    fn put(store: &mut Store, records: Vec<Record>, next_id: u64) {
        store.record((records, vec![]), next_id, Default::default(), vec![], true).unwrap();
    }

    #[test]
    fn the_state_is_the_snapshot_with_the_journal_applied_in_order() {
        let dir = Dir::new("journal");
        let mut store = Store::open(&dir.0, 10).unwrap();
        assert!(store.load().unwrap().is_none());
        store.save(&State { boot_id: "b".into(), faults: vec![record("a", 0)], ..Default::default() }).unwrap();
        put(&mut store, vec![record("b", 1), record("c", 2)], 4);
        let a = Dropped { name: "a".into(), slot: 0 };
        store.record((vec![], vec![a]), 4, Default::default(), vec![event(1)], true).unwrap();
        // A changed record keeps its place in the order of application.
        put(&mut store, vec![Record { started: false, ..record("b", 1) }], 5);
        let mut reopened = Store::open(&dir.0, 10).unwrap();
        let state = reopened.load().unwrap().unwrap();
        assert_eq!((names(&state), state.next_id, state.boot_id.as_str()), (vec!["b", "c"], 5, "b"));
        assert!(!state.faults[0].started);
        assert_eq!(reopened.dropped_slots(), [0]);

        // A snapshot folds the journal in; lines it holds are not applied again, even when a
        // crash kept the journal (the snapshot was renamed in, the journal not yet removed).
        let journal = std::fs::read(dir.0.join(JOURNAL)).unwrap();
        store.save(&state).unwrap();
        assert!(!dir.0.join(JOURNAL).exists());
        std::fs::write(dir.0.join(JOURNAL), &journal).unwrap();
        let mut again = Store::open(&dir.0, 10).unwrap();
        assert_eq!(names(&again.load().unwrap().unwrap()), ["b", "c"]);
        // And the numbers go on: a later line is applied.
        put(&mut again, vec![record("d", 3)], 6);
        assert_eq!(names(&Store::open(&dir.0, 10).unwrap().load().unwrap().unwrap()), ["b", "c", "d"]);
    }

    #[test]
    fn a_torn_last_journal_line_is_cut_off_and_a_damaged_one_refused() {
        let dir = Dir::new("torn-journal");
        let mut store = Store::open(&dir.0, 10).unwrap();
        put(&mut store, vec![record("a", 0)], 2);
        let path = dir.0.join(JOURNAL);
        // A write cut short by a crash: never acknowledged.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"seq\":2,\"put\":[{\"na").unwrap();
        let mut reopened = Store::open(&dir.0, 10).unwrap();
        assert_eq!(names(&reopened.load().unwrap().unwrap()), ["a"]);
        // The next change is a line of its own.
        put(&mut reopened, vec![record("b", 1)], 3);
        assert_eq!(names(&Store::open(&dir.0, 10).unwrap().load().unwrap().unwrap()), ["a", "b"]);
        // Damage before the end is refused, not skipped: skipping could bring a removed fault back.
        let text = std::fs::read_to_string(&path).unwrap().replacen("{", "[", 1);
        std::fs::write(&path, text).unwrap();
        let e = Store::open(&dir.0, 10).unwrap().load().unwrap_err().to_string();
        assert!(e.contains("journal.jsonl: line 1"), "{e}");
    }

    #[test]
    fn events_a_crash_kept_from_the_history_are_appended_at_the_next_start() {
        let dir = Dir::new("recover");
        let mut store = Store::open(&dir.0, 10).unwrap();
        store.record((vec![record("a", 0)], vec![]), 2, Default::default(), vec![event(1)], true).unwrap();
        store.append(&event(1)).unwrap();
        // The daemon dies after the journal took the change, before the history did.
        store.record((vec![record("b", 1)], vec![]), 3, Default::default(), vec![event(2), event(3)], true).unwrap();
        let mut next = Store::open(&dir.0, 10).unwrap();
        next.load().unwrap();
        assert_eq!(next.recover_history().unwrap(), 2);
        assert_eq!(dir.events(), [event(1), event(2), event(3)]);
        // Once only.
        let mut again = Store::open(&dir.0, 10).unwrap();
        again.load().unwrap();
        assert_eq!(again.recover_history().unwrap(), 0);
        assert_eq!(dir.events().len(), 3);
    }

    #[test]
    fn the_kernel_side_is_written_only_when_it_changed() {
        let dir = Dir::new("kernel-side");
        let mut store = Store::open(&dir.0, 10).unwrap();
        let shaping = ShapingRecord { backend: Some(crate::shaping::Backend::Netem), ..Default::default() };
        store.record((vec![record("a", 0)], vec![]), 2, (vec![], shaping.clone()), vec![], true).unwrap();
        assert!(!store.kernel_changed(&(vec![], shaping.clone())));
        store.record((vec![record("b", 1)], vec![]), 3, (vec![], shaping.clone()), vec![], true).unwrap();
        let lines = std::fs::read_to_string(dir.0.join(JOURNAL)).unwrap();
        assert_eq!(lines.matches("shaping").count(), 1, "{lines}");
        assert_eq!(Store::open(&dir.0, 10).unwrap().load().unwrap().unwrap().shaping, shaping);
    }

    #[test]
    fn events_written_before_experiments_were_recorded_still_read() {
        let old = r#"{"at":1,"actor":{"uid":0},"action":"apply","faults":["a"],"result":"ok"}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        assert_eq!((e.experiment, e.faults), (None, vec!["a".to_owned()]));
        let new = Event { experiment: Some("db".into()), ..event(1) };
        let line = serde_json::to_string(&new).unwrap();
        assert!(line.contains(r#""experiment":"db""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), new);
        assert!(!serde_json::to_string(&event(1)).unwrap().contains("experiment"), "absent when none");
    }

    fn refusal(n: u64) -> Event {
        Event {
            actor: Actor { uid: Some(1000), pid: Some(2), comm: Some("x".into()) },
            action: AuditAction::Request("DELETE /v1/faults".into()),
            faults: vec![],
            result: "refused: permission denied".into(),
            ..event(n)
        }
    }

    fn ats(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.at).collect()
    }

    #[test]
    fn history_survives_a_torn_line_and_is_trimmed() {
        let dir = Dir::new("torn");
        let mut store = Store::open(&dir.0, 3).unwrap();
        store.append(&event(1)).unwrap();
        dir.write(b"{\"at\": 2, \"act");
        // A restarted daemon skips the torn line and loses nothing else.
        let mut store = Store::open(&dir.0, 3).unwrap();
        store.append(&event(3)).unwrap();
        assert_eq!(ats(&store.reader().read(10).unwrap()), [1, 3]);
        for n in 4..=8 {
            store.append(&event(n)).unwrap();
        }
        let at = ats(&store.reader().read(10).unwrap());
        assert!(at.len() <= 6 && at.ends_with(&[6, 7, 8]), "{at:?}");
        assert_eq!(ats(&store.reader().read(2).unwrap()), [7, 8]);

        assert!(store.load().unwrap().is_none());
        let state = State { boot_id: "b".into(), next_id: 7, ..Default::default() };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap().unwrap().next_id, 7);
        assert!(!dir.0.join("state.tmp").exists());
    }

    #[test]
    fn a_torn_last_line_is_not_glued_to_the_next_event() {
        let dir = Dir::new("glued");
        let mut store = Store::open(&dir.0, 100).unwrap();
        store.append(&event(1)).unwrap();
        let line = serde_json::to_vec(&event(2)).unwrap();
        dir.write(&line[..line.len() / 2]);
        let mut store = Store::open(&dir.0, 100).unwrap();
        store.append(&event(3)).unwrap();
        let text = dir.history();
        let last = text.strip_suffix(b"\n").unwrap().rsplit(|b| *b == b'\n').next().unwrap();
        assert_eq!(serde_json::from_slice::<Event>(last).unwrap(), event(3), "{}", String::from_utf8_lossy(&text));
        assert_eq!(ats(&store.reader().read(10).unwrap()), [1, 3]);
        // The same when the line was torn by a failed write, without a restart.
        store.torn = true;
        store.append(&event(4)).unwrap();
        assert_eq!(ats(&Store::open(&dir.0, 100).unwrap().reader().read(10).unwrap()), [1, 3, 4]);
    }

    #[test]
    fn a_bad_line_hides_nothing_after_it_and_trimming_keeps_good_lines() {
        let dir = Dir::new("bad");
        let mut store = Store::open(&dir.0, 10).unwrap();
        store.append(&event(1)).unwrap();
        dir.write(b"garbage\n");
        // Torn in the middle of a UTF-8 character (a full disk), then ended by the next write.
        let mut line = serde_json::to_vec(&Event { result: "error: d\u{e9}j\u{e0}".into(), ..event(2) }).unwrap();
        let cut = line.iter().position(|b| *b == 0xc3).unwrap() + 1;
        line.truncate(cut);
        dir.write(&line);
        dir.write(b"\n\xff\xfe not UTF-8\n");
        let mut store = Store::open(&dir.0, 10).unwrap();
        assert_eq!((store.accepted, store.refused), (1, 0));
        for n in 3..=15 {
            store.append(&event(n)).unwrap();
        }
        assert_eq!(ats(&dir.events()), [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(ats(&store.reader().read(100).unwrap()), (6..=15).collect::<Vec<_>>(), "at most history_limit");
        // The trim at 20 events keeps the newest 10, all of them good.
        for n in 16..=21 {
            store.append(&event(n)).unwrap();
        }
        assert_eq!(ats(&dir.events()), (12..=21).collect::<Vec<_>>());
        let text = dir.history();
        assert_eq!(text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 10);
        assert!(text.split(|b| *b == b'\n').all(|l| l.is_empty() || serde_json::from_slice::<Event>(l).is_ok()));
        assert_eq!(ats(&Store::open(&dir.0, 10).unwrap().reader().read(100).unwrap()), (12..=21).collect::<Vec<_>>());
    }

    #[test]
    fn refusals_never_evict_accepted_events() {
        let dir = Dir::new("budget");
        let mut store = Store::open(&dir.0, 100).unwrap();
        assert_eq!(Budget::of(100), Budget { accepted: 100, refused: 10 });
        for n in 1..=3 {
            store.append(&event(n)).unwrap();
        }
        for n in 100..1100 {
            store.append(&refusal(n)).unwrap();
        }
        let history = dir.events();
        assert_eq!(ats(&history[..3]), [1, 2, 3]);
        let refused: Vec<&Event> = history.iter().filter(|e| e.is_refusal()).collect();
        assert!((10..20).contains(&refused.len()) && refused.last().unwrap().at == 1099, "{history:?}");
        assert!(dir.history().len() < 20 * 200, "{} bytes", dir.history().len());
        // Accepted events are trimmed to their own budget, and keep the newest refusals.
        for n in 6000..6250 {
            store.append(&event(n)).unwrap();
        }
        let history = dir.events();
        let accepted: Vec<u64> = history.iter().filter(|e| !e.is_refusal()).map(|e| e.at).collect();
        assert!((100..200).contains(&accepted.len()) && accepted.ends_with(&(6150..6250).collect::<Vec<_>>()));
        assert_eq!(history.iter().filter(|e| e.is_refusal()).count(), 10, "the newest refusals are kept");
    }

    #[test]
    fn the_reader_reads_from_the_end_and_is_capped() {
        let dir = Dir::new("reader");
        let mut store = Store::open(&dir.0, 50).unwrap();
        let reader = store.reader();
        assert!(reader.read(10).unwrap().is_empty(), "no file yet");
        // Lines longer than a chunk, between short ones.
        for n in 1..=30 {
            let mut e = event(n);
            if n % 7 == 0 {
                e.faults = (0..20_000).map(|i| format!("fault-{i}")).collect();
            }
            store.append(&e).unwrap();
        }
        assert!(dir.history().len() > 3 * CHUNK);
        assert_eq!(ats(&reader.read(5).unwrap()), [26, 27, 28, 29, 30]);
        assert_eq!(ats(&reader.read(1000).unwrap()), (1..=30).collect::<Vec<_>>());
        assert_eq!(reader.read(3).unwrap()[0].faults.len(), 20_000);
        // A line being written (no newline yet) is passed over.
        dir.write(b"{\"at\":31,");
        assert_eq!(ats(&reader.read(2).unwrap()), [29, 30]);
        assert_eq!(reader.max(), 50);
        // A line longer than any event (damage) is passed over without being held.
        dir.write(&vec![b'x'; MAX_LINE + CHUNK + 1]);
        dir.write(b"\n");
        store.append(&event(31)).unwrap();
        assert_eq!(ats(&reader.read(1000).unwrap()), (1..=31).collect::<Vec<_>>());
        for n in 32..=120 {
            store.append(&event(n)).unwrap();
        }
        assert_eq!(reader.read(1000).unwrap().len(), 50, "at most history_limit");
    }

    #[test]
    fn state_files_are_not_opened_through_symlinks() {
        let dir = Dir::new("symlink");
        let mut store = Store::open(&dir.0, 10).unwrap();
        let elsewhere = dir.0.join("elsewhere");
        std::fs::write(&elsewhere, b"untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.0.join(HISTORY)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.0.join("state.json")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.0.join("state.tmp")).unwrap();
        assert_eq!(store.append(&event(1)).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(store.load().unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(store.reader().read(10).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert!(Store::open(&dir.0, 10).is_err());
        // Saving replaces the links with files of its own.
        store.save(&State::default()).unwrap();
        assert!(!dir.0.join("state.json").is_symlink());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
    }
}
