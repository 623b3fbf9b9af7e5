//! TC programs that drop, shape, duplicate and corrupt packets by rule, and cgroup programs
//! that drop packets reaching a cgroup's sockets and fail its `connect()`s. All behaviour comes
//! from maps (see chaos-common): per packet a fixed chain of eight map lookups, whatever the
//! number of rules, one more for a rule with memory (correlation, Gilbert–Elliott) and two
//! more for a shaping rule.
//!
//! Kept loadable by 4.19 kernels: no loops, no global data, helpers from 4.19 only
//! (map_lookup_elem, get_prandom_u32, ktime_get_ns, skb_load_bytes, skb_store_bytes,
//! l4_csum_replace, clone_redirect, skb_cgroup_id), and `cargo xtask check-ebpf` proves it.
//! Some programs need more, and the daemon loads them only where the kernel accepts them: the
//! `_edt` ones write `skb->tstamp` (5.0); `chaos_cg_ingress` calls skb_cgroup_id from a
//! cgroup_skb program and the connect ones get_current_cgroup_id from cgroup/connect (5.7
//! era); the `_errno` ones call set_retval (5.18).
//!
//! This file holds the thin entry points; the work is split by concern: `maps`, `packet`
//! (parsing), `classify` (the lookup chain), `odds` (chains and odds), `reset` and `corrupt`
//! (the rewrites), `shape` (edt departure times), and `tc` and `cgroup` (acting on a verdict).
#![no_std]
#![no_main]

mod cgroup;
mod classify;
mod corrupt;
mod dns;
mod maps;
mod odds;
mod packet;
mod reset;
mod sessions;
mod shape;
mod tc;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr, classifier, tracepoint},
    programs::{SkBuffContext, SockAddrContext, TcContext, TracePointContext},
};
use chaos_common::{Family, Hook};
use tc::Shaping;

#[classifier]
pub fn chaos_ingress(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Ingress, Shaping::None)
}

#[classifier]
pub fn chaos_egress(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Egress, Shaping::Priority)
}

#[classifier]
pub fn chaos_egress_edt(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Egress, Shaping::Edt)
}

/// Tail-called by the others for a packet whose rule is a DNS rule, and by each other, in
/// this order (see `dns`).
#[classifier]
pub fn chaos_dns(ctx: TcContext) -> i32 {
    dns::find(&ctx)
}

#[classifier]
pub fn chaos_dns_prefix(ctx: TcContext) -> i32 {
    dns::prefix(&ctx)
}

#[classifier]
pub fn chaos_dns_act(ctx: TcContext) -> i32 {
    dns::act(&ctx)
}

/// On an IFB device's egress: the packets are the interface's ingress, redirected there so
/// that a qdisc can hold them; they are matched as ingress packets.
#[classifier]
pub fn chaos_ifb(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Ingress, Shaping::Priority)
}

#[classifier]
pub fn chaos_ifb_edt(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Ingress, Shaping::EdtIfb)
}

/// cgroup_skb/ingress, attached to the cgroups of ingress cgroup faults: a packet as it reaches
/// a socket of the cgroup (or of one below it), acted on by the rules of the socket's cgroup
/// scope only; the interface's own ingress rules acted at TC already. Returns 0 to drop.
#[cgroup_skb(ingress)]
pub fn chaos_cg_ingress(ctx: SkBuffContext) -> i32 {
    i32::from(!cgroup::ingress_drops(&ctx))
}

/// cgroup/connect4 and connect6: `connect()` in a cgroup with connect-fail faults.
#[cgroup_sock_addr(connect4)]
pub fn chaos_connect4(ctx: SockAddrContext) -> i32 {
    cgroup::connect(&ctx, Family::V4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_connect6(ctx: SockAddrContext) -> i32 {
    cgroup::connect(&ctx, Family::V6, false)
}

#[cgroup_sock_addr(connect4)]
pub fn chaos_connect4_errno(ctx: SockAddrContext) -> i32 {
    cgroup::connect(&ctx, Family::V4, true)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_connect6_errno(ctx: SockAddrContext) -> i32 {
    cgroup::connect(&ctx, Family::V6, true)
}

/// sock:inet_sock_set_state, for the SSH guard: see `sessions`.
#[tracepoint]
pub fn chaos_sessions(ctx: TracePointContext) -> u32 {
    let _ = sessions::try_follow(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
