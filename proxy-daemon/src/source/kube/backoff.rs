//! Retrying a failed watch without hammering the API server.

use std::time::Duration;

use tokio::time::Instant;

use super::KubeSourceConfig;

/// Jittered exponential backoff that starts over after a quiet period.
#[derive(Debug)]
pub(super) struct Backoff {
    pub(super) min: Duration,
    pub(super) max: Duration,
    pub(super) reset_after: Duration,
    pub(super) next: Duration,
    pub(super) last_failure: Option<Instant>,
    pub(super) seed: u64,
}

impl Backoff {
    pub(super) fn new(cfg: &KubeSourceConfig) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            min: cfg.backoff_min,
            max: cfg.backoff_max.max(cfg.backoff_min),
            reset_after: cfg.backoff_reset,
            next: cfg.backoff_min,
            last_failure: None,
            seed: seed | 1,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt, after a failure at `now`.
    pub(super) fn delay(&mut self, now: Instant) -> Duration {
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) > self.reset_after)
        {
            self.reset();
        }
        self.last_failure = Some(now);
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: jitter only needs to keep many nodes from retrying
        // in lockstep, not to be unpredictable.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // 75% to 125% of the base delay, but never above the cap: the cap
        // is what the operator (and the recovery time) can count on.
        let permille = 750 + self.seed % 501;
        (base * permille as u32 / 1000).min(self.max)
    }
}
