//! Ethernet frames for BPF_PROG_TEST_RUN: a TCP or UDP packet over IPv4 or IPv6 between two
//! addresses, with a small payload or a DNS query. Checksums are left zero: the programs never
//! read them (an answer's UDP checksum is computed from scratch).

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

const PAYLOAD: usize = 64;

pub fn frame(src: IpAddr, dst: IpAddr, proto: Proto, sport: u16, dport: u16) -> Vec<u8> {
    carrying(src, dst, proto, sport, dport, &[0x5a; PAYLOAD])
}

/// A DNS query for `name`, type A, from `src` port `sport` to `dst` port 53: the message
/// alone in a UDP datagram, after its two-byte length in a TCP segment (RFC 1035 4.2.2, as a
/// client writes it in one go).
pub fn dns_query(src: IpAddr, dst: IpAddr, proto: Proto, sport: u16, name: &str) -> Vec<u8> {
    let message = chaos_tests::dns::encode_query(0x4242, name, 1);
    let payload = match proto {
        Proto::Udp => message,
        Proto::Tcp => [&(message.len() as u16).to_be_bytes()[..], &message].concat(),
    };
    carrying(src, dst, proto, sport, 53, &payload)
}

/// The DNS message of a UDP frame built here (or rewritten from one): what follows the UDP
/// header.
pub fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let l4 = match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => 14 + usize::from(frame.get(14)? & 0x0f) * 4,
        0x86dd => 14 + 40,
        _ => return None,
    };
    frame.get(l4 + 8..)
}

fn carrying(src: IpAddr, dst: IpAddr, proto: Proto, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = match proto {
        Proto::Tcp => {
            let mut h = vec![0u8; 20];
            h[12] = 5 << 4; // data offset: 5 words
            h[13] = 0x10; // ACK
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h
        }
        Proto::Udp => {
            let mut h = vec![0u8; 8];
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h
        }
    };
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4.extend(payload);
    let number = match proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend(0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend(((20 + l4.len()) as u16).to_be_bytes());
            ip.extend([0, 0, 0x40, 0, 64, number, 0, 0]); // id, DF, ttl, protocol, checksum
            ip.extend(s.octets());
            ip.extend(d.octets());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend(0x86ddu16.to_be_bytes());
            f.extend([0x60, 0, 0, 0]);
            f.extend((l4.len() as u16).to_be_bytes());
            f.extend([number, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => panic!("{src} and {dst} are of different families"),
    }
    f.extend(l4);
    f
}
