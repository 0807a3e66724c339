//! The worker's life: connect, register, then loop on `Step` (hand in the last result or the
//! reason it could not be computed, get the next assignment) while a heartbeat task keeps the
//! lease. A lost coordinator means reconnect and register again (a restarted coordinator knows no
//! old ids); an eviction means wait out the back-off the coordinator names, then register again;
//! SIGTERM means leave and exit. Failures back off before the next shard, so a worker never spins,
//! and repeated warnings are rate-limited.

use std::time::{Duration, Instant};

use model::config::ModelConfig;
use proto::convert::{self, Handing, Reply};
use proto::pb;
use runtime::logs::Limiter;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::client::{Client, Retry, connect, fetch_blobs, send_blobs};
use crate::compute::Computer;
use crate::config::{Fault, WorkerConfig};
use crate::error::WorkerError;

/// How a worker's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The job is over; the coordinator's message.
    Finished(String),
    /// Stopped by a signal.
    Stopped,
}

/// The worker's health service: `NOT_SERVING` while its compute is stuck past a shard's deadline,
/// so that an orchestrator restarts it.
#[derive(Debug, Clone)]
pub(crate) struct Health(Option<tonic_health::server::HealthReporter>);

impl Health {
    /// Health reported through `reporter` (or nowhere).
    pub(crate) fn new(reporter: Option<tonic_health::server::HealthReporter>) -> Self {
        Self(reporter)
    }

    async fn set(&self, serving: bool) {
        if let Some(r) = &self.0 {
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            r.set_service_status("", status).await;
        }
    }
}

/// What to do after an RPC error.
enum Next {
    /// Reconnect and register again.
    Reconnect,
    /// Register again on the same connection.
    Register,
    /// Drop the result and ask for new work.
    Continue,
}

fn classify(s: &Status) -> Result<Next, WorkerError> {
    Ok(match s.code() {
        Code::Unauthenticated => {
            return Err(WorkerError::Refused(s.message().to_string()));
        }
        Code::NotFound | Code::PermissionDenied => Next::Register,
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::ResourceExhausted => Next::Continue,
        _ => Next::Reconnect,
    })
}

/// How long an `UNAVAILABLE` registration refusal asks to wait (an eviction back-off).
fn retry_after(s: &Status) -> Option<Duration> {
    let v = s.metadata().get("retry-after-ms")?.to_str().ok()?;
    v.parse().ok().map(Duration::from_millis)
}

/// Consecutive failures of this worker (its engine, or assignments it cannot use): the delay
/// before it takes the next shard doubles from 100 ms to 10 s, and resets on a success.
#[derive(Debug, Default)]
struct FailureBackoff {
    delay: Duration,
}

impl FailureBackoff {
    fn failed(&mut self) {
        self.delay = (self.delay * 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    }

    fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

fn heartbeats(
    mut client: Client,
    id: String,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(every.max(Duration::from_millis(20)));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = iv.tick() => {
                    if let Err(s) = client.heartbeat(convert::heartbeat_request(&id)).await {
                        debug!(code = ?s.code(), msg = s.message(), "heartbeat failed");
                    }
                }
            }
        }
    })
}

/// Applies an injected fault to a computed result (see `--fault`).
fn inject(fault: Option<Fault>, step: u64, out: &mut model::engine::TrainOut) {
    match fault {
        Some(f @ Fault::Corrupt(_)) if f.at(step) => out.grad.iter_mut().for_each(|g| *g *= 1e25),
        Some(f @ Fault::BadShape(_)) if f.at(step) => {
            out.grad.pop();
        }
        _ => {}
    }
}

/// Leaves the job (best effort, bounded) after a signal.
async fn leave(client: &mut Client, id: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.leave(convert::leave_request(id)),
    )
    .await;
}

