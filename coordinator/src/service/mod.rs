//! The gRPC adapter over [`Job`]: authenticates the caller, decodes and hands over, maps refusals
//! to statuses, streams each worker's directives, moves large tensors through blobs, computes the
//! second opinions, issues the peer port identities under TLS, and reports to the reporter.
//! Every rule lives in the job; tensors are decoded and encoded outside the job lock, so a large
//! report never delays another worker's heartbeat.

mod blobs;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use model::engine::cpu::CpuEngine;
use prost::Message;
use proto::blob;
use proto::convert::{self, AssignmentOut, PeerTls};
use proto::pb;
use proto::step::{self as wire, DirectiveOut};
use runtime::logs::Limiter;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use self::blobs::Blobs;
use crate::error::refusal_status;
use crate::job::{Caller, Directive, Job, LocalResult, Notice, Refusal};
use crate::report::Event;

/// Longest a directive stream stays silent: a Wait is sent at least this often, so that a broken
/// connection is noticed.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Directives queued per worker before the stream waits for it to read.
const DIRECTIVE_QUEUE: usize = 64;
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
    /// Largest message in either direction.
    pub(crate) max_message_bytes: usize,
    /// Whether the job uses TLS (then every worker's peer connections do too).
    pub(crate) tls: bool,
    /// Benchmark aid: how long every report is held before it is handled.
    pub(crate) link_delay: runtime::net::LinkDelay,
}

/// Bytes the coordinator received and sent for one step.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    received: u64,
    sent: u64,
}

