//! Many entries of one map in one system call (`BPF_MAP_UPDATE_BATCH`, Linux 5.6+): loading
//! 10,000 faults writes 40,000 rule-slot entries and 20,000 pairs, one call each otherwise.
//! Kernels without it (4.19, 5.4), and maps without it (LPM tries), answer that they cannot,
//! and the caller writes the entries one by one.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

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

/// The bytes of `values`, as a map's values are laid out in a batch: each one `per_cpu` times,
/// padded to 8 bytes, for a per-CPU map (`per_cpu`: the possible CPUs), else as it is.
pub fn values<V: Pod>(values: impl IntoIterator<Item = V>, per_cpu: Option<usize>) -> Vec<u8> {
    let size = size_of::<V>();
    let mut out = Vec::new();
    for v in values {
        // SAFETY: `V: Pod` is plain data of `size` bytes with no padding left uninitialised.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const v).cast::<u8>(), size) };
        match per_cpu {
            None => out.extend_from_slice(bytes),
            Some(cpus) => {
                for _ in 0..cpus {
                    out.extend_from_slice(bytes);
                    out.resize(out.len() + size.next_multiple_of(8) - size, 0);
                }
            }
        }
    }
    out
}

/// Writes `keys[i]` → the i-th value of `values` (laid out by [`values`]) into `map` with one
/// call. `Ok(false)`: this kernel has no batch for this map, and nothing was written.
pub fn update<K: Pod>(map: &MapData, keys: &[K], values: &[u8]) -> io::Result<bool> {
    if keys.is_empty() {
        return Ok(true);
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
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
    // EINVAL: an unknown command (before 5.6); EOPNOTSUPP / ENOTSUPP (524): no batch for this map.
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524) if attr.count == 0 => Ok(false),
        _ => Err(e),
    }
}
