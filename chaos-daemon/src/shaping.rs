//! TEMPORARY stub of the shaping API (replaced by the netlink implementation).
#![allow(dead_code, unused_variables)]

use serde::{Deserialize, Serialize};

pub const ROOT_MAJOR: u16 = 0xcd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    Edt,
    Netem,
}

pub struct Probe {
    pub fq: Result<(), String>,
    pub netem: Result<(), String>,
    pub htb: Result<(), String>,
    pub ifb: Result<(), String>,
    pub mirred: Result<(), String>,
}

pub fn probe() -> Probe {
    let no = || Err("stub".to_string());
    Probe { fq: no(), netem: no(), htb: no(), ifb: no(), mirred: no() }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {}

#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct ShapingError;

#[derive(Clone, Copy, Debug)]
pub struct FqParams {
    pub limit: u32,
    pub flow_limit: u32,
    pub horizon_ns: u64,
}

pub fn take(ifindex: u32, backend: Backend, fq: FqParams, direct_qlen: u32) -> Result<Saved, ShapingError> {
    Err(ShapingError)
}
pub fn restore(ifindex: u32, saved: &Saved) -> Result<(), ShapingError> {
    Err(ShapingError)
}
#[derive(Clone, Debug)]
pub struct NetemClass {
    pub minor: u16,
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub correlation: u32,
    pub distribution: Option<Distribution>,
    pub rate_bps: Option<u64>,
    pub burst_bytes: Option<u32>,
    pub limit_packets: u32,
}
#[derive(Clone, Copy, Debug)]
pub enum Distribution {
    Normal,
}
pub fn set_class(ifindex: u32, class: &NetemClass) -> Result<(), ShapingError> {
    Err(ShapingError)
}
pub fn remove_class(ifindex: u32, minor: u16) -> Result<(), ShapingError> {
    Err(ShapingError)
}
pub fn normal_table() -> Vec<i16> {
    vec![0; 4096]
}
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IfbRedirect {
    pub ifindex: u32,
    pub ifb_ifindex: u32,
    pub ifb_name: String,
    pub priority: u16,
    pub handle: u32,
    pub added_clsact: bool,
}
pub fn redirect_ingress(ifindex: u32) -> Result<IfbRedirect, ShapingError> {
    Err(ShapingError)
}
pub fn unredirect_ingress(r: &IfbRedirect) -> Result<(), ShapingError> {
    Err(ShapingError)
}