/// Runs the worker until the job is over or `shutdown` fires.
pub(crate) async fn run(
    cfg: WorkerConfig,
    health: Health,
    shutdown: CancellationToken,
) -> Result<Outcome, WorkerError> {
    let hang_from = match cfg.fault {
        Some(Fault::Hang(s)) => Some(s),
        _ => None,
    };
    let computer = Computer::start(cfg.device, cfg.engine, cfg.threads, hang_from)?;
    info!(name = %cfg.name, device = computer.device(), url = %cfg.coordinator, "worker starting");
    let limiter = Limiter::new(Duration::from_secs(10));
    let mut retry = Retry::new(cfg.give_up);
    let mut backoff = FailureBackoff::default();
    'connect: loop {
        let mut client = match connect(&cfg).await {
            Ok(c) => c,
            Err(WorkerError::Transport(cause)) => {
                if !retry.failed(&cfg.coordinator, &cause, &shutdown).await? {
                    return Ok(Outcome::Stopped);
                }
                continue 'connect;
            }
            Err(e) => return Err(e),
        };
        'register: loop {
            let reg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                r = client.register(convert::register_request(&cfg.name, computer.device())) => r,
            };
            let reg = match reg {
                Ok(r) => convert::registered(r.into_inner())
                    .map_err(|e| WorkerError::Refused(e.to_string()))?,
                Err(s) if s.code() == Code::Unavailable && retry_after(&s).is_some() => {
                    let wait = retry_after(&s).unwrap_or_default();
                    warn!(
                        reason = s.message(),
                        wait_ms = wait.as_millis() as u64,
                        "evicted by the coordinator; registering again after the back-off"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue 'register;
                }
                Err(s) if s.code() == Code::ResourceExhausted => {
                    if !retry
                        .failed(&cfg.coordinator, s.message(), &shutdown)
                        .await?
                    {
                        return Ok(Outcome::Stopped);
                    }
                    continue 'register;
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    return Err(WorkerError::Refused(s.message().to_string()));
                }
                Err(s) => match classify(&s)? {
                    Next::Reconnect => {
                        let cause = format!(
                            "registration failed: {:?}: {} (a plaintext http:// URL against a TLS coordinator fails like this)",
                            s.code(),
                            s.message()
                        );
                        if !retry.failed(&cfg.coordinator, &cause, &shutdown).await? {
                            return Ok(Outcome::Stopped);
                        }
                        continue 'connect;
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'register;
                    }
                },
            };
            retry.success();
            let model = reg.model.clone();
            let engine = computer.set_model(model.clone()).await?;
            info!(job = %reg.job_id, %engine, "registered");
            let limit = reg
                .max_message_bytes
                .map_or(cfg.max_message_bytes, |n| n.min(cfg.max_message_bytes));
            let id = reg.worker_id;
            let hb_stop = CancellationToken::new();
            let hb = heartbeats(client.clone(), id.clone(), reg.heartbeat, hb_stop.clone());
            let _stop_heartbeats = hb_stop.clone().drop_guard();
            let mut handed = Handing::Nothing;
            loop {
                let mut handing = std::mem::replace(&mut handed, Handing::Nothing);
                if let Handing::Result(r) = &mut handing
                    && let Err(s) = send_blobs(&mut client, &id, r, limit).await
                {
                    warn!(code = ?s.code(), msg = s.message(), "uploading a large result failed; it is dropped");
                    handing = Handing::Nothing;
                }
                let req = convert::step_request(&id, handing);
                let reply = tokio::select! {
                    _ = shutdown.cancelled() => {
                        leave(&mut client, &id).await;
                        info!("left the job");
                        return Ok(Outcome::Stopped);
                    }
                    r = client.step(req) => r,
                };
                let reply = match reply {
                    Ok(r) => convert::reply(r.into_inner()),
                    Err(s) => match classify(&s)? {
                        Next::Continue => {
                            if let Some(n) = limiter.check("refused", Instant::now()) {
                                warn!(code = ?s.code(), msg = s.message(), repeats_not_logged = n, "result refused");
                            }
                            if s.code() == Code::InvalidArgument {
                                backoff.failed();
                            }
                            continue;
                        }
                        Next::Register => {
                            warn!(
                                msg = s.message(),
                                "the coordinator no longer knows this worker; registering again"
                            );
                            hb_stop.cancel();
                            let _ = hb.await;
                            continue 'register;
                        }
                        Next::Reconnect => {
                            warn!(code = ?s.code(), msg = s.message(), "lost the coordinator; reconnecting");
                            hb_stop.cancel();
                            let _ = hb.await;
                            continue 'connect;
                        }
                    },
                };
                let mut a = match reply {
                    Ok(Reply::Assignment(a)) => a,
                    Ok(Reply::Wait(reason)) => {
                        debug!(%reason, "waiting");
                        continue;
                    }
                    Ok(Reply::Finished(message)) => {
                        info!(%message, "job finished");
                        return Ok(Outcome::Finished(message));
                    }
                    Err(e) => {
                        warn!(cause = %e, "a reply from the coordinator it cannot read");
                        backoff.failed();
                        continue;
                    }
                };
                let (step, shard) = (a.step, a.shard);
                if !backoff.delay.is_zero() {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            leave(&mut client, &id).await;
                            return Ok(Outcome::Stopped);
                        }
                        _ = tokio::time::sleep(backoff.delay) => {}
                    }
                }
                handed = match compute(
                    &cfg,
                    &computer,
                    &health,
                    &mut client,
                    &id,
                    &model,
                    &mut a,
                    &shutdown,
                )
                .await
                {
                    Computed::Stopped => {
                        leave(&mut client, &id).await;
                        info!("left the job mid-step; the shard goes to another worker");
                        return Ok(Outcome::Stopped);
                    }
                    Computed::Failed(reason) => {
                        if let Some(n) = limiter.check("failed", Instant::now()) {
                            warn!(step, shard, cause = %reason, repeats_not_logged = n, "could not compute the shard; telling the coordinator");
                        }
                        backoff.failed();
                        Handing::Failure {
                            step,
                            shard,
                            reason,
                        }
                    }
                    Computed::Done(r) => {
                        backoff.succeeded();
                        Handing::Result(r)
                    }
                };
            }
        }
    }
}

