//! Ingress shaping: ingress has no queue, so all ingress traffic of a device is redirected to
//! an IFB device (a u32 match-everything filter with a `mirred egress redirect` action on the
//! device's clsact ingress) and shaped on the IFB's egress. The IFB hands each packet back to
//! the device's receive path once through its queue (ifb_ri_tasklet, with tc classification
//! skipped the second time).

use serde::{Deserialize, Serialize};

use super::{ShapingError, gone, interface, kernel};
use crate::netlink::{
    Attrs, Bytes, NlError, attr, attrs, link, str_of,
    tc::{self, CLSACT_EGRESS, CLSACT_INGRESS, ETH_P_ALL, TCA_OPTIONS, TcObject},
    u32_at,
};

/// The redirect filter's priority on clsact ingress. Filters run in increasing priority, and
/// the kernel numbers filters added without one from 0xc000 downwards (tcf_auto_prio): the
/// chaos cls_bpf filter and CNI filters see a packet before it is redirected. (The eBPF
/// program must end with TC_ACT_UNSPEC, not TC_ACT_OK, for packets it lets through, or
/// classification stops there; with TCX, TCX_NEXT for the same reason.)
pub const REDIRECT_PRIORITY: u16 = 0xc0de;

/// linux/pkt_cls.h `TCA_U32_SEL`, `TCA_U32_ACT`, `TC_U32_TERMINAL`; linux/pkt_cls.h
/// `TCA_ACT_KIND`, `TCA_ACT_OPTIONS`; tc_act/tc_mirred.h `TCA_MIRRED_PARMS`,
/// `TCA_EGRESS_REDIR`; `TC_ACT_STOLEN`; `NLA_F_NESTED`.
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TCA_EGRESS_REDIR: i32 = 1;
const TC_ACT_STOLEN: i32 = 4;
const NLA_F_NESTED: u16 = 0x8000;

/// A redirect made by [`redirect_ingress`], for the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfbRedirect {
    pub ifindex: u32,
    pub ifb_ifindex: u32,
    pub ifb_name: String,
    pub priority: u16,
    /// The u32 filter's handle (its key node, e.g. 800::800).
    pub handle: u32,
    /// Whether we added the device's clsact qdisc (and so may remove it).
    pub added_clsact: bool,
}

/// `chaos-ifb<ifindex>`; for ifindexes of 7 digits or more (IFNAMSIZ allows 15 bytes)
/// `cifb<ifindex>`, which fits any 31-bit ifindex.
pub fn ifb_name(ifindex: u32) -> String {
    let name = format!("chaos-ifb{ifindex}");
    if name.len() <= 15 { name } else { format!("cifb{ifindex}") }
}

/// `match u32 0 0` (one key, mask 0: every packet) with `action mirred egress redirect dev
/// <ifb>`, in iproute2's order: TCA_U32_ACT then TCA_U32_SEL.
pub(super) fn redirect_options(ifb_ifindex: u32) -> Attrs {
    // struct tc_mirred { tc_gen { index, capab, action, refcnt, bindcnt }, eaction, ifindex }
    let mirred =
        Bytes::default().u32(0).u32(0).i32(TC_ACT_STOLEN).i32(0).i32(0).i32(TCA_EGRESS_REDIR).u32(ifb_ifindex).0;
    let mut a = Attrs::new();
    a.nest(TCA_OPTIONS, |o| {
        o.nest(TCA_U32_ACT, |acts| {
            acts.nest(1, |act| {
                act.put_str(TCA_ACT_KIND, "mirred").nest(TCA_ACT_OPTIONS | NLA_F_NESTED, |m| {
                    m.put(TCA_MIRRED_PARMS, &mirred);
                });
            });
        });
        o.put(TCA_U32_SEL, &match_all());
    });
    a
}

/// `match u32 0 0` without an action (the probe's first step).
pub(super) fn match_all_options() -> Attrs {
    let mut a = Attrs::new();
    a.nest(TCA_OPTIONS, |o| {
        o.put(TCA_U32_SEL, &match_all());
    });
    a
}

/// `struct tc_u32_sel { u8 flags, offshift, nkeys; be16 offmask; u16 off; s16 offoff, hoff;
/// be32 hmask; }` with one `struct tc_u32_key { be32 mask, val; int off, offmask; }` of zeros.
fn match_all() -> Vec<u8> {
    let sel = Bytes::default().u8(TC_U32_TERMINAL).u8(0).u8(1).u8(0).u16(0).u16(0).i16(0).i16(0).u32(0);
    sel.u32(0).u32(0).i32(0).i32(0).0
}

