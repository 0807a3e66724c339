//! The gRPC adapter over [`Job`]: decodes and checks wire messages, maps refusals to statuses,
//! long-polls for assignments, and reports commits to the reporter. It holds no scheduling logic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::state::SlotStates;
use proto::convert::{self, WireError};
use proto::pb;
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::error::refusal_status;
use crate::job::{Assignment, Job, Poll, Refusal, Submission, Submitted};
use crate::report::Event;

/// How long a Step call waits for work before answering `Wait`.
const LONG_POLL: Duration = Duration::from_secs(5);

/// State shared by the service, the lease ticker and the server loop.
#[derive(Debug)]
pub struct Shared {
    /// The job. A std mutex: it is held for short, non-async sections only.
    pub job: Mutex<Job>,
    /// Woken whenever work may have become available or the job ended.
    pub changed: Notify,
    /// Commits and membership changes, to the reporter; `None` once the job is closed (so the
    /// reporter ends even while a stuck connection still holds this state).
    events: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    /// Parameters of the current step, encoded once and shared by every assignment.
    /// Only touched while the job lock is held.
    params_cache: Mutex<Option<(u64, pb::Tensor)>>,
    model: pb::ModelSpec,
    job_id: String,
    heartbeat: Duration,
    checkpoint_every: u64,
}

impl Shared {
    /// Shared state around `job`.
    pub fn new(
        job: Job,
        events: mpsc::UnboundedSender<Event>,
        job_id: String,
        lease: Duration,
        checkpoint_every: u64,
    ) -> Self {
        let model = convert::model_spec(&job.trainer().spec().model);
        Self {
            job: Mutex::new(job),
            changed: Notify::new(),
            events: Mutex::new(Some(events)),
            params_cache: Mutex::new(None),
            model,
            job_id,
            heartbeat: lease / 3,
            checkpoint_every,
        }
    }

    /// Locks the job (a poisoned lock means a panic elsewhere; the state is still consistent
    /// because every mutation completes before it can panic).
    pub fn job(&self) -> std::sync::MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an event to the reporter (dropped once the job is closed).
    pub fn send(&self, ev: Event) {
        if let Some(tx) = &*self.events.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(ev);
        }
    }

    /// Closes the event channel: the reporter finishes what it has and ends.
    pub fn close_events(&self) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Removes workers whose lease expired and wakes pollers if their shards became free.
    pub fn expire(&self, now: Instant) {
        let dead = self.job().expire(now);
        if !dead.is_empty() {
            for name in dead {
                warn!(worker = %name, "lease expired; its shard goes to a live worker");
                self.send(Event::Left {
                    name,
                    reason: "lease expired".into(),
                });
            }
            self.changed.notify_waiters();
        }
    }

    fn params_tensor(&self, step: u64, params: &[f32]) -> pb::Tensor {
        let mut cache = self.params_cache.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some((s, t)) if *s == step => t.clone(),
            _ => {
                let t = convert::tensor(&[params.len()], params);
                *cache = Some((step, t.clone()));
                t
            }
        }
    }

    fn submit(&self, worker: &str, r: pb::ShardResult) -> Result<(), Status> {
        let now = Instant::now();
        let mut job = self.job();
        let exp = job
            .expect(worker, r.step, r.shard)
            .map_err(|e| refused(worker, &e))?;
        let decoded = (|| -> Result<Submission, WireError> {
            let grad = convert::decode(r.grad.as_ref(), "grad", &[exp.grad])?;
            let h = convert::decode(r.h.as_ref(), "h", &exp.state)?;
            let c = convert::decode(r.c.as_ref(), "c", &exp.state)?;
            let [l, n, hd] = exp.state;
            let finals = SlotStates::from_flat(l, n, hd, h, c)
                .map_err(|e| WireError::Model(e.to_string()))?;
            Ok(Submission {
                step: r.step,
                shard: r.shard,
                loss_sum: r.loss_sum,
                grad,
                finals,
                compute_ms: r.compute_ms,
            })
        })();
        let sub = match decoded {
            Ok(s) => s,
            Err(e) => {
                let why = e.to_string();
                job.refuse(worker, r.step, r.shard, &why);
                let failed = job.failure().map(str::to_string);
                drop(job);
                warn!(%worker, step = r.step, shard = r.shard, cause = %why, "refused a malformed result");
                if failed.is_some() {
                    self.changed.notify_waiters();
                }
                return Err(Status::invalid_argument(why));
            }
        };
        match job.submit(worker, sub, now) {
            Ok(Submitted::Accepted) => Ok(()),
            Ok(Submitted::Committed(report)) => {
                let c = report.committed;
                let trainer = job.trainer();
                let checkpoint = ((c.cursor.global + 1) % self.checkpoint_every == 0 || c.done)
                    .then(|| Box::new(trainer.checkpoint()));
                let validate = (c.epoch_end || c.done).then(|| Box::new(trainer.clone()));
                drop(job);
                debug!(step = c.cursor.global, loss = c.loss, "committed");
                self.send(Event::Committed {
                    report: *report,
                    checkpoint,
                    validate,
                });
                self.changed.notify_waiters();
                Ok(())
            }
            Err(e) => {
                if matches!(e, Refusal::Invalid(_)) {
                    job.refuse(worker, r.step, r.shard, &e.to_string());
                }
                drop(job);
                Err(refused(worker, &e))
            }
        }
    }

    fn assignment_reply(&self, a: &Assignment, params: pb::Tensor) -> pb::StepReply {
        let d = &a.data;
        let n = d.slots.len();
        let (l, h) = (d.init.layers(), d.init.hidden());
        let fi = d.x.len() / (n * d.t).max(1);
        let fo = d.y.len() / (n * d.t).max(1);
        let assignment = pb::Assignment {
            step: a.plan.cursor.global,
            epoch: a.plan.cursor.epoch,
            step_in_epoch: a.plan.cursor.step,
            shard: a.shard,
            first_slot: a.first_slot as u64,
            slots: n as u32,
            reset: d.reset,
            dropout: d.dropout.map(|k| pb::DropoutKey {
                seed: k.seed,
                epoch: k.epoch,
                step: k.step,
            }),
            params: Some(params),
            x: Some(convert::tensor(&[n, d.t, fi], &d.x)),
            y: Some(convert::tensor(&[n, d.t, fo], &d.y)),
            cond: d
                .cond
                .as_ref()
                .map(|c| convert::tensor(&[n, c.len() / n.max(1)], c)),
            h: Some(convert::tensor(&[l, n, h], d.init.h())),
            c: Some(convert::tensor(&[l, n, h], d.init.c())),
        };
        pb::StepReply {
            kind: Some(pb::step_reply::Kind::Assignment(assignment)),
        }
    }

    async fn next(&self, worker: &str) -> Result<pb::StepReply, Status> {
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let polled = {
                let mut job = self.job();
                match job.poll(worker, Instant::now()) {
                    Ok(Poll::Assign(a)) => {
                        let params =
                            self.params_tensor(a.plan.cursor.global, job.trainer().params());
                        drop(job);
                        return Ok(self.assignment_reply(&a, params));
                    }
                    other => other,
                }
            };
            match polled {
                Ok(Poll::Finished(message)) => {
                    let name = self.job().leave(worker).unwrap_or_default();
                    info!(worker = %name, "told the worker the job is over");
                    self.changed.notify_waiters();
                    return Ok(pb::StepReply {
                        kind: Some(pb::step_reply::Kind::Finished(pb::Finished { message })),
                    });
                }
                Ok(Poll::Wait(reason)) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Ok(pb::StepReply {
                            kind: Some(pb::step_reply::Kind::Wait(pb::Wait { reason })),
                        });
                    }
                }
                Ok(Poll::Assign(_)) => unreachable!("handled above"),
                Err(e) => return Err(refused(worker, &e)),
            }
        }
    }
}

