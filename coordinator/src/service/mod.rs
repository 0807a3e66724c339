//! The gRPC adapter over [`Job`]: authenticates the caller, decodes and hands over, maps refusals
//! to statuses, long-polls for assignments, moves large tensors through blobs, computes the second
//! opinions no worker can give, and reports to the reporter. Every rule lives in the job; tensors
//! are decoded outside the job lock, so a large result never delays another worker's heartbeat.

mod blobs;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use model::engine::cpu::CpuEngine;
use proto::blob;
use proto::convert::{self, AssignmentOut};
use proto::pb;
use runtime::logs::Limiter;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use self::blobs::Blobs;
use crate::error::refusal_status;
use crate::job::{Caller, Job, Notice, Poll, Refusal, Submitted};
use crate::report::{self, Event};

/// Longest a Step call waits for work before answering `Wait` (and at most half the lease, so
/// that a caller waiting on its own call never outlives its lease).
const LONG_POLL: Duration = Duration::from_secs(5);
/// Longest worker name kept.
const MAX_NAME: usize = 128;
/// Longest device description kept.
const MAX_DEVICE: usize = 256;
/// Repeated warnings about one worker are logged at most this often.
const WARN_PERIOD: Duration = Duration::from_secs(10);

/// Settings of the service.
#[derive(Debug, Clone)]
pub(crate) struct ServiceConfig {
    /// Identifies the job (and coordinator incarnation).
    pub(crate) job_id: String,
    /// Workers renew their lease at least this often.
    pub(crate) heartbeat: Duration,
    /// Steps between checkpoints.
    pub(crate) checkpoint_every: u64,
    /// Largest message in either direction.
    pub(crate) max_message_bytes: usize,
    /// A worker silent this long is dead.
    pub(crate) lease: Duration,
}

/// State shared by the service, the ticker and the server loop.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The job. A std mutex: it is held for short, non-async sections only, never while a tensor
    /// is encoded or decoded.
    job: Mutex<Job>,
    /// Woken whenever work may have become available or the job ended.
    pub(crate) changed: Notify,
    /// Commits and membership changes, to the reporter (bounded: a reporter that falls behind
    /// slows commits down instead of queueing without end); `None` once the job is closed.
    events: Mutex<Option<mpsc::Sender<Event>>>,
    /// Parameters of the current step, encoded once and shared by every assignment.
    params_cache: Mutex<Option<(u64, pb::Tensor)>>,
    /// Tensors travelling outside their messages.
    blobs: Blobs,
    /// CPU engines for second opinions the coordinator computes itself.
    verifiers: Mutex<Vec<CpuEngine>>,
    /// Rate limit of repeated warnings.
    limiter: Limiter,
    cfg: ServiceConfig,
}

/// What a caller presents: its id and, under mutual TLS, the digest of its certificate.
struct Who {
    id: String,
    identity: Option<Vec<u8>>,
}

impl Who {
    fn of<T>(req: &Request<T>, id: String) -> Self {
        Self {
            id,
            identity: identity(req),
        }
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            id: &self.id,
            identity: self.identity.as_deref(),
        }
    }
}

/// SHA-256 of the client certificate a request came with, if any.
fn identity<T>(req: &Request<T>) -> Option<Vec<u8>> {
    let certs = req.peer_certs()?;
    let first = certs.first()?;
    Some(Sha256::digest(first.as_ref()).to_vec())
}

/// Keeps at most `max` characters of a free-text field, without control characters.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

impl Shared {
    /// Shared state around `job`.
    pub(crate) fn new(job: Job, events: mpsc::Sender<Event>, cfg: ServiceConfig) -> Self {
        Self {
            job: Mutex::new(job),
            changed: Notify::new(),
            events: Mutex::new(Some(events)),
            params_cache: Mutex::new(None),
            blobs: Blobs::default(),
            verifiers: Mutex::new(Vec::new()),
            limiter: Limiter::new(WARN_PERIOD),
            cfg,
        }
    }