/// The ifindex a filter's mirred egress redirect sends to, if it has one.
fn mirred_target(filter: &TcObject) -> Option<u32> {
    let acts = attr(filter.options.as_deref()?, TCA_U32_ACT)?;
    attrs(acts).find_map(|(_, act)| {
        if str_of(attr(act, TCA_ACT_KIND)?) != "mirred" {
            return None;
        }
        let parms = attr(attr(act, TCA_ACT_OPTIONS)?, TCA_MIRRED_PARMS)?;
        (u32_at(parms, 20)? == TCA_EGRESS_REDIR as u32).then(|| u32_at(parms, 24)).flatten()
    })
}

/// Our filter at [`REDIRECT_PRIORITY`] (its handle), None when the priority is free, an error
/// when someone else's filter holds it.
fn our_filter(interface: &str, filters: &[TcObject], ifb: u32) -> Result<Option<u32>, ShapingError> {
    let at: Vec<_> = filters.iter().filter(|f| f.priority() == REDIRECT_PRIORITY).collect();
    if at.is_empty() {
        return Ok(None);
    }
    match at.iter().find(|f| mirred_target(f) == Some(ifb)) {
        Some(f) => Ok(Some(f.handle)),
        None => Err(ShapingError::Invalid {
            interface: interface.into(),
            reason: format!("ingress filter priority {REDIRECT_PRIORITY:#x} is taken by a {} filter", at[0].kind),
        }),
    }
}

/// Creates (or re-uses ours) the IFB `chaos-ifb<ifindex>`, up; adds clsact when missing and
/// the redirect filter. On failure, what this call created is removed again.
pub fn redirect_ingress(ifindex: u32) -> Result<IfbRedirect, ShapingError> {
    let interface = interface(ifindex)?;
    let name = ifb_name(ifindex);
    let (ifb, created) = ifb_device(&interface, &name)?;
    let undo_ifb = || {
        if created {
            let _ = link::delete(ifb);
        }
    };
    let added_clsact = match tc::add_clsact(ifindex) {
        Ok(added) => added,
        Err(e) => {
            undo_ifb();
            return Err(kernel(&interface, "adding the clsact qdisc")(e));
        }
    };
    let filter = ingress_filters(ifindex).map_err(kernel(&interface, "listing ingress filters")).and_then(|fs| {
        if let Some(handle) = our_filter(&interface, &fs, ifb)? {
            return Ok(handle);
        }
        tc::add_filter(ifindex, CLSACT_INGRESS, REDIRECT_PRIORITY, ETH_P_ALL, "u32", &redirect_options(ifb))
            .map_err(kernel(&interface, format!("adding the u32 filter redirecting ingress to {name}")))?;
        let fs = ingress_filters(ifindex).map_err(kernel(&interface, "listing ingress filters"))?;
        // u32 dumps its hash table (800:) and the key node (800::800): the node is ours.
        let ours = fs.iter().find(|f| f.priority() == REDIRECT_PRIORITY && mirred_target(f) == Some(ifb));
        Ok(ours.map_or(0, |f| f.handle))
    });
    match filter {
        Ok(handle) => Ok(IfbRedirect {
            ifindex,
            ifb_ifindex: ifb,
            ifb_name: name,
            priority: REDIRECT_PRIORITY,
            handle,
            added_clsact,
        }),
        Err(e) => {
            if added_clsact {
                let _ = tc::delete_clsact(ifindex);
            }
            undo_ifb();
            Err(e)
        }
    }
}

/// The IFB called `name`, created unless it exists (and is an IFB); up. Returns its ifindex
/// and whether it was created.
fn ifb_device(interface: &str, name: &str) -> Result<(u32, bool), ShapingError> {
    let what = format!("creating the IFB device {name}");
    let existing = link::by_name(name).map_err(kernel(interface, what.clone()))?;
    let created = existing.is_none();
    if created {
        link::add_ifb(name).map_err(kernel(interface, what.clone()))?;
    }
    let l = match existing {
        Some(l) => l,
        None => link::by_name(name).map_err(kernel(interface, what.clone()))?.ok_or_else(|| {
            kernel(interface, what)(NlError { errno: libc::ENODEV, message: Some("gone after creation".into()) })
        })?,
    };
    if l.kind.as_deref() != Some("ifb") {
        return Err(ShapingError::Invalid {
            interface: interface.into(),
            reason: format!("{name} exists and is not an IFB device (kind {})", l.kind.as_deref().unwrap_or("none")),
        });
    }
    if !l.up {
        link::set_up(l.ifindex).map_err(kernel(interface, format!("setting {name} up")))?;
    }
    Ok((l.ifindex, created))
}

