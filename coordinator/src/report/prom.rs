//! Prometheus metrics of a training job, served over HTTP when `--metrics-listen` is given.

use std::net::SocketAddr;

use crate::error::CoordError;
use crate::job::CommitReport;

/// Serves the metrics on `addr`.
pub(crate) fn install(addr: SocketAddr) -> Result<(), CoordError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| CoordError::Config {
            field: "metrics_listen".into(),
            msg: format!("{addr}: {e}"),
        })
}

/// A worker joined.
pub(crate) fn joined() {
    metrics::counter!("carry_worker_joins_total").increment(1);
}

/// A worker left, died or was evicted.
pub(crate) fn left(evicted: bool) {
    metrics::counter!("carry_worker_departures_total").increment(1);
    if evicted {
        metrics::counter!("carry_worker_evictions_total").increment(1);
    }
}

/// A step committed.
pub(crate) fn committed(r: &CommitReport, seq_per_s: f64) {
    let c = &r.committed;
    metrics::gauge!("carry_step").set(c.cursor.global as f64 + 1.0);
    metrics::gauge!("carry_epoch").set(c.cursor.epoch as f64);
    metrics::gauge!("carry_loss").set(c.loss);
    metrics::gauge!("carry_sequences_per_second").set(seq_per_s);
    metrics::gauge!("carry_workers").set(r.workers as f64);
    metrics::counter!("carry_steps_total").increment(1);
}

/// A validation loss was measured.
pub(crate) fn validated(v: f64) {
    metrics::gauge!("carry_val_loss").set(v);
}

/// A checkpoint was written.
pub(crate) fn checkpointed(step: u64) {
    metrics::gauge!("carry_checkpoint_step").set(step as f64);
}
