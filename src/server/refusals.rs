//! Requests the server turns away before the engine sees them (429 and 503 answers): each is
//! counted by reason in /metrics (`kiln:request_refused_total`), and each reason logs at most
//! one line per `LOG_EVERY`, carrying how many it refused since its last line, so that a flood
//! of refusals tells the operator without flooding the log. `Quiet` is that rate limit, also
//! for the accept loop's repeated errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::log;
use crate::metrics::Metrics;

/// At most one line per this long for a repeating log line.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Rate limit for a repeating log line.
#[derive(Default)]
pub struct Quiet(Option<Instant>);

impl Quiet {
    /// Whether the line may be written now (and, if so, the next one not before LOG_EVERY).
    pub fn ready(&mut self) -> bool {
        if self.0.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return false;
        }
        self.0 = Some(Instant::now());
        true
    }
}

#[derive(Default)]
pub struct Refusals {
    /// Per reason: its log line's rate limit, and the refusals since its last line.
    logged: Mutex<HashMap<&'static str, (Quiet, u64)>>,
}

impl Refusals {
    /// One refusal for `reason` (a `REFUSAL_REASONS` label); `why` says what is full.
    pub fn note(&self, metrics: &Metrics, reason: &'static str, why: &str) {
        metrics.refused(reason);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let (quiet, since) = logged.entry(reason).or_default();
        *since += 1;
        if quiet.ready() {
            log::warn(reason, format!("{reason}: {since} refused since this reason's last line; {why}"))
                .field("refused", *since)
                .emit();
            *since = 0;
        }
    }

    /// Refusals for `reason` not yet reported by a log line.
    #[cfg(test)]
    fn unlogged(&self, reason: &str) -> Option<u64> {
        self.logged.lock().unwrap_or_else(|p| p.into_inner()).get(reason).map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_counts_and_a_flood_logs_once() {
        let (r, m) = (Refusals::default(), Metrics::default());
        for _ in 0..100 {
            r.note(&m, "queue_full", "test");
        }
        r.note(&m, "overloaded", "test");
        assert_eq!(m.refusals("queue_full"), 100);
        assert_eq!(m.refusals("overloaded"), 1);
        // The first refusal logged; the other 99 wait for the next line.
        assert_eq!(r.unlogged("queue_full"), Some(99));
        assert_eq!(r.unlogged("overloaded"), Some(0));
    }
}
