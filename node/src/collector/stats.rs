//! Scrape timing of this node: how long scrapes take and how late they start.
//! Shown by `herd status` and read by the benchmark.
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Recent observations kept per measure; percentiles are over these.
const WINDOW: usize = 20_000;

#[derive(Debug, Default)]
struct Window {
    values_us: VecDeque<u64>,
    total: u64,
}

impl Window {
    fn push(&mut self, d: Duration) {
        if self.values_us.len() == WINDOW {
            self.values_us.pop_front();
        }
        self.values_us
            .push_back(d.as_micros().min(u64::MAX as u128) as u64);
        self.total += 1;
    }

    fn percentiles(&self, ps: &[f64]) -> Vec<Duration> {
        let mut v: Vec<u64> = self.values_us.iter().copied().collect();
        v.sort_unstable();
        ps.iter()
            .map(|p| {
                if v.is_empty() {
                    return Duration::ZERO;
                }
                let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                Duration::from_micros(v[rank.min(v.len() - 1)])
            })
            .collect()
    }
}

/// Percentiles of the recent window, for one measure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

#[derive(Debug, Default)]
pub struct ScrapeStats {
    duration: Mutex<Window>,
    lateness: Mutex<Window>,
}

impl ScrapeStats {
    /// Records one scrape: how long it took and how long after its scheduled time
    /// it started.
    pub fn record(&self, took: Duration, late: Duration) {
        if let Ok(mut w) = self.duration.lock() {
            w.push(took);
        }
        if let Ok(mut w) = self.lateness.lock() {
            w.push(late);
        }
    }

    pub fn duration(&self) -> Summary {
        summarize(&self.duration)
    }

    pub fn lateness(&self) -> Summary {
        summarize(&self.lateness)
    }
}

fn summarize(w: &Mutex<Window>) -> Summary {
    let Ok(w) = w.lock() else {
        return Summary::default();
    };
    let p = w.percentiles(&[50.0, 99.0, 100.0]);
    Summary {
        count: w.total,
        p50: p[0],
        p99: p[1],
        max: p[2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let s = ScrapeStats::default();
        for ms in 1..=100 {
            s.record(Duration::from_millis(ms), Duration::from_millis(100 - ms));
        }
        let d = s.duration();
        assert_eq!(d.count, 100);
        assert_eq!(d.p50, Duration::from_millis(51));
        assert_eq!(d.p99, Duration::from_millis(99));
        assert_eq!(d.max, Duration::from_millis(100));
        assert_eq!(s.lateness().max, Duration::from_millis(99));
    }

    #[test]
    fn window_keeps_the_most_recent() {
        let s = ScrapeStats::default();
        for _ in 0..WINDOW {
            s.record(Duration::from_secs(9), Duration::ZERO);
        }
        for _ in 0..WINDOW {
            s.record(Duration::from_millis(1), Duration::ZERO);
        }
        assert_eq!(s.duration().max, Duration::from_millis(1));
        assert_eq!(s.duration().count, 2 * WINDOW as u64);
    }
}
