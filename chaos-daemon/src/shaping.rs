//! Delay, jitter and bandwidth on a device, through its root qdisc.

mod normal;

pub use normal::{NETEM_DIST_SCALE, normal_table};
