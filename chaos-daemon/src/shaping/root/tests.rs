//! The restore rules on dumps made up here; the real kernel's side is in tests/shaping.rs.

use super::*;

fn q(kind: &str, handle: u32, parent: u32) -> TcObject {
    TcObject { ifindex: 2, kind: kind.into(), handle, parent, info: 0, options: Some(vec![1, 2, 3, 4]), stab: None }
}

fn judged(qdiscs: &[TcObject], classes: &[TcObject], filters: usize) -> Result<SavedRoot, ShapingError> {
    judge("eth0", qdiscs, classes, filters)
}

fn refusal(r: Result<SavedRoot, ShapingError>) -> String {
    match r {
        Err(e @ ShapingError::Unrestorable { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn kernel_defaults_are_restored_by_deleting_ours() {
    assert_eq!(judged(&[], &[], 0).unwrap(), SavedRoot::KernelDefault { kind: None });
    let mq =
        [q("mq", 0, TC_H_ROOT), q("pfifo_fast", 0, 1), q("pfifo_fast", 0, 2), q("clsact", 0xffff_0000, TC_H_CLSACT)];
    assert_eq!(judged(&mq, &[], 0).unwrap(), SavedRoot::KernelDefault { kind: Some("mq".into()) });
    // A user's qdisc grafted under mq would not come back.
    let grafted = [q("mq", 0, TC_H_ROOT), q("fq", 0x8001_0000, 1)];
    assert!(refusal(judged(&grafted, &[], 0)).contains("fq 8001: is attached under it"));
}

#[test]
fn a_classless_user_root_is_recorded_whole() {
    let tbf = q("tbf", 0x1_0000, TC_H_ROOT);
    // tbf's class 1:1 is its own (made from its options): not a reason to refuse.
    let class = TcObject { kind: "tbf".into(), handle: 0x1_0001, parent: 0x1_0000, ..tbf.clone() };
    let saved = judged(&[tbf], &[class], 0).unwrap();
    assert_eq!(
        saved,
        SavedRoot::Qdisc { kind: "tbf".into(), handle: 0x1_0000, options: Some(vec![1, 2, 3, 4]), stab: None }
    );
    // ... and survives the state file.
    let json = serde_json::to_string(&saved).unwrap();
    assert!(json.contains("\"01020304\""), "{json}");
    assert_eq!(serde_json::from_str::<SavedRoot>(&json).unwrap(), saved);
}

#[test]
fn what_cannot_be_restored_exactly_is_refused() {
    let htb = q("htb", 0x1_0000, TC_H_ROOT);
    let class = TcObject { handle: 0x1_0001, parent: 0x1_0000, ..htb.clone() };
    let e = refusal(judged(std::slice::from_ref(&htb), &[class], 0));
    assert!(e.starts_with("eth0: will not replace the root qdisc htb 1:, because it has 1 class(es)"), "{e}");
    assert!(e.ends_with("nothing was changed"), "{e}");
    assert!(judged(std::slice::from_ref(&htb), &[], 0).is_ok(), "htb without classes is restorable");

    let child = q("pfifo", 0x10_0000, 0x1_0001);
    assert!(refusal(judged(&[q("tbf", 0x1_0000, TC_H_ROOT), child], &[], 0)).contains("child qdiscs (pfifo 10:)"));
    assert!(refusal(judged(&[q("prio", 0x1_0000, TC_H_ROOT)], &[], 2)).contains("it has 2 filters"));
    assert!(refusal(judged(&[q("cake", 0x1_0000, TC_H_ROOT)], &[], 0)).contains("restoring a cake qdisc"));
    assert!(refusal(judged(&[q("tbf", ROOT_HANDLE, TC_H_ROOT)], &[], 0)).contains("handle cd:"));
}

#[test]
fn our_own_root_is_recognised() {
    for kind in ["htb", "fq"] {
        match judged(&[q(kind, ROOT_HANDLE, TC_H_ROOT)], &[], 0) {
            Err(ShapingError::AlreadyOurs { interface, kind: k }) => {
                assert_eq!((interface.as_str(), k.as_str()), ("eth0", kind))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn netem_with_jitter_and_stab_with_data_are_refused() {
    let qopt = |jitter: u32| {
        let mut o = vec![0u8; 24];
        o[20..24].copy_from_slice(&jitter.to_ne_bytes());
        o
    };
    let netem = |options| TcObject { options: Some(options), ..q("netem", 0x1_0000, TC_H_ROOT) };
    assert!(judged(&[netem(qopt(0))], &[], 0).is_ok());
    assert!(refusal(judged(&[netem(qopt(5))], &[], 0)).contains("jitter"));
    let mut with64 = qopt(0);
    let mut a = Attrs::new();
    a.put_u64(11, 1000);
    with64.extend_from_slice(a.as_bytes());
    assert!(refusal(judged(&[netem(with64)], &[], 0)).contains("jitter"));

    let stab = |tsize: u32| {
        let mut base = vec![0u8; 28];
        base[20..24].copy_from_slice(&tsize.to_ne_bytes());
        let mut a = Attrs::new();
        a.put(1, &base);
        TcObject { stab: Some(a.as_bytes().to_vec()), ..q("pfifo", 0x1_0000, TC_H_ROOT) }
    };
    assert!(judged(&[stab(0)], &[], 0).is_ok());
    assert!(refusal(judged(&[stab(512)], &[], 0)).contains("size table"));
}
