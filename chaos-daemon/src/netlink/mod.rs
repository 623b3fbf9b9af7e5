//! Raw rtnetlink over a libc socket: the daemon manages qdiscs, classes, filters and IFB links
//! itself, so it never needs iproute2. This module has the socket (request and ACK, dumps),
//! the attribute builder and parser; [`tc`] and [`link`] build the messages.

pub mod link;
pub mod tc;

use std::{
    fmt, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

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

/// Native-endian writer for the uapi structs carried in attributes (netlink uses host order).
#[derive(Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
}

/// Attributes (`struct nlattr`: length, type, payload padded to 4 bytes), possibly nested.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("netlink attribute over 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.raw(payload)
    }

    pub fn put_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.put(ty, &[v])
    }

    pub fn put_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    pub fn put_u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING`/`NLA_NUL_STRING` policies expect.
    pub fn put_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut payload = s.as_bytes().to_vec();
        payload.push(0);
        self.put(ty, &payload)
    }

    /// An attribute whose payload is what `f` writes (attributes, and/or raw bytes first).
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&ty.to_ne_bytes());
        f(self);
        let len = u16::try_from(self.0.len() - start).expect("netlink attribute over 64 KiB");
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Bytes written as they are, padded to 4 (a struct leading a nest, as netem's options).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self.0.resize(align(self.0.len()), 0);
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates over the attributes in `buf`: (type without the NESTED/BYTEORDER flags, payload).
/// A truncated attribute ends the iteration.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((ty, payload))
    })
}

/// The payload of the first attribute of type `ty` in `buf`.
pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// A native-endian u32 at `offset` of a struct payload.
pub fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    buf.get(offset..offset + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// A NUL-terminated string attribute's text.
pub fn str_of(payload: &[u8]) -> String {
    let end = payload.iter().position(|b| *b == 0).unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
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

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> Result<Self, NlError> {
        // SAFETY: plain socket syscall; the descriptor is owned by the OwnedFd at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
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
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::new();
        a.put_str(1, "htb").nest(2, |n| {
            n.put_u32(5, 1000);
        });
        // "htb\0" fits 4 bytes exactly; the nest is its header and one 8-byte attribute.
        assert_eq!(a.as_bytes(), [8, 0, 1, 0, b'h', b't', b'b', 0, 12, 0, 2, 0, 8, 0, 5, 0, 0xe8, 3, 0, 0]);
        let mut b = Attrs::new();
        b.put_str(1, "netem");
        assert_eq!(b.as_bytes(), [10, 0, 1, 0, b'n', b'e', b't', b'e', b'm', 0, 0, 0]);
        let parsed: Vec<_> = attrs(a.as_bytes()).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(str_of(parsed[0].1), "htb");
        assert_eq!(attr(parsed[1].1, 5).and_then(|p| u32_at(p, 0)), Some(1000));
    }

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
