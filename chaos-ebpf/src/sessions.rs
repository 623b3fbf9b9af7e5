//! The SSH guard's session map: on `sock:inet_sock_set_state`, every TCP state change of every
//! network namespace, keeps `SESSIONS` holding the established sessions whose local port is a
//! guarded one, so that the daemon need not dump the kernel's TCP table to know them.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read,
    macros::map,
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use chaos_common::{
    FIELD_ABSENT, Family, GUARD_PORTS_CAPACITY, Proto, SESSION_RECORD_MAX, SESSIONS_CAPACITY, SessionConf, SessionKey,
};

#[map]
static SESSIONS: HashMap<SessionKey, u8> = HashMap::with_max_entries(SESSIONS_CAPACITY, 0);
#[map]
static GUARD_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(GUARD_PORTS_CAPACITY, 0);
#[map]
static SESSION_CONF: Array<SessionConf> = Array::with_max_entries(1, 0);
#[map]
static SESSION_OVERFLOW: Array<u32> = Array::with_max_entries(1, 0);

/// include/net/tcp_states.h.
const TCP_ESTABLISHED: i32 = 1;
const TCP_CLOSE: i32 = 7;

/// `::ffff:0:0/96`'s third word, as wire-order bytes read natively.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Adds a session that becomes established, removes one that leaves that state (or closes).
#[inline(always)]
pub(crate) fn try_follow(ctx: &TracePointContext) -> Option<()> {
    let conf = SESSION_CONF.get(0)?;
    if conf.ready == 0 {
        return None;
    }
    let new: i32 = read(ctx, conf.newstate)?;
    let old: i32 = read(ctx, conf.oldstate)?;
    let opens = new == TCP_ESTABLISHED;
    if !opens && old != TCP_ESTABLISHED && new != TCP_CLOSE {
        return None;
    }
    // Before the field existed the tracepoint fired for TCP only.
    if conf.protocol != FIELD_ABSENT && read::<u16>(ctx, conf.protocol)? != u16::from(Proto::Tcp as u8) {
        return None;
    }
    let local_port: u16 = read(ctx, conf.sport)?;
    // SAFETY: the value is only tested for presence.
    unsafe { GUARD_PORTS.get(&local_port) }?;
    let remote: [u32; 4] = read(ctx, conf.daddr_v6)?;
    let mapped = remote[0] == 0 && remote[1] == 0 && remote[2] == V4_MAPPED;
    let key = SessionKey {
        family: if mapped { Family::V4 as u8 } else { Family::V6 as u8 },
        _pad: 0,
        local_port,
        remote_port: read(ctx, conf.dport)?,
        _pad2: 0,
        local: read(ctx, conf.saddr_v6)?,
        remote,
    };
    if opens {
        if SESSIONS.insert(key, 1u8, 0).is_err() {
            // Full: the daemon can no longer trust the map, and dumps instead.
            let flag = SESSION_OVERFLOW.get_ptr_mut(0)?;
            // SAFETY: a pointer to the array's only value, from the kernel.
            unsafe { *flag = 1 };
        }
    } else {
        let _ = SESSIONS.remove(&key);
    }
    Some(())
}

/// A field of the tracepoint's record at `offset` (from tracefs, given by the daemon).
#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset >= SESSION_RECORD_MAX - core::mem::size_of::<T>() as u32 {
        return None;
    }
    // SAFETY: bpf_probe_read checks the address; the offset stays inside the record.
    unsafe { bpf_probe_read(ctx.as_ptr().cast::<u8>().add(offset as usize).cast::<T>()).ok() }
}