    /// Locks the job (a poisoned lock means a panic elsewhere; the state is still consistent
    /// because every mutation completes before it can panic).
    pub(crate) fn job(&self) -> MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends events to the reporter, waiting while it is behind (dropped once the job is closed).
    async fn send(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let tx = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            for ev in events {
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Closes the event channel: the reporter finishes what it has and ends.
    pub(crate) fn close_events(&self) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Logs what the job noticed and turns it into reporter events.
    fn notices(&self, job: &mut Job) -> Vec<Event> {
        let now = Instant::now();
        let mut events = Vec::new();
        for n in job.take_notices() {
            match n {
                Notice::Left {
                    id,
                    name,
                    reason,
                    evicted,
                } => {
                    self.blobs.forget(&id);
                    if evicted {
                        warn!(worker = %name, %reason, "worker evicted; its shard goes to another worker");
                    } else {
                        warn!(worker = %name, %reason, "worker gone; its shard goes to a live worker");
                    }
                    events.push(Event::Left {
                        name,
                        reason,
                        evicted,
                    });
                }
                Notice::Refused {
                    name,
                    step,
                    shard,
                    why,
                } => {
                    if let Some(left_out) = self.limiter.check(&format!("refused {name}"), now) {
                        warn!(worker = %name, step, shard, cause = %why, repeats_not_logged = left_out, "refused a result; counted against the worker");
                    }
                }
                Notice::DeadlinePassed {
                    name,
                    step,
                    shard,
                    deadline,
                } => warn!(
                    worker = %name,
                    step,
                    shard,
                    deadline_ms = deadline.as_millis() as u64,
                    "shard past its deadline; offered to other workers too (the first valid result wins)"
                ),
                Notice::Held {
                    name,
                    step,
                    shard,
                    why,
                } => {
                    if let Some(left_out) = self.limiter.check(&format!("held {name}"), now) {
                        info!(worker = %name, step, shard, %why, repeats_not_logged = left_out, "result held for a second opinion");
                    }
                }
                Notice::Checked {
                    step,
                    shard,
                    first,
                    second,
                    disagreement,
                } => match disagreement {
                    None => debug!(step, shard, %first, %second, "second opinion agrees"),
                    Some(d) => {
                        warn!(step, shard, %first, %second, difference = %d, "second opinion disagrees")
                    }
                },
            }
        }
        events
    }

    /// Everything that follows a job outcome: the commit event (with a checkpoint and validation
    /// when due), notices, and waking waiting workers.
    fn outcome(&self, mut job: MutexGuard<'_, Job>, outcome: Submitted) -> Vec<Event> {
        let mut events = Vec::new();
        if let Submitted::Held(why) = &outcome {
            debug!(%why, "a result waits for another opinion");
        }
        if let Submitted::Committed(r) = outcome {
            let step = r.committed.cursor.global;
            debug!(step, loss = r.committed.loss, "committed");
            events.push(report::commit_event(
                job.trainer(),
                *r,
                self.cfg.checkpoint_every,
            ));
            self.blobs.collect(step + 1);
        }
        events.extend(self.notices(&mut job));
        if let Some(f) = job.failure() {
            error!(cause = %f, "the job failed");
        }
        drop(job);
        self.changed.notify_waiters();
        events
    }

    /// Advances the job's clock: leases, deadlines, planning; then second opinions.
    pub(crate) async fn tick(self: &Arc<Self>, now: Instant) {
        let events = {
            let mut job = self.job();
            let changed = job.tick(now);
            let events = self.notices(&mut job);
            drop(job);
            if changed {
                self.changed.notify_waiters();
            }
            events
        };
        self.send(events).await;
        self.local_checks();
    }

    /// Computes, on blocking threads, the second opinions no worker can give.
    fn local_checks(self: &Arc<Self>) {
        let checks = self.job().local_checks(Instant::now());
        for c in checks {
            let shared = self.clone();
            tokio::spawn(async move {
                let model = {
                    let job = shared.job();
                    job.trainer().spec().model.clone()
                };
                let engine = shared
                    .verifiers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop();
                let (step, shard) = (c.step, c.shard);
                let computed = tokio::task::spawn_blocking(move || {
                    let mut e = engine.unwrap_or_else(|| CpuEngine::new(&model, 1));
                    let t0 = Instant::now();
                    let out = c.data.compute(&mut e, &model, &c.params);
                    (e, out, t0.elapsed())
                })
                .await;
                let (engine, out, took) = match computed {
                    Ok(v) => v,
                    Err(e) => {
                        error!(cause = %e, step, shard, "second opinion panicked");
                        shared.job().local_check_failed(step, shard);
                        return;
                    }
                };
                shared
                    .verifiers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(engine);
                let out = match out {
                    Ok(o) => o,
                    Err(e) => {
                        error!(cause = %e, step, shard, "the coordinator could not compute a second opinion");
                        shared.job().local_check_failed(step, shard);
                        return;
                    }
                };
                let sub = model::trainer::Submission {
                    step,
                    shard,
                    loss_sum: out.loss_sum,
                    grad: out.grad,
                    finals: out.final_state,
                    compute_ms: took.as_secs_f64() * 1e3,
                };
                let events = {
                    let mut job = shared.job();
                    match job.submit_local(sub, Instant::now()) {
                        Ok(o) => shared.outcome(job, o),
                        Err(e) => {
                            debug!(cause = %e, step, shard, "second opinion no longer needed");
                            shared.notices(&mut job)
                        }
                    }
                };
                shared.send(events).await;
                shared.local_checks();
            });
        }
    }

    fn params_tensor(&self, step: u64, params: &[f32]) -> pb::Tensor {
        let mut cache = self.params_cache.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some((s, t)) if *s == step => t.clone(),
            _ => {
                let mut t = convert::tensor(&[params.len()], params);
                // larger than half a message: one blob per step, read by every worker
                blob::move_out(&mut t, self.cfg.max_message_bytes / 2, |data| {
                    self.blobs.put_outgoing(None, step, data)
                });
                *cache = Some((step, t.clone()));
                t
            }
        }
    }

    /// Replaces blob references in a result by the bytes the worker uploaded.
    async fn submit(self: &Arc<Self>, who: &Who, mut r: pb::ShardResult) -> Result<(), Status> {
        let (step, shard) = convert::result_key(&r);
        let adm = self
            .job()
            .admit(&who.caller(), step, shard)
            .map_err(|e| self.refused(&e))?;
        // decoded without the job lock
        let decoded = blob::resolve(&mut r, |id| self.blobs.take_upload(&who.id, id))
            .map_err(|m| convert::WireError::Missing { what: m })
            .and_then(|()| convert::submission(&r, adm.grad, adm.state));
        let sub = match decoded {
            Ok(s) => s,
            Err(e) => {
                let why = e.to_string();
                let events = {
                    let mut job = self.job();
                    job.refuse(&who.caller(), step, shard, &why, Instant::now());
                    let events = self.notices(&mut job);
                    drop(job);
                    self.changed.notify_waiters();
                    events
                };
                self.send(events).await;
                return Err(Status::invalid_argument(why));
            }
        };
        let result = {
            let mut job = self.job();
            match job.submit(&who.caller(), sub, Instant::now()) {
                Ok(o) => Ok(self.outcome(job, o)),
                Err(e) => {
                    let events = self.notices(&mut job);
                    drop(job);
                    self.changed.notify_waiters();
                    Err((e, events))
                }
            }
        };
        match result {
            Ok(events) => {
                self.send(events).await;
                self.local_checks();
                Ok(())
            }
            Err((e, events)) => {
                self.send(events).await;
                Err(self.refused(&e))
            }
        }
    }

    async fn failed(
        self: &Arc<Self>,
        who: &Who,
        step: u64,
        shard: u32,
        reason: &str,
    ) -> Result<(), Status> {
        let reason = clean(reason, 1024);
        let events = {
            let mut job = self.job();
            job.admit(&who.caller(), step, shard)
                .map_err(|e| self.refused(&e))?;
            job.refuse(
                &who.caller(),
                step,
                shard,
                &format!("the worker could not compute it: {reason}"),
                Instant::now(),
            );
            let events = self.notices(&mut job);
            drop(job);
            self.changed.notify_waiters();
            events
        };
        self.send(events).await;
        Ok(())
    }

    fn assignment_reply(
        &self,
        who: &str,
        a: &crate::job::Assignment,
        params: pb::Tensor,
    ) -> pb::StepReply {
        let model = self.job().trainer().spec().model.clone();
        let mut wire = convert::assignment(
            &AssignmentOut {
                plan: &a.plan,
                shard: a.shard,
                first_slot: a.first_slot,
                data: &a.data,
                model: &model,
                deadline: a.deadline,
            },
            params,
        );
        let step = a.plan.cursor.global;
        blob::offload(
            &mut wire,
            self.cfg.max_message_bytes,
            blob::assignment_tensors,
            |data| self.blobs.put_outgoing(Some(who), step, data),
        );
        convert::step_reply(convert::Reply::Assignment(Box::new(wire)))
    }

    async fn next(self: &Arc<Self>, who: &Who) -> Result<pb::StepReply, Status> {
        let deadline = tokio::time::Instant::now() + LONG_POLL.min(self.cfg.lease / 2);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let polled = {
                let mut job = self.job();
                match job.poll(&who.caller(), Instant::now()) {
                    Ok(Poll::Assign(a)) => {
                        let params =
                            self.params_tensor(a.plan.cursor.global, job.trainer().params());
                        drop(job);
                        return Ok(self.assignment_reply(&who.id, &a, params));
                    }
                    other => other,
                }
            };
            match polled {
                Ok(Poll::Finished(message)) => {
                    let name = self.job().leave(&who.caller()).unwrap_or_default();
                    info!(worker = %name, "told the worker the job is over");
                    self.blobs.forget(&who.id);
                    self.changed.notify_waiters();
                    return Ok(convert::step_reply(convert::Reply::Finished(message)));
                }
                Ok(Poll::Wait(reason)) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Ok(convert::step_reply(convert::Reply::Wait(reason)));
                    }
                }
                Ok(Poll::Assign(_)) => unreachable!("handled above"),
                Err(e) => return Err(self.refused(&e)),
            }
        }
    }

    fn refused(&self, e: &Refusal) -> Status {
        if let Some(left_out) = self.limiter.check(&format!("refusal {e}"), Instant::now()) {
            warn!(cause = %e, repeats_not_logged = left_out, "refused a call");
        }
        refusal_status(e)
    }
}

