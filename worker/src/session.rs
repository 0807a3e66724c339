//! The worker's life: connect, register, then loop on `Step` (hand in the last result, get the
//! next assignment) while a heartbeat task keeps the lease. A lost coordinator means reconnect and
//! register again (a restarted coordinator knows no old ids); SIGTERM means leave and exit.

use std::time::Duration;

use model::config::ModelConfig;
use model::dropout::DropoutKey;
use model::state::SlotStates;
use model::trainer::ShardData;
use proto::convert::{self, WireError};
use proto::pb;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::client::{Client, Retry, connect};
use crate::compute::{Computer, Work};
use crate::config::WorkerConfig;
use crate::error::WorkerError;

/// How a worker's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job is over; the coordinator's message.
    Finished(String),
    /// Stopped by a signal.
    Stopped,
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
        Code::Unauthenticated | Code::PermissionDenied => {
            return Err(WorkerError::Refused(s.message().to_string()));
        }
        Code::NotFound => Next::Register,
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::ResourceExhausted => Next::Continue,
        _ => Next::Reconnect,
    })
}

/// Decodes an assignment into work for the compute thread; every tensor is checked.
fn decode(a: &pb::Assignment, cfg: &ModelConfig, n_params: usize) -> Result<Work, WireError> {
    let n = a.slots as usize;
    let t =
        a.x.as_ref()
            .and_then(|x| x.shape.get(1))
            .copied()
            .unwrap_or(0) as usize;
    if n == 0 || t == 0 {
        return Err(WireError::Shape {
            what: "assignment".into(),
            expected: "at least 1 slot and 1 step".into(),
            got: format!("{n} slots, {t} steps"),
        });
    }
    let params = convert::decode(a.params.as_ref(), "params", &[n_params])?;
    let x = convert::decode(a.x.as_ref(), "x", &[n, t, cfg.input])?;
    let y = convert::decode(a.y.as_ref(), "y", &[n, t, cfg.output])?;
    let st = [cfg.layers, n, cfg.hidden];
    let h = convert::decode(a.h.as_ref(), "h", &st)?;
    let c = convert::decode(a.c.as_ref(), "c", &st)?;
    let init = SlotStates::from_flat(cfg.layers, n, cfg.hidden, h, c)
        .map_err(|e| WireError::Model(e.to_string()))?;
    let cond = match (a.reset, cfg.cond, a.cond.as_ref()) {
        (true, Some(w), Some(_)) => Some(convert::decode(a.cond.as_ref(), "cond", &[n, w])?),
        (true, Some(_), None) => {
            return Err(WireError::Missing {
                what: "cond".into(),
            });
        }
        _ => None,
    };
    let slots = (a.first_slot..a.first_slot + n as u64).collect();
    let dropout = a.dropout.as_ref().map(|d| DropoutKey {
        seed: d.seed,
        epoch: d.epoch,
        step: d.step,
    });
    Ok(Work {
        params,
        shard: ShardData {
            slots,
            t,
            x,
            y,
            cond,
            init,
            reset: a.reset,
            dropout,
        },
    })
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
                    if let Err(s) = client.heartbeat(pb::HeartbeatRequest { worker_id: id.clone() }).await {
                        debug!(code = ?s.code(), msg = s.message(), "heartbeat failed");
                    }
                }
            }
        }
    })
}

/// Runs the worker until the job is over or `shutdown` fires.
pub async fn run(cfg: WorkerConfig, shutdown: CancellationToken) -> Result<Outcome, WorkerError> {
    let computer = Computer::start(cfg.device, cfg.engine, cfg.threads)?;
    info!(name = %cfg.name, device = computer.device(), url = %cfg.coordinator, "worker starting");
    let mut retry = Retry::new(cfg.give_up);
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
                r = client.register(pb::RegisterRequest {
                    name: cfg.name.clone(),
                    device: computer.device().to_string(),
                    protocol: proto::PROTOCOL_VERSION,
                }) => r,
            };
            let reg = match reg {
                Ok(r) => r.into_inner(),
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
                    _ if s.code() == Code::FailedPrecondition => {
                        return Err(WorkerError::Refused(s.message().to_string()));
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'register;
                    }
                },
            };
            retry.success();
            let model = convert::model_config(reg.model.as_ref())
                .map_err(|e| WorkerError::Refused(e.to_string()))?;
            let n_params = model::params::ParamLayout::new(&model).len();
            let engine = computer.set_model(model.clone()).await?;
            info!(id = %reg.worker_id, job = %reg.job_id, %engine, "registered");
            let id = reg.worker_id;
            let hb_stop = CancellationToken::new();
            let hb = heartbeats(
                client.clone(),
                id.clone(),
                Duration::from_millis(reg.heartbeat_ms),
                hb_stop.clone(),
            );
            let _stop_heartbeats = hb_stop.clone().drop_guard();
            let mut pending: Option<pb::ShardResult> = None;
            loop {
                let req = pb::StepRequest {
                    worker_id: id.clone(),
                    result: pending.take(),
                };
                let reply = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.leave(pb::LeaveRequest { worker_id: id.clone() })).await;
                        info!("left the job");
                        return Ok(Outcome::Stopped);
                    }
                    r = client.step(req) => r,
                };
                let kind = match reply {
                    Ok(r) => r.into_inner().kind,
                    Err(s) => match classify(&s)? {
                        Next::Continue => {
                            warn!(code = ?s.code(), msg = s.message(), "result refused");
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
                match kind {
                    Some(pb::step_reply::Kind::Assignment(a)) => {
                        let (step, shard) = (a.step, a.shard);
                        let work = match decode(&a, &model, n_params) {
                            Ok(w) => w,
                            Err(e) => {
                                warn!(step, shard, cause = %e, "malformed assignment; skipping it");
                                continue;
                            }
                        };
                        if !cfg.throttle.is_zero() {
                            tokio::time::sleep(cfg.throttle).await;
                        }
                        let done = tokio::select! {
                            _ = shutdown.cancelled() => {
                                let _ = tokio::time::timeout(Duration::from_secs(2), client.leave(pb::LeaveRequest { worker_id: id.clone() })).await;
                                info!("left the job mid-step; the shard goes to another worker");
                                return Ok(Outcome::Stopped);
                            }
                            d = computer.run(work) => d,
                        };
                        let done = match done {
                            Ok(d) => d,
                            Err(e) => {
                                warn!(step, shard, cause = %e, "computing the shard failed");
                                continue;
                            }
                        };
                        let st = [model.layers, a.slots as usize, model.hidden];
                        debug!(
                            step,
                            shard,
                            loss_sum = done.out.loss_sum,
                            ms = done.ms,
                            "computed"
                        );
                        pending = Some(pb::ShardResult {
                            step,
                            shard,
                            loss_sum: done.out.loss_sum,
                            grad: Some(convert::tensor(&[n_params], &done.out.grad)),
                            h: Some(convert::tensor(&st, done.out.final_state.h())),
                            c: Some(convert::tensor(&st, done.out.final_state.c())),
                            compute_ms: done.ms,
                        });
                    }
                    Some(pb::step_reply::Kind::Wait(w)) => debug!(reason = %w.reason, "waiting"),
                    Some(pb::step_reply::Kind::Finished(f)) => {
                        info!(message = %f.message, "job finished");
                        return Ok(Outcome::Finished(f.message));
                    }
                    None => warn!("empty reply from the coordinator"),
                }
            }
        }
    }
}
