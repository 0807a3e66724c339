//! Transport settings both ends of the gRPC connection share.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// HTTP/2 flow-control window for streams and connections. Parameters and gradients are a few
/// hundred KiB per step; HTTP/2's default 64 KiB windows would make each transfer wait for
/// several window updates.
pub const HTTP2_WINDOW: u32 = 8 << 20;

/// Largest HTTP/2 frame either end accepts. Reports and work carry a few hundred KiB per step;
/// HTTP/2's default 16 KiB frames would cut them into dozens of frames, each handled on its own.
pub const HTTP2_FRAME: u32 = 1 << 20;

/// HTTP/2 keep-alive ping interval, on both ends.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Accepted connections with Nagle's algorithm off: a step is a small request and a small reply,
/// which Nagle plus delayed acknowledgements would hold back for tens of milliseconds.
pub fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

/// A gRPC server with this module's keep-alive and flow-control windows.
pub fn server() -> Server {
    Server::builder()
        .max_frame_size(Some(HTTP2_FRAME))
        .http2_keepalive_interval(Some(KEEPALIVE))
        .initial_stream_window_size(Some(HTTP2_WINDOW))
        .initial_connection_window_size(Some(HTTP2_WINDOW))
}

/// A benchmark aid for simulated networks (`scripts/simulate.sh`): every message a program
/// receives is held this long before it is handled, as the propagation delay of a link would
/// hold it. The simulation shapes the rate with `tc tbf` on virtual links; the delay is here
/// because the kernel it runs on has no `netem`. Zero (the default) holds nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkDelay(pub std::time::Duration);

impl LinkDelay {
    /// Whether it holds anything.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Blocks this thread until `arrived` plus the delay.
    pub fn hold_sync(&self, arrived: std::time::Instant) {
        if !self.is_zero() {
            sleep_until_precisely(arrived + self.0);
        }
    }

    /// Waits until `arrived` plus the delay, to the microsecond (an async timer would round it
    /// up to the runtime's millisecond ticks).
    pub async fn hold(&self, arrived: std::time::Instant) {
        if self.is_zero() {
            return;
        }
        let due = arrived + self.0;
        if std::time::Instant::now() >= due {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if timer().send((due, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

type Wakeup = (std::time::Instant, tokio::sync::oneshot::Sender<()>);

/// The thread that wakes [`LinkDelay::hold`]s on time.
fn timer() -> &'static std::sync::mpsc::Sender<Wakeup> {
    static TIMER: std::sync::OnceLock<std::sync::mpsc::Sender<Wakeup>> = std::sync::OnceLock::new();
    TIMER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Wakeup>();
        std::thread::Builder::new()
            .name("link-delay".into())
            .spawn(move || {
                precise_timers();
                let mut due: std::collections::VecDeque<Wakeup> = Default::default();
                loop {
                    // holds are the same length, so they come due in arrival order
                    let next = due.front().map(|(t, _)| *t);
                    let got = match next {
                        None => rx.recv().ok(),
                        Some(t) => {
                            let left = t.saturating_duration_since(std::time::Instant::now());
                            match rx.recv_timeout(left) {
                                Ok(w) => Some(w),
                                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    };
                    match got {
                        Some(w) => due.push_back(w),
                        None if next.is_none() => break,
                        None => {}
                    }
                    let now = std::time::Instant::now();
                    while due.front().is_some_and(|(t, _)| *t <= now) {
                        if let Some((_, tx)) = due.pop_front() {
                            let _ = tx.send(());
                        }
                    }
                }
            })
            .expect("a thread for link delays");
        tx
    })
}

/// Timers of this thread wake within a microsecond of their due time instead of Linux's default
/// 50 µs slack.
fn precise_timers() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Sleeps until `due`, with this thread's timer slack at its minimum (no spinning: a hold is a
/// benchmark aid and must not take CPU time from the processes it runs beside).
fn sleep_until_precisely(due: std::time::Instant) {
    thread_local! {
        static PRECISE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    PRECISE.with(|p| {
        if !p.get() {
            precise_timers();
            p.set(true);
        }
    });
    let left = due.saturating_duration_since(std::time::Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}
