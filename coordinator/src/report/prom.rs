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

/// Serves the metrics of `serve` on `addr`, with latency buckets from 0.1 ms to 10 s.
pub(crate) fn install_serving(addr: SocketAddr) -> Result<(), CoordError> {
    use metrics_exporter_prometheus::Matcher;
    let buckets = [
        1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ];
    let sizes = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    let err = |e: metrics_exporter_prometheus::BuildError| CoordError::Config {
        field: "metrics_listen".into(),
        msg: format!("{addr}: {e}"),
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full("carry_serve_batch_size".into()), &sizes)
        .map_err(err)?
        .install()
        .map_err(err)
}

/// A serving request ended with `code` after `took`.
pub(crate) fn served(op: &'static str, code: &'static str, took: std::time::Duration) {
    metrics::counter!("carry_serve_requests_total", "op" => op, "code" => code).increment(1);
    metrics::histogram!("carry_serve_latency_seconds", "op" => op).record(took.as_secs_f64());
}

/// A request waited this long in the queue.
pub(crate) fn waited(took: std::time::Duration) {
    metrics::histogram!("carry_serve_queue_seconds").record(took.as_secs_f64());
}

/// An engine call of `n` streams.
pub(crate) fn batch(n: usize) {
    metrics::histogram!("carry_serve_batch_size").record(n as f64);
}

/// Streams held.
pub(crate) fn streams(n: usize) {
    metrics::gauge!("carry_serve_streams").set(n as f64);
}

/// Idle streams evicted.
pub(crate) fn evicted(n: usize) {
    metrics::counter!("carry_serve_evictions_total").increment(n as u64);
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
    metrics::gauge!("carry_step_compute_ms").set(r.compute_ms);
    for s in &r.shards {
        let w = s.worker.clone();
        metrics::gauge!("carry_worker_compute_ms", "worker" => w.clone()).set(s.compute_ms);
        metrics::gauge!("carry_worker_transfer_ms", "worker" => w.clone()).set(s.transfer_ms);
        metrics::gauge!("carry_worker_wait_ms", "worker" => w).set(s.wait_ms);
    }
}

/// A step took `ms` from the previous commit to its own, spent as `b` says.
pub(crate) fn step_time(ms: f64, b: &crate::job::Breakdown) {
    metrics::gauge!("carry_step_ms").set(ms);
    metrics::gauge!("carry_step_sum_ms").set(b.reduce_ms);
    metrics::gauge!("carry_step_sum_wait_ms").set(b.wait_ms);
    metrics::gauge!("carry_step_update_ms").set(b.update_ms);
    metrics::gauge!("carry_step_coordinator_ms").set(b.coordinator_ms);
    metrics::gauge!("carry_step_peer_bytes").set(b.peer_bytes as f64);
    metrics::gauge!("carry_step_coordinator_bytes").set(b.coordinator_bytes as f64);
}

/// A worker has been slower than the others for a while.
pub(crate) fn straggler(worker: &str) {
    metrics::counter!("carry_straggler_warnings_total", "worker" => worker.to_string())
        .increment(1);
}

/// A validation loss was measured.
pub(crate) fn validated(v: f64) {
    metrics::gauge!("carry_val_loss").set(v);
}

/// A checkpoint was written.
pub(crate) fn checkpointed(step: u64) {
    metrics::gauge!("carry_checkpoint_step").set(step as f64);
}