fn ingress_filters(ifindex: u32) -> Result<Vec<TcObject>, NlError> {
    tc::filters(ifindex, CLSACT_INGRESS)
}

/// Removes the redirect filter (only if it still is ours), the IFB (only if that ifindex still
/// is our IFB: ifindexes are reused), and clsact if we added it and no filter is left on it.
/// Missing pieces: Ok.
pub fn unredirect_ingress(r: &IfbRedirect) -> Result<(), ShapingError> {
    let device =
        link::by_index(r.ifindex).map_err(kernel(&format!("ifindex {}", r.ifindex), "looking up the interface"))?;
    if let Some(dev) = &device {
        let filters = ingress_filters(r.ifindex).map_err(kernel(&dev.name, "listing ingress filters"))?;
        let ours = filters.iter().any(|f| f.priority() == r.priority && mirred_target(f) == Some(r.ifb_ifindex));
        if ours
            && let Err(e) = tc::del_filters(r.ifindex, CLSACT_INGRESS, r.priority, ETH_P_ALL)
            && !gone(&e)
        {
            return Err(kernel(&dev.name, "deleting the ingress redirect filter")(e));
        }
    }
    let ifb = link::by_index(r.ifb_ifindex).map_err(kernel(&r.ifb_name, "looking up the IFB device"))?;
    if let Some(l) = ifb.filter(|l| l.name == r.ifb_name && l.kind.as_deref() == Some("ifb")) {
        match link::delete(l.ifindex) {
            Err(e) if !e.is(libc::ENODEV) => return Err(kernel(&r.ifb_name, "deleting the IFB device")(e)),
            _ => {}
        }
    }
    if let (Some(dev), true) = (&device, r.added_clsact) {
        let left = |parent| tc::filters(r.ifindex, parent).map(|f| f.len());
        let left = left(CLSACT_INGRESS).and_then(|i| Ok(i + left(CLSACT_EGRESS)?));
        if left.map_err(kernel(&dev.name, "listing clsact filters"))? == 0 {
            match tc::delete_clsact(r.ifindex) {
                Err(e) if !gone(&e) => return Err(kernel(&dev.name, "deleting the clsact qdisc")(e)),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::hex;

    /// `tc filter add dev lo ingress protocol all prio 49374 u32 match u32 0 0 action mirred
    /// egress redirect dev lo` (iproute2 6.1; lo is ifindex 1): TCA_OPTIONS after TCA_KIND.
    #[cfg(target_endian = "little")]
    #[test]
    fn filter_matches_iproute2() {
        let tc = concat!(
            "6000020038000700340001000b0001006d69727265640000240002802000020000000000",
            "000000000400000000000000000000000100000001000000240005000100010000000000",
            "000000000000000000000000000000000000000000000000",
        );
        assert_eq!(hex(redirect_options(1).as_bytes()), tc);
    }

    #[test]
    fn the_redirect_target_is_read_back() {
        let options = redirect_options(42);
        let f = TcObject {
            ifindex: 3,
            kind: "u32".into(),
            handle: 0x8000_0800,
            parent: CLSACT_INGRESS,
            info: u32::from(REDIRECT_PRIORITY) << 16,
            // As dumped: the payload of TCA_OPTIONS.
            options: Some(options.as_bytes()[4..].to_vec()),
            stab: None,
        };
        assert_eq!(mirred_target(&f), Some(42));
        assert_eq!(our_filter("eth0", std::slice::from_ref(&f), 42).unwrap(), Some(0x8000_0800));
        let e = our_filter("eth0", &[f], 7).unwrap_err().to_string();
        assert_eq!(e, "eth0: ingress filter priority 0xc0de is taken by a u32 filter");
    }

    #[test]
    fn ifb_names_fit_ifnamsiz() {
        assert_eq!(ifb_name(7), "chaos-ifb7");
        assert_eq!(ifb_name(999_999), "chaos-ifb999999");
        assert_eq!(ifb_name(1_000_000), "cifb1000000");
        assert!(ifb_name(i32::MAX as u32).len() <= 15);
    }
}
