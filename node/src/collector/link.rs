//! Reachability of one target: up/down transitions and reconnect backoff.
//! Pure state machine; the target task feeds it outcomes and asks when to retry.
use std::time::Duration;

use crate::model::RetryPolicy;

/// What changed with an outcome, so the caller records one event per transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Down for the first time, or down for a different reason than before.
    Down {
        reason: String,
    },
    Up,
}

#[derive(Debug, Clone)]
pub struct Link {
    up: Option<bool>,
    failures: u32,
    reason: Option<String>,
    retry: RetryPolicy,
}

impl Link {
    pub fn new(retry: RetryPolicy) -> Self {
        Link {
            up: None,
            failures: 0,
            reason: None,
            retry,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub fn success(&mut self) -> Transition {
        let was = self.up;
        self.up = Some(true);
        self.failures = 0;
        self.reason = None;
        if was == Some(false) {
            Transition::Up
        } else {
            Transition::None
        }
    }

    /// Records a failure (`reason` is the stable word, `message` the details) and
    /// returns the transition and how long to wait before the next connect.
    pub fn failure(&mut self, reason: &str, jitter: f64) -> (Transition, Duration) {
        let changed = self.up != Some(false) || self.reason.as_deref() != Some(reason);
        self.up = Some(false);
        self.failures = self.failures.saturating_add(1);
        self.reason = Some(reason.to_string());
        let t = if changed {
            Transition::Down {
                reason: reason.to_string(),
            }
        } else {
            Transition::None
        };
        (t, self.backoff(jitter))
    }

    /// The wait of the retry policy after the failures so far, scaled by
    /// `jitter` (see [`RetryPolicy::delay_with`]).
    pub fn backoff(&self, jitter: f64) -> Duration {
        self.retry.delay_with(self.failures, jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transition_per_change() {
        let mut l = Link::new(RetryPolicy::forever(
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        assert_eq!(l.success(), Transition::None);
        let (t, _) = l.failure("refused", 1.0);
        assert_eq!(
            t,
            Transition::Down {
                reason: "refused".into()
            }
        );
        assert_eq!(l.failure("refused", 1.0).0, Transition::None);
        assert_eq!(
            l.failure("timeout", 1.0).0,
            Transition::Down {
                reason: "timeout".into()
            }
        );
        assert_eq!(l.success(), Transition::Up);
        assert_eq!(l.success(), Transition::None);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut l = Link::new(RetryPolicy::forever(
            Duration::from_secs(1),
            Duration::from_secs(10),
        ));
        let waits: Vec<u64> = (0..6)
            .map(|_| l.failure("refused", 1.0).1.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(l.backoff(0.5), Duration::from_secs(5));
        assert_eq!(l.backoff(0.0), Duration::from_secs(5), "jitter is clamped");
        for _ in 0..100 {
            l.failure("refused", 1.0);
        }
        assert_eq!(l.backoff(1.0), Duration::from_secs(10), "no overflow");
    }
}
