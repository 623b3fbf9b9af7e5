//! The shaping API against the real kernel, as root. Each test runs in a network namespace of
//! its own, made by unsharing a dedicated thread: it disappears with the thread, with every
//! device and qdisc in it, even when the test fails. iproute2 (tests only) is the independent
//! reader: `tc qdisc show` before and after must be identical.

mod shaping_util;

use chaos_daemon::{
    netlink::link,
    shaping::{self, Backend, FqParams, NetemClass, Saved, ShapingError},
};
use shaping_util::{in_netns, index, run, send_frames, try_run, veth};

fn take_netem(ifindex: u32) -> Result<Saved, ShapingError> {
    shaping::take(ifindex, Backend::Netem, FqParams::default(), 1000)
}

fn rate_class(minor: u16, rate_bps: u64) -> NetemClass {
    NetemClass {
        minor,
        delay_ns: 0,
        jitter_ns: 0,
        correlation: 0,
        distribution: None,
        rate_bps: Some(rate_bps),
        burst_bytes: None,
        limit_packets: 1000,
    }
}

/// Both `tc qdisc show` and its detailed form, which prints more of each qdisc's options.
fn qdiscs(dev: &str) -> String {
    run(&format!("tc qdisc show dev {dev}")) + &run(&format!("tc -d qdisc show dev {dev}"))
}

/// take(Netem), a rate-only class (htb class + pfifo leaf) changed once and removed, restore:
/// the device's qdiscs are as before, and restoring twice is fine.
fn round_trip(dev: &str, minor: u16) {
    let ifindex = index(dev);
    let before = qdiscs(dev);
    let saved = take_netem(ifindex).unwrap();
    let taken = run(&format!("tc qdisc show dev {dev}"));
    assert!(taken.contains("qdisc htb cd: root") && taken.contains("default 0"), "{taken}");
    assert!(taken.contains("direct_qlen 1000"), "{taken}");

    shaping::set_class(ifindex, &rate_class(minor, 10_000_000)).unwrap();
    let classes = run(&format!("tc class show dev {dev}"));
    let class =
        format!("class htb cd:{minor:x} root leaf {minor:x}: prio 0 rate 10Mbit ceil 10Mbit burst 3200b cburst 3200b");
    assert!(classes.contains(&class), "{classes}");
    let leaf = format!("qdisc pfifo {minor:x}: parent cd:{minor:x} limit 1000p");
    assert!(run(&format!("tc qdisc show dev {dev}")).contains(&leaf));

    shaping::set_class(ifindex, &rate_class(minor, 20_000_000)).unwrap();
    assert!(run(&format!("tc class show dev {dev}")).contains("rate 20Mbit ceil 20Mbit"));
    shaping::remove_class(ifindex, minor).unwrap();
    assert_eq!(run(&format!("tc class show dev {dev}")), "");
    shaping::remove_class(ifindex, minor).unwrap();

    shaping::restore(ifindex, &saved).unwrap();
    assert_eq!(qdiscs(dev), before);
    shaping::restore(ifindex, &saved).unwrap();
    assert_eq!(qdiscs(dev), before);
}

#[test]
fn veth_default_root_round_trips() {
    in_netns(|| {
        veth("va", "vb");
        assert!(run("tc qdisc show dev va").starts_with("qdisc noqueue 0: root"));
        round_trip("va", 5);
    });
}

#[test]
fn user_tbf_root_round_trips() {
    in_netns(|| {
        veth("va", "vb");
        run("tc qdisc add dev va root handle 1: tbf rate 1mbit burst 10k latency 50ms");
        // Minor 1: our leaf is 1:, the saved root's handle, while ours is installed.
        round_trip("va", 1);
    });
}

#[test]
fn user_pfifo_roots_round_trip() {
    in_netns(|| {
        veth("va", "vb");
        run("tc qdisc add dev va root handle 8: pfifo limit 100");
        round_trip("va", 8);
        // A handle the kernel picked (8001:), and a bfifo.
        run("tc qdisc replace dev va root bfifo limit 12345");
        round_trip("va", 2);
        run("tc qdisc replace dev va root handle 4: pfifo_head_drop limit 33");
        round_trip("va", 4);
        run("tc qdisc replace dev va root handle 5: pfifo_fast");
        round_trip("va", 5);
        // A size table without data (overhead only) comes back with it.
        run("tc qdisc replace dev va root handle 9: stab overhead 20 linklayer ethernet pfifo limit 100");
        assert!(qdiscs("va").contains("linklayer ethernet overhead 20"));
        round_trip("va", 9);
    });
}

