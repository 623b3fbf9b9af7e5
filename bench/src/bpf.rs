//! The three bpf(2) commands the per-packet benchmark needs, called directly: opening a pinned
//! program, loading an empty one to measure BPF_PROG_TEST_RUN's own cost, and running a program
//! on a packet many times (or once, to see what it made of the packet). aya does not expose
//! BPF_PROG_TEST_RUN.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `union bpf_attr`, as bytes: each command reads the fields it knows at fixed offsets.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(&mut self, offset: usize, v: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, offset: usize, v: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(self.0[offset..offset + 4].try_into().unwrap())
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: the kernel reads (and for TEST_RUN writes) at most size_of::<Attr>() bytes of
    // attr, and the pointers in it point to buffers that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

fn fd(raw: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw as i32) }
}

/// The program pinned at `path`.
pub fn pinned(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let raw = bpf(BPF_OBJ_GET, Attr::new().u64(0, c.as_ptr() as u64)).with_context(|| format!("{}", path.display()))?;
    Ok(fd(raw))
}

/// A TC program that only returns TC_ACT_UNSPEC (`r0 = -1; exit`): what running any program
/// through BPF_PROG_TEST_RUN costs, the baseline the others are compared with.
pub fn empty_program() -> anyhow::Result<OwnedFd> {
    // mov64 r0, -1 (opcode 0xb7, imm -1); exit (0x95).
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), 0x95];
    let insns = insns.map(|i| if cfg!(target_endian = "little") { i } else { i.swap_bytes() });
    let license = c"GPL";
    let mut attr = Attr::new();
    attr.u32(0, BPF_PROG_TYPE_SCHED_CLS).u32(4, 2).u64(8, insns.as_ptr() as u64).u64(16, license.as_ptr() as u64);
    Ok(fd(bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty TC program")?))
}

/// `__sk_buff` as BPF_PROG_TEST_RUN takes it (5.10+: `ifindex` picks the device the packet is
/// on, in the caller's network namespace; everything else left zero).
const SKB_SIZE: usize = 192;
const SKB_IFINDEX: usize = 40;

/// Runs `prog` `repeat` times on `frame` (an Ethernet frame) as if on device `ifindex`;
/// returns the program's verdict and the mean time per run in ns, as the kernel measured it.
/// The runs share one packet: a program that rewrites it sees its own rewrite from the second.
pub fn test_run(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> anyhow::Result<(i32, u32)> {
    let (verdict, ns, _) = run(prog, frame, ifindex, repeat, None)?;
    Ok((verdict, ns))
}

/// Runs `prog` once on `frame` as [`test_run`] does: its verdict and the packet as it left it.
pub fn test_run_out(prog: &OwnedFd, frame: &[u8], ifindex: u32) -> anyhow::Result<(i32, Vec<u8>)> {
    // Room for a program that grows the packet (a spoofed answer adds a record).
    let mut out = vec![0u8; frame.len() + 512];
    let (verdict, _, len) = run(prog, frame, ifindex, 1, Some(&mut out))?;
    out.truncate(len);
    Ok((verdict, out))
}

fn run(
    prog: &OwnedFd,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    out: Option<&mut [u8]>,
) -> anyhow::Result<(i32, u32, usize)> {
    use std::os::fd::AsRawFd as _;
    let mut ctx = [0u8; SKB_SIZE];
    ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_SIZE];
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, frame.len() as u32)
        .u64(16, frame.as_ptr() as u64)
        .u32(32, repeat)
        .u32(40, SKB_SIZE as u32)
        .u32(44, SKB_SIZE as u32)
        .u64(48, ctx.as_ptr() as u64)
        .u64(56, ctx_out.as_mut_ptr() as u64);
    if let Some(out) = out {
        // data_size_out (the buffer's size in, the packet's out) and data_out.
        attr.u32(12, out.len() as u32).u64(24, out.as_mut_ptr() as u64);
    }
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok((attr.get_u32(4) as i32, attr.get_u32(36), attr.get_u32(12) as usize))
}
