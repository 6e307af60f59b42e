//! The one retry policy: exponential backoff with jitter and an optional limit of
//! attempts. SSH reconnects (no limit) and outbox deliveries (a limit, then the
//! fallbacks) both ask it how long to wait and whether to go on.
use std::time::Duration;

use rand::Rng;

/// Jitter scales a wait by a factor in `[JITTER_MIN, 1.0]`, so that things that
/// failed together do not retry together, and no wait falls below half its base.
pub const JITTER_MIN: f64 = 0.5;

/// The exponent is capped so that `first · 2^exp` cannot overflow a `u32` shift.
const MAX_EXPONENT: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubles per failure.
    pub first: Duration,
    /// Cap of the doubled wait (before jitter).
    pub max: Duration,
    /// Failures after which to give up; `None`: never give up.
    pub max_attempts: Option<u32>,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after this wait.
    After(Duration),
    /// Stop: the error is permanent, or the attempts are used up.
    GiveUp,
}

impl RetryPolicy {
    /// A policy that never gives up.
    pub fn forever(first: Duration, max: Duration) -> Self {
        RetryPolicy {
            first,
            max,
            max_attempts: None,
        }
    }

    /// `first · 2^(attempt-1)` capped at `max`, without jitter; `attempt` counts
    /// failures so far, from 1 (0 is treated as 1).
    pub fn base(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(MAX_EXPONENT);
        self.first.saturating_mul(1u32 << exp).min(self.max)
    }

    /// [`Self::base`] scaled by `jitter`, clamped to `[JITTER_MIN, 1.0]`.
    pub fn delay_with(&self, attempt: u32, jitter: f64) -> Duration {
        self.base(attempt).mul_f64(jitter.clamp(JITTER_MIN, 1.0))
    }

    /// [`Self::base`] scaled by a random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_jitter())
    }

    /// True once `attempts` failures use up the limit.
    pub fn gives_up(&self, attempts: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempts >= max)
    }

    /// After `attempts` failures, the last one `retryable` or not: give up, or
    /// wait (with jitter) and try again.
    pub fn after_failure(&self, attempts: u32, retryable: bool) -> Retry {
        if !retryable || self.gives_up(attempts) {
            Retry::GiveUp
        } else {
            Retry::After(self.delay(attempts))
        }
    }
}

/// A jitter factor drawn from `[JITTER_MIN, 1.0]`.
pub fn random_jitter() -> f64 {
    rand::rng().random_range(JITTER_MIN..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_attempts,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_without_overflow() {
        let p = policy(None);
        let waits: Vec<u64> = (1..=6).map(|a| p.base(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(p.base(0), Duration::from_secs(1), "0 counts as the first");
        assert_eq!(p.base(u32::MAX), Duration::from_secs(10), "no overflow");
        let huge = RetryPolicy::forever(Duration::MAX, Duration::MAX);
        assert_eq!(huge.base(40), Duration::MAX, "saturates");
    }

    #[test]
    fn jitter_is_clamped_to_half_and_whole() {
        let p = policy(None);
        assert_eq!(p.delay_with(4, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay_with(4, 0.0), Duration::from_secs(4), "clamped up");
        assert_eq!(p.delay_with(4, 7.0), Duration::from_secs(8), "clamped down");
        for attempt in [1, 2, 3, 4, 5, 30] {
            let full = p.base(attempt);
            for _ in 0..50 {
                let w = p.delay(attempt);
                assert!(w >= full / 2 && w <= full, "attempt {attempt}: {w:?}");
            }
        }
    }

    #[test]
    fn gives_up_after_max_attempts_or_a_permanent_error() {
        let p = policy(Some(3));
        assert!(matches!(p.after_failure(1, true), Retry::After(_)));
        assert!(matches!(p.after_failure(2, true), Retry::After(_)));
        assert_eq!(p.after_failure(3, true), Retry::GiveUp);
        assert_eq!(p.after_failure(1, false), Retry::GiveUp, "permanent");
        let forever = policy(None);
        assert!(!forever.gives_up(u32::MAX));
        assert!(matches!(
            forever.after_failure(1_000, true),
            Retry::After(_)
        ));
    }
}
