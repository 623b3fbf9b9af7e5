//! Netlink attributes (`struct nlattr`): building them, nested too, and reading them back;
//! and the native-endian writer for the uapi structs they carry.

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

pub(super) const fn align(n: usize) -> usize {
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
}
