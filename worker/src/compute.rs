//! The compute thread: owns the engine, this worker's replica of the parameters and Adam state,
//! and the states of its slots; runs the steps of its view in order (compute, sum with the other
//! members, update) and hands its records to the session, which reports them. Burn and the fused
//! kernels run off the async runtime; the thread talks to the session over channels.
//!
//! A new view replaces everything: its state (or, when it sends none, this worker's replica,
//! which must then be exactly the committed one) and its slots' states. A fault ends this
//! worker's part in a view until the next one arrives.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::config::ModelConfig;
use model::device::{Compute, DeviceChoice, make_engine, resolve};
use model::engine::{Engine, EngineKind, TrainOut};
use model::params::ParamLayout;
use model::replica::{
    Computed, Record, Reduced, Replica, StepRecord, View, chunk_range, digest, owned_chunks,
};
use model::state::SlotStates;
use proto::convert::Work;
use tokio::sync::{mpsc, oneshot};

use crate::config::Fault;
use crate::error::WorkerError;
use crate::exchange::Exchange;
use crate::peer::Missing;

/// A view to compute in, with its gradient sum set up.
#[derive(Debug)]
pub(crate) struct ViewStart {
    /// The view.
    pub(crate) view: View,
    /// Its gradient sum.
    pub(crate) exchange: Exchange,
}

/// What the compute thread tells the session besides its records.
#[derive(Debug)]
pub(crate) enum Event {
    /// This worker cannot take part in the view it was given (its replica is not the committed
    /// one and the view sent none): it should register again and start fresh.
    Resync(String),
}

/// Records waiting to be reported, each with its view: the compute thread's, and those the
/// session adds itself (work or a view it could not read). Records go out in batches, one report
/// call carrying several steps: once half the pipeline's steps are done, at once for a record
/// that is not routine (a failure, a fault, a gradient asked for), or when the oldest has waited
/// `REPORT_DELAY`. The session is woken only when it has to act: for the first record since the
/// last report (to start that wait) and when a batch is due. A step thus costs the session no
/// wake-up of its own; on a machine whose cores are all computing, each wake-up takes a core
/// from a compute thread.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<Waiting>,
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Waiting {
    records: Vec<(u64, StepRecord)>,
    /// When the oldest record arrived.
    since: Option<tokio::time::Instant>,
    /// Steps done (`Reduced`) among them.
    done: usize,
    /// A record that is not routine is among them.
    urgent: bool,
}

/// What the records waiting in an [`Outbox`] ask of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing waits.
    Nothing,
    /// Report them now.
    Now,
    /// Report them at this instant, unless more arrive first.
    At(tokio::time::Instant),
}

impl Outbox {
    /// Adds `record` of `view`; `batch` steps done make a batch worth reporting at once.
    pub(crate) fn put(&self, view: u64, record: StepRecord, batch: usize) {
        let wake = {
            let mut q = self.lock();
            let first = q.records.is_empty();
            if first {
                q.since = Some(tokio::time::Instant::now());
            }
            match record.record {
                Record::Reduced(_) => q.done += 1,
                Record::Computed(_) => {}
                _ => q.urgent = true,
            }
            q.records.push((view, record));
            first || q.urgent || q.done >= batch
        };
        if wake {
            self.ready.notify_one();
        }
    }

    /// When the records waiting should be reported, with `batch` steps done making a batch.
    pub(crate) fn due(&self, delay: std::time::Duration, batch: usize) -> Due {
        let q = self.lock();
        match q.since {
            None => Due::Nothing,
            Some(_) if q.urgent || q.done >= batch => Due::Now,
            Some(t) if t.elapsed() >= delay => Due::Now,
            Some(t) => Due::At(t + delay),
        }
    }

    /// Takes every record waiting, in the order they were put.
    pub(crate) fn take(&self) -> Vec<(u64, StepRecord)> {
        let mut q = self.lock();
        q.since = None;
        q.done = 0;
        q.urgent = false;
        std::mem::take(&mut q.records)
    }

    /// Resolves when records ask the session to act (at once when they asked since the last
    /// call).
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Msg {
    Model(ModelConfig, oneshot::Sender<Result<String, String>>),
    View(Box<ViewStart>),
    Work(Box<Work>),
    Upload(u64),
}

/// The step being computed, for the deadline watchdog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Busy {
    /// The step.
    pub(crate) step: u64,
    /// Since when.
    pub(crate) since: Instant,
    /// Its deadline, if the coordinator gave one.
    pub(crate) deadline: Option<Duration>,
}

/// Settings of the compute thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Engine.
    pub(crate) engine: EngineKind,
    /// CPU threads.
    pub(crate) threads: usize,
    /// Injected misbehaviour.
    pub(crate) fault: Option<Fault>,
    /// Delay before each step.
    pub(crate) throttle: Duration,
}

