//! Links (linux/rtnetlink.h `struct ifinfomsg`, linux/if_link.h `IFLA_*`): looking one up,
//! creating an IFB device, setting it up, deleting it.

use super::{Attrs, Bytes, NlError, Socket, attr, str_of, u32_at};

/// linux/if_link.h: `IFLA_IFNAME`, `IFLA_STATS64` (`struct rtnl_link_stats64`, whose first
/// two fields are rx_packets and tx_packets), `IFLA_LINKINFO` and its `IFLA_INFO_KIND`.
const IFLA_IFNAME: u16 = 3;
/// The peer's ifindex (veth), in the namespace `IFLA_LINK_NETNSID` names when present.
const IFLA_LINK: u16 = 5;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_STATS64: u16 = 23;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("veth", "ifb", ...); None for devices without one (physical NICs, lo).
    pub kind: Option<String>,
    pub up: bool,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// A veth's peer: its ifindex, and the id of its namespace as this one numbers it (see
    /// [`nsid`]), when it is in another namespace.
    pub peer: Option<(u32, Option<i32>)>,
}

/// `struct ifinfomsg { u8 family, pad; u16 type; int index; u32 flags, change; }`: 16 bytes.
fn ifinfomsg(ifindex: u32, flags: u32, change: u32) -> Vec<u8> {
    Bytes::default().u8(libc::AF_UNSPEC as u8).u8(0).u16(0).u32(ifindex).u32(flags).u32(change).0
}

fn parse(payload: &[u8]) -> Option<Link> {
    let rest = payload.get(16..)?;
    let stat = |i: usize| {
        attr(rest, IFLA_STATS64)
            .and_then(|s| s.get(i * 8..i * 8 + 8))
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    };
    Some(Link {
        ifindex: u32_at(payload, 4)?,
        name: attr(rest, IFLA_IFNAME).map(str_of)?,
        kind: attr(rest, IFLA_LINKINFO).and_then(|i| attr(i, IFLA_INFO_KIND)).map(str_of),
        up: u32_at(payload, 8)? & libc::IFF_UP as u32 != 0,
        rx_packets: stat(0),
        tx_packets: stat(1),
        peer: attr(rest, IFLA_LINK)
            .and_then(|p| u32_at(p, 0))
            .map(|i| (i, attr(rest, IFLA_LINK_NETNSID).and_then(|n| u32_at(n, 0)).map(|n| n as i32))),
    })
}

fn get(ifindex: u32, attrs: &Attrs) -> Result<Option<Link>, NlError> {
    match Socket::open()?.request(libc::RTM_GETLINK, 0, &ifinfomsg(ifindex, 0, 0), attrs) {
        Ok(answer) => Ok(answer.iter().find_map(|m| parse(&m.payload))),
        Err(e) if e.is(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The link called `name` in this network namespace, if any.
pub fn by_name(name: &str) -> Result<Option<Link>, NlError> {
    let mut attrs = Attrs::new();
    attrs.put_str(IFLA_IFNAME, name);
    get(0, &attrs)
}

pub fn by_index(ifindex: u32) -> Result<Option<Link>, NlError> {
    get(ifindex, &Attrs::new())
}

/// A non-blocking netlink socket that receives this namespace's link changes (`RTMGRP_LINK`:
/// links added, changed, deleted), so a deleted interface is noticed without polling.
pub fn events() -> Result<std::os::fd::OwnedFd, NlError> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket syscall; the descriptor is owned by the OwnedFd at once.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(NlError::last_os());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; family and groups are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: bind with a pointer to a live sockaddr_nl and its size.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
    };
    if rc != 0 {
        return Err(NlError::last_os());
    }
    Ok(fd)
}

/// Every link of this network namespace.
pub fn all() -> Result<Vec<Link>, NlError> {
    let answer = Socket::open()?.dump(libc::RTM_GETLINK, &ifinfomsg(0, 0, 0), &Attrs::new())?;
    Ok(answer.iter().filter_map(|m| parse(&m.payload)).collect())
}

/// Creates an IFB device called `name`, up (the flags of a new link's ifinfomsg are applied
/// by rtnl_configure_link, as `ip link add ... up` does). EEXIST when the name is taken.
pub fn add_ifb(name: &str) -> Result<(), NlError> {
    let mut attrs = Attrs::new();
    attrs.put_str(IFLA_IFNAME, name).nest(IFLA_LINKINFO, |i| {
        i.put_str(IFLA_INFO_KIND, "ifb");
    });
    let up = libc::IFF_UP as u32;
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    Socket::open()?.request(libc::RTM_NEWLINK, flags, &ifinfomsg(0, up, up), &attrs).map(drop)
}

pub fn set_up(ifindex: u32) -> Result<(), NlError> {
    let up = libc::IFF_UP as u32;
    Socket::open()?.request(libc::RTM_NEWLINK, 0, &ifinfomsg(ifindex, up, up), &Attrs::new()).map(drop)
}

/// linux/net_namespace.h: `RTM_GETNSID` takes a `struct rtgenmsg` and `NETNSA_FD`, and answers
/// with `NETNSA_NSID`.
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

/// The id this network namespace gives the namespace `fd` refers to: -1 when it has none yet
/// (dumping a link whose peer is there gives it one).
pub fn nsid(fd: std::os::fd::BorrowedFd<'_>) -> Result<i32, NlError> {
    use std::os::fd::AsRawFd as _;
    let mut attrs = Attrs::new();
    attrs.put_u32(NETNSA_FD, fd.as_raw_fd() as u32);
    // struct rtgenmsg { u8 family } padded to 4.
    let header = Bytes::default().u8(libc::AF_UNSPEC as u8).u8(0).u16(0).0;
    let answer = Socket::open()?.request(libc::RTM_GETNSID, 0, &header, &attrs)?;
    answer
        .iter()
        .find_map(|m| attr(m.payload.get(4..)?, NETNSA_NSID).and_then(|n| u32_at(n, 0)))
        .map(|n| n as i32)
        .ok_or(NlError { errno: libc::ENOENT, message: Some("RTM_GETNSID gave no id".into()) })
}

/// Deletes a link; its qdiscs and filters go with it.
pub fn delete(ifindex: u32) -> Result<(), NlError> {
    Socket::open()?.request(libc::RTM_DELLINK, 0, &ifinfomsg(ifindex, 0, 0), &Attrs::new()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_endian = "little")]
    /// What `ip link add chaos-ifb7 type ifb` sends after its ifinfomsg (captured from
    /// iproute2 6.1), except that our kind carries its NUL (iproute2's has length 7; the
    /// kernel's NLA_STRING policy takes both) and our ifinfomsg also asks for IFF_UP.
    #[test]
    fn ifb_attributes_match_iproute2() {
        let mut attrs = Attrs::new();
        attrs.put_str(IFLA_IFNAME, "chaos-ifb7").nest(IFLA_LINKINFO, |i| {
            i.put_str(IFLA_INFO_KIND, "ifb");
        });
        let expected = "0f0003006368616f732d6966623700000c0012000800010069666200";
        assert_eq!(hex(attrs.as_bytes()), expected);
        assert_eq!(ifinfomsg(0, 1, 1), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
