//! Repeated identical warnings, rate-limited: the first of a kind is logged at once, and later
//! ones at most once per period with the count of those left out, so a worker or a client that
//! misbehaves in a loop cannot flood the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered; past this the oldest are forgotten.
const MAX_KEYS: usize = 4096;

/// A rate limit per key.
#[derive(Debug)]
pub struct Limiter {
    period: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Limiter {
    /// At most one line per key every `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line with `key` may be logged at `now`: `Some(n)` with the number of lines with
    /// this key left out since the last one logged, or `None` to leave this one out.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_KEYS && !seen.contains_key(key) {
            let period = self.period;
            seen.retain(|_, (t, _)| now.saturating_duration_since(*t) < period);
            if seen.len() >= MAX_KEYS {
                seen.clear();
            }
        }
        match seen.get_mut(key) {
            Some((last, left_out)) if now.saturating_duration_since(*last) < self.period => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                let n = *left_out;
                *last = now;
                *left_out = 0;
                Some(n)
            }
            None => {
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_logged_once_per_period() {
        let l = Limiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.check("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.check("b", t0), Some(0), "another key is independent");
        assert_eq!(l.check("a", t0 + Duration::from_secs(11)), Some(5));
        assert_eq!(l.check("a", t0 + Duration::from_secs(12)), None);
    }
}
