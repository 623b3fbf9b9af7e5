//! Two hosts, `a` and `b`, joined by a veth pair. `b` has two addresses of each family so a
//! test can cut one and check the other.

use crate::{Netns, unique};

pub const A4: &str = "10.200.0.1";
pub const B4: &str = "10.200.0.2";
pub const B4_OTHER: &str = "10.200.0.4";
pub const A6: &str = "fd00:200::1";
pub const B6: &str = "fd00:200::2";
pub const B6_OTHER: &str = "fd00:200::4";

pub struct Lab {
    // Field order is drop order: namespaces go last, taking the veth pair with them.
    pub a_if: String,
    pub b_if: String,
    pub a: Netns,
    pub b: Netns,
}

impl Lab {
    pub fn new() -> anyhow::Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            anyhow::bail!(
                "end-to-end tests need root (they create network namespaces and load eBPF programs): run `cargo xtask test` as root"
            );
        }
        let a = Netns::new(unique("cda"))?;
        let b = Netns::new(unique("cdb"))?;
        let (a_if, b_if) = (unique("va"), unique("vb"));
        crate::run(
            "ip",
            &["link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns", &b.name],
        )?;
        let lab = Self { a_if, b_if, a, b };
        for (ns, dev, addrs) in [
            (&lab.a, &lab.a_if, [format!("{A4}/24"), format!("{A6}/64")].to_vec()),
            (
                &lab.b,
                &lab.b_if,
                [B4, B4_OTHER]
                    .map(|x| format!("{x}/24"))
                    .into_iter()
                    .chain([B6, B6_OTHER].map(|x| format!("{x}/64")))
                    .collect(),
            ),
        ] {
            for addr in &addrs {
                // nodad: IPv6 addresses are usable at once instead of after duplicate detection.
                let mut args = vec!["addr", "add", addr.as_str(), "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // Static neighbours: no packet of a measurement waits for (or is lost to) ARP or
        // neighbour discovery, so every packet sent reaches the TC hook.
        for (ns, dev, peer_ns, peer_dev, addrs) in [
            (&lab.a, &lab.a_if, &lab.b, &lab.b_if, vec![B4, B4_OTHER, B6, B6_OTHER]),
            (&lab.b, &lab.b_if, &lab.a, &lab.a_if, vec![A4, A6]),
        ] {
            let mac = mac(peer_ns, peer_dev)?;
            for addr in addrs {
                ns.ip(&["neigh", "replace", addr, "lladdr", &mac, "dev", dev, "nud", "permanent"])?;
            }
        }
        Ok(lab)
    }
}

fn mac(ns: &Netns, dev: &str) -> anyhow::Result<String> {
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "link/ether")
        .map(|w| w[1].to_owned())
        .ok_or_else(|| anyhow::anyhow!("no MAC address for {dev}: {out}"))
}
