//! Many entries of one map in one system call (`BPF_MAP_UPDATE_BATCH`, Linux 5.6+): loading
//! 10,000 faults writes 40,000 rule-slot entries and 20,000 pairs, one call each otherwise.
//! Kernels without it (4.19, 5.4), and maps without it (LPM tries; per-CPU arrays on 5.10),
//! answer that they cannot, and the caller writes the entries one by one.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{
    Pod,
    maps::{MapData, MapError},
};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr` as the batch commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `entries` into the map `fd` with one `BPF_MAP_UPDATE_BATCH` where the kernel has it
/// for this map (and `batch`: the daemon may use it), else entry by entry with `one`. A per-CPU
/// map (`per_cpu`: the possible CPUs) gets each value on every CPU.
pub fn put_all<K: Pod, V: Pod>(
    batch: bool,
    fd: RawFd,
    entries: &[(K, V)],
    per_cpu: Option<usize>,
    mut one: impl FnMut(&K, V) -> Result<(), MapError>,
) -> Result<(), MapError> {
    if batch && entries.len() > 1 {
        let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
        let values = values(entries.iter().map(|(_, v)| *v), per_cpu);
        if update(fd, &keys, &values).map_err(MapError::IoError)? {
            return Ok(());
        }
    }
    entries.iter().try_for_each(|(k, v)| one(k, *v))
}

/// The bytes of `values`, as a map's values are laid out in a batch: each one `per_cpu` times,
/// padded to 8 bytes, for a per-CPU map, else as it is.
fn values<V: Pod>(values: impl Iterator<Item = V>, per_cpu: Option<usize>) -> Vec<u8> {
    let size = size_of::<V>();
    let mut out = Vec::new();
    for v in values {
        // SAFETY: `V: Pod` is plain data of `size` bytes with no padding left uninitialised.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const v).cast::<u8>(), size) };
        for _ in 0..per_cpu.unwrap_or(1) {
            out.extend_from_slice(bytes);
            if per_cpu.is_some() {
                out.resize(out.len() + size.next_multiple_of(8) - size, 0);
            }
        }
    }
    out
}

/// Writes `keys[i]` → the i-th value of `values` (laid out by [`values`]) into the map `fd`
/// with one call. `Ok(false)`: this kernel has no batch for this map, and nothing was written.
fn update<K: Pod>(fd: RawFd, keys: &[K], values: &[u8]) -> io::Result<bool> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: bpf(2) reads `count` keys and values from the buffers the attr points at, which
    // are that long (the map's key size is `K`'s; `values` is laid out for the map), and
    // writes only `attr.count`.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &raw mut attr, size_of::<BatchAttr>() as libc::c_uint)
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    // EINVAL: an unknown command (before 5.6); EOPNOTSUPP / ENOTSUPP (524): no batch for this
    // map (5.10 has it for arrays, not per-CPU arrays). Refused before any entry, the kernel
    // leaves `count` as given; one that stopped at an entry writes back how many it wrote,
    // fewer than given.
    let untouched = attr.count == 0 || attr.count as usize == keys.len();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524) if untouched => Ok(false),
        _ => Err(e),
    }
}

/// Whether this kernel has `BPF_MAP_UPDATE_BATCH` for the map `fd` (an array): a batch of no
/// entries is a no-op where the command exists.
pub fn probe(fd: RawFd) -> Result<(), String> {
    match update::<u32>(fd, &[], &[]) {
        Ok(true) => Ok(()),
        Ok(false) => Err("this kernel has no BPF_MAP_UPDATE_BATCH (Linux 5.6+)".into()),
        Err(e) => Err(format!("BPF_MAP_UPDATE_BATCH: {e}")),
    }
}

/// The descriptor of `map`, for [`put_all`] (which may also need the map itself, mutably).
pub fn fd(map: &MapData) -> RawFd {
    map.fd().as_fd().as_raw_fd()
}
