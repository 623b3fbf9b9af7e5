//! The one rtnetlink request aya does not offer: deleting a `clsact` qdisc the daemon added
//! (only on kernels without TCX, and only when the daemon created it).

use std::{io, mem::size_of};

/// `struct tcmsg` from linux/rtnetlink.h.
#[repr(C)]
struct TcMsg {
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    tc: TcMsg,
    // struct rtattr { len: u16, type: u16 } followed by "clsact\0", padded to 4 bytes.
    attr_len: u16,
    attr_type: u16,
    kind: [u8; 8],
}

/// `TC_H_CLSACT` (== `TC_H_INGRESS`) is the parent, `ffff:0` the handle (linux/pkt_sched.h).
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;
const TCA_KIND: u16 = 1;

pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor owned here and closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = request(fd, ifindex);
        libc::close(fd);
        result
    }
}

unsafe fn request(fd: i32, ifindex: u32) -> io::Result<()> {
    let req = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: libc::RTM_DELQDISC,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc: TcMsg {
            family: libc::AF_UNSPEC as u8,
            _pad1: 0,
            _pad2: 0,
            ifindex: ifindex as i32,
            handle: CLSACT_HANDLE,
            parent: TC_H_CLSACT,
            info: 0,
        },
        attr_len: 4 + 7,
        attr_type: TCA_KIND,
        kind: *b"clsact\0\0",
    };
    // SAFETY: `req` is a live, fully initialised repr(C) value of the length given.
    if unsafe { libc::send(fd, (&raw const req).cast(), size_of::<Request>(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // The answer is an NLMSG_ERROR message: a header, then the error code (0 is the ACK).
    let mut buf = [0u8; 1024];
    // SAFETY: the buffer is writable for its whole length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let header = size_of::<libc::nlmsghdr>();
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if (n as usize) < header + 4 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink answer"));
    }
    let code = i32::from_ne_bytes(buf[header..header + 4].try_into().expect("4 bytes"));
    if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) }
}
