//! Shaping for the edt programs: a packet's departure time from the rule's rate, delay and
//! jitter, with the rule's state in `SHAPES` and the jitter table in `DIST`.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use chaos_common::{DIST_SCALE, DIST_SIZE, Dist, RuleAction, ShapeState};

use crate::maps::{DIST, SHAPES};

pub(crate) const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The departure time of a packet of `len` bytes that could leave at `start`, or `None` when
/// the rate's queue is full. Rate first (a bottleneck link), then delay and jitter (the path),
/// which a reordered packet (`skip_delay`) skips.
#[inline(always)]
pub(crate) fn depart(slot: u32, action: &RuleAction, start: u64, len: u64, skip_delay: bool) -> Option<u64> {
    let state = SHAPES.get_ptr_mut(slot)?;
    let mut t = start;
    if action.rate_bytes != 0 {
        // A token bucket in time: the rule's clock may lag `start` by the burst, never more.
        let floor = start.saturating_sub(action.burst_ns);
        // SAFETY: a map value valid for the run; races between CPUs are tolerated (ShapeState).
        let last = unsafe { (*state).t_last };
        let next = if last > floor { last } else { floor } + len * NSEC_PER_SEC / action.rate_bytes;
        if next > start + action.queue_ns {
            return None;
        }
        // SAFETY: as above.
        unsafe { (*state).t_last = next };
        if next > t {
            t = next;
        }
    }
    if skip_delay {
        return Some(t);
    }
    Some(t + delay(action, state))
}

/// The delay for one packet: `delay_ns` plus jitter drawn as netem's `tabledist` does, with
/// netem's correlation (`get_crandom`), never below zero.
#[inline(always)]
fn delay(action: &RuleAction, state: *mut ShapeState) -> u64 {
    let jitter = u64::from(action.jitter_ns);
    if jitter == 0 {
        return action.delay_ns;
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let mut rnd = u64::from(unsafe { bpf_get_prandom_u32() });
    if action.correlation != 0 {
        let rho = u64::from(action.correlation) + 1;
        // SAFETY: a map value valid for the run (see `depart`).
        let last = u64::from(unsafe { (*state).last_rnd });
        // Fits 64 bits: at most (2^32 - 1) * 2^32.
        rnd = (rnd * ((1 << 32) - rho) + last * rho) >> 32;
        // SAFETY: as above.
        unsafe { (*state).last_rnd = rnd as u32 };
    }
    if action.distribution == Dist::Uniform as u32 {
        // jitter <= MAX_JITTER_NS, so 2 * jitter fits the 32 bits rnd has.
        return (action.delay_ns + rnd % (2 * jitter)).saturating_sub(jitter);
    }
    let Some(&t) = DIST.get((rnd as u32) % DIST_SIZE) else { return action.delay_ns };
    // netem's `x / NETEM_DIST_SCALE + (sigma / NETEM_DIST_SCALE) * t`, rounded, on magnitudes
    // (the BPF ISA before v4 has no signed division); DIST_SCALE is 2^13.
    let scale = DIST_SCALE as u64;
    let magnitude = u64::from(t.unsigned_abs());
    let x = ((jitter % scale) * magnitude + scale / 2) / scale + (jitter / scale) * magnitude;
    if t >= 0 { action.delay_ns + x } else { action.delay_ns.saturating_sub(x) }
}
