//! Summaries of measured samples, for statistical assertions.

/// The `q` quantile (0.0 to 1.0) of `samples`, by nearest rank.
pub fn quantile(samples: &[u64], q: f64) -> u64 {
    assert!(!samples.is_empty(), "no samples");
    let mut s = samples.to_vec();
    s.sort_unstable();
    s[((s.len() - 1) as f64 * q).round() as usize]
}

pub fn mean(samples: &[u64]) -> f64 {
    samples.iter().map(|&x| x as f64).sum::<f64>() / samples.len() as f64
}

/// Sample standard deviation.
pub fn std_dev(samples: &[u64]) -> f64 {
    let m = mean(samples);
    let var = samples.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (samples.len() - 1) as f64;
    var.sqrt()
}

/// Milliseconds, for messages.
pub fn ms(ns: impl Into<f64>) -> String {
    format!("{:.2}ms", ns.into() / 1e6)
}