/// A leaf of another kind or handle under our class (a qdisc cannot change kind in place) is
/// replaced by the one asked for.
#[test]
fn set_class_replaces_a_foreign_leaf() {
    in_netns(|| {
        veth("va", "vb");
        let saved = take_netem(index("va")).unwrap();
        shaping::set_class(index("va"), &rate_class(5, 1_000_000)).unwrap();
        run("tc qdisc del dev va parent cd:5 handle 5:");
        run("tc qdisc add dev va parent cd:5 handle 77: bfifo limit 100");
        shaping::set_class(index("va"), &rate_class(5, 2_000_000)).unwrap();
        let q = run("tc qdisc show dev va");
        assert!(q.contains("qdisc pfifo 5: parent cd:5 limit 1000p") && !q.contains("bfifo"), "{q}");
        shaping::restore(index("va"), &saved).unwrap();
    });
}

/// An htb root without classes is all in its options (r2q, default class, direct_qlen).
#[test]
fn user_htb_root_without_classes_round_trips() {
    in_netns(|| {
        veth("va", "vb");
        run("tc qdisc add dev va root handle 1: htb default 10 r2q 5 direct_qlen 77");
        round_trip("va", 1);
    });
}

/// Leaving our class in place: restore replaces the root and the classes go with it, also when
/// a leaf holds the saved root's handle.
#[test]
fn restore_with_classes_left() {
    in_netns(|| {
        veth("va", "vb");
        run("tc qdisc add dev va root handle 3: pfifo limit 77");
        let before = qdiscs("va");
        let saved = take_netem(index("va")).unwrap();
        for minor in [3, 4] {
            shaping::set_class(index("va"), &rate_class(minor, 1_000_000)).unwrap();
        }
        shaping::restore(index("va"), &saved).unwrap();
        assert_eq!(qdiscs("va"), before);
    });
}

/// Default roots with a real queue: pfifo_fast on a single-queue IFB, mq with pfifo_fast
/// children on a four-queue one, and noop on a device that is down (none in the dump).
#[test]
fn default_queueing_roots_round_trip() {
    in_netns(|| {
        run("ip link add ifb1 type ifb");
        run("ip link set ifb1 up");
        assert!(run("tc qdisc show dev ifb1").starts_with("qdisc pfifo_fast 0: root"));
        round_trip("ifb1", 1);

        run("ip link add ifb4 numtxqueues 4 type ifb");
        run("ip link set ifb4 up");
        assert!(run("tc qdisc show dev ifb4").starts_with("qdisc mq 0: root"));
        round_trip("ifb4", 1);

        run("ip link add ifbdown type ifb");
        assert_eq!(run("tc qdisc show dev ifbdown"), "");
        round_trip("ifbdown", 1);
        // Brought up later, it gets its default as if we had never been there.
        run("ip link set ifbdown up");
        assert!(run("tc qdisc show dev ifbdown").starts_with("qdisc pfifo_fast 0: root"));
    });
}

#[test]
fn edt_root_is_refused_cleanly_without_fq() {
    in_netns(|| {
        veth("va", "vb");
        run("tc qdisc add dev va root handle 1: tbf rate 1mbit burst 10k latency 50ms");
        let before = qdiscs("va");
        let fq_here = try_run("tc qdisc add dev lo root fq").is_ok();
        let taken = shaping::take(index("va"), Backend::Edt, FqParams::default(), 1000);
        if fq_here {
            let saved = taken.unwrap();
            assert!(run("tc qdisc show dev va").contains("qdisc fq cd: root"));
            shaping::restore(index("va"), &saved).unwrap();
        } else {
            let e = taken.unwrap_err().to_string();
            assert!(e.starts_with("va: installing the fq root qdisc cd:: "), "{e}");
            assert!(e.contains("Specified qdisc kind is unknown"), "{e}");
        }
        assert_eq!(qdiscs("va"), before);
    });
}

