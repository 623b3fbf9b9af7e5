//! Reads what the kernel holds, independently of the daemon: the programs attached to an
//! interface, the maps they use and the entries in them, and the qdiscs.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, loaded_programs},
};
use chaos_common::{
    ActiveMap, AddrKey, CLASS_GEN_BIT, Counters, DNS_KEY_FIXED_BITS, DnsForm, DnsNameKey, PairKey, PortKey, RuleAction,
    Side, map_names, slot_of,
};

use crate::Netns;

/// Ids of the programs attached to `interface` (TCX links on both hooks, and cls_bpf filters),
/// read from inside `ns`.
pub fn attached(ns: &Netns, interface: &str) -> anyhow::Result<Vec<u32>> {
    let iface = interface.to_owned();
    let mut ids = ns.enter(move || {
        let mut ids = Vec::new();
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(&iface, hook) {
                ids.extend(progs.iter().map(|p| p.id()));
            }
        }
        ids
    })?;
    for hook in ["ingress", "egress"] {
        let filters = crate::run("tc", &["-n", &ns.name, "filter", "show", "dev", interface, hook]).unwrap_or_default();
        // `tc` prints a cls_bpf filter's program as "... id 42 tag ...".
        let words: Vec<&str> = filters.split_whitespace().collect();
        ids.extend(words.windows(2).filter(|w| w[0] == "id").filter_map(|w| w[1].parse::<u32>().ok()));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

pub fn program_loaded(id: u32) -> bool {
    loaded_programs().filter_map(Result::ok).any(|p| p.id() == id)
}

/// Fails unless every program and map id is gone from the kernel. The kernel frees them after
/// an RCU grace period: this allows it two seconds.
pub fn assert_unloaded(programs: &[u32], maps: &[u32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let left: Vec<u32> = programs.iter().copied().filter(|p| program_loaded(*p)).collect();
        let maps_left: Vec<u32> = maps.iter().copied().filter(|m| map_loaded(*m)).collect();
        if left.is_empty() && maps_left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still loaded: programs {left:?}, maps {maps_left:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether map `id` exists, asked without opening it. Opening a map by id takes a user
/// reference, and closing it drops one: done to a prog array (`DNS_PROGS`) whose last user
/// reference just went, it schedules the kernel's clearing of its entries a second time while
/// the first is pending, and the map reference that second clearing takes is never given back
/// (`prog_array_map_clear`): the test itself would leak the map.
pub fn map_loaded(id: u32) -> bool {
    // BPF_MAP_GET_NEXT_ID: the first id above `start_id`, in the attribute's second word.
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    let mut attr = [0u32; 4];
    attr[0] = id.saturating_sub(1);
    // SAFETY: bpf(2) with an attribute buffer of the size passed.
    let r =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_ID, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    r == 0 && id != 0 && attr[1] == id
}

/// Ids of the maps program `id` uses.
pub fn maps_of(id: u32) -> anyhow::Result<Vec<u32>> {
    let prog = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| anyhow::anyhow!("program {id} not loaded"))?;
    Ok(prog.map_ids()?.unwrap_or_default())
}

/// Ids of the BPF maps process `pid` holds open, read from `/proc/<pid>/fdinfo`: the daemon's
/// own maps, found whether or not any program is attached (with no fault, none is).
pub fn maps_of_process(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        // An fd closed since the listing has no fdinfo any more: skip it.
        let Ok(info) = std::fs::read_to_string(entry?.path()) else { continue };
        ids.extend(info.lines().filter_map(|l| l.strip_prefix("map_id:")?.trim().parse::<u32>().ok()));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Every entry of the maps of program `id`, by map name, in a comparable form.
pub fn map_contents(id: u32) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    maps_contents(&maps_of(id)?)
}

/// Every entry of these maps (the daemon's), by map name, in a comparable form.
pub fn maps_contents(ids: &[u32]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for &map_id in ids {
        let data = MapData::from_id(map_id)?;
        let name = data.info()?.name_as_str().unwrap_or("?").to_owned();
        let map = Map::from_map_data(data)?;
        let entries: Vec<String> = match name.as_str() {
            "ADDRS" => LpmTrie::<_, AddrKey, u32>::try_from(map)?
                .iter()
                .map(|r| r.map(|(k, v)| format!("{}/{:?}={v}", k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()?,
            "PORTS" => LpmTrie::<_, PortKey, u32>::try_from(map)?
                .iter()
                .map(|r| r.map(|(k, v)| format!("{}/{:?}={v}", k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()?,
            "PAIRS" => HashMap::<_, PairKey, u32>::try_from(map)?
                .iter()
                .map(|r| r.map(|(k, v)| format!("{k:?}={v}")))
                .collect::<Result<_, _>>()?,
            "RULES" => Array::<_, RuleAction>::try_from(map)?
                .iter()
                .map(|r| r.map(|v| format!("{v:?}")))
                .collect::<Result<_, _>>()?,
            "ACTIVE" => {
                Array::<_, u32>::try_from(map)?.iter().map(|r| r.map(|v| v.to_string())).collect::<Result<_, _>>()?
            }
            "COUNTERS" => PerCpuArray::<_, Counters>::try_from(map)?
                .iter()
                .map(|r| r.map(|v| format!("{:?}", v.iter().collect::<Vec<_>>())))
                .collect::<Result<_, _>>()?,
            _ => continue,
        };
        let mut entries = entries;
        entries.sort();
        out.insert(name, entries);
    }
    Ok(out)
}

/// `tc qdisc show dev <interface>` inside `ns`.
pub fn qdiscs(ns: &Netns, interface: &str) -> String {
    crate::run("tc", &["-n", &ns.name, "qdisc", "show", "dev", interface]).unwrap_or_default()
}

/// Ids of the programs attached directly to the cgroup `dir` for `attach_type` (a `bpf_attach_type`
/// number), as `bpftool cgroup show` lists them: BPF_PROG_QUERY without the effective flag.
pub fn cgroup_programs(dir: &std::path::Path, attach_type: u32) -> anyhow::Result<Vec<u32>> {
    use std::os::fd::AsRawFd as _;
    const BPF_PROG_QUERY: libc::c_long = 16;
    let cgroup = std::fs::File::open(dir)?;
    let mut ids = [0u32; 64];
    // union bpf_attr's query: target_fd, attach_type, query_flags, attach_flags (u32 each),
    // prog_ids (u64 pointer), prog_cnt (u32); the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    // SAFETY: bpf(2) with a query attr whose prog_ids points at `ids`, of the length it says.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len()) };
    anyhow::ensure!(rc == 0, "BPF_PROG_QUERY on {}: {}", dir.display(), std::io::Error::last_os_error());
    let count = u32::from_ne_bytes(attr[24..28].try_into()?) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// The rule slots a packet can reach in the maps a daemon pinned in `bpffs` (the values of its
/// live generation that are slots), each with the action `RULES` holds.
pub fn reachable_rules(bpffs: &std::path::Path) -> anyhow::Result<BTreeMap<u32, RuleAction>> {
    let open = |name: &str| MapData::from_pin(bpffs.join(format!("map_{name}")));
    let active: Array<_, u32> = Array::try_from(Map::Array(open(map_names::ACTIVE)?))?;
    let generation = active.get(&ActiveMap::GENERATION, 0)? & 1;
    let bit = if generation == 1 { CLASS_GEN_BIT } else { 0 };
    let ports: LpmTrie<_, PortKey, u32> = LpmTrie::try_from(Map::LpmTrie(open(map_names::PORTS)?))?;
    let rules: Array<_, RuleAction> = Array::try_from(Map::Array(open(map_names::RULES)?))?;
    let pairs: HashMap<_, PairKey, u32> = HashMap::try_from(Map::HashMap(open(map_names::PAIRS)?))?;
    let mut reachable = BTreeMap::new();
    for entry in ports.iter() {
        let (key, value) = entry?;
        let k = key.data();
        if k.class & CLASS_GEN_BIT != bit {
            continue;
        }
        // A source-port entry holds a slot; a destination-port one may (SLOT_BIT).
        match (k.side == Side::Src as u8, slot_of(value)) {
            (true, _) => reachable.insert(value, rules.get(&value, 0)?),
            (false, Some(slot)) => reachable.insert(slot, rules.get(&slot, 0)?),
            (false, None) => None,
        };
    }
    for entry in pairs.iter() {
        let (key, value) = entry?;
        if let Some(slot) = slot_of(value).filter(|_| key.src_class & CLASS_GEN_BIT == bit) {
            reachable.insert(slot, rules.get(&slot, 0)?);
        }
    }
    Ok(reachable)
}

/// The entries of the `DNS_NAMES` map a daemon pinned in `bpffs`, readable and sorted:
/// `slot:pattern=value`, the pattern's bytes as the key's prefix covers them, written from the
/// start (a reversed key turned back: `*.example.test`'s `tset.elpmaxe.` reads `.example.test`),
/// with a `*` after a forward (`api.*`) prefix.
pub fn dns_names(bpffs: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let map = MapData::from_pin(bpffs.join(format!("map_{}", map_names::DNS_NAMES)))?;
    let names: LpmTrie<_, DnsNameKey, u32> = LpmTrie::try_from(Map::LpmTrie(map))?;
    let mut out = Vec::new();
    for entry in names.iter() {
        let (key, value) = entry?;
        let k = key.data();
        let len = (key.prefix_len().saturating_sub(DNS_KEY_FIXED_BITS) / 8) as usize;
        let mut bytes: Vec<u8> = k.name[..len.min(k.name.len())].iter().copied().filter(|b| *b != 0).collect();
        let text = if k.form == DnsForm::Reversed as u8 {
            bytes.reverse();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            format!("{}*", String::from_utf8_lossy(&bytes))
        };
        out.push(format!("{}:{text}={value}", k.slot));
    }
    out.sort();
    Ok(out)
}
