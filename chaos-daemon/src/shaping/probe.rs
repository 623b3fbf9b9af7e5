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
/// thread ends (nothing else holds it: the sockets are closed by then).
pub fn probe() -> Probe {
    std::thread::spawn(|| match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => probe_here(),
        Err(e) => Probe::failed(&format!("cannot probe: unshare(CLONE_NEWNET) failed: {e}")),
    })
    .join()
    .unwrap_or_else(|_| Probe::failed("the probe thread panicked"))
}

fn probe_here() -> Probe {
    let lo = match link::by_name("lo") {
        Ok(Some(l)) => l.ifindex,
        other => return Probe::failed(&format!("cannot probe: no lo in a new network namespace ({other:?})")),
    };
    let qdisc = |kind: &str, module: &str, options: Attrs| {
        tc::add_qdisc(lo, TC_H_ROOT, ROOT_HANDLE, kind, &options, Mode::Create)
            .map(|()| drop(tc::del_qdisc(lo, TC_H_ROOT, ROOT_HANDLE)))
            .map_err(|e| missing(&e, module, &format!("qdisc kind '{kind}'"), &format!("adding a {kind} qdisc")))
    };
    let netem_options = netem::options(&netem::NetemOptions { limit: 1000, ..Default::default() });
    let ifb_name = "chaos-probe";
    let ifb = link::add_ifb(ifb_name).map_err(|e| {
        let e = if e.is(libc::EOPNOTSUPP) { NlError { errno: libc::ENOENT, ..e } } else { e };
        missing(&e, "ifb", "link kind 'ifb'", "creating an ifb device")
    });
    let target = match ifb {
        Ok(()) => link::by_name(ifb_name).ok().flatten().map_or(lo, |l| l.ifindex),
        Err(_) => lo,
    };
    let mut fq_orders = Err("no fq".to_string());
    let fq = tc::add_qdisc(lo, TC_H_ROOT, ROOT_HANDLE, "fq", &fq::options(&FqParams::default()), Mode::Create)
        .map(|()| {
            fq_orders = fq_orders_flows(lo);
            drop(tc::del_qdisc(lo, TC_H_ROOT, ROOT_HANDLE));
        })
        .map_err(|e| missing(&e, "sch_fq", "qdisc kind 'fq'", "adding a fq qdisc"));
    Probe {
        fq,
        fq_orders,
        netem: qdisc("netem", "sch_netem", netem_options),
        htb: qdisc("htb", "sch_htb", htb::root_options(1000)),
        ifb,
        mirred: redirect(lo, target),
    }
}

/// Whether the fq on `lo` reports a horizon. fq has kept each flow's packets ordered by their
/// departure time since 5.2 (before, a flow is a FIFO: nothing overtakes in it); the horizon
/// came in 5.7 and is the first trace of it fq shows, so older kernels are refused even where
/// they could (5.2 to 5.6), never the other way round.
fn fq_orders_flows(lo: u32) -> Result<(), String> {
    // From the dump: asked for alone (tc_get_qdisc), a down device's root answers with its
    // builtin noop qdisc, which is not shown.
    let qdiscs = tc::qdiscs(lo).map_err(|e| format!("reading fq's options back: {e}"))?;
    let fq = qdiscs.into_iter().find(|q| q.kind == "fq" && q.parent == TC_H_ROOT);
    match fq.and_then(|q| q.options).map(|o| fq::has_horizon(&o)) {
        Some(true) => Ok(()),
        _ => Err("this kernel's fq serves each flow in arrival order (it has no horizon option, 5.7+), \
                  so no packet can overtake the delayed ones of its flow"
            .into()),
    }
}

/// clsact, then a bare u32 filter, then u32 with mirred: each step names its own module.
fn redirect(lo: u32, target: u32) -> Result<(), String> {
    tc::add_clsact(lo).map_err(|e| missing(&e, "sch_ingress", "qdisc kind 'clsact'", "adding clsact"))?;
    tc::add_filter(lo, CLSACT_INGRESS, 1, ETH_P_ALL, "u32", &ingress::match_all_options())
        .map_err(|e| missing(&e, "cls_u32", "filter kind 'u32'", "adding a u32 filter"))?;
    tc::add_filter(lo, CLSACT_INGRESS, 2, ETH_P_ALL, "u32", &ingress::redirect_options(target))
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
