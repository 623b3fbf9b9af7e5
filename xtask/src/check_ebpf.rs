//! Static check of the eBPF object against the oldest kernel we support (4.19): per program,
//! the instructions it loads with (its section plus the functions it calls), the helpers it
//! calls, and no construct 4.19's verifier refuses.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex, SymbolKind};

/// 4.19's verifier limit per program (raised to 1M processed instructions in 5.2).
const MAX_INSNS: usize = 4096;

/// BPF helpers by id, as in include/uapi/linux/bpf.h. 4.19 ends at 83
/// (skb_ancestor_cgroup_id); sk_lookup_tcp (84) and everything after came with 4.20 or later.
const HELPERS_4_19: [&str; 84] = [
    "unspec",
    "map_lookup_elem",
    "map_update_elem",
    "map_delete_elem",
    "probe_read",
    "ktime_get_ns",
    "trace_printk",
    "get_prandom_u32",
    "get_smp_processor_id",
    "skb_store_bytes",
    "l3_csum_replace",
    "l4_csum_replace",
    "tail_call",
    "clone_redirect",
    "get_current_pid_tgid",
    "get_current_uid_gid",
    "get_current_comm",
    "get_cgroup_classid",
    "skb_vlan_push",
    "skb_vlan_pop",
    "skb_get_tunnel_key",
    "skb_set_tunnel_key",
    "perf_event_read",
    "redirect",
    "get_route_realm",
    "perf_event_output",
    "skb_load_bytes",
    "get_stackid",
    "csum_diff",
    "skb_get_tunnel_opt",
    "skb_set_tunnel_opt",
    "skb_change_proto",
    "skb_change_type",
    "skb_under_cgroup",
    "get_hash_recalc",
    "get_current_task",
    "probe_write_user",
    "current_task_under_cgroup",
    "skb_change_tail",
    "skb_pull_data",
    "csum_update",
    "set_hash_invalid",
    "get_numa_node_id",
    "skb_change_head",
    "xdp_adjust_head",
    "probe_read_str",
    "get_socket_cookie",
    "get_socket_uid",
    "set_hash",
    "setsockopt",
    "skb_adjust_room",
    "redirect_map",
    "sk_redirect_map",
    "sock_map_update",
    "xdp_adjust_meta",
    "perf_event_read_value",
    "perf_prog_read_value",
    "getsockopt",
    "override_return",
    "sock_ops_cb_flags_set",
    "msg_redirect_map",
    "msg_apply_bytes",
    "msg_cork_bytes",
    "msg_pull_data",
    "bind",
    "xdp_adjust_tail",
    "skb_get_xfrm_state",
    "get_stack",
    "skb_load_bytes_relative",
    "fib_lookup",
    "sock_hash_update",
    "msg_redirect_hash",
    "sk_redirect_hash",
    "lwt_push_encap",
    "lwt_seg6_store_bytes",
    "lwt_seg6_adjust_srh",
    "lwt_seg6_action",
    "rc_repeat",
    "rc_keydown",
    "skb_cgroup_id",
    "get_current_cgroup_id",
    "get_local_storage",
    "sk_select_reuseport",
    "skb_ancestor_cgroup_id",
];

/// `bpf_set_retval` (5.18), which only the `*_errno` connect programs call.
const SET_RETVAL: usize = 187;

/// Map types 4.19 lacks that an object could still declare (ringbuf: 5.8).
const MAP_TYPE_RINGBUF: u32 = 27;

