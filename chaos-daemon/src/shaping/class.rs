//! netem-backend classes: htb class `cd:minor` (rate = ceil, so it never borrows) with a leaf
//! qdisc `minor:` that delays (`netem`) or just queues (`pfifo`).

use serde::{Deserialize, Serialize};

use super::{ROOT_HANDLE, ROOT_MAJOR, ShapingError, gone, htb, interface, kernel, name_of, netem};
use crate::netlink::{
    Attrs, Bytes,
    tc::{self, Mode, TCA_OPTIONS, fmt_handle},
};

/// The rate of a class that delays without shaping: 100 Gbit/s, far above any veth or NIC
/// this runs on, so HTB never holds a packet back.
const UNSHAPED_RATE_BYTES: u64 = 100_000_000_000 / 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemClass {
    /// 1..=0xfffe except 0xcd: the class is `cd:minor`, its leaf `minor:` (0 is no handle,
    /// `cd:` is our root's, `ffff:` the clsact qdisc's).
    pub minor: u16,
    pub delay_ns: u64,
    pub jitter_ns: u64,
    /// Delay correlation on netem's u32 scale ([`super::percent`]).
    pub correlation: u32,
    pub distribution: Option<Distribution>,
    /// Bits per second; None: no bandwidth limit.
    pub rate_bps: Option<u64>,
    /// None: 1 ms at the rate, at least 3200 bytes (two full-size frames).
    pub burst_bytes: Option<u32>,
    /// The leaf's queue limit (netem's or pfifo's).
    pub limit_packets: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Normal,
}

impl Distribution {
    pub fn table(self) -> Vec<i16> {
        match self {
            Distribution::Normal => super::normal_table(),
        }
    }
}

impl NetemClass {
    fn check(&self) -> Result<(), String> {
        if matches!(self.minor, 0 | ROOT_MAJOR | 0xffff) {
            return Err(format!("class minor {:#x} is reserved (0, cd and ffff cannot name a leaf)", self.minor));
        }
        if self.rate_bps.is_some_and(|r| r < 8) {
            return Err("a class rate must be at least 8 bit/s".into());
        }
        Ok(())
    }

    fn rate_bytes(&self) -> u64 {
        self.rate_bps.map_or(UNSHAPED_RATE_BYTES, |r| r / 8)
    }

    fn htb_options(&self) -> Attrs {
        let rate = self.rate_bytes();
        let burst = self.burst_bytes.unwrap_or_else(|| u32::try_from(rate / 1000).unwrap_or(u32::MAX).max(3200));
        htb::class_options(rate, burst)
    }

    /// The leaf's kind and options.
    fn leaf(&self) -> (&'static str, Attrs) {
        if self.delay_ns == 0 && self.jitter_ns == 0 {
            // tc_fifo_qopt { limit }
            let mut a = Attrs::new();
            a.put(TCA_OPTIONS, &Bytes::default().u32(self.limit_packets).0);
            return ("pfifo", a);
        }
        let o = netem::NetemOptions {
            latency_ns: self.delay_ns,
            jitter_ns: self.jitter_ns,
            correlation: self.correlation,
            distribution: self.distribution.map(Distribution::table),
            rate_bytes: None,
            limit: self.limit_packets,
        };
        ("netem", netem::options(&o))
    }
}

/// Creates or changes class `cd:minor` and its leaf. The root must be ours (netem backend).
/// A class this call created is deleted again when its leaf cannot be set.
pub fn set_class(ifindex: u32, class: &NetemClass) -> Result<(), ShapingError> {
    let interface = interface(ifindex)?;
    class.check().map_err(|reason| ShapingError::Invalid { interface: interface.clone(), reason })?;
    let classid = tc::handle(ROOT_MAJOR, class.minor);
    let what = format!("setting htb class {}", fmt_handle(classid));
    let classes = tc::classes(ifindex).map_err(kernel(&interface, "listing classes"))?;
    let existed = classes.iter().any(|c| c.handle == classid);
    tc::set_class(ifindex, ROOT_HANDLE, classid, "htb", &class.htb_options()).map_err(kernel(&interface, what))?;
    let result = set_leaf(ifindex, &interface, class, classid);
    if result.is_err() && !existed {
        // A new class without its leaf would shape without delaying: take it back.
        let _ = tc::del_class(ifindex, ROOT_HANDLE, classid);
    }
    result
}

