//! The DNS programs and their name tables: loaded once (a kernel that refuses them refuses
//! dns faults only), and `DNS_NAMES` kept equal to what the started dns faults need, entry by
//! entry (see `engine::plan::dns_names`).

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapData, ProgramArray, lpm_trie::Key},
    programs::SchedClassifier,
};
use chaos_common::{
    DNS_TABLE_FORWARD, DnsForm, DnsNameKey, PROG_DNS, PROG_DNS_ACT, PROG_DNS_PREFIX, dns_lower_table, map_names,
};

use super::{KernelError, attach, backend::verifier_error, map};

/// `DNS_NAMES` entries: (LPM prefix length, key) and value.
pub type Names = BTreeMap<(u32, DnsNameKey), u32>;

/// The name table and what is written in it.
pub(super) struct Dns {
    names: LpmTrie<MapData, DnsNameKey, u32>,
    written: Names,
    /// `DNS_TABLES`, kept equal to which tables of `written` have forward entries.
    tables: Array<MapData, u32>,
    /// Whether the programs loaded, or why not.
    pub(super) ready: Result<(), String>,
    /// Held open for the daemon's life: the programs of the object loaded after these (the edt
    /// ones, by `select_backend`) name them by the descriptors the loader gave them, which
    /// these would close if dropped (5.10 then refused chaos_egress_edt: "fd 20 is not
    /// pointing to valid bpf_map").
    _lower: Option<Array<MapData, [u8; 256]>>,
    _progs: Option<ProgramArray<MapData>>,
}

impl Dns {
    /// Loads the three DNS programs into `DNS_PROGS` (in tail-call order) once `DNS_LOWER` is
    /// filled. `adopting`: a previous daemon's `DNS_NAMES` (pinned) is read back, so that
    /// only what changes is written.
    pub(super) fn load(ebpf: &mut Ebpf, adopting: bool) -> Result<Self, KernelError> {
        let names: LpmTrie<MapData, DnsNameKey, u32> = map(ebpf, map_names::DNS_NAMES)?;
        let written = if adopting {
            names
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v): (Key<DnsNameKey>, u32)| ((k.prefix_len(), k.data()), v))
                .collect()
        } else {
            Names::new()
        };
        let tables = map(ebpf, map_names::DNS_TABLES)?;
        let mut lower = map(ebpf, map_names::DNS_LOWER);
        let mut progs = map(ebpf, map_names::DNS_PROGS);
        let ready = match (lower.as_mut(), progs.as_mut()) {
            (Ok(lower), Ok(progs)) => programs(ebpf, lower, progs),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        if let Err(why) = &ready {
            tracing::warn!("no dns faults: {why}");
        }
        Ok(Self { names, written, tables, ready, _lower: lower.ok(), _progs: progs.ok() })
    }

    /// Makes the table hold `target`: new and changed entries, then (with `delete`) the
    /// entries `target` lacks. A rule's entries go in before its rule does and out after.
    /// A table's `DNS_TABLES` bit is set with its first forward entry, and cleared with the
    /// deletes.
    pub(super) fn write(&mut self, target: &Names, delete: bool) -> Result<(), KernelError> {
        let err = |source| KernelError::Map { map: map_names::DNS_NAMES, source };
        let (before, wanted) = (forward_tables(&self.written), forward_tables(target));
        for slot in wanted.difference(&before) {
            self.tables
                .set(*slot, DNS_TABLE_FORWARD, 0)
                .map_err(|source| KernelError::Map { map: map_names::DNS_TABLES, source })?;
        }
        for (&(len, key), &slot) in target {
            if self.written.get(&(len, key)) != Some(&slot) {
                self.names.insert(&Key::new(len, key), slot, 0).map_err(err)?;
                self.written.insert((len, key), slot);
            }
        }
        if delete {
            for slot in before.difference(&wanted) {
                // A bit left set only costs a lookup that finds nothing.
                let _ = self.tables.set(*slot, 0, 0);
            }
            let gone: Vec<(u32, DnsNameKey)> =
                self.written.keys().filter(|k| !target.contains_key(k)).copied().collect();
            for (len, key) in gone {
                // Absent already counts as removed.
                let _ = self.names.remove(&Key::new(len, key));
                self.written.remove(&(len, key));
            }
        }
        Ok(())
    }
}

/// The tables (rule slots) with forward (`prefix.*`) entries.
fn forward_tables(names: &Names) -> BTreeSet<u32> {
    names.keys().filter(|(_, k)| k.form == DnsForm::Forward as u8).map(|(_, k)| u32::from(k.slot)).collect()
}

/// `DNS_PROGS` is pinned: its entries (which hold the programs) outlive this daemon, so dns
/// faults go on acting, and end on time, while no daemon runs.
fn programs(
    ebpf: &mut Ebpf,
    lower: &mut Array<MapData, [u8; 256]>,
    progs: &mut ProgramArray<MapData>,
) -> Result<(), String> {
    lower.set(0, dns_lower_table(), 0).map_err(|e| format!("writing {}: {e}", map_names::DNS_LOWER))?;
    for (index, name) in [PROG_DNS, PROG_DNS_PREFIX, PROG_DNS_ACT].into_iter().enumerate() {
        let prog: &mut SchedClassifier = attach::program(ebpf, name).map_err(|e| e.to_string())?;
        prog.load().map_err(|e| verifier_error(name, e).to_string())?;
        let fd = prog.fd().map_err(|e| e.to_string())?;
        progs.set(index as u32, fd, 0).map_err(|e| format!("writing {}: {e}", map_names::DNS_PROGS))?;
    }
    Ok(())
}
