//! Taking a device's root qdisc and giving back exactly what was there.
//!
//! Restore rules, by what the root was before [`take`]:
//! - **The kernel's default** (handle `0:`: noqueue on veth, pfifo_fast, fq_codel or mq with
//!   `parent :N` children on NICs; or none in the dump: noop on a device never up). Restore
//!   deletes our root: qdisc_graft leaves noop and dev_activate (device up) grafts the default
//!   again (attach_default_qdiscs), which is what was there. A qdisc with a handle under a
//!   default root (a user's child of mq) would be lost: refused.
//! - **A user's classless root** (non-zero handle, kind in [`RESTORABLE`], no visible child
//!   qdisc, no filter, for htb no class). Its kind, handle and raw `TCA_OPTIONS` (and
//!   `TCA_STAB` when its size table has no data) are recorded; restore replaces our root by a
//!   qdisc of that kind and handle with those options, which its init accepts as dumped (htb's
//!   version field excepted, see [`htb::restorable`]). Counters start again at 0. Hidden
//!   default children (tbf's and prio's inner fifos) come back with it.
//! - **Anything else** (a classful root with classes or children, filters, an unknown kind):
//!   refused, nothing changed, since restoring it exactly would need its classes, children and
//!   filters too. A root `cd:` of kind htb or fq is ours already: [`ShapingError::AlreadyOurs`].
//!
//! Every refusal or failure of [`take`] leaves the device as it was: the only change is the
//! final replace, which the kernel does atomically or not at all.

use serde::{Deserialize, Serialize};

use super::{Backend, FqParams, ROOT_HANDLE, ShapingError, fq, gone, htb, interface, kernel, name_of};
use crate::netlink::{
    Attrs, attr,
    tc::{self, Mode, TC_H_CLSACT, TC_H_ROOT, TCA_OPTIONS, TCA_STAB, TcObject, fmt_handle},
    u32_at,
};

/// Kinds whose whole configuration is in the `TCA_OPTIONS` they dump and that accept those
/// options back (htb after [`htb::restorable`]), and whose classes (if any) they make
/// themselves from the options. htb's classes are made by users: it is restorable only without
/// any. Round trips checked on 6.18 (tests/shaping.rs): pfifo, bfifo, pfifo_head_drop,
/// pfifo_fast, tbf, htb; by reading their dump and init functions only: prio, fq, fq_codel,
/// codel, netem.
const RESTORABLE: &[&str] =
    &["pfifo", "bfifo", "pfifo_head_drop", "pfifo_fast", "tbf", "prio", "fq", "fq_codel", "codel", "netem", "htb"];

/// The qdiscs of one device as found before we touched it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// For messages only: the name when taken.
    pub interface: String,
    pub root: SavedRoot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SavedRoot {
    /// The kernel's default root (its kind for information; None: no root, i.e. noop).
    KernelDefault { kind: Option<String> },
    /// A user's classless root, re-created from these.
    Qdisc {
        kind: String,
        handle: u32,
        #[serde(with = "hex")]
        options: Option<Vec<u8>>,
        #[serde(with = "hex")]
        stab: Option<Vec<u8>>,
    },
}

/// Records the root of `ifindex`, refuses when it cannot be restored exactly, then installs
/// ours: `fq` (Edt) or `htb` (Netem) with handle `cd:`.
pub fn take(ifindex: u32, backend: Backend, fq: FqParams, direct_qlen: u32) -> Result<Saved, ShapingError> {
    let interface = interface(ifindex)?;
    let qdiscs = tc::qdiscs(ifindex).map_err(kernel(&interface, "listing qdiscs"))?;
    let classes = tc::classes(ifindex).map_err(kernel(&interface, "listing classes"))?;
    let root_filters = match qdiscs.iter().find(|q| q.parent == TC_H_ROOT && q.handle != 0) {
        Some(q) => tc::filters(ifindex, q.handle).map_err(kernel(&interface, "listing root filters"))?.len(),
        None => 0,
    };
    let root = judge(&interface, &qdiscs, &classes, root_filters)?;
    let (kind, options) = match backend {
        Backend::Edt => ("fq", fq::options(&fq)),
        Backend::Netem => ("htb", htb::root_options(direct_qlen)),
    };
    tc::add_qdisc(ifindex, TC_H_ROOT, ROOT_HANDLE, kind, &options, Mode::Replace)
        .map_err(kernel(&interface, format!("installing the {kind} root qdisc cd:")))?;
    Ok(Saved { interface, root })
}

/// Puts back what `saved` recorded. A device whose root is not ours (already restored) or
/// that no longer exists: Ok.
pub fn restore(ifindex: u32, saved: &Saved) -> Result<(), ShapingError> {
    let Some(interface) = name_of(ifindex)? else { return Ok(()) };
    let qdiscs = tc::qdiscs(ifindex).map_err(kernel(&interface, "listing qdiscs"))?;
    if !qdiscs.iter().any(|q| q.parent == TC_H_ROOT && q.handle == ROOT_HANDLE) {
        return Ok(());
    }
    match &saved.root {
        SavedRoot::KernelDefault { .. } => remove_our_root(ifindex).map(drop),
        SavedRoot::Qdisc { kind, handle, options, stab } => {
            // tc_modify_qdisc looks a handle up device-wide: one of our leaves (`minor:`) may
            // have the saved handle, and would be found instead of a new qdisc made (6.x then
            // refuses: "Cannot move an existing qdisc to a different parent"). It goes first;
            // HTB grafts its default pfifo in its place for the moment until the replace.
            if let Some(q) = qdiscs.iter().find(|q| q.handle == *handle && q.parent != TC_H_ROOT) {
                tc::del_qdisc(ifindex, q.parent, q.handle).map_err(kernel(&interface, "deleting a leaf qdisc"))?;
            }
            let mut attrs = Attrs::new();
            if let Some(o) = options {
                attrs.put(TCA_OPTIONS, o);
            }
            if let Some(s) = stab {
                attrs.put(TCA_STAB, s);
            }
            let what = format!("restoring the root qdisc {kind} {}", fmt_handle(*handle));
            tc::add_qdisc(ifindex, TC_H_ROOT, *handle, kind, &attrs, Mode::Replace).map_err(kernel(&interface, what))
        }
    }
}

