//! Ethernet frames for BPF_PROG_TEST_RUN: a TCP or UDP packet over IPv4 or IPv6 between two
//! addresses, with a small payload. Checksums are left zero: the programs never read them.

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
            h[4..6].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
            h
        }
    };
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4.extend([0x5a; PAYLOAD]);
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
