//! Traffic-control messages (linux/rtnetlink.h `struct tcmsg`, linux/pkt_sched.h handles):
//! qdiscs, classes and filters, added, deleted and dumped. Options are built by the caller.

use super::{Attrs, Bytes, NlError, Socket, attr, str_of, u32_at};

/// linux/pkt_sched.h: the root "parent", the clsact/ingress qdisc (both `ffff:fff1`, handle
/// `ffff:`) and the minors of its two hooks.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
pub const CLSACT_HANDLE: u32 = 0xffff_0000;
pub const CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// linux/rtnetlink.h `enum { TCA_UNSPEC, TCA_KIND, TCA_OPTIONS, ..., TCA_STAB = 8 }`.
pub const TCA_KIND: u16 = 1;
pub const TCA_OPTIONS: u16 = 2;
pub const TCA_STAB: u16 = 8;

/// `ETH_P_ALL`, the filter protocol matching every packet.
pub const ETH_P_ALL: u16 = 0x0003;

/// `major:minor` as a handle or class id.
pub const fn handle(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// A handle as tc prints it: `cd:`, `cd:5`, `0:`.
pub fn fmt_handle(h: u32) -> String {
    match h & 0xffff {
        0 => format!("{:x}:", h >> 16),
        minor => format!("{:x}:{minor:x}", h >> 16),
    }
}

/// How a new object meets an existing one with the same identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `NLM_F_CREATE | NLM_F_EXCL`: fails with EEXIST.
    Create,
    /// `NLM_F_CREATE | NLM_F_REPLACE`: replaces or changes it.
    Replace,
}

impl Mode {
    fn flags(self) -> u16 {
        (libc::NLM_F_CREATE | if self == Mode::Create { libc::NLM_F_EXCL } else { libc::NLM_F_REPLACE }) as u16
    }
}

/// `struct tcmsg { u8 family, pad[3]; int ifindex; u32 handle, parent, info; }`: 20 bytes.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    Bytes::default().u8(libc::AF_UNSPEC as u8).u8(0).u16(0).u32(ifindex).u32(handle).u32(parent).u32(info).0
}

/// One qdisc, class or filter from a dump: `struct tcmsg` and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcObject {
    pub ifindex: u32,
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// Classes: the leaf qdisc's handle; filters: priority << 16 | protocol (network order).
    pub info: u32,
    /// The raw `TCA_OPTIONS` payload, exactly as dumped.
    pub options: Option<Vec<u8>>,
    /// The raw `TCA_STAB` payload (a qdisc's size table), when it has one.
    pub stab: Option<Vec<u8>>,
}

impl TcObject {
    fn parse(payload: &[u8]) -> Option<Self> {
        let rest = payload.get(20..)?;
        Some(Self {
            ifindex: u32_at(payload, 4)?,
            handle: u32_at(payload, 8)?,
            parent: u32_at(payload, 12)?,
            info: u32_at(payload, 16)?,
            kind: attr(rest, TCA_KIND).map(str_of).unwrap_or_default(),
            options: attr(rest, TCA_OPTIONS).map(<[u8]>::to_vec),
            stab: attr(rest, TCA_STAB).map(<[u8]>::to_vec),
        })
    }

    /// A filter's priority (`tcm_info` upper half).
    pub fn priority(&self) -> u16 {
        (self.info >> 16) as u16
    }

    /// A filter's protocol in host order (`tcm_info` lower half holds it in network order).
    pub fn protocol(&self) -> u16 {
        u16::from_be(self.info as u16)
    }
}

fn dump(ty: u16, ifindex: u32, parent: u32) -> Result<Vec<TcObject>, NlError> {
    let answer = Socket::open()?.dump(ty, &tcmsg(ifindex, 0, parent, 0), &Attrs::new())?;
    Ok(answer.iter().filter_map(|m| TcObject::parse(&m.payload)).collect())
}

/// The qdiscs of `ifindex` as `tc qdisc show dev` lists them (the kernel's invisible default
/// children are left out, as there). The kernel dumps every device; this keeps one.
pub fn qdiscs(ifindex: u32) -> Result<Vec<TcObject>, NlError> {
    Ok(dump(libc::RTM_GETQDISC, ifindex, 0)?.into_iter().filter(|q| q.ifindex == ifindex).collect())
}

