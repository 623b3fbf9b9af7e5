//! Packet parsing: the fields the rules match, read with as few helper calls as possible.

use aya_ebpf::programs::sk_buff::SkBuff;
use chaos_common::{Family, Proto};

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

/// What the rules look at; addresses and ports as raw words, in wire byte order.
pub(crate) struct Packet {
    /// A [`Family`] and a [`Proto`], as the keys hold them: bytes (an enum here makes LLVM
    /// compile the programs differently, and longer).
    pub(crate) family: u8,
    pub(crate) proto: u8,
    pub(crate) src: [u32; 4],
    pub(crate) dst: [u32; 4],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// Where the TCP or UDP header starts, for a first fragment; 0 otherwise.
    pub(crate) l4: usize,
}

/// Where the TCP or UDP header of a packet starts (0: none) and its protocol.
#[derive(Clone, Copy)]
pub(crate) struct L4 {
    pub(crate) proto: u8,
    pub(crate) offset: usize,
}

/// Reads the IP header (at `l3`: after the Ethernet header for TC, which gives the program the
/// frame from the MAC header on both hooks; 0 for cgroup programs) and, for TCP/UDP first
/// fragments, the ports. Each header is copied in
/// one `bpf_skb_load_bytes` (the ports in another): a helper call is the main per-packet cost
/// of an unmatched packet, and field by field it took 7 calls for IPv4 and 11 for IPv6.
#[inline(always)]
pub(crate) fn parse(skb: &SkBuff, l3: usize) -> Option<Packet> {
    let family;
    let mut proto: u8;
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    let l4;
    // Addresses stay raw words in wire byte order, as the map keys hold them.
    let word = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // skb->protocol is the frame's L3 protocol, big-endian in the low 16 bits.
    match u16::from_be(skb.protocol() as u16) {
        ETH_P_IP => {
            let h: [u8; 20] = skb.load(l3).ok()?;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            family = Family::V4 as u8;
            proto = h[9];
            src[0] = word(&h, 12);
            dst[0] = word(&h, 16);
            // Later fragments carry no L4 header: they are matched as port 0.
            let first_fragment = frag & 0x1fff == 0;
            l4 = if first_fragment { Some(l3 + usize::from(h[0] & 0x0f) * 4) } else { None };
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = skb.load(l3).ok()?;
            family = Family::V6 as u8;
            // Only the fixed header's next header is read (no loops on 4.19): a packet with
            // extension headers is matched as protocol "other".
            proto = h[6];
            src = [word(&h, 8), word(&h, 12), word(&h, 16), word(&h, 20)];
            dst = [word(&h, 24), word(&h, 28), word(&h, 32), word(&h, 36)];
            l4 = Some(l3 + 40);
        }
        _ => return None,
    }
    let (mut sport, mut dport, mut l4_offset) = (0, 0, 0);
    match proto {
        Proto::TCP | Proto::UDP => {
            if let Some(off) = l4 {
                // Raw, in wire byte order, like the addresses.
                let p: [u8; 4] = skb.load(off).ok()?;
                sport = u16::from_ne_bytes([p[0], p[1]]);
                dport = u16::from_ne_bytes([p[2], p[3]]);
                l4_offset = off;
            }
        }
        Proto::ICMP if family == Family::V4 as u8 => {}
        Proto::ICMPV6 if family == Family::V6 as u8 => {
            // Neighbour discovery (router and neighbour solicitations and advertisements,
            // redirects: types 133-137) is left alone, as ARP is: a fault on an address must
            // not make the kernel mark its neighbour FAILED and fail connects with EHOSTUNREACH.
            // One more load, for ICMPv6 packets only.
            if let Some(off) = l4
                && matches!(skb.load::<u8>(off), Ok(133..=137))
            {
                return None;
            }
        }
        _ => proto = Proto::OTHER,
    }
    Some(Packet { family, proto, src, dst, sport, dport, l4: l4_offset })
}
