//! Pods of a real containerd, found through the CRI: chaos-cri's view of them, and faults named
//! `--pod NAMESPACE/NAME` that follow the pod's sandbox (its network namespace), not one of its
//! containers.

use chaos_tests::{containerd::Lab, unique};

#[test]
fn the_cri_lists_pods_with_their_namespace_and_containers() {
    let lab = Lab::start().unwrap();
    let name = unique("web-");
    let pod = lab.run_pod("shop", &name, &[("app", "web"), ("tier", "front")]).unwrap();
    let side = lab.add_container(&pod, "side", &[]).unwrap();

    let pods = lab.call_pods();
    let listed = pods.iter().find(|p| p.id == pod.id).expect("the pod is listed");
    assert_eq!(
        (listed.namespace.as_str(), listed.name.as_str(), listed.uid.as_str()),
        ("shop", name.as_str(), pod.uid.as_str())
    );
    assert!(listed.ready, "{listed:?}");
    assert_eq!(listed.labels.get("app").map(String::as_str), Some("web"), "{listed:?}");
    assert_eq!(listed.ips, vec![lab.pod_ip(&pod).unwrap()]);
    let netns = listed.netns.clone().expect("a netns path");
    assert!(netns.starts_with(&lab.dir), "{}", netns.display());
    let pid = listed.pid.expect("the sandbox's pid");
    // The sandbox's process is in that namespace.
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_eq!(ino(&netns), ino(std::path::Path::new(&format!("/proc/{pid}/ns/net"))));

    let containers = lab.call_containers();
    let mine: Vec<_> = containers.iter().filter(|c| c.pod_id == pod.id).collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|c| c.running && c.pid.is_some()), "{mine:?}");
    lab.stop_container(&side).unwrap();
    let side = lab.call_containers().into_iter().find(|c| c.id == side).unwrap();
    assert!(!side.running && side.pid.is_none(), "{side:?}");

    lab.stop_pod(&pod).unwrap();
    let listed = lab.call_pods().into_iter().find(|p| p.id == pod.id).unwrap();
    assert!(!listed.ready && listed.netns.is_none() && listed.pid.is_none(), "{listed:?}");
}