/// The `carry.v1.Coordinator` service.
#[derive(Debug, Clone)]
pub(crate) struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    /// The service over `shared`.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type BlobStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let ident = identity(&req);
        let r = convert::joining(req.into_inner());
        if r.protocol != proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version mismatch: this coordinator speaks {}, the worker {}",
                proto::PROTOCOL_VERSION,
                r.protocol
            )));
        }
        let name = match clean(&r.name, MAX_NAME) {
            n if n.is_empty() => "unnamed".to_string(),
            n => n,
        };
        let device = clean(&r.device, MAX_DEVICE);
        let s = &self.shared;
        let id = s
            .job()
            .register(&name, ident.as_deref(), Instant::now())
            .map_err(|e| s.refused(&e))?;
        info!(worker = %name, %device, "worker joined");
        s.send(vec![Event::Joined { name, device }]).await;
        s.changed.notify_waiters();
        let model = s.job().trainer().spec().model.clone();
        Ok(Response::new(convert::register_reply(
            &convert::Registered {
                worker_id: id,
                job_id: s.cfg.job_id.clone(),
                heartbeat: s.cfg.heartbeat,
                model,
                max_message_bytes: Some(s.cfg.max_message_bytes),
            },
        )))
    }

    async fn step(&self, req: Request<pb::StepRequest>) -> Result<Response<pb::StepReply>, Status> {
        let ident = identity(&req);
        let (id, handing) = convert::handing(req.into_inner());
        let who = Who {
            id,
            identity: ident,
        };
        match handing {
            convert::Handing::Nothing => {}
            convert::Handing::Result(r) => self.shared.submit(&who, *r).await?,
            convert::Handing::Failure {
                step,
                shard,
                reason,
            } => self.shared.failed(&who, step, shard, &reason).await?,
        }
        self.shared.next(&who).await.map(Response::new)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let who = Who::of(&req, req.get_ref().worker_id.clone());
        self.shared
            .job()
            .heartbeat(&who.caller(), Instant::now())
            .map_err(|e| self.shared.refused(&e))?;
        Ok(Response::new(pb::HeartbeatReply {}))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let who = Who::of(&req, req.get_ref().worker_id.clone());
        let s = &self.shared;
        let name = s.job().leave(&who.caller()).map_err(|e| s.refused(&e))?;
        s.blobs.forget(&who.id);
        info!(worker = %name, "worker left");
        s.send(vec![Event::Left {
            name,
            reason: "left".into(),
            evicted: false,
        }])
        .await;
        s.changed.notify_waiters();
        Ok(Response::new(pb::LeaveReply {}))
    }

    type ReadBlobStream = BlobStream;

    async fn read_blob(
        &self,
        req: Request<pb::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadBlobStream>, Status> {
        let who = Who::of(&req, req.get_ref().worker_id.clone());
        let s = &self.shared;
        s.job()
            .heartbeat(&who.caller(), Instant::now())
            .map_err(|e| s.refused(&e))?;
        let blob = &req.get_ref().blob;
        let data = s
            .blobs
            .read(&who.id, blob)
            .ok_or_else(|| Status::not_found(format!("no blob `{blob}` for this worker")))?;
        let chunks: Vec<Result<pb::BlobChunk, Status>> =
            blob::download(&data).into_iter().map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn write_blob(
        &self,
        req: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::WriteBlobReply>, Status> {
        let ident = identity(&req);
        let mut stream = req.into_inner();
        let s = &self.shared;
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("an upload needs at least one chunk"))??;
        let who = Who {
            id: first.worker_id.clone(),
            identity: ident,
        };
        let cap = {
            let job = s.job();
            job.check_member(&who.caller()).map_err(|e| s.refused(&e))?;
            let t = job.trainer();
            let m = &t.spec().model;
            // one result: the gradient and the final states of at most the whole batch, twice
            2 * 4 * (t.layout().len() + 2 * m.layers * t.spec().batch_size * m.hidden)
        };
        let held = s.blobs.uploaded_by(&who.id);
        let mut asm = blob::Assembler::new(cap.saturating_sub(held));
        let too_much = |m: String| {
            Status::resource_exhausted(format!(
                "upload: {m} (a worker holds at most two results' worth of uploads)"
            ))
        };
        asm.push(&first.data).map_err(too_much)?;
        while let Some(chunk) = stream.next().await {
            asm.push(&chunk?.data).map_err(too_much)?;
        }
        let id = s.blobs.put_upload(&who.id, asm.finish());
        Ok(Response::new(blob::upload_reply(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_is_bounded_and_has_no_control_characters() {
        assert_eq!(clean("a,b\nc\r\x1b[31m", 100), "a,bc[31m");
        assert_eq!(clean(&"x".repeat(500), MAX_NAME).len(), MAX_NAME);
        assert_eq!(clean("  pod-1  ", 10), "pod-1");
    }
}
