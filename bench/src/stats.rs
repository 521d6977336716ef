//! Percentiles and medians: the only statistics the reports use.

/// The `p`-th percentile (0–100) of `samples` by the nearest-rank method; `samples` is sorted
/// in place. None for no samples.
pub fn percentile(samples: &mut [u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    // The epsilon keeps float error (99.9% of 1000 = 999.0000000000001) from moving a rank up.
    let rank = ((p / 100.0) * samples.len() as f64 - 1e-9).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// Latency summary in milliseconds from samples in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Latency {
    pub fn from_micros(samples: &mut [u64]) -> Latency {
        let ms = |p: f64, samples: &mut [u64]| percentile(samples, p).map_or(0.0, |us| us as f64 / 1000.0);
        Latency {
            p50_ms: ms(50.0, samples),
            p99_ms: ms(99.0, samples),
            p999_ms: ms(99.9, samples),
            max_ms: ms(100.0, samples),
            samples: samples.len(),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count). None if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(percentile(&mut samples, 50.0), Some(500));
        assert_eq!(percentile(&mut samples, 99.0), Some(990));
        assert_eq!(percentile(&mut samples, 99.9), Some(999));
        assert_eq!(percentile(&mut samples, 100.0), Some(1000));
        assert_eq!(percentile(&mut samples, 0.0), Some(1));
        assert_eq!(percentile(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [7], 99.9), Some(7));
    }

    #[test]
    fn latency_in_milliseconds() {
        let mut samples: Vec<u64> = (1..=100).map(|i| i * 100).collect();
        let latency = Latency::from_micros(&mut samples);
        assert_eq!(latency.p50_ms, 5.0);
        assert_eq!(latency.p99_ms, 9.9);
        assert_eq!(latency.max_ms, 10.0);
        assert_eq!(latency.samples, 100);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }
}