enum Computed {
    Done(Box<pb::ShardResult>),
    Failed(String),
    Stopped,
}

/// Fetches, decodes and computes one assignment, watching its deadline.
#[allow(clippy::too_many_arguments)]
async fn compute(
    cfg: &WorkerConfig,
    computer: &Computer,
    health: &Health,
    client: &mut Client,
    id: &str,
    model: &ModelConfig,
    a: &mut pb::Assignment,
    shutdown: &CancellationToken,
) -> Computed {
    if let Err(e) = fetch_blobs(client, id, a).await {
        return Computed::Failed(format!("fetching the assignment: {e}"));
    }
    let work = match convert::work(a, model) {
        Ok(w) => w,
        Err(e) => return Computed::Failed(format!("a malformed assignment: {e}")),
    };
    if matches!(cfg.fault, Some(f @ Fault::Fail(_)) if f.at(work.step)) {
        return Computed::Failed("engine: injected failure (--fault)".into());
    }
    if !cfg.throttle.is_zero() {
        tokio::time::sleep(cfg.throttle).await;
    }
    let (step, shard, deadline) = (work.step, work.shard, work.deadline);
    let started = tokio::time::Instant::now();
    let run = computer.run(work);
    tokio::pin!(run);
    let mut stuck = false;
    let done = loop {
        let due = deadline.map(|d| started + d);
        tokio::select! {
            _ = shutdown.cancelled() => return Computed::Stopped,
            d = &mut run => break d,
            _ = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() && !stuck => {
                stuck = true;
                health.set(false).await;
                warn!(step, shard, deadline_ms = deadline.map_or(0, |d| d.as_millis() as u64), "the computation has run past the shard's deadline; health reports NOT_SERVING");
            }
        }
    };
    if stuck {
        health.set(true).await;
    }
    match done {
        Ok(mut d) => {
            inject(cfg.fault, step, &mut d.out);
            debug!(
                step,
                shard,
                loss_sum = d.out.loss_sum,
                ms = d.ms,
                "computed"
            );
            Computed::Done(Box::new(convert::shard_result(step, shard, &d.out, d.ms)))
        }
        Err(e) => Computed::Failed(e.to_string()),
    }
}
