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

/// What the compute thread tells the session.
#[derive(Debug)]
pub(crate) enum Event {
    /// A record to report for view `view`.
    Record {
        /// The view.
        view: u64,
        /// The record.
        record: StepRecord,
    },
    /// This worker cannot take part in the view it was given (its replica is not the committed
    /// one and the view sent none): it should register again and start fresh.
    Resync(String),
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
        let _ = self.events.send(Event::Record {
            view,
            record: StepRecord { step, record },
        });
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
