//! netem's "normal" delay distribution table, computed as iproute2's netem/normal.c computes
//! normal.dist, so the daemon needs no table file: the netem backend sends it as
//! `TCA_NETEM_DELAY_DIST`, and the EDT backend's eBPF program uses the same values.
//!
//! normal.c walks x from -10 to 10 in steps of 0.00005 (accumulated, as here), stores x at
//! `i = rint(16384 * Φ(x))` (the last x wins), and prints every fourth entry as
//! `rint(x * NETEM_DIST_SCALE)` clamped to i16: 4096 values. netem then delays by
//! `mu + table[rnd] * sigma / NETEM_DIST_SCALE` (sch_netem.c tabledist).

use std::sync::OnceLock;

/// normal.c's `TABLESIZE`.
const TABLE_SIZE: usize = 16384;
/// linux/pkt_sched.h `NETEM_DIST_SCALE`: table values are multiples of sigma / 8192.
pub const NETEM_DIST_SCALE: f64 = 8192.0;

/// The 4096 values of iproute2's normal.dist, from `normal.table`: what [`compute`] gives
/// (a test checks it), written down because computing it takes 400,000 evaluations of erf,
/// most of a daemon's start (220 ms of 290).
pub fn normal_table() -> Vec<i16> {
    static TABLE: OnceLock<Vec<i16>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            include_str!("normal.table")
                .split_whitespace()
                .map(|v| v.parse().expect("normal.table holds i16s"))
                .collect()
        })
        .clone()
}

#[cfg_attr(not(test), expect(dead_code, reason = "normal.table is its output, checked by a test"))]
fn compute() -> Vec<i16> {
    let mut table = vec![0.0f64; TABLE_SIZE + 1];
    let mut x = -10.0f64;
    while x < 10.05 {
        // C's rint rounds half to even in the default rounding mode.
        let i = (TABLE_SIZE as f64 * normal_cdf(x)).round_ties_even() as usize;
        table[i] = x;
        x += 0.00005;
    }
    (0..TABLE_SIZE)
        .step_by(4)
        .map(|i| (table[i] * NETEM_DIST_SCALE).round_ties_even().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16)
        .collect()
}

/// normal.c's `normal(x, 0, 1)`: `.5 + .5 * erf(x / (sqrt(2) * 1))`.
fn normal_cdf(x: f64) -> f64 {
    0.5 + 0.5 * erf(x / 2f64.sqrt())
}

/// erf to within a few ulps (what matters is that `16384 * Φ(x)` lands on the same side of
/// every half-integer as with glibc's erf; the test checks the whole table): the Maclaurin
/// series in its all-positive form for small z, the Laplace continued fraction for erfc
/// beyond, and 1 where erfc(z) is below half an ulp of 1.
fn erf(z: f64) -> f64 {
    if z < 0.0 {
        return -erf(-z);
    }
    let frac_2_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    if z < 2.5 {
        // erf z = 2/√π e^{-z²} Σ (2z²)^n z / (1·3·…·(2n+1))
        let (mut term, mut sum, mut n) = (z, z, 0.0);
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * z * z / (2.0 * n + 1.0);
            sum += term;
        }
        frac_2_sqrt_pi * (-z * z).exp() * sum
    } else if z < 6.0 {
        // erfc z = e^{-z²}/√π / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))
        let mut t = z;
        for k in (1..=200).rev() {
            t = z + f64::from(k) / 2.0 / t;
        }
        1.0 - frac_2_sqrt_pi / 2.0 * (-z * z).exp() / t
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of iproute2's normal.dist (as installed by iproute2 6.1, e.g. in
    /// /usr/lib/x86_64-linux-gnu/tc/normal.dist): (index, value).
    const KNOWN: [(usize, i16); 12] = [
        (0, -32768),
        (1, -28307),
        (2, -26871),
        (3, -25967),
        (7, -23937),
        (1023, -5531),
        (2047, -5),
        (2048, 0),
        (2999, 5075),
        (4095, 28858),
        (8, -23600),
        (31, -19887),
    ];

    #[test]
    fn matches_iproute2_normal_dist() {
        let t = normal_table();
        assert_eq!(t.len(), 4096);
        for (i, v) in KNOWN {
            assert_eq!(t[i], v, "entry {i}");
        }
        // Sorted (a quantile table), centred, and antisymmetric away from the tails (each entry
        // is the last x of its bucket, so the far tails lean one bucket, up to 551, upwards).
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        for i in 256..=3840 {
            assert!((i32::from(t[i]) + i32::from(t[4096 - i])).abs() <= 4, "entry {i}");
        }
    }

    /// The whole table against iproute2's file: FNV-1a 64 of its 4096 values as little-endian
    /// i16 (computed from iproute2 6.1's normal.dist), and their sum.
    #[test]
    fn whole_table_matches_iproute2() {
        let t = normal_table();
        let hash = t
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        assert_eq!(t.iter().map(|v| i64::from(*v)).sum::<i64>(), -26163);
        assert_eq!(hash, 0x3f19_8b60_14c3_b3b8);
    }

    /// normal.table is what normal.c's walk gives (`UPDATE_NORMAL_TABLE=1` rewrites it).
    #[test]
    fn the_table_file_is_computed() {
        let computed = compute();
        if std::env::var_os("UPDATE_NORMAL_TABLE").is_some() {
            let lines: Vec<String> = computed
                .chunks(8)
                .map(|row| row.iter().map(|v| format!("{v:7}")).collect::<Vec<_>>().join(""))
                .collect();
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/src/shaping/normal.table"), lines.join("\n") + "\n")
                .unwrap();
        }
        assert_eq!(normal_table(), computed);
    }

    #[test]
    fn erf_known_values() {
        for (z, v) in
            [(0.0, 0.0), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (3.0, 0.999_977_909_503_001_4)]
        {
            assert!((erf(z) - v).abs() < 1e-15, "erf({z}) = {} not {v}", erf(z));
        }
    }
}