/// The object chaos-daemon's build.rs embedded most recently.
pub fn built_object() -> anyhow::Result<PathBuf> {
    let build = crate::workspace().join("target/debug/build");
    std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("chaos-daemon-"))
        .map(|e| e.path().join("out/chaos"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no eBPF object under target/debug/build: did the build run?")
}

struct Func {
    section: SectionIndex,
    start: u64,
    size: u64,
}

pub fn check(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)?;
    let mut problems = Vec::new();

    for section in file.sections() {
        let name = section.name().unwrap_or("");
        if (name.starts_with(".data") || name.starts_with(".bss") || name.starts_with(".rodata")) && section.size() > 0
        {
            problems.push(format!("section {name}: global data needs 5.2; use an Array map"));
        }
        if name == "maps" {
            // Legacy map definitions: 7 u32 each, the first being the map type.
            for def in section.data()?.chunks(28) {
                if def.len() >= 4 && u32::from_le_bytes(def[..4].try_into()?) == MAP_TYPE_RINGBUF {
                    problems.push("a ring buffer map needs 5.8".into());
                }
            }
        }
    }

    let funcs: BTreeMap<String, Func> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            Some((s.name().ok()?.to_owned(), Func { section: s.section_index()?, start: s.address(), size: s.size() }))
        })
        .collect();
    let programs: Vec<&String> = funcs
        .iter()
        .filter(|(_, f)| {
            file.section_by_index(f.section).ok().and_then(|s| s.name().ok().map(|n| n != ".text")).unwrap_or(false)
        })
        .map(|(n, _)| n)
        .collect();
    if programs.is_empty() {
        bail!("{}: no programs found", path.display());
    }

    println!("{:<16} {:>6}  helpers", "program", "insns");
    for name in programs {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.clone()];
        let (mut insns, mut helpers) = (0usize, BTreeSet::new());
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            let func = funcs.get(&f).with_context(|| format!("{name} calls unknown function {f}"))?;
            let section = file.section_by_index(func.section)?;
            let relocs: BTreeMap<u64, object::Symbol> = section
                .relocations()
                .filter_map(|(off, r)| match r.target() {
                    RelocationTarget::Symbol(i) => Some((off, file.symbol_by_index(i).ok()?)),
                    _ => None,
                })
                .collect();
            let code = &section.data()?[func.start as usize..(func.start + func.size) as usize];
            insns += code.len() / 8;
            for (i, insn) in code.chunks_exact(8).enumerate() {
                let (op, regs) = (insn[0], insn[1]);
                let imm = i32::from_le_bytes(insn[4..8].try_into()?);
                let class = op & 0x07;
                let at = func.start + 8 * i as u64;
                match (class, op & 0xf0) {
                    (0x06, _) => {
                        problems.push(format!("{name}: JMP32 instruction at {f}+{i} needs 5.1 (build with cpu v2)"))
                    }
                    (0x05, 0x80) if regs >> 4 == 1 => {
                        // bpf-to-bpf call: follow it through its relocation.
                        // A call to a static function is relocated against its section's
                        // symbol, with the callee `imm + 1` instructions into the section.
                        let target = relocs.get(&at).and_then(|sym| match sym.kind() {
                            SymbolKind::Section => {
                                let start = sym.address() + 8 * u64::try_from(i64::from(imm) + 1).ok()?;
                                let section = sym.section_index()?;
                                funcs
                                    .iter()
                                    .find(|(_, g)| g.section == section && g.start == start)
                                    .map(|(n, _)| n.clone())
                            }
                            _ => sym.name().ok().map(str::to_owned),
                        });
                        match target {
                            Some(target) => todo.push(target),
                            None => problems.push(format!("{name}: unresolved call at {f}+{i}")),
                        }
                    }
                    (0x05, 0x80) => {
                        let id = usize::try_from(imm).unwrap_or(usize::MAX);
                        match HELPERS_4_19.get(id) {
                            Some(h) => {
                                helpers.insert(format!("{h}({id})"));
                            }
                            // The daemon loads these programs only where the kernel accepts them.
                            None if name.ends_with("_errno") && id == SET_RETVAL => {
                                helpers.insert(format!("set_retval({id}, 5.18+)"));
                            }
                            None => problems.push(format!("{name}: calls helper {imm}, which 4.19 lacks")),
                        }
                    }
                    _ => {}
                }
            }
            if let Some(i) = find_loop(code) {
                problems.push(format!("{name}: a loop through {f}+{i}, which 4.19 refuses (unroll it)"));
            }
        }
        if insns > MAX_INSNS {
            problems.push(format!("{name}: {insns} instructions, more than 4.19's {MAX_INSNS}"));
        }
        println!("{name:<16} {insns:>6}  {}", helpers.into_iter().collect::<Vec<_>>().join(", "));
    }
    if !problems.is_empty() {
        bail!("{} is not loadable on 4.19:\n  {}", path.display(), problems.join("\n  "));
    }
    println!(
        "ok: every program fits 4.19 (< {MAX_INSNS} instructions, 4.19 helpers, no loops, no JMP32, no global data)"
    );
    // Writing skb->tstamp is a context access, not a helper: 4.19's verifier refuses it, so the
    // daemon loads the *_edt programs only where it probed the edt backend.
    println!("note: the *_edt programs also write skb->tstamp (5.0+); the daemon loads them only on such kernels");
    println!(
        "note: chaos_cg_ingress and the connect programs use helpers 4.19 has but not for their program types \
         (5.7 era), the *_errno ones set_retval (5.18): the daemon loads them where the kernel accepts them"
    );
    Ok(())
}

