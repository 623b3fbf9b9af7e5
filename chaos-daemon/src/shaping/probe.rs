//! What this kernel can shape with, found by trying (never by version: vendor kernels backport
//! and distributions leave modules out) in a private network namespace, so nothing real is
//! touched. Module autoloading (request_module for `sch_*`, `cls_*`, `act_*`, `rtnl-link-*`)
//! happens as a side effect.

use super::{FqParams, ROOT_HANDLE, fq, htb, ingress, netem};
use crate::netlink::{
    Attrs, NlError, link,
    tc::{self, CLSACT_INGRESS, ETH_P_ALL, Mode, TC_H_ROOT},
};

/// Each field Ok, or Err naming the missing kernel piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub fq: Result<(), String>,
    /// Whether fq serves a flow by departure time, so a packet can overtake delayed ones of its
    /// own flow (reorder on the edt backend).
    pub fq_orders: Result<(), String>,
    pub netem: Result<(), String>,
    pub htb: Result<(), String>,
    pub ifb: Result<(), String>,
    /// clsact, cls_u32 and act_mirred: the ingress redirect.
    pub mirred: Result<(), String>,
}

impl Probe {
    fn failed(why: &str) -> Self {
        let e = Err(why.to_string());
        Self { fq: e.clone(), fq_orders: e.clone(), netem: e.clone(), htb: e.clone(), ifb: e.clone(), mirred: e }
    }
}

/// Probes on a fresh thread that unshares its network namespace, which disappears when the
/// thread ends (nothing else holds it: the sockets are closed by then). Without CAP_SYS_ADMIN
/// (a container granted CAP_BPF and CAP_NET_ADMIN only) the thread cannot unshare: it probes in
/// the daemon's namespace instead, on an IFB device made for the probe and deleted after, so
/// that no device of the host is touched.
pub fn probe() -> Probe {
    std::thread::spawn(|| match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => match link::by_name("lo") {
            Ok(Some(lo)) => probe_on(lo.ifindex, add_ifb().map(|_| ())),
            other => Probe::failed(&format!("cannot probe: no lo in a new network namespace ({other:?})")),
        },
        Err(nix::errno::Errno::EPERM) => match add_ifb() {
            Ok(ifb) => {
                let probe = probe_on(ifb, Ok(()));
                if let Err(e) = link::delete(ifb) {
                    tracing::warn!("removing the probe's {PROBE_IFB} device: {e}");
                }
                probe
            }
            Err(why) => Probe::failed(&format!(
                "cannot probe: no private network namespace (needs CAP_SYS_ADMIN) and no probe device ({why})"
            )),
        },
        Err(e) => Probe::failed(&format!("cannot probe: unshare(CLONE_NEWNET) failed: {e}")),
    })
    .join()
    .unwrap_or_else(|_| Probe::failed("the probe thread panicked"))
}

const PROBE_IFB: &str = "chaos-probe";

/// An IFB device for the probe (one a crashed daemon left is replaced); its ifindex.
fn add_ifb() -> Result<u32, String> {
    if let Ok(Some(stale)) = link::by_name(PROBE_IFB) {
        let _ = link::delete(stale.ifindex);
    }
    link::add_ifb(PROBE_IFB).map_err(|e| {
        let e = if e.is(libc::EOPNOTSUPP) { NlError { errno: libc::ENOENT, ..e } } else { e };
        missing(&e, "ifb", "link kind 'ifb'", "creating an ifb device")
    })?;
    match link::by_name(PROBE_IFB) {
        Ok(Some(l)) => Ok(l.ifindex),
        other => Err(format!("the {PROBE_IFB} device just made is not there ({other:?})")),
    }
}

/// Tries each qdisc as the root of `dev`, and the ingress redirect on it. `ifb`: whether IFB
/// devices can be made.
fn probe_on(dev: u32, ifb: Result<(), String>) -> Probe {
    let qdisc = |kind: &str, module: &str, options: Attrs| {
        tc::add_qdisc(dev, TC_H_ROOT, ROOT_HANDLE, kind, &options, Mode::Create)
            .map(|()| drop(tc::del_qdisc(dev, TC_H_ROOT, ROOT_HANDLE)))
            .map_err(|e| missing(&e, module, &format!("qdisc kind '{kind}'"), &format!("adding a {kind} qdisc")))
    };
    let netem_options = netem::options(&netem::NetemOptions { limit: 1000, ..Default::default() });
    let mut fq_orders = Err("no fq".to_string());
    let fq = tc::add_qdisc(dev, TC_H_ROOT, ROOT_HANDLE, "fq", &fq::options(&FqParams::default()), Mode::Create)
        .map(|()| {
            fq_orders = fq_orders_flows(dev);
            drop(tc::del_qdisc(dev, TC_H_ROOT, ROOT_HANDLE));
        })
        .map_err(|e| missing(&e, "sch_fq", "qdisc kind 'fq'", "adding a fq qdisc"));
    // Its filters go with the namespace, or with the probe's IFB.
    let mirred = redirect(dev, dev);
    Probe {
        fq,
        fq_orders,
        netem: qdisc("netem", "sch_netem", netem_options),
        htb: qdisc("htb", "sch_htb", htb::root_options(1000)),
        ifb,
        mirred,
    }
}

/// Whether the fq on `dev` reports a horizon. fq has kept each flow's packets ordered by their
/// departure time since 5.2 (before, a flow is a FIFO: nothing overtakes in it); the horizon
/// came in 5.7 and is the first trace of it fq shows, so older kernels are refused even where
/// they could (5.2 to 5.6), never the other way round.
fn fq_orders_flows(dev: u32) -> Result<(), String> {
    // From the dump: asked for alone (tc_get_qdisc), a down device's root answers with its
    // builtin noop qdisc, which is not shown.
    let qdiscs = tc::qdiscs(dev).map_err(|e| format!("reading fq's options back: {e}"))?;
    let fq = qdiscs.into_iter().find(|q| q.kind == "fq" && q.parent == TC_H_ROOT);
    match fq.and_then(|q| q.options).map(|o| fq::has_horizon(&o)) {
        Some(true) => Ok(()),
        _ => Err("this kernel's fq serves each flow in arrival order (it has no horizon option, 5.7+), \
                  so no packet can overtake the delayed ones of its flow"
            .into()),
    }
}

/// clsact, then a bare u32 filter, then u32 with mirred: each step names its own module.
fn redirect(dev: u32, target: u32) -> Result<(), String> {
    tc::add_clsact(dev).map_err(|e| missing(&e, "sch_ingress", "qdisc kind 'clsact'", "adding clsact"))?;
    tc::add_filter(dev, CLSACT_INGRESS, 1, ETH_P_ALL, "u32", &ingress::match_all_options())
        .map_err(|e| missing(&e, "cls_u32", "filter kind 'u32'", "adding a u32 filter"))?;
    tc::add_filter(dev, CLSACT_INGRESS, 2, ETH_P_ALL, "u32", &ingress::redirect_options(target))
        .map_err(|e| missing(&e, "act_mirred", "action 'mirred'", "adding a mirred action"))
}

/// The kernel says ENOENT for an unknown qdisc, filter or action kind (qdisc_create,
/// tcf_proto_create, tcf_action_init_1; rtnl_newlink says EOPNOTSUPP, mapped by the caller).
fn missing(e: &NlError, module: &str, what: &str, doing: &str) -> String {
    if e.is(libc::ENOENT) {
        format!("{module} is not available ({what} unknown to this kernel)")
    } else {
        format!("{module}: {doing} failed: {e}")
    }
}
