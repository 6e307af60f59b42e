//! Check kinds: each turns command output into measurements. One file per kind;
//! `Runner` is the one place that dispatches on the kind.
pub mod vitals;

use crate::config::CheckSpec;
use crate::model::Measurement;

use super::transport::ExecOutput;

/// The per-target state of one check (e.g. previous counters for rates).
pub enum Runner {
    Vitals(vitals::VitalsState),
}

impl Runner {
    pub fn new(spec: &CheckSpec) -> Self {
        match spec {
            CheckSpec::Vitals(_) => Runner::Vitals(vitals::VitalsState::default()),
        }
    }

    /// The command run on the target for one scrape.
    pub fn command(&self) -> &'static str {
        match self {
            Runner::Vitals(_) => vitals::VITALS_COMMAND,
        }
    }

    /// Output beyond this many bytes is refused (the channel is closed).
    pub fn max_output(&self) -> usize {
        match self {
            Runner::Vitals(_) => vitals::MAX_OUTPUT_BYTES,
        }
    }

    /// Turns one scrape's output into measurements, or a message saying what was wrong.
    pub fn ingest(&mut self, out: &ExecOutput, ts_ms: i64) -> Result<Vec<Measurement>, String> {
        match self {
            Runner::Vitals(state) => {
                let snap = vitals::parse(&out.stdout).map_err(|e| {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let stderr = stderr.trim();
                    if stderr.is_empty() {
                        format!("vitals: {e}")
                    } else {
                        format!("vitals: {e} (stderr: {})", truncate(stderr, 200))
                    }
                })?;
                let mut m = state.observe(snap, ts_ms);
                for x in &mut m {
                    x.value = round_derived(x.value);
                }
                Ok(m)
            }
        }
    }
}

/// Decimal places kept of derived values (percentages, rates).
const DERIVED_DECIMALS: i32 = 2;

/// Rounds a derived, fractional value (a percentage, a rate) to
/// `DERIVED_DECIMALS`: the digits beyond carry no information, and a value with
/// few decimals compresses to about a byte in the store, where an arbitrary float
/// costs seven. Whole numbers (byte counts) are left exactly as they are.
pub fn round_derived(v: f64) -> f64 {
    if !v.is_finite() || v.fract() == 0.0 {
        return v;
    }
    let scale = 10f64.powi(DERIVED_DECIMALS);
    let r = (v * scale).round() / scale;
    if r.is_finite() {
        r
    } else {
        v
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::round_derived;

    #[test]
    fn derived_values_keep_two_decimals_and_whole_numbers_stay_exact() {
        assert_eq!(round_derived(81.723_423_4), 81.72);
        assert_eq!(round_derived(0.005_1), 0.01);
        let huge = 9_007_199_254_740_993_f64; // beyond 2^53: must not be touched
        assert_eq!(round_derived(huge).to_bits(), huge.to_bits());
        assert!(round_derived(f64::NAN).is_nan());
    }
}