/// Deletes our root `cd:` (with its classes and leaves), giving the device the kernel's default
/// root back. For a root left by an earlier daemon whose record is lost. Returns whether there
/// was one.
pub fn remove_our_root(ifindex: u32) -> Result<bool, ShapingError> {
    let Some(interface) = name_of(ifindex)? else { return Ok(false) };
    match tc::del_qdisc(ifindex, TC_H_ROOT, ROOT_HANDLE) {
        Ok(()) => Ok(true),
        Err(e) if gone(&e) => Ok(false),
        Err(e) => Err(kernel(&interface, "deleting the root qdisc cd:")(e)),
    }
}

/// What restoring the root takes, or why it cannot be done exactly. `qdiscs` as dumped (the
/// kernel's invisible default children left out), `root_filters` attached to the root.
pub(super) fn judge(
    interface: &str,
    qdiscs: &[TcObject],
    classes: &[TcObject],
    root_filters: usize,
) -> Result<SavedRoot, ShapingError> {
    // clsact/ingress (parent ffff:fff1) is not on the egress path the root replaces.
    let egress: Vec<_> = qdiscs.iter().filter(|q| q.parent != TC_H_CLSACT).collect();
    let Some(root) = egress.iter().find(|q| q.parent == TC_H_ROOT) else {
        return Ok(SavedRoot::KernelDefault { kind: None });
    };
    let refuse = |reason: String| ShapingError::Unrestorable {
        interface: interface.into(),
        kind: root.kind.clone(),
        handle: fmt_handle(root.handle),
        reason,
    };
    if root.handle == ROOT_HANDLE {
        if root.kind == "htb" || root.kind == "fq" {
            return Err(ShapingError::AlreadyOurs { interface: interface.into(), kind: root.kind.clone() });
        }
        return Err(refuse("its handle cd: is the one chaos-daemon uses for its own root".into()));
    }
    let mut children = egress.iter().filter(|q| q.parent != TC_H_ROOT);
    if root.handle == 0 {
        if let Some(c) = children.find(|c| c.handle != 0) {
            return Err(refuse(format!(
                "{} {} is attached under it, and the kernel's default root would come back without it",
                c.kind,
                fmt_handle(c.handle)
            )));
        }
        return Ok(SavedRoot::KernelDefault { kind: Some(root.kind.clone()) });
    }
    if !RESTORABLE.contains(&root.kind.as_str()) {
        return Err(refuse(format!(
            "restoring a {} qdisc exactly is not supported (only {} whose whole state is in their options)",
            root.kind,
            RESTORABLE.join(", ")
        )));
    }
    let exactly = "and restoring it exactly would need them too";
    if let Some(c) = children.next() {
        return Err(refuse(format!("it has child qdiscs ({} {}), {exactly}", c.kind, fmt_handle(c.handle))));
    }
    if root.kind == "htb" && !classes.is_empty() {
        return Err(refuse(format!(
            "it has {} class(es), and restoring it exactly would need them and their filters too",
            classes.len()
        )));
    }
    if root_filters > 0 {
        return Err(refuse(format!("it has {root_filters} filters, {exactly}")));
    }
    if root.kind == "netem" && netem_has_jitter(root.options.as_deref()) {
        return Err(refuse("it has jitter, and the kernel does not dump its delay distribution table".into()));
    }
    // TCA_STAB nests TCA_STAB_BASE (struct tc_sizespec; tsize, its table's length, at offset
    // 20); the table itself (TCA_STAB_DATA) is not dumped.
    if root.stab.as_deref().and_then(|s| attr(s, 1)).and_then(|b| u32_at(b, 20)).is_some_and(|t| t != 0) {
        return Err(refuse("its size table (stab) has data, which the kernel does not dump".into()));
    }
    let options = match root.kind.as_str() {
        "htb" => root.options.as_deref().map(htb::restorable),
        _ => root.options.clone(),
    };
    Ok(SavedRoot::Qdisc { kind: root.kind.clone(), handle: root.handle, options, stab: root.stab.clone() })
}

/// tc_netem_qopt's jitter (offset 20), `TCA_NETEM_JITTER64` (11) or slots (`TCA_NETEM_SLOT`,
/// 12, which may have their own table) in a netem's dumped options.
fn netem_has_jitter(options: Option<&[u8]>) -> bool {
    let Some(o) = options else { return false };
    let nested = o.get(24..).unwrap_or_default();
    u32_at(o, 20).is_some_and(|j| j != 0)
        || attr(nested, 11).and_then(|j| j.get(..8)).is_some_and(|j| j.iter().any(|b| *b != 0))
        || attr(nested, 12).is_some()
}

/// Raw attribute payloads as hex strings in the state file.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&super::super::hex(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("odd-length hex"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(D::Error::custom))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests;
