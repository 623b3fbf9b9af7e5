//! Raw rtnetlink over a libc socket: the daemon manages qdiscs, classes, filters and IFB links
//! itself, so it never needs iproute2. This module has the socket (request and ACK, dumps),
//! the attribute builder and parser; [`tc`] and [`link`] build the messages.

mod attr;
pub mod link;
pub mod tc;

use std::{
    fmt, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use attr::align;
pub use attr::{Attrs, Bytes, attr, attrs, str_of, u32_at};
pub use tc::delete_clsact;

/// A request the kernel refused, or a socket error: the errno and, when the kernel gave one,
/// its extended ACK message (`NLMSGERR_ATTR_MSG`, what iproute2 prints after "Error:").
#[derive(Debug)]
pub struct NlError {
    pub errno: i32,
    pub message: Option<String>,
}

impl NlError {
    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }

    fn last_os() -> Self {
        io::Error::last_os_error().into()
    }

    fn invalid(what: &str) -> Self {
        Self { errno: libc::EPROTO, message: Some(what.into()) }
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> Self {
        Self { errno: e.raw_os_error().unwrap_or(libc::EIO), message: None }
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        match &self.message {
            Some(m) => write!(f, " (kernel: {m})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for NlError {}

impl From<NlError> for io::Error {
    fn from(e: NlError) -> Self {
        io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e.to_string())
    }
}

/// One message of an answer: its type and the bytes after `struct nlmsghdr`.
#[derive(Debug)]
pub struct Message {
    pub ty: u16,
    pub payload: Vec<u8>,
}

const HEADER: usize = size_of::<libc::nlmsghdr>();
/// linux/netlink.h: `SOL_NETLINK`, `NETLINK_EXT_ACK` (4.12+; ignored when unknown),
/// `NLM_F_ACK_TLVS` (the error message carries TLVs), `NLMSGERR_ATTR_MSG`, `NLM_F_DUMP_INTR`.
const SOL_NETLINK: i32 = 270;
const NETLINK_EXT_ACK: i32 = 11;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_DUMP_INTR: u16 = 0x10;

/// A netlink socket (NETLINK_ROUTE unless opened with [`Socket::open_protocol`]) in the calling
/// thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> Result<Self, NlError> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    pub fn open_protocol(protocol: i32) -> Result<Self, NlError> {
        // SAFETY: plain socket syscall; the descriptor is owned by the OwnedFd at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(NlError::last_os());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: i32 = 1;
        // Extended ACKs give the kernel's reason ("Specified qdisc kind is unknown."); a
        // kernel without them just sends plain errors, so failure here is fine.
        // SAFETY: setsockopt with a pointer to a live i32 and its size.
        unsafe {
            libc::setsockopt(fd.as_raw_fd(), SOL_NETLINK, NETLINK_EXT_ACK, (&raw const one).cast(), 4);
        }
        // The kernel answers at once; a bound keeps a surprise from hanging the daemon.
        let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
        // SAFETY: setsockopt with a pointer to a live timeval and its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends a request (`NLM_F_REQUEST | NLM_F_ACK | flags`) and waits for its ACK; returns the
    /// messages the kernel sent before it (the answer of a GET).
    pub fn request(&mut self, ty: u16, flags: u16, header: &[u8], attrs: &Attrs) -> Result<Vec<Message>, NlError> {
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        self.transact(ty, flags, header, attrs)
    }

    /// A dump (`NLM_F_DUMP`): every message up to `NLMSG_DONE`. Retried when the kernel says
    /// the dump was interrupted by a change (`NLM_F_DUMP_INTR`), so the answer is consistent.
    pub fn dump(&mut self, ty: u16, header: &[u8], attrs: &Attrs) -> Result<Vec<Message>, NlError> {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        for _ in 0..5 {
            match self.transact(ty, flags, header, attrs) {
                Err(e) if e.is(libc::EINTR) => continue,
                other => return other,
            }
        }
        Err(NlError { errno: libc::EINTR, message: Some("dump kept being interrupted".into()) })
    }

    fn transact(&mut self, ty: u16, flags: u16, header: &[u8], attrs: &Attrs) -> Result<Vec<Message>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = HEADER + header.len() + attrs.as_bytes().len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(header);
        msg.extend_from_slice(attrs.as_bytes());
        // SAFETY: the buffer is live and initialised for its whole length.
        if unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(NlError::last_os());
        }
        let mut answer = Vec::new();
        let mut interrupted = false;
        loop {
            let buf = self.recv()?;
            let mut rest = &buf[..];
            while rest.len() >= HEADER {
                let len = u32_at(rest, 0).expect("header") as usize;
                if len < HEADER || len > rest.len() {
                    return Err(NlError::invalid("truncated netlink message"));
                }
                let mty = u16::from_ne_bytes([rest[4], rest[5]]);
                let mflags = u16::from_ne_bytes([rest[6], rest[7]]);
                let mseq = u32_at(rest, 8).expect("header");
                let payload = &rest[HEADER..len];
                rest = &rest[align(len).min(rest.len())..];
                if mseq != seq {
                    continue; // a late answer to an earlier request
                }
                interrupted |= mflags & NLM_F_DUMP_INTR != 0;
                match i32::from(mty) {
                    libc::NLMSG_ERROR => return ack(mflags, payload).map(|()| answer),
                    libc::NLMSG_DONE => {
                        // A dump that failed midway ends with a negative errno here.
                        let code = u32_at(payload, 0).map_or(0, |c| c as i32);
                        if code < 0 {
                            return Err(NlError { errno: -code, message: None });
                        }
                        if interrupted {
                            return Err(NlError { errno: libc::EINTR, message: None });
                        }
                        return Ok(answer);
                    }
                    _ => answer.push(Message { ty: mty, payload: payload.to_vec() }),
                }
            }
        }
    }

    /// One datagram, whatever its size (peeked first: a dump part can exceed a page).
    fn recv(&self) -> Result<Vec<u8>, NlError> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: a zero-length peek writes nothing; MSG_TRUNC makes it return the real size.
        let size = unsafe { libc::recv(fd, std::ptr::null_mut(), 0, libc::MSG_PEEK | libc::MSG_TRUNC) };
        if size < 0 {
            return Err(NlError::last_os());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is writable for its whole length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(NlError::last_os());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

/// An `NLMSG_ERROR` payload: `struct nlmsgerr` (error code, the request's header, and its body
/// unless `NLM_F_CAPPED`), then TLVs when `NLM_F_ACK_TLVS`. Code 0 is the ACK.
fn ack(flags: u16, payload: &[u8]) -> Result<(), NlError> {
    let code = u32_at(payload, 0).ok_or_else(|| NlError::invalid("short netlink error message"))? as i32;
    if code == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let echoed =
            if flags & NLM_F_CAPPED != 0 { HEADER } else { u32_at(payload, 4).map_or(HEADER, |l| align(l as usize)) };
        if let Some(tlvs) = payload.get(4 + echoed..) {
            message = attr(tlvs, NLMSGERR_ATTR_MSG).map(str_of);
        }
    }
    Err(NlError { errno: -code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_ack_carries_the_kernel_message() {
        // nlmsgerr: error -2, the echoed request header (capped), then NLMSGERR_ATTR_MSG.
        let mut p = (-2i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; HEADER]);
        let mut tlv = Attrs::new();
        tlv.put_str(NLMSGERR_ATTR_MSG, "Specified qdisc kind is unknown.");
        p.extend_from_slice(tlv.as_bytes());
        let e = ack(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p).unwrap_err();
        assert!(e.is(libc::ENOENT));
        assert_eq!(e.message.as_deref(), Some("Specified qdisc kind is unknown."));
        assert!(ack(0, &0i32.to_ne_bytes()).is_ok());
    }
}