/// The qdisc at `parent` (TC_H_ROOT, or a class) of `ifindex`, asked for alone (tc_get_qdisc)
/// rather than picked from a dump of every device's qdiscs. None when there is none, or when it
/// is one the kernel does not show (noop, invisible defaults).
pub fn qdisc_at(ifindex: u32, parent: u32) -> Result<Option<TcObject>, NlError> {
    match Socket::open()?.request(libc::RTM_GETQDISC, 0, &tcmsg(ifindex, 0, parent, 0), &Attrs::new()) {
        Ok(answer) => Ok(answer.iter().find_map(|m| TcObject::parse(&m.payload))),
        Err(e) if e.is(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The classes of every qdisc of `ifindex` (empty when the device does not exist).
pub fn classes(ifindex: u32) -> Result<Vec<TcObject>, NlError> {
    dump(libc::RTM_GETTCLASS, ifindex, 0)
}

/// The filters attached at `parent` (a qdisc handle, a class, or a clsact hook).
pub fn filters(ifindex: u32, parent: u32) -> Result<Vec<TcObject>, NlError> {
    dump(libc::RTM_GETTFILTER, ifindex, parent)
}

fn request(ty: u16, flags: u16, msg: Vec<u8>, attrs: &Attrs) -> Result<(), NlError> {
    Socket::open()?.request(ty, flags, &msg, attrs).map(drop)
}

/// Adds (or replaces) a qdisc; `options` are the attributes after `TCA_KIND` (usually one
/// `TCA_OPTIONS`).
pub fn add_qdisc(
    ifindex: u32,
    parent: u32,
    handle: u32,
    kind: &str,
    options: &Attrs,
    mode: Mode,
) -> Result<(), NlError> {
    let mut attrs = Attrs::new();
    attrs.put_str(TCA_KIND, kind).raw(options.as_bytes());
    request(libc::RTM_NEWQDISC, mode.flags(), tcmsg(ifindex, handle, parent, 0), &attrs)
}

/// Deletes the qdisc at `parent` if its handle is `handle` (the kernel checks it: EINVAL or
/// ENOENT otherwise, so someone else's qdisc is never deleted by mistake).
pub fn del_qdisc(ifindex: u32, parent: u32, handle: u32) -> Result<(), NlError> {
    request(libc::RTM_DELQDISC, 0, tcmsg(ifindex, handle, parent, 0), &Attrs::new())
}

/// Adds or changes a class (`NLM_F_CREATE` without `NLM_F_EXCL`: the kernel's tc_ctl_tclass
/// creates it when missing and calls the qdisc's `change` otherwise).
pub fn set_class(ifindex: u32, parent: u32, classid: u32, kind: &str, options: &Attrs) -> Result<(), NlError> {
    let mut attrs = Attrs::new();
    attrs.put_str(TCA_KIND, kind).raw(options.as_bytes());
    request(libc::RTM_NEWTCLASS, libc::NLM_F_CREATE as u16, tcmsg(ifindex, classid, parent, 0), &attrs)
}

pub fn del_class(ifindex: u32, parent: u32, classid: u32) -> Result<(), NlError> {
    request(libc::RTM_DELTCLASS, 0, tcmsg(ifindex, classid, parent, 0), &Attrs::new())
}

/// Adds a filter at `parent` with a fixed priority (never 0: the kernel would pick one).
pub fn add_filter(
    ifindex: u32,
    parent: u32,
    priority: u16,
    protocol: u16,
    kind: &str,
    options: &Attrs,
) -> Result<(), NlError> {
    let info = u32::from(priority) << 16 | u32::from(protocol.to_be());
    let mut attrs = Attrs::new();
    attrs.put_str(TCA_KIND, kind).raw(options.as_bytes());
    request(libc::RTM_NEWTFILTER, Mode::Create.flags(), tcmsg(ifindex, 0, parent, info), &attrs)
}

/// Deletes every filter at `priority` under `parent` (handle 0: the whole `tcf_proto`).
pub fn del_filters(ifindex: u32, parent: u32, priority: u16, protocol: u16) -> Result<(), NlError> {
    let info = u32::from(priority) << 16 | u32::from(protocol.to_be());
    request(libc::RTM_DELTFILTER, 0, tcmsg(ifindex, 0, parent, info), &Attrs::new())
}

/// Adds a clsact qdisc; `Ok(false)` when the device already has one.
pub fn add_clsact(ifindex: u32) -> Result<bool, NlError> {
    match add_qdisc(ifindex, TC_H_CLSACT, CLSACT_HANDLE, "clsact", &Attrs::new(), Mode::Create) {
        Ok(()) => Ok(true),
        Err(e) if e.is(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the clsact qdisc of `ifindex` (with every filter on it).
pub fn delete_clsact(ifindex: u32) -> Result<(), NlError> {
    del_qdisc(ifindex, TC_H_CLSACT, CLSACT_HANDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcmsg_layout() {
        let m = tcmsg(3, handle(0xcd, 0), TC_H_ROOT, 0);
        assert_eq!(m.len(), 20);
        assert_eq!(&m[4..8], &3u32.to_ne_bytes());
        assert_eq!(&m[8..12], &0x00cd_0000u32.to_ne_bytes());
        assert_eq!(&m[12..16], &[0xff; 4]);
    }

    #[test]
    fn handles_print_as_tc_does() {
        assert_eq!(fmt_handle(handle(0xcd, 0)), "cd:");
        assert_eq!(fmt_handle(handle(0xcd, 5)), "cd:5");
        assert_eq!(fmt_handle(0), "0:");
        assert_eq!(fmt_handle(0x8001_0000), "8001:");
    }
}
