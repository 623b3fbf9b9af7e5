//! Delay, jitter and bandwidth on a device, through its root qdisc. Two backends:
//!
//! - **EDT**: `fq` as root; the eBPF egress program writes skb->tstamp and fq holds each
//!   packet until then (fq honours tstamp from 4.20).
//! - **netem** (4.19): `htb` as root with one class per rule, each with a `netem` (or `pfifo`)
//!   leaf; the eBPF program writes skb->priority = classid, which htb_classify looks up as a
//!   class of this qdisc before any filter.
//!
//! Ingress has no queue: its traffic is redirected to an IFB device ([`redirect_ingress`])
//! and shaped on the IFB's egress with the same backend. Whatever root a device had is
//! recorded before it is replaced ([`take`]) and put back exactly ([`restore`]); the record is
//! persisted by the caller, so a crashed daemon's successor restores it too.

mod class;
mod fq;
mod htb;
mod ingress;
mod netem;
mod normal;
mod probe;
mod root;

pub use class::{Distribution, NetemClass, remove_class, set_class};
pub use fq::FqParams;
pub use ingress::{IfbRedirect, REDIRECT_PRIORITY, ifb_name, redirect_ingress, unredirect_ingress};
pub use netem::{NetemOptions, percent};
pub use normal::{NETEM_DIST_SCALE, normal_table};
pub use probe::{Probe, probe};
pub use root::{Saved, SavedRoot, remove_our_root, restore, take};
use serde::{Deserialize, Serialize};

use crate::netlink::{NlError, link, tc};

/// Our root qdisc's major: its handle is `cd:`, its classes `cd:minor`.
pub const ROOT_MAJOR: u16 = 0xcd;
pub const ROOT_HANDLE: u32 = tc::handle(ROOT_MAJOR, 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Edt,
    Netem,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    #[error("no interface with index {0}")]
    NoInterface(u32),
    /// The root is already `cd:` (fq or htb): left by an earlier daemon, or taken twice.
    #[error("{interface}: the root qdisc is already chaos-daemon's ({kind} cd:)")]
    AlreadyOurs { interface: String, kind: String },
    /// The root could not be put back exactly; nothing was changed.
    #[error("{interface}: will not replace the root qdisc {kind} {handle}, because {reason}; nothing was changed")]
    Unrestorable { interface: String, kind: String, handle: String, reason: String },
    #[error("{interface}: {reason}")]
    Invalid { interface: String, reason: String },
    #[error("{interface}: {what}: {source}")]
    Kernel {
        interface: String,
        what: String,
        #[source]
        source: NlError,
    },
}

/// Maps a netlink error to [`ShapingError::Kernel`] saying what was being done.
fn kernel(interface: &str, what: impl Into<String>) -> impl FnOnce(NlError) -> ShapingError {
    let (interface, what) = (interface.to_string(), what.into());
    move |source| ShapingError::Kernel { interface, what, source }
}

/// The interface's name, for messages; None when it does not exist (any more).
fn name_of(ifindex: u32) -> Result<Option<String>, ShapingError> {
    let l = link::by_index(ifindex).map_err(kernel(&format!("ifindex {ifindex}"), "looking up the interface"))?;
    Ok(l.map(|l| l.name))
}

fn interface(ifindex: u32) -> Result<String, ShapingError> {
    name_of(ifindex)?.ok_or(ShapingError::NoInterface(ifindex))
}

/// Deleting something already gone: the device, the qdisc or the class no longer exists
/// (ENODEV, ENOENT), or the parent named is not there any more (EINVAL).
fn gone(e: &NlError) -> bool {
    e.is(libc::ENODEV) || e.is(libc::ENOENT) || e.is(libc::EINVAL)
}

/// Bytes as lowercase hex (state file, tests).
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
