//! The CPU time a thread spends on a piece of work, for figures of what the work costs rather
//! than how long it took: on a machine whose cores are shared by more processes than it has
//! (a busy node, or the scale simulation's many workers on one box) wall time also counts the
//! time the thread waited for a core.

use std::time::{Duration, Instant};

/// Measures one synchronous piece of work on the current thread: its thread CPU time where the
/// platform has a per-thread CPU clock (every Unix), else its wall time.
#[derive(Debug, Clone, Copy)]
pub enum Stopwatch {
    /// The thread's CPU time at the start.
    Cpu(Duration),
    /// The wall time at the start, where there is no CPU clock.
    Wall(Instant),
}

impl Stopwatch {
    /// Starts measuring.
    #[must_use]
    pub fn start() -> Self {
        thread_cpu().map_or_else(|| Self::Wall(Instant::now()), Self::Cpu)
    }

    /// Milliseconds of work since [`Stopwatch::start`]. Only meaningful on the thread that
    /// started it, with no `.await` in between (a task may resume on another thread).
    #[must_use]
    pub fn ms(&self) -> f64 {
        let d = match *self {
            Self::Cpu(a) => thread_cpu().map_or(Duration::ZERO, |b| b.saturating_sub(a)),
            Self::Wall(t) => t.elapsed(),
        };
        d.as_secs_f64() * 1e3
    }
}

/// The calling thread's CPU time so far.
#[cfg(unix)]
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant the platform
    // defines; the call writes only `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    (rc == 0).then(|| {
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(not(unix))]
fn thread_cpu() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::Stopwatch;
    use std::time::Duration;

    #[test]
    fn sleeping_costs_no_cpu_and_spinning_does() {
        let s = Stopwatch::start();
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.ms() < 15.0, "a sleep was charged {} ms", s.ms());
        let s = Stopwatch::start();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while s.ms() < 5.0 && t.elapsed() < Duration::from_secs(10) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(s.ms() >= 5.0, "10 s of spinning was charged {} ms", s.ms());
    }
}
