//! Per-minute and per-hour rollups of request-like series (http checks): count,
//! min, max, sum of response times and a count per status code. Pure merging here;
//! the writer keeps open buckets in memory and writes them with each commit.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Rollup granularities: the stored code and the bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    Minute,
    Hour,
}

impl Granularity {
    pub const ALL: [Granularity; 2] = [Granularity::Minute, Granularity::Hour];

    pub fn code(self) -> u8 {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
        }
    }
    pub fn width_ms(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
        }
    }
    pub fn bucket(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.width_ms()) * self.width_ms()
    }
    pub fn parse(s: &str) -> Option<Granularity> {
        match s {
            "minute" | "m" => Some(Granularity::Minute),
            "hour" | "h" => Some(Granularity::Hour),
            _ => None,
        }
    }
}

/// One bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Requests in the bucket, answered or not.
    pub count: u64,
    /// Response times of answered requests.
    pub timed: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// Requests per status code ("200", "404", ... and "failed").
    pub statuses: BTreeMap<String, u64>,
}

impl Agg {
    pub fn add(&mut self, response_ms: Option<f64>, status: &str) {
        self.count += 1;
        *self.statuses.entry(status.to_string()).or_default() += 1;
        if let Some(v) = response_ms.filter(|v| v.is_finite()) {
            if self.timed == 0 {
                self.min = v;
                self.max = v;
            } else {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            self.timed += 1;
            self.sum += v;
        }
    }

    pub fn merge(&mut self, other: &Agg) {
        if other.timed > 0 {
            if self.timed == 0 {
                self.min = other.min;
                self.max = other.max;
            } else {
                self.min = self.min.min(other.min);
                self.max = self.max.max(other.max);
            }
        }
        self.count += other.count;
        self.timed += other.timed;
        self.sum += other.sum;
        for (k, v) in &other.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
    }

    /// Mean response time of the answered requests.
    pub fn mean(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.sum / self.timed as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_their_width() {
        assert_eq!(Granularity::Minute.bucket(125_000), 120_000);
        assert_eq!(Granularity::Hour.bucket(3_600_000 * 5 + 1), 3_600_000 * 5);
        assert_eq!(Granularity::Minute.bucket(-1), -60_000);
    }

    #[test]
    fn add_and_merge_agree() {
        let points = [
            (Some(10.0), "200"),
            (None, "failed"),
            (Some(30.0), "500"),
            (Some(5.0), "200"),
        ];
        let mut whole = Agg::default();
        for (v, s) in points {
            whole.add(v, s);
        }
        let (mut a, mut b) = (Agg::default(), Agg::default());
        for (v, s) in &points[..1] {
            a.add(*v, s);
        }
        for (v, s) in &points[1..] {
            b.add(*v, s);
        }
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(whole.count, 4);
        assert_eq!(whole.min, 5.0);
        assert_eq!(whole.max, 30.0);
        assert_eq!(whole.mean(), Some(15.0));
        assert_eq!(whole.statuses["200"], 2);
        assert_eq!(whole.statuses["failed"], 1);
    }
}