fn refused(worker: &str, e: &Refusal) -> Status {
    warn!(%worker, cause = %e, "refused");
    refusal_status(e)
}

/// The `carry.v1.Coordinator` service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    /// The service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        if r.protocol != proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version mismatch: this coordinator speaks {}, the worker {}",
                proto::PROTOCOL_VERSION,
                r.protocol
            )));
        }
        let name = if r.name.is_empty() {
            "unnamed".to_string()
        } else {
            r.name.chars().take(128).collect()
        };
        let id = self.shared.job().register(&name, Instant::now());
        info!(worker = %name, id = %id, device = %r.device, "worker joined");
        self.shared.send(Event::Joined {
            name,
            device: r.device,
        });
        self.shared.changed.notify_waiters();
        Ok(Response::new(pb::RegisterReply {
            worker_id: id,
            job_id: self.shared.job_id.clone(),
            heartbeat_ms: self.shared.heartbeat.as_millis() as u64,
            model: Some(self.shared.model),
        }))
    }

    async fn step(&self, req: Request<pb::StepRequest>) -> Result<Response<pb::StepReply>, Status> {
        let r = req.into_inner();
        if let Some(result) = r.result {
            self.shared.submit(&r.worker_id, result)?;
        }
        self.shared.next(&r.worker_id).await.map(Response::new)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let id = req.into_inner().worker_id;
        self.shared
            .job()
            .heartbeat(&id, Instant::now())
            .map_err(|e| refused(&id, &e))?;
        Ok(Response::new(pb::HeartbeatReply {}))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let id = req.into_inner().worker_id;
        let name = self.shared.job().leave(&id).map_err(|e| refused(&id, &e))?;
        info!(worker = %name, "worker left");
        self.shared.send(Event::Left {
            name,
            reason: "left".into(),
        });
        self.shared.changed.notify_waiters();
        Ok(Response::new(pb::LeaveReply {}))
    }
}
