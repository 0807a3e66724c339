//! `metrics.csv`, the step log: one row per committed step, in order, exactly once. A resumed run
//! keeps the rows before its checkpoint and continues from there. Every field is written the
//! RFC 4180 way (quoted when it holds a comma, a quote or a line break), so free text such as a
//! worker's name can never break a row.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::CoordError;

/// File name inside the run directory.
pub(crate) const METRICS_FILE: &str = "metrics.csv";

/// The header row. `step_ms` runs from the previous step's commit to this one's, and `seq_per_s`
/// is the sequences committed over the last 20 steps' time (what progress, the live page and
/// Prometheus show at that step). Where a distributed step's time went: `compute_ms` (the
/// slowest shard), `sum_ms` (the longest gradient sum among the workers, of which `sum_wait_ms`
/// waiting for the others' chunks), `update_ms` (the longest replica update), `idle_ms` (the
/// rest: reports, work arriving, a stall); off the workers' path: `coord_ms` (the CPU time the
/// coordinator spent decoding, screening and committing the step, apart from any wait for a
/// core) and `commit_lag_ms` (from its last record to its commit); `peer_bytes` the most one
/// worker sent and received among the workers, `coord_bytes` what the coordinator received and
/// sent for the step; `unix_ms` when the step committed, on the wall clock.
pub(crate) const HEADER: &str = "step,epoch,step_in_epoch,loss,val_loss,seq_per_s,workers,step_ms,compute_ms,shards,worker_ms,sum_ms,sum_wait_ms,update_ms,coord_ms,commit_lag_ms,idle_ms,peer_bytes,coord_bytes,unix_ms";

/// Writes attempted per row before the job stops.
const ATTEMPTS: u32 = 3;

/// A step's loss and validation loss, for the plot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub(crate) step: u64,
    pub(crate) epoch: u64,
    pub(crate) loss: f64,
    pub(crate) val: Option<f64>,
}

/// One field, quoted when needed.
pub(crate) fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one CSV record (RFC 4180) into its fields; `None` when the quotes do not close.
pub(crate) fn parse_record(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(cur);
    Some(fields)
}

/// Splits a CSV text into records, keeping line breaks inside quoted fields.
pub(crate) fn records(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(line);
        if let Some(r) = parse_record(&pending) {
            out.push(r);
            pending.clear();
        }
    }
    out
}

/// The step log being written.
#[derive(Debug)]
pub(crate) struct StepLog {
    path: PathBuf,
    file: File,
    /// Bytes known to be written whole; a failed write is cut back to here before a retry.
    good: u64,
    /// A write failed part way: the file is cut back to `good` before the next one.
    torn: bool,
}

impl StepLog {
    /// Opens `path`, keeping the rows of steps before `start_step` (the step log of a resumed
    /// run continues exactly where its checkpoint left off); returns them for the plot.
    pub(crate) fn open(path: &Path, start_step: u64) -> Result<(Self, Vec<Point>), CoordError> {
        let mut keep = String::from(HEADER);
        keep.push('\n');
        let mut history = Vec::new();
        if start_step > 0
            && let Ok(text) = std::fs::read_to_string(path)
        {
            for r in records(&text).into_iter().skip(1) {
                let Some(step) = r.first().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                if step < start_step {
                    history.push(Point {
                        step,
                        epoch: r.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
                        loss: r.get(3).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
                        val: r.get(4).and_then(|v| v.parse().ok()),
                    });
                    let row: Vec<String> = r.iter().map(|f| field(f)).collect();
                    keep.push_str(&row.join(","));
                    keep.push('\n');
                }
            }
        }
        runtime::fs::write_atomic(path, keep.as_bytes())
            .map_err(|e| CoordError::io(format!("writing {}", path.display()), e.source))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| CoordError::io(format!("opening {}", path.display()), e))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                good: keep.len() as u64,
                torn: false,
            },
            history,
        ))
    }

    /// Appends one row (fields already formatted), retrying briefly; an error means the row could
    /// not be written and the job must stop.
    pub(crate) fn append(&mut self, fields: &[String]) -> Result<(), CoordError> {
        let mut row = fields.join(",");
        row.push('\n');
        let (file, good, torn) = (&mut self.file, self.good, &mut self.torn);
        runtime::fs::retry(ATTEMPTS, Duration::from_millis(100), || {
            if *torn {
                file.set_len(good)?;
                file.seek(SeekFrom::End(0))?;
                *torn = false;
            }
            file.write_all(row.as_bytes()).inspect_err(|_| *torn = true)
        })
        .map_err(|e| CoordError::io(format!("writing {}", self.path.display()), e))?;
        self.good += row.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_is_quoted_and_read_back_whole() {
        let name = "evil,\"name\"\nnext";
        let row = ["1".to_string(), field(name), field("plain")].join(",");
        let text = format!("{HEADER}\n{row}\n2,x,y\n");
        let recs = records(&text);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1], vec!["1", name, "plain"]);
        assert_eq!(recs[2], vec!["2", "x", "y"]);
        assert_eq!(parse_record("\"open"), None);
    }

    #[test]
    fn a_resumed_log_keeps_the_rows_before_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("carry-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(METRICS_FILE);
        let (mut log, _) = StepLog::open(&p, 0).unwrap();
        for step in 0..4u64 {
            log.append(&[
                step.to_string(),
                "0".into(),
                step.to_string(),
                "0.5".into(),
                String::new(),
                "1".into(),
                "1".into(),
                "1".into(),
                "1".into(),
                field("0-9:a,b"),
                field("a,b=1.0/0.5/0.1"),
            ])
            .unwrap();
        }
        drop(log);
        let (_, kept) = StepLog::open(&p, 2).unwrap();
        assert_eq!(kept.iter().map(|p| p.step).collect::<Vec<_>>(), vec![0, 1]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(records(&text).len(), 3, "{text}");
        assert!(text.contains("\"0-9:a,b\""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
