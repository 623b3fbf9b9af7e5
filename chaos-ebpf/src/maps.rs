//! The maps of chaos-common's lookup chain, declared once for every program.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use chaos_common::{
    ADDRS_CAPACITY, ActiveMap, AddrKey, Chain, Counters, DIST_SIZE, MAX_RULES, PAIRS_CAPACITY, PORTS_CAPACITY, PairKey,
    PortKey, RuleAction, SCOPES_CAPACITY, ScopeKey, ShapeState,
};

#[map]
pub(crate) static ACTIVE: Array<u32> = Array::with_max_entries(ActiveMap::LEN, 0);
#[map]
pub(crate) static ADDRS: LpmTrie<AddrKey, u32> = LpmTrie::with_max_entries(ADDRS_CAPACITY, 0);
#[map]
pub(crate) static PAIRS: HashMap<PairKey, u32> = HashMap::with_max_entries(PAIRS_CAPACITY, 0);
#[map]
pub(crate) static PORTS: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(PORTS_CAPACITY, 0);
#[map]
pub(crate) static RULES: Array<RuleAction> = Array::with_max_entries(MAX_RULES, 0);
#[map]
pub(crate) static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map]
pub(crate) static SHAPES: Array<ShapeState> = Array::with_max_entries(MAX_RULES, 0);
#[map]
pub(crate) static DIST: Array<i32> = Array::with_max_entries(DIST_SIZE, 0);
/// Per CPU, so a chain is stepped without locks (4.19 has no bpf_spin_lock): each CPU's packets
/// follow the rule's model exactly.
#[map]
pub(crate) static CHAINS: PerCpuArray<Chain> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map]
pub(crate) static SCOPES: HashMap<ScopeKey, u32> = HashMap::with_max_entries(SCOPES_CAPACITY, 0);