/// Handle to the compute thread.
#[derive(Debug)]
pub(crate) struct Computer {
    tx: std_mpsc::Sender<Msg>,
    device: String,
    busy: Arc<Mutex<Option<Busy>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Model(..) => "Model",
            Msg::View(..) => "View",
            Msg::Work(..) => "Work",
            Msg::Upload(..) => "Upload",
        })
    }
}

impl Computer {
    /// Resolves the device (a missing device is an error here, before joining any job) and starts
    /// the thread; its events go to `events`.
    pub(crate) fn start(
        device: DeviceChoice,
        settings: Settings,
        events: mpsc::UnboundedSender<Event>,
        outbox: Arc<Outbox>,
    ) -> Result<Self, WorkerError> {
        let compute = resolve(device)?;
        let desc = format!("{} {}", compute.describe(), settings.engine);
        let (tx, rx) = std_mpsc::channel::<Msg>();
        let busy = Arc::new(Mutex::new(None));
        let b = busy.clone();
        std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || {
                Runner {
                    compute,
                    settings,
                    events,
                    outbox,
                    busy: b,
                    engine: None,
                    cur: None,
                    kept: None,
                }
                .serve(&rx);
            })
            .map_err(|e| WorkerError::Compute(e.to_string()))?;
        Ok(Self {
            tx,
            device: desc,
            busy,
        })
    }

    /// Device and engine, for registration.
    pub(crate) fn device(&self) -> &str {
        &self.device
    }

    /// Builds the engine for `cfg` (kept until a different model arrives).
    pub(crate) async fn set_model(&self, cfg: ModelConfig) -> Result<String, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Model(cfg, tx))
            .map_err(|_| WorkerError::Compute("stopped".into()))?;
        rx.await
            .map_err(|_| WorkerError::Compute("stopped".into()))?
            .map_err(WorkerError::Compute)
    }

    fn send(&self, m: Msg) -> Result<(), WorkerError> {
        self.tx
            .send(m)
            .map_err(|_| WorkerError::Compute("stopped".into()))
    }

    /// Starts a view.
    pub(crate) fn view(&self, v: ViewStart) -> Result<(), WorkerError> {
        self.send(Msg::View(Box::new(v)))
    }

    /// One step's work of the current view.
    pub(crate) fn work(&self, w: Work) -> Result<(), WorkerError> {
        self.send(Msg::Work(Box::new(w)))
    }

    /// Asks for the gradient of `step` to be reported.
    pub(crate) fn upload(&self, step: u64) -> Result<(), WorkerError> {
        self.send(Msg::Upload(step))
    }

    /// The step being computed now, if any.
    pub(crate) fn busy(&self) -> Option<Busy> {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This worker's part in its current view.
struct Current {
    view: View,
    exchange: Exchange,
    replica: Replica,
    /// The step the replica is at (the next to compute).
    next: u64,
    /// The states the next step starts from.
    carried: SlotStates,
    work: BTreeMap<u64, Work>,
    /// Recent gradients, for second opinions.
    grads: VecDeque<(u64, Vec<f32>)>,
    /// A fault ended this worker's part in the view.
    stopped: bool,
}

struct Runner {
    compute: Compute,
    settings: Settings,
    events: mpsc::UnboundedSender<Event>,
    outbox: Arc<Outbox>,
    busy: Arc<Mutex<Option<Busy>>>,
    engine: Option<(ModelConfig, Box<dyn Engine>)>,
    cur: Option<Current>,
    /// The replica of an ended view and the step it is at, for a view that sends no state.
    kept: Option<(Replica, u64)>,
}

impl Runner {
    fn serve(mut self, rx: &std_mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            self.handle(msg);
            loop {
                while let Ok(m) = rx.try_recv() {
                    self.handle(m);
                }
                if !self.step() {
                    break;
                }
            }
        }
    }

    fn emit(&self, view: u64, step: u64, record: Record) {
        let depth = self.cur.as_ref().map_or(1, |c| c.view.depth);
        self.outbox
            .put(view, StepRecord { step, record }, (depth / 2).max(1));
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Model(cfg, reply) => {
                if let Some((c, e)) = &self.engine
                    && *c == cfg
                {
                    let _ = reply.send(Ok(e.describe()));
                    return;
                }
                let r = make_engine(
                    self.settings.engine,
                    &self.compute,
                    &cfg,
                    self.settings.threads,
                )
                .map(|e| {
                    let d = e.describe();
                    self.engine = Some((cfg, e));
                    d
                });
                self.cur = None;
                self.kept = None;
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Msg::View(v) => self.start_view(*v),
            Msg::Work(w) => {
                if let Some(c) = &mut self.cur
                    && w.view == c.view.id
                    && w.step() >= c.next
                {
                    c.work.insert(w.step(), *w);
                }
            }
            Msg::Upload(step) => {
                if let Some(c) = &self.cur
                    && let Some((_, g)) = c.grads.iter().find(|(s, _)| *s == step)
                {
                    self.emit(c.view.id, step, Record::Gradient(g.clone()));
                }
            }
        }
    }

    fn start_view(&mut self, mut v: ViewStart) {
        if let Some(c) = self.cur.take() {
            self.kept = Some((c.replica, c.next));
        }
        let replica = match v.view.state.take() {
            Some(r) => r,
            None => match self.kept.take() {
                Some((r, step))
                    if step == v.view.start_step && digest(&r.params) == v.view.digest =>
                {
                    r
                }
                other => {
                    let at = other.map_or_else(|| "none".into(), |(_, s)| format!("step {s}"));
                    let _ = self.events.send(Event::Resync(format!(
                        "view {} sent no parameters, and this worker's replica ({at}) is not the committed one at step {}",
                        v.view.id, v.view.start_step
                    )));
                    return;
                }
            },
        };
        let carried = v.view.states.clone();
        self.cur = Some(Current {
            next: v.view.start_step,
            exchange: v.exchange,
            replica,
            carried,
            work: BTreeMap::new(),
            grads: VecDeque::new(),
            stopped: false,
            view: v.view,
        });
    }

    fn set_busy(&self, b: Option<Busy>) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Runs the next step when its work is here; `false` when there is nothing to run.
    fn step(&mut self) -> bool {
        let Some((cfg, _)) = &self.engine else {
            return false;
        };
        let cfg = cfg.clone();
        let Some(c) = &mut self.cur else { return false };
        if c.stopped {
            return false;
        }
        let Some(mut w) = c.work.remove(&c.next) else {
            return false;
        };
        let (view, step) = (c.view.id, c.next);
        let fault = self.settings.fault.filter(|f| f.at(step));
        self.set_busy(Some(Busy {
            step,
            since: Instant::now(),
            deadline: w.deadline,
        }));
        if !self.settings.throttle.is_zero() {
            std::thread::sleep(self.settings.throttle);
        }
        if matches!(fault, Some(Fault::Hang(_))) {
            // an injected wedged device: never answers (see `--fault hang:STEP`)
            loop {
                std::thread::park();
            }
        }
        let c = self.cur.as_mut().expect("a view");
        w.data.init = c.carried.clone();
        let t0 = Instant::now();
        let out = if matches!(fault, Some(Fault::Fail(_))) {
            Err("engine: injected failure (--fault)".to_string())
        } else if c.view.simulate_ms_per_slot > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(
                c.view.simulate_ms_per_slot * w.data.slots.len() as f64 / 1e3,
            ));
            w.data
                .simulated(&cfg, &c.replica.params)
                .map_err(|e| e.to_string())
        } else {
            let (_, engine) = self.engine.as_mut().expect("a model");
            w.data
                .compute(engine.as_mut(), &cfg, &c.replica.params)
                .map_err(|e| e.to_string())
        };
        let compute_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut out: TrainOut = match out {
            Ok(o) => o,
            Err(e) => return self.stop(view, step, Record::Failure(e), true),
        };
        if matches!(fault, Some(Fault::Corrupt(_))) {
            out.grad.iter_mut().for_each(|g| *g *= 1e25);
        }
        let short = matches!(fault, Some(Fault::BadShape(_)));
        self.emit(
            view,
            step,
            Record::Computed(Computed {
                loss_sum: out.loss_sum,
                finals: out.final_state.clone(),
                grad_norm: model::trainer::l2_norm(&out.grad),
                compute_ms,
            }),
        );
        let c = self.cur.as_mut().expect("a view");
        let summed = match c.exchange.sum(step, &out.grad, short) {
            Ok(s) => s,
            Err(Missing::ViewOver) => {
                self.set_busy(None);
                return false;
            }
            Err(Missing::Fault { member, reason }) => {
                return self.stop(view, step, Record::PeerFault { member, reason }, true);
            }
        };
        let t1 = Instant::now();
        let layout = ParamLayout::new(&cfg);
        let applied = c.replica.apply(
            &c.view.update,
            &cfg,
            &layout,
            step,
            w.lr,
            w.outputs,
            &summed.grad,
        );
        let update_ms = t1.elapsed().as_secs_f64() * 1e3;
        // an update that is not finite is reported with digest 0: the coordinator's own update
        // of the same sum fails the job, unless a second opinion finds a corrupt contribution in
        // it (then the step is computed again without it); either way this replica is done
        let failed = applied.as_ref().err().map(ToString::to_string);
        let digest = applied.unwrap_or(0);
        let (n, chunks, members, me) = (
            summed.grad.len(),
            c.view.chunks,
            c.view.members.len(),
            c.view.member,
        );
        let mine = owned_chunks(chunks, members, me)
            .map(|k| {
                let v = &summed.grad[chunk_range(n, chunks, k)];
                let v = if short && !v.is_empty() {
                    &v[..v.len() - 1]
                } else {
                    v
                };
                v.to_vec()
            })
            .collect();
        if let Some(e) = failed {
            tracing::warn!(step, cause = %e, "the update of this replica is not finite; waiting for the coordinator's verdict");
            c.grads.push_back((step, out.grad));
            let record = Record::Reduced(Reduced {
                chunks: mine,
                digest,
                reduce_ms: summed.ms,
                wait_ms: summed.wait_ms,
                update_ms,
                bytes_sent: summed.sent,
                bytes_received: summed.received,
            });
            return self.stop(view, step, record, false);
        }
        c.carried = out.final_state;
        c.next += 1;
        c.grads.push_back((step, out.grad));
        while c.grads.len() > c.view.depth + 4 {
            c.grads.pop_front();
        }
        self.emit(
            view,
            step,
            Record::Reduced(Reduced {
                chunks: mine,
                digest,
                reduce_ms: summed.ms,
                wait_ms: summed.wait_ms,
                update_ms,
                bytes_sent: summed.sent,
                bytes_received: summed.received,
            }),
        );
        self.set_busy(None);
        true
    }

    /// Reports why this worker cannot go on in the view, and stops until the next one;
    /// `replica_intact` says whether the replica is still the one the step started from.
    fn stop(&mut self, view: u64, step: u64, record: Record, replica_intact: bool) -> bool {
        self.emit(view, step, record);
        if let Some(c) = &mut self.cur {
            c.stopped = true;
            if !replica_intact {
                // a new view must send the state
                c.next = u64::MAX;
            }
        }
        self.set_busy(None);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{Due, Outbox};
    use model::replica::{Computed, Record, Reduced, StepRecord};
    use model::state::SlotStates;
    use std::time::Duration;

    fn computed(step: u64) -> StepRecord {
        StepRecord {
            step,
            record: Record::Computed(Computed {
                loss_sum: 1.0,
                finals: SlotStates::zeros(1, 1, 1),
                grad_norm: 1.0,
                compute_ms: 1.0,
            }),
        }
    }

    fn reduced(step: u64) -> StepRecord {
        StepRecord {
            step,
            record: Record::Reduced(Reduced::default()),
        }
    }

    /// Whether the session would be woken now.
    async fn woken(o: &Outbox) -> bool {
        tokio::time::timeout(Duration::from_millis(20), o.ready())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn records_wake_the_session_only_when_it_has_something_to_do() {
        let o = Outbox::default();
        let delay = Duration::from_secs(60);
        assert_eq!(o.due(delay, 2), Due::Nothing);
        assert!(!woken(&o).await, "nothing waits");
        // the first record starts the wait for a batch
        o.put(7, computed(1), 2);
        assert!(woken(&o).await);
        assert!(matches!(o.due(delay, 2), Due::At(_)));
        // routine records short of a batch wake nobody
        o.put(7, reduced(1), 2);
        o.put(7, computed(2), 2);
        assert!(
            !woken(&o).await,
            "woken for a routine record short of a batch"
        );
        assert!(matches!(o.due(delay, 2), Due::At(_)));
        // half the pipeline done: due now
        o.put(7, reduced(2), 2);
        assert!(woken(&o).await);
        assert_eq!(o.due(delay, 2), Due::Now);
        let steps: Vec<u64> = o.take().iter().map(|(_, r)| r.step).collect();
        assert_eq!(steps, [1, 1, 2, 2], "every record, in order");
        assert_eq!(o.due(delay, 2), Due::Nothing);
        // after a report the next record wakes the session again
        o.put(7, computed(3), 2);
        assert!(woken(&o).await);
        // a record that is not routine is due at once and wakes the session
        o.put(
            7,
            StepRecord {
                step: 3,
                record: Record::Failure("engine".into()),
            },
            2,
        );
        assert!(woken(&o).await);
        assert_eq!(o.due(delay, 2), Due::Now);
        o.take();
        // a lone record is due once it has waited the delay
        o.put(8, computed(4), 2);
        assert!(matches!(o.due(Duration::from_millis(5), 2), Due::At(_)));
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(o.due(Duration::from_millis(5), 2), Due::Now);
    }
}