#[test]
fn classful_user_trees_are_refused_and_left_alone() {
    in_netns(|| {
        veth("va", "vb");
        run("tc qdisc add dev va root handle 1: htb default 10");
        run("tc class add dev va parent 1: classid 1:10 htb rate 1mbit");
        let show = || qdiscs("va") + &run("tc class show dev va");
        let before = show();
        let e = take_netem(index("va")).unwrap_err();
        assert!(matches!(e, ShapingError::Unrestorable { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "va: will not replace the root qdisc htb 1:, because it has 1 class(es), and restoring it exactly \
             would need them and their filters too; nothing was changed"
        );
        assert_eq!(show(), before);

        // A child qdisc under a tbf.
        run("tc qdisc replace dev va root handle 2: tbf rate 1mbit burst 10k latency 50ms");
        run("tc qdisc add dev va parent 2:1 handle 20: pfifo limit 5");
        let before = show();
        let e = take_netem(index("va")).unwrap_err().to_string();
        assert!(e.contains("tbf 2:, because it has child qdiscs (pfifo 20:)"), "{e}");
        assert_eq!(show(), before);

        // A size table with data, which the kernel does not dump.
        run("tc qdisc replace dev va root handle 3: stab overhead 20 linklayer atm mtu 2048 tsize 128 pfifo");
        let before = show();
        let e = take_netem(index("va")).unwrap_err().to_string();
        assert!(e.contains("pfifo 3:, because its size table (stab) has data"), "{e}");
        assert_eq!(show(), before);

        // A user's mq with a child of its own (this kernel refuses children under the default
        // mq 0:, which is why that rule is only checked on made-up dumps).
        run("ip link add ifb4 numtxqueues 4 type ifb");
        run("ip link set ifb4 up");
        run("tc qdisc replace dev ifb4 root handle 1: mq");
        run("tc qdisc replace dev ifb4 parent 1:2 handle 22: pfifo limit 5");
        let before = qdiscs("ifb4");
        let e = take_netem(index("ifb4")).unwrap_err().to_string();
        assert!(e.contains("mq 1:, because restoring a mq qdisc exactly is not supported"), "{e}");
        assert_eq!(qdiscs("ifb4"), before);
    });
}

#[test]
fn our_own_root_is_recognised() {
    in_netns(|| {
        veth("va", "vb");
        let saved = take_netem(index("va")).unwrap();
        match take_netem(index("va")) {
            Err(ShapingError::AlreadyOurs { interface, kind }) => {
                assert_eq!((interface.as_str(), kind.as_str()), ("va", "htb"))
            }
            other => panic!("{other:?}"),
        }
        // A lost record: the root can still be removed, giving back the default.
        assert!(shaping::remove_our_root(index("va")).unwrap());
        assert!(!shaping::remove_our_root(index("va")).unwrap());
        assert!(run("tc qdisc show dev va").starts_with("qdisc noqueue 0: root"));
        shaping::restore(index("va"), &saved).unwrap();
        // Gone interface: restore and remove_class are no-ops.
        let ifindex = index("va");
        run("ip link del va");
        shaping::restore(ifindex, &saved).unwrap();
        shaping::remove_class(ifindex, 5).unwrap();
    });
}

/// A delay class needs netem: where the kernel has it, the leaf is netem; where it does not
/// (this host), set_class fails naming it and leaves no half-made class behind.
#[test]
fn delay_class_uses_netem_or_fails_whole() {
    in_netns(|| {
        veth("va", "vb");
        let saved = take_netem(index("va")).unwrap();
        let class = NetemClass {
            delay_ns: 50_000_000,
            jitter_ns: 10_000_000,
            correlation: shaping::percent(25.0),
            distribution: Some(shaping::Distribution::Normal),
            ..rate_class(7, 10_000_000)
        };
        match shaping::set_class(index("va"), &class) {
            Ok(()) => {
                let q = run("tc qdisc show dev va");
                assert!(q.contains("qdisc netem 7: parent cd:7 limit 1000 delay 50ms  10ms 25%"), "{q}");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.starts_with("va: setting the netem leaf 7: of class cd:7: "), "{e}");
                assert!(e.contains("Specified qdisc kind is unknown"), "{e}");
                assert_eq!(run("tc class show dev va"), "");
            }
        }
        shaping::restore(index("va"), &saved).unwrap();
    });
}

#[test]
fn ingress_is_redirected_through_the_ifb() {
    in_netns(|| {
        veth("va", "vb");
        let (va, vb) = (index("va"), index("vb"));
        let before = qdiscs("va");
        let r = shaping::redirect_ingress(va).unwrap();
        assert_eq!(r.ifb_name, format!("chaos-ifb{va}"));
        assert!(r.added_clsact);
        let ifb = link::by_name(&r.ifb_name).unwrap().unwrap();
        assert_eq!((ifb.ifindex, ifb.kind.as_deref(), ifb.up), (r.ifb_ifindex, Some("ifb"), true));
        let filters = run("tc filter show dev va ingress");
        assert!(filters.contains("filter protocol all pref 49374 u32"), "{filters}");
        assert!(filters.contains(&format!("mirred (Egress Redirect to device {})", r.ifb_name)), "{filters}");
        // Asking again re-uses everything.
        let again = shaping::redirect_ingress(va).unwrap();
        assert_eq!(again, shaping::IfbRedirect { added_clsact: false, ..r.clone() });

        // The IFB can be shaped like any device.
        let saved = take_netem(r.ifb_ifindex).unwrap();
        shaping::set_class(r.ifb_ifindex, &rate_class(1, 50_000_000)).unwrap();

        let sent_before = link::by_index(r.ifb_ifindex).unwrap().unwrap().tx_packets;
        send_frames(vb, 5);
        let sent = link::by_index(r.ifb_ifindex).unwrap().unwrap().tx_packets - sent_before;
        assert!(sent >= 5, "the IFB sent {sent} packets");
        let _ = saved;

        shaping::unredirect_ingress(&r).unwrap();
        assert_eq!(run("tc filter show dev va ingress"), "");
        assert!(link::by_name(&r.ifb_name).unwrap().is_none());
        assert_eq!(qdiscs("va"), before);
        shaping::unredirect_ingress(&r).unwrap();
    });
}

/// A clsact that was there (with someone's filter) stays, and so does that filter; a filter
/// that is not ours at our priority is refused and nothing is left behind.
#[test]
fn ingress_redirect_respects_what_was_there() {
    in_netns(|| {
        veth("va", "vb");
        let va = index("va");
        run("tc qdisc add dev va clsact");
        run("tc filter add dev va ingress protocol ip prio 7 u32 match ip dst 10.9.9.9/32 flowid 1:1");
        let before = qdiscs("va") + &run("tc filter show dev va ingress");
        let r = shaping::redirect_ingress(va).unwrap();
        assert!(!r.added_clsact);
        shaping::unredirect_ingress(&r).unwrap();
        assert_eq!(qdiscs("va") + &run("tc filter show dev va ingress"), before);

        run("tc filter add dev va ingress protocol all prio 49374 u32 match u32 0 0 flowid 1:1");
        let before = qdiscs("va") + &run("tc filter show dev va ingress");
        let e = shaping::redirect_ingress(va).unwrap_err().to_string();
        assert_eq!(e, "va: ingress filter priority 0xc0de is taken by a u32 filter");
        assert_eq!(qdiscs("va") + &run("tc filter show dev va ingress"), before);
        assert!(link::by_name(&shaping::ifb_name(va)).unwrap().is_none());
    });
}

#[test]
fn probe_reports_what_this_kernel_has() {
    let p = shaping::probe();
    assert_eq!(p.htb, Ok(()));
    assert_eq!(p.ifb, Ok(()));
    assert_eq!(p.mirred, Ok(()));
    // iproute2 in a namespace of its own is the independent judge of fq and netem.
    let (fq, netem) = in_netns(|| {
        (try_run("tc qdisc add dev lo root fq").is_ok(), try_run("tc qdisc add dev lo root netem delay 1ms").is_ok())
    });
    for (found, expected, kind, module) in [(&p.fq, fq, "fq", "sch_fq"), (&p.netem, netem, "netem", "sch_netem")] {
        match found {
            Ok(()) => assert!(expected, "{kind}"),
            Err(e) => {
                assert!(!expected, "{kind}: {e}");
                assert_eq!(e, &format!("{module} is not available (qdisc kind '{kind}' unknown to this kernel)"));
            }
        }
    }
}