/// The instruction where a cycle closes, if the control flow has one. Like 4.19's `check_cfg`,
/// a jump back to an instruction still on the depth-first path is a loop; other backward
/// jumps are only code layout.
fn find_loop(code: &[u8]) -> Option<usize> {
    let n = code.len() / 8;
    let successors = |i: usize| -> Vec<usize> {
        let insn = &code[8 * i..8 * i + 8];
        let (op, off) = (insn[0], i64::from(i16::from_le_bytes([insn[2], insn[3]])));
        let target = || usize::try_from(i as i64 + 1 + off).ok();
        match (op & 0x07, op & 0xf0) {
            // ld_imm64 takes two slots.
            (0x00, _) if op == 0x18 => vec![i + 2],
            (0x05 | 0x06, 0x90) => vec![],                  // exit
            (0x05 | 0x06, 0x80) => vec![i + 1],             // call
            (0x05, 0x00) => target().into_iter().collect(), // ja
            (0x05 | 0x06, _) => [Some(i + 1), target()].into_iter().flatten().collect(),
            _ => vec![i + 1],
        }
    };
    // 0 = unseen, 1 = on the path, 2 = done.
    let mut state = vec![0u8; n];
    let mut stack = vec![(0usize, successors(0), 0usize)];
    state[0] = 1;
    while let Some((node, succ, next)) = stack.last_mut() {
        if let Some(&s) = succ.get(*next) {
            *next += 1;
            if s >= n {
                continue;
            }
            match state[s] {
                1 => return Some(*node),
                0 => {
                    state[s] = 1;
                    let succ = successors(s);
                    stack.push((s, succ, 0));
                }
                _ => {}
            }
        } else {
            state[*node] = 2;
            stack.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_loop;

    fn insn(op: u8, off: i16) -> [u8; 8] {
        let o = off.to_le_bytes();
        [op, 0, o[0], o[1], 0, 0, 0, 0]
    }

    fn code(insns: &[[u8; 8]]) -> Vec<u8> {
        insns.concat()
    }

    #[test]
    fn loops_are_found_and_layout_is_not_a_loop() {
        const MOV: u8 = 0xb7;
        const JA: u8 = 0x05;
        const JEQ: u8 = 0x15;
        const EXIT: u8 = 0x95;
        // 0: r0 = 0; 1: if r1 == 0 goto -2 (back to 0); 2: exit
        assert_eq!(find_loop(&code(&[insn(MOV, 0), insn(JEQ, -2), insn(EXIT, 0)])), Some(1));
        // 0: goto +2; 1: exit; 2: r0 = 0; 3: goto -3 (to 1, not on the path back to 3)
        assert_eq!(find_loop(&code(&[insn(JA, 2), insn(EXIT, 0), insn(MOV, 0), insn(JA, -3)])), None);
    }
}
