//! Points where a test can make the daemon die, as a SIGKILL would (nothing is cleaned up), to
//! prove that after a restart from any of them the kernel and the state agree (see
//! tests/tests/crash.rs). `CHAOS_CRASH_AT=POINT` or `POINT:N` in the daemon's environment: it
//! exits at once the Nth time (default the first) it passes POINT. Unset, a point costs a
//! load of a static.

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

/// Where a change can be cut short, in the order a change passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A removal is in the journal; the kernel has not taken it out yet.
    RemovalRecorded,
    /// The kernel's new entries are written, not yet made live.
    MapsWritten,
    /// The kernel runs the new rules; the old entries are not deleted yet.
    Flipped,
    /// Half of a journal line is written.
    JournalHalf,
    /// The kernel runs an addition that the journal does not have yet.
    KernelChanged,
    /// The change is in the journal and the kernel; the peer has no answer yet.
    Recorded,
}

impl Point {
    const ALL: [Point; 6] = [
        Point::RemovalRecorded,
        Point::MapsWritten,
        Point::Flipped,
        Point::JournalHalf,
        Point::KernelChanged,
        Point::Recorded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::RemovalRecorded => "removal-recorded",
            Point::MapsWritten => "maps-written",
            Point::Flipped => "flipped",
            Point::JournalHalf => "journal-half",
            Point::KernelChanged => "kernel-changed",
            Point::Recorded => "recorded",
        }
    }
}

static AT: OnceLock<Option<(Point, u32)>> = OnceLock::new();
static HITS: AtomicU32 = AtomicU32::new(0);
/// Points count only once the daemon serves: a start (re-adoption) passes some of them too.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Called once the daemon serves requests.
pub fn arm() {
    ARMED.store(true, Ordering::Relaxed);
}

fn at() -> Option<(Point, u32)> {
    *AT.get_or_init(|| {
        let text = std::env::var("CHAOS_CRASH_AT").ok()?;
        let (name, n) = text.split_once(':').unwrap_or((&text, "1"));
        let point = Point::ALL.into_iter().find(|p| p.name() == name)?;
        Some((point, n.parse().ok()?))
    })
}

/// Whether the daemon dies at this pass of `point`: then the caller does what it must do last
/// (half a write, say) and calls [`die`].
pub fn reached(point: Point) -> bool {
    match at() {
        Some((p, n)) if p == point && ARMED.load(Ordering::Relaxed) => HITS.fetch_add(1, Ordering::Relaxed) + 1 == n,
        _ => false,
    }
}

/// Dies here if a test asked for it.
pub fn hit(point: Point) {
    if reached(point) {
        die(point);
    }
}

pub fn die(point: Point) -> ! {
    tracing::error!(point = point.name(), "dying at a crash point, as CHAOS_CRASH_AT asked");
    // As a SIGKILL: no destructor runs, no file is flushed or removed, nothing is detached.
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(137) }
}