fn set_leaf(ifindex: u32, interface: &str, class: &NetemClass, classid: u32) -> Result<(), ShapingError> {
    let leaf = tc::handle(class.minor, 0);
    let (kind, options) = class.leaf();
    let what = format!("setting the {kind} leaf {} of class {}", fmt_handle(leaf), fmt_handle(classid));
    let current = tc::qdisc_at(ifindex, classid).map_err(kernel(interface, what.clone()))?;
    // A qdisc cannot change kind in place (tc_modify_qdisc: "Invalid qdisc name: must match
    // existing qdisc"): the old leaf goes first, and HTB grafts its default pfifo meanwhile.
    // A handle-0 leaf is that default, which the replace below grafts over.
    if let Some(q) = current.filter(|q| q.handle != 0 && (q.kind != kind || q.handle != leaf)) {
        tc::del_qdisc(ifindex, classid, q.handle).map_err(kernel(interface, what.clone()))?;
    }
    tc::add_qdisc(ifindex, classid, leaf, kind, &options, Mode::Replace).map_err(kernel(interface, what))
}

/// Deletes class `cd:minor` (htb_delete takes its leaf with it). Already gone, or no root or
/// interface any more: Ok.
pub fn remove_class(ifindex: u32, minor: u16) -> Result<(), ShapingError> {
    let Some(interface) = name_of(ifindex)? else { return Ok(()) };
    let classid = tc::handle(ROOT_MAJOR, minor);
    match tc::del_class(ifindex, ROOT_HANDLE, classid) {
        Err(e) if !gone(&e) => Err(kernel(&interface, format!("deleting htb class {}", fmt_handle(classid)))(e)),
        _ => Ok(()),
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::shaping::hex;

    fn class() -> NetemClass {
        NetemClass {
            minor: 5,
            delay_ns: 0,
            jitter_ns: 0,
            correlation: 0,
            distribution: None,
            rate_bps: Some(10_000_000),
            burst_bytes: None,
            limit_packets: 1000,
        }
    }

    /// `tc qdisc add dev lo parent cd:5 handle 5: pfifo limit 1000` (iproute2 6.1).
    #[test]
    fn rate_only_leaf_is_pfifo() {
        let (kind, options) = class().leaf();
        assert_eq!(kind, "pfifo");
        assert_eq!(hex(options.as_bytes()), "08000200e8030000");
    }

    #[test]
    fn delay_leaf_is_netem_with_the_table() {
        let c = NetemClass {
            delay_ns: 50_000_000,
            jitter_ns: 10_000_000,
            distribution: Some(Distribution::Normal),
            ..class()
        };
        let (kind, options) = c.leaf();
        assert_eq!(kind, "netem");
        // qopt, then the table: 4 + 24 + 4 + 8192 bytes, no rate (HTB shapes).
        assert_eq!(options.as_bytes().len(), 4 + 24 + 4 + 8192);
    }

    #[test]
    fn default_burst_and_unshaped_rate() {
        // 10 Mbit/s: 1250 bytes per ms, below the 3200-byte floor: 2.56 ms = 40000 ticks.
        assert_eq!(class().htb_options(), htb::class_options(1_250_000, 3200));
        // No rate: 100 Gbit/s, 1 ms of burst.
        let c = NetemClass { rate_bps: None, ..class() };
        assert_eq!(c.htb_options(), htb::class_options(12_500_000_000, 12_500_000));
    }

    #[test]
    fn reserved_minors_and_tiny_rates_are_refused() {
        for minor in [0, 0xcd, 0xffff] {
            assert!(NetemClass { minor, ..class() }.check().is_err());
        }
        assert!(NetemClass { rate_bps: Some(7), ..class() }.check().is_err());
        assert!(class().check().is_ok());
    }

    /// Every rule slot has a class of its own that `check` takes (slot 204 once had `cd:cd`),
    /// and its packets' priority names that class.
    #[test]
    fn every_slot_has_a_distinct_valid_class() {
        let mut seen = std::collections::BTreeSet::new();
        for slot in 0..chaos_common::MAX_RULES {
            let id = chaos_common::netem_class(slot);
            assert_eq!(NetemClass { minor: id.minor, ..class() }.check(), Ok(()), "slot {slot}");
            assert!(seen.insert(id.minor), "slot {slot}: minor {:#x} taken twice", id.minor);
            assert_eq!(id.priority, tc::handle(ROOT_MAJOR, id.minor), "slot {slot}");
        }
        assert_eq!(chaos_common::netem_class(204).minor, 0xce);
    }
}
