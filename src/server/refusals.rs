//! Requests the server turns away before the engine sees them (429 and 503 answers): each is
//! counted by reason in /metrics (`kiln:request_refused_total`), and each reason logs at most
//! one line per `LOG_EVERY`, carrying how many it refused since its last line, so that a flood
//! of refusals tells the operator without flooding the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::log;
use crate::metrics::Metrics;

const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Refusals {
    /// Per reason: when it last logged, and the refusals since.
    logged: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl Refusals {
    /// One refusal for `reason` (a `REFUSAL_REASONS` label); `why` says what is full.
    pub fn note(&self, metrics: &Metrics, reason: &'static str, why: &str) {
        metrics.refused(reason);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let (last, since) = logged.entry(reason).or_insert((None, 0));
        *since += 1;
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            log::warn(reason, format!("{reason}: {since} refused since this reason's last line; {why}"))
                .field("refused", *since)
                .emit();
            (*last, *since) = (Some(Instant::now()), 0);
        }
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
        assert_eq!(r.logged.lock().unwrap()["queue_full"].1, 99);
        assert_eq!(r.logged.lock().unwrap()["overloaded"].1, 0);
    }
}
