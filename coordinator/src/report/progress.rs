//! What a person watching sees: a progress bar on a terminal (log lines otherwise), and the log
//! writer that lifts the bar while a line is written so the two never overwrite each other.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Progress;

/// The progress bar on screen, if any, so that log lines can be written above it.
static SHOWN_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Log output to stderr that lifts the progress bar while a line is written, so log lines and
/// the bar never overwrite each other on a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = SHOWN_BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The bar while it is shown; dropping it takes it off [`LogWriter`]'s hands.
pub(crate) struct Shown(ProgressBar);

impl Shown {
    fn new(pb: ProgressBar) -> Self {
        if let Ok(mut b) = SHOWN_BAR.lock() {
            *b = Some(pb.clone());
        }
        Self(pb)
    }

    /// Moves the bar to `pos` steps with `msg` beside it.
    pub(crate) fn set(&self, pos: u64, msg: String) {
        self.0.set_position(pos);
        self.0.set_message(msg);
    }

    /// Leaves the bar as it is, finished.
    pub(crate) fn finish(&self) {
        self.0.finish();
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        if let Ok(mut b) = SHOWN_BAR.lock() {
            *b = None;
        }
    }
}

/// A bar for a run of `total` steps starting at `start`, when `progress` asks for one.
pub(crate) fn bar(progress: Progress, total: u64, start: u64) -> Option<Shown> {
    let bar = match progress {
        Progress::Bar => true,
        Progress::Auto => std::io::stderr().is_terminal(),
        Progress::Log | Progress::Off => false,
    };
    bar.then(|| {
        // registered before it first draws, so no log line can land on it
        let shown = Shown::new(ProgressBar::new(total));
        shown.0.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        );
        shown.0.set_position(start);
        shown
    })
}