/// State shared by the service, the ticker and the server loop.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The job. A std mutex: it is held for short, non-async sections only, never while a tensor
    /// is encoded or decoded.
    job: Mutex<Job>,
    /// Woken whenever members may have something new to hear or the job ended.
    pub(crate) changed: Notify,
    /// Commits and membership changes, to the reporter (bounded: a reporter that falls behind
    /// slows commits down instead of queueing without end); `None` once the job is closed.
    events: Mutex<Option<mpsc::Sender<Event>>>,
    /// Tensors travelling outside their messages.
    blobs: Blobs,
    /// CPU engines for second opinions the coordinator computes itself.
    verifiers: Mutex<Vec<CpuEngine>>,
    /// Signs every worker's peer port identity when the job uses TLS.
    peer_ca: Option<crate::pki::Ca>,
    /// Bytes per step, until its commit is reported.
    traffic: Mutex<BTreeMap<u64, Traffic>>,
    /// Events taken from the job, in the order the job produced them (filled under the job
    /// lock), until [`Shared::send`] hands them to the reporter.
    outbox: Mutex<std::collections::VecDeque<Event>>,
    /// Held while events go to the reporter, so that they arrive in the order they were taken.
    sending: tokio::sync::Mutex<()>,
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
    pub(crate) fn new(
        job: Job,
        events: mpsc::Sender<Event>,
        cfg: ServiceConfig,
    ) -> Result<Self, crate::error::CoordError> {
        let peer_ca = if cfg.tls {
            Some(crate::pki::Ca::new(&format!(
                "carry peers of job {}",
                &cfg.job_id[..8.min(cfg.job_id.len())]
            ))?)
        } else {
            None
        };
        Ok(Self {
            job: Mutex::new(job),
            changed: Notify::new(),
            events: Mutex::new(Some(events)),
            blobs: Blobs::default(),
            verifiers: Mutex::new(Vec::new()),
            peer_ca,
            traffic: Mutex::new(BTreeMap::new()),
            outbox: Mutex::new(std::collections::VecDeque::new()),
            sending: tokio::sync::Mutex::new(()),
            limiter: Limiter::new(WARN_PERIOD),
            cfg,
        })
    }

    /// Locks the job (a poisoned lock means a panic elsewhere; the state is still consistent
    /// because every mutation completes before it can panic).
    pub(crate) fn job(&self) -> MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, step: u64, received: u64, sent: u64) {
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(step).or_default();
        e.received += received;
        e.sent += sent;
    }

    /// Queues `event` behind what the job produced so far, and flushes.
    async fn send(&self, event: Event) {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(event);
        self.flush().await;
    }

    /// Sends everything queued to the reporter, in order, waiting while it is behind (dropped
    /// once the job is closed). Cancellation-safe: a flush whose call is dropped while it waits
    /// (its client's connection closed) leaves every event it has not handed over queued for the
    /// next flush, since an event leaves the queue only with a slot in the channel to go to.
    async fn flush(&self) {
        let _order = self.sending.lock().await;
        loop {
            if self
                .outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                break;
            }
            let tx = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let Some(tx) = tx else { break };
            let Ok(slot) = tx.reserve().await else { break };
            let next = self
                .outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some(mut ev) = next else { break };
            if let Event::Committed { report, .. } = &mut ev {
                let step = report.committed.cursor.global;
                let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
                let mine = t.remove(&step).unwrap_or_default();
                // steps that will never commit (a view that ended) are forgotten
                t.retain(|&s, _| s > step);
                report.breakdown.coordinator_bytes = mine.received + mine.sent;
            }
            slot.send(ev);
        }
    }

    /// Sends what is still queued for the reporter, then closes the event channel: the reporter
    /// finishes what it has and ends. (A call cut off at shutdown may have queued the last
    /// commits without sending them.)
    pub(crate) async fn finish_events(&self) {
        self.flush().await;
        self.close_events();
    }

    /// Closes the event channel: the reporter finishes what it has and ends.
    fn close_events(&self) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Takes what the job committed and noticed (queued for the reporter in the job's order),
    /// logs the notices, releases the job and wakes the directive streams when members have
    /// something new to hear. The caller then calls [`Shared::flush`].
    fn drain(&self, mut job: MutexGuard<'_, Job>) {
        let mut events = job.take_commits();
        if let Some(last) = events.iter().rev().find_map(|e| match e {
            Event::Committed { report, .. } => Some(report.committed.cursor.global),
            _ => None,
        }) {
            debug!(step = last, "committed");
            self.blobs.collect(last + 1);
        }
        let notices = job.take_notices();
        if let Some(f) = job.failure() {
            error!(cause = %f, "the job failed");
        }
        events.extend(self.log_notices(notices));
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(events);
        let news = job.take_news() || job.is_finished();
        drop(job);
        if news {
            self.changed.notify_waiters();
        }
    }

    /// Logs what the job noticed and turns it into reporter events.
    fn log_notices(&self, notices: Vec<Notice>) -> Vec<Event> {
        let now = Instant::now();
        let mut events = Vec::new();
        for n in notices {
            match n {
                Notice::Left {
                    id,
                    name,
                    reason,
                    evicted,
                } => {
                    self.blobs.forget(&id);
                    if evicted {
                        warn!(worker = %name, %reason, "worker evicted; its slots go to the other workers");
                    } else {
                        warn!(worker = %name, %reason, "worker gone; its slots go to the live workers");
                    }
                    events.push(Event::Left {
                        name,
                        reason,
                        evicted,
                    });
                }
                Notice::Refused { name, step, why } => {
                    if let Some(left_out) = self.limiter.check(&format!("refused {name}"), now) {
                        warn!(worker = %name, step, cause = %why, repeats_not_logged = left_out, "refused a result; counted against the worker");
                    }
                }
                Notice::DeadlinePassed {
                    name,
                    step,
                    deadline,
                } => warn!(
                    worker = %name,
                    step,
                    deadline_ms = deadline.as_millis() as u64,
                    "shard past its deadline; its slots go to the other workers (a late result is refused)"
                ),
                Notice::Held { name, step, why } => {
                    if let Some(left_out) = self.limiter.check(&format!("held {name}"), now) {
                        info!(worker = %name, step, %why, repeats_not_logged = left_out, "result held for a second opinion");
                    }
                }
                Notice::Checked {
                    step,
                    first,
                    disagreement,
                } => match disagreement {
                    None => debug!(step, worker = %first, "second opinion agrees"),
                    Some(d) => {
                        warn!(step, worker = %first, difference = %d, "second opinion disagrees")
                    }
                },
                Notice::ViewStarted {
                    id,
                    step,
                    members,
                    after,
                } => {
                    let members = members.join(", ");
                    match after {
                        Some(why) => {
                            info!(view = id, step, %members, after = %why, "view started")
                        }
                        None => info!(view = id, step, %members, "view started"),
                    }
                }
            }
        }
        events
    }

    /// Advances the job's clock: leases, deadlines, views; then second opinions.
    pub(crate) async fn tick(self: &Arc<Self>, now: Instant) {
        {
            let mut job = self.job();
            job.tick(now);
            self.drain(job);
        }
        self.flush().await;
        self.local_checks();
    }

    /// Computes, on blocking threads, the second opinions the job asks for.
    fn local_checks(self: &Arc<Self>) {
        let checks = self.job().local_checks();
        for c in checks {
            let shared = self.clone();
            tokio::spawn(async move {
                let model = shared.job().trainer().spec().model.clone();
                let engine = shared
                    .verifiers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop();
                let (step, member) = (c.step, c.member);
                let computed = tokio::task::spawn_blocking(move || {
                    let mut e = engine.unwrap_or_else(|| CpuEngine::new(&model, 1));
                    let out = if c.simulated {
                        c.data.simulated(&model, &c.params)
                    } else {
                        c.data.compute(&mut e, &model, &c.params)
                    };
                    (e, out)
                })
                .await;
                let (engine, out) = match computed {
                    Ok(v) => v,
                    Err(e) => {
                        error!(cause = %e, step, member, "second opinion panicked");
                        shared.job().local_check_failed(step, member);
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
                        error!(cause = %e, step, member, "the coordinator could not compute a second opinion");
                        shared.job().local_check_failed(step, member);
                        return;
                    }
                };
                {
                    let mut job = shared.job();
                    job.submit_local(
                        step,
                        member,
                        LocalResult {
                            loss_sum: out.loss_sum,
                            grad: out.grad,
                            finals: out.final_state,
                        },
                        Instant::now(),
                    );
                    shared.drain(job);
                }
                shared.flush().await;
                shared.local_checks();
            });
        }
    }

    /// The wire form of a directive for worker `who` (large tensors moved to blobs), and the
    /// step its bytes count for.
    fn encode(&self, who: &str, d: Directive, model: &model::ModelConfig) -> (pb::Directive, u64) {
        let limit = self.cfg.max_message_bytes;
        let (out, step) = match d {
            Directive::View(v) => {
                let step = v.start_step;
                let mut w = wire::view(&v);
                blob::offload(&mut w, limit, blob::view_tensors, |data| {
                    self.blobs.put_outgoing(Some(who), step, data)
                });
                (DirectiveOut::View(Box::new(w)), step)
            }
            Directive::Work(w) => {
                let step = w.plan.cursor.global;
                let mut a = convert::assignment(&AssignmentOut {
                    view: w.view,
                    plan: &w.plan,
                    member: w.member,
                    first_slot: w.first_slot,
                    data: &w.data,
                    model,
                    deadline: w.deadline,
                    lr: w.lr,
                    outputs: w.outputs,
                });
                blob::offload(&mut a, limit, blob::assignment_tensors, |data| {
                    self.blobs.put_outgoing(Some(who), step, data)
                });
                (DirectiveOut::Work(Box::new(a)), step)
            }
            Directive::Upload(step) => (DirectiveOut::Upload(step), step),
            Directive::Finished(m) => (DirectiveOut::Finished(m), u64::MAX),
            Directive::Wait(r) => (DirectiveOut::Wait(r), u64::MAX),
        };
        (wire::directive(out), step)
    }

    /// Streams worker `who`'s directives into `tx` until the job is over for it or the stream
    /// closes (then the job hears it at once).
    async fn stream_directives(
        self: Arc<Self>,
        who: Who,
        tx: mpsc::Sender<Result<pb::Directive, Status>>,
    ) {
        let model = self.job().trainer().spec().model.clone();
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let directives = self.job().pull(&who.caller(), Instant::now());
            let mut finished = false;
            for d in directives {
                finished |= matches!(d, Directive::Finished(_));
                let (msg, step) = self.encode(&who.id, d, &model);
                if step != u64::MAX {
                    self.count(step, 0, msg.encoded_len() as u64);
                }
                if tx.send(Ok(msg)).await.is_err() {
                    self.unfollowed(&who).await;
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            if finished {
                let name = self
                    .job()
                    .leave(&who.caller(), Instant::now())
                    .unwrap_or_default();
                info!(worker = %name, "told the worker the job is over");
                self.blobs.forget(&who.id);
                self.changed.notify_waiters();
                return;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tx.closed() => {
                    self.unfollowed(&who).await;
                    return;
                }
                _ = tokio::time::sleep_until(last_sent + KEEPALIVE) => {
                    // nothing new: a keepalive tells a broken connection apart from a quiet one
                    let msg = wire::directive(DirectiveOut::Wait("nothing new".into()));
                    if tx.send(Ok(msg)).await.is_err() {
                        continue;
                    }
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
    }

    /// A worker's directive stream closed.
    async fn unfollowed(&self, who: &Who) {
        {
            let mut job = self.job();
            job.unfollow(&who.caller(), Instant::now());
            self.drain(job);
        }
        self.flush().await;
    }

    /// Takes a report: blobs resolved and records decoded outside the job lock, then handed to
    /// the job in order.
    async fn report(self: &Arc<Self>, who: &Who, mut r: pb::ReportRequest) -> Result<(), Status> {
        self.cfg.link_delay.hold(Instant::now()).await;
        let view = r.view;
        let expect = self
            .job()
            .expect(&who.caller(), view)
            .map_err(|e| self.refused(&e))?;
        let bytes = r.encoded_len() as u64;
        let t0 = runtime::clock::Stopwatch::start();
        let first = r.records.first().map_or(0, |x| x.step);
        let records = match blob::resolve(&mut r, blob::report_tensors, |id| {
            self.blobs.take_upload(&who.id, id)
        }) {
            Ok(()) => wire::records(&r, &expect),
            Err(m) => vec![Err((first, convert::WireError::Missing { what: m }))],
        };
        let decode_ms = t0.ms();
        let per = bytes / records.len().max(1) as u64;
        for rec in records.iter().flatten() {
            self.count(rec.step, per, 0);
        }
        let result = {
            let mut job = self.job();
            let r = job.report(&who.caller(), view, records, decode_ms, Instant::now());
            self.drain(job);
            r
        };
        self.flush().await;
        self.local_checks();
        result.map_err(|e| self.refused(&e))
    }

    fn peer_tls(&self) -> Result<Option<PeerTls>, Status> {
        let Some(ca) = &self.peer_ca else {
            return Ok(None);
        };
        let (cert, key) = ca
            .issue(
                &[convert::PEER_TLS_NAME],
                vec![
                    rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                ],
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(PeerTls {
            cert: cert.into_bytes(),
            key: key.into_bytes(),
            ca: ca.pem().into_bytes(),
        }))
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
type DirectiveStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Directive, Status>> + Send>>;

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
        let peer_tls = s.peer_tls()?;
        let id = s
            .job()
            .register(&name, ident.as_deref(), &r.peer_address, Instant::now())
            .map_err(|e| s.refused(&e))?;
        info!(worker = %name, %device, peer = %r.peer_address, "worker joined");
        s.send(Event::Joined { name, device }).await;
        s.changed.notify_waiters();
        let model = s.job().trainer().spec().model.clone();
        Ok(Response::new(convert::register_reply(
            &convert::Registered {
                worker_id: id,
                job_id: s.cfg.job_id.clone(),
                heartbeat: s.cfg.heartbeat,
                model,
                max_message_bytes: Some(s.cfg.max_message_bytes),
                peer_tls,
            },
        )))
    }

    type FollowStream = DirectiveStream;

    async fn follow(
        &self,
        req: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let who = Who::of(&req, req.get_ref().worker_id.clone());
        let s = &self.shared;
        {
            let mut job = s.job();
            job.follow(&who.caller(), Instant::now())
                .map_err(|e| s.refused(&e))?;
            s.drain(job);
        }
        s.flush().await;
        let (tx, rx) = mpsc::channel(DIRECTIVE_QUEUE);
        tokio::spawn(s.clone().stream_directives(who, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let who = Who::of(&req, req.get_ref().worker_id.clone());
        self.shared.report(&who, req.into_inner()).await?;
        Ok(Response::new(pb::ReportReply {}))
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
        let name = {
            let mut job = s.job();
            let name = job
                .leave(&who.caller(), Instant::now())
                .map_err(|e| s.refused(&e))?;
            s.outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(Event::Left {
                    name: name.clone(),
                    reason: "left".into(),
                    evicted: false,
                });
            s.drain(job);
            name
        };
        s.blobs.forget(&who.id);
        info!(worker = %name, "worker left");
        s.flush().await;
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
            // one report: the final states of at most the whole batch, the summed gradient and a
            // gradient for a second opinion, twice
            2 * 4 * (2 * t.layout().len() + 2 * m.layers * t.spec().batch_size * m.hidden)
        };
        let held = s.blobs.uploaded_by(&who.id);
        let mut asm = blob::Assembler::new(cap.saturating_sub(held));
        let too_much = |m: String| {
            Status::resource_exhausted(format!(
                "upload: {m} (a worker holds at most two reports' worth of uploads)"
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

    /// A call whose connection closes while its flush waits for the reporter (a worker that
    /// exits as the job ends) must not take the last commits with it: the run would end short of
    /// its last rows and without its final checkpoint.
    #[tokio::test]
    async fn a_flush_cut_off_while_the_reporter_is_behind_loses_nothing() {
        use data::windows::{SyntheticSpec, synthetic};
        let data = synthetic(&SyntheticSpec {
            sequences: 8,
            val_sequences: 0,
            timesteps: 4,
            ..SyntheticSpec::new(2, 1)
        });
        let spec = model::config::TrainSpec {
            batch_size: 2,
            ..Default::default()
        };
        let trainer = model::trainer::Trainer::new(spec, std::sync::Arc::new(data)).unwrap();
        // the reporter's channel holds one event and nobody reads it yet
        let (tx, mut rx) = mpsc::channel(1);
        let shared = Shared::new(
            Job::new(trainer, crate::job::JobConfig::default()),
            tx,
            ServiceConfig {
                job_id: "flush-test".into(),
                heartbeat: Duration::from_secs(1),
                max_message_bytes: 1 << 20,
                tls: false,
                link_delay: runtime::net::LinkDelay(Duration::ZERO),
            },
        )
        .unwrap();
        for i in 0..3 {
            shared.outbox.lock().unwrap().push_back(Event::Joined {
                name: format!("w{i}"),
                device: "cpu".into(),
            });
        }
        let cut = tokio::time::timeout(Duration::from_millis(50), shared.flush()).await;
        assert!(cut.is_err(), "the flush waits for the reporter");
        let read = async {
            let mut names = Vec::new();
            while let Some(ev) = rx.recv().await {
                if let Event::Joined { name, .. } = ev {
                    names.push(name);
                }
            }
            names
        };
        let ((), names) = tokio::join!(shared.finish_events(), read);
        assert_eq!(names, ["w0", "w1", "w2"], "every event, once, in order");
    }
}
