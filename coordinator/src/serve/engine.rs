//! The serving thread: it owns the model, the engine and the stream table, and takes requests
//! from one bounded queue (full: `Busy`, which the front ends answer with RESOURCE_EXHAUSTED or
//! HTTP 429). Requests are taken in arrival order; consecutive predictions of different streams
//! with the same number of steps run as one engine call of up to `--max-batch` slots, one slot per
//! stream, and a request for a stream already in the batch, or any other kind of request, closes
//! the batch first, so the requests of one stream apply in the order they arrived. A request whose
//! deadline has passed when its turn comes is answered `Deadline` without running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use data::series::InputLayout;
use model::config::ModelConfig;
use model::device::{make_engine, resolve};
use model::engine::Engine;
use model::export::LoadedModel;
use model::net::{self, Start};
use model::state::SlotStates;
use tokio::sync::oneshot;
use tracing::{error, info};

use super::ServeConfig;
use super::streams::{MAX_ID, Stream, Table};
use crate::error::CoordError;
use crate::report::prom;

/// What a request asks of a stream.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Run `x` (`[t, F]`) from the stream's state and keep the final state.
    Predict {
        /// Inputs, `[t, F]`.
        x: Vec<f32>,
        /// Steps in `x`.
        t: usize,
        /// Conditioning vector of a new stream.
        cond: Option<Vec<f32>>,
    },
    /// The next `horizon` steps, rolled out; the stream is left as it was.
    Forecast {
        /// Steps to roll out.
        horizon: usize,
        /// The inputs known ahead of each forecast step after the first (a series model with
        /// future covariates or calendar features), row-major, with the shape as given.
        future: Option<(Vec<f32>, Vec<usize>)>,
    },
    /// Forget the stream.
    Reset,
    /// Read the stream's state.
    GetState,
    /// Replace the stream's state; each `[layers, hidden]` with the given shapes.
    SetState {
        /// `h` values.
        h: Vec<f32>,
        /// Shape of `h` as given.
        h_shape: Vec<usize>,
        /// `c` values.
        c: Vec<f32>,
        /// Shape of `c` as given.
        c_shape: Vec<usize>,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Predict { .. } => "predict",
            Op::Forecast { .. } => "forecast",
            Op::Reset => "reset",
            Op::GetState => "get_state",
            Op::SetState { .. } => "set_state",
        }
    }
}

/// What a request gets back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// Outputs `[rows, F_out]`.
    Outputs {
        /// Values.
        y: Vec<f32>,
        /// Rows.
        rows: usize,
        /// Steps the stream has seen.
        steps: u64,
    },
    /// A stream's state, each `[layers, hidden]`.
    State {
        /// `h`.
        h: Vec<f32>,
        /// `c`.
        c: Vec<f32>,
        /// `(layers, hidden)`.
        shape: [usize; 2],
        /// Steps seen.
        steps: u64,
    },
    /// Done, nothing to return.
    Done,
}

/// Why a request was not served. The front ends map each to a status in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServeError {
    /// A malformed request: a wrong shape, a non-finite value, an invalid id.
    #[error("{0}")]
    BadInput(String),
    /// An unknown stream.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot run in the stream's current state.
    #[error("{0}")]
    Precondition(String),
    /// The queue or the stream table is full.
    #[error("{0}")]
    Busy(String),
    /// The request's deadline passed before it ran.
    #[error("{0}")]
    Deadline(String),
    /// The engine failed.
    #[error("{0}")]
    Internal(String),
}

type Reply = oneshot::Sender<Result<Answer, ServeError>>;

struct Request {
    stream: String,
    op: Op,
    deadline: Option<Instant>,
    queued: Instant,
    reply: Reply,
}

enum Msg {
    Request(Request),
    Reload(Box<LoadedModel>, oneshot::Sender<Result<(), String>>),
    Evict(Instant, oneshot::Sender<usize>),
    Save(PathBuf, oneshot::Sender<Result<usize, String>>),
}

/// The front ends' handle on the serving thread.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    tx: SyncSender<Msg>,
    streams: Arc<AtomicUsize>,
    model: Arc<RwLock<ModelConfig>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Request(_) => "Request",
            Msg::Reload(..) => "Reload",
            Msg::Evict(..) => "Evict",
            Msg::Save(..) => "Save",
        })
    }
}

impl Handle {
    /// Queues `op` on `stream` and waits for its answer (at most until `deadline`).
    pub(crate) async fn call(
        &self,
        stream: String,
        op: Op,
        deadline: Option<Instant>,
    ) -> Result<Answer, ServeError> {
        let started = Instant::now();
        let name = op.name();
        let r = self.call_inner(stream, op, deadline).await;
        prom::served(name, code(&r), started.elapsed());
        r
    }

    async fn call_inner(
        &self,
        stream: String,
        op: Op,
        deadline: Option<Instant>,
    ) -> Result<Answer, ServeError> {
        if stream.is_empty() || stream.len() > MAX_ID {
            return Err(ServeError::BadInput(format!(
                "stream_id: expected 1 to {MAX_ID} bytes, got {}",
                stream.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        let req = Request {
            stream,
            op,
            deadline,
            queued: Instant::now(),
            reply: tx,
        };
        match self.tx.try_send(Msg::Request(req)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServeError::Busy(
                    "the request queue is full (--queue); retry later".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServeError::Internal("the serving thread stopped".into()));
            }
        }
        let answer = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), rx).await.map_err(|_| {
                ServeError::Deadline("the request's deadline passed before it was answered".into())
            })?,
            None => rx.await,
        };
        answer.map_err(|_| ServeError::Internal("the serving thread stopped".into()))?
    }

    /// Streams held.
    pub(crate) fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// The model being served.
    pub(crate) fn model(&self) -> ModelConfig {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn control<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Msg + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let sender = self.tx.clone();
        // control messages wait for room rather than being refused
        let sent = tokio::task::spawn_blocking(move || sender.send(make(tx)).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            return None;
        }
        rx.await.ok()
    }

    /// Forgets streams idle longer than the TTL.
    pub(crate) async fn evict(&self, now: Instant) {
        self.control(move |tx| Msg::Evict(now, tx)).await;
    }

    /// Serves `m` from now on, keeping the streams; refused when its state shape differs.
    pub(crate) async fn reload(&self, m: LoadedModel) -> Result<(), String> {
        self.control(move |tx| Msg::Reload(Box::new(m), tx))
            .await
            .unwrap_or_else(|| Err("the serving thread stopped".into()))
    }

    /// Writes every stream to `dir`; returns how many.
    pub(crate) async fn save(&self, dir: PathBuf) -> Result<usize, CoordError> {
        self.control(move |tx| Msg::Save(dir, tx))
            .await
            .unwrap_or_else(|| Err("the serving thread stopped".into()))
            .map_err(CoordError::JobFailed)
    }
}

fn code(r: &Result<Answer, ServeError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(ServeError::BadInput(_)) => "invalid_argument",
        Err(ServeError::NotFound(_)) => "not_found",
        Err(ServeError::Precondition(_)) => "failed_precondition",
        Err(ServeError::Busy(_)) => "resource_exhausted",
        Err(ServeError::Deadline(_)) => "deadline_exceeded",
        Err(ServeError::Internal(_)) => "internal",
    }
}

/// Starts the serving thread for `m` with the streams of `table`.
pub(crate) fn start(cfg: &ServeConfig, m: LoadedModel, table: Table) -> Result<Handle, CoordError> {
    let compute = resolve(cfg.device)?;
    let engine = make_engine(cfg.engine, &compute, &m.config, cfg.threads)?;
    info!(engine = %engine.describe(), "serving engine");
    let (tx, rx) = sync_channel(cfg.queue);
    let streams = Arc::new(AtomicUsize::new(table.len()));
    let model = Arc::new(RwLock::new(m.config.clone()));
    let mut worker = Server {
        model: m,
        engine,
        table,
        streams: streams.clone(),
        shared_model: model.clone(),
        compute,
        kind: cfg.engine,
        threads: cfg.threads,
        max_batch: cfg.max_batch,
        ttl: cfg.state_ttl,
    };
    prom::streams(worker.table.len());
    std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || worker.run(rx))
        .map_err(|e| CoordError::io("starting the serving thread", e))?;
    Ok(Handle { tx, streams, model })
}

struct Server {
    model: LoadedModel,
    engine: Box<dyn Engine>,
    table: Table,
    streams: Arc<AtomicUsize>,
    shared_model: Arc<RwLock<ModelConfig>>,
    compute: model::device::Compute,
    kind: model::engine::EngineKind,
    threads: usize,
    max_batch: usize,
    ttl: Duration,
}

/// A request that is part of the batch being gathered.
struct Slot {
    req: Request,
    x: Vec<f32>,
    cond: Option<Vec<f32>>,
}

impl Server {
    fn run(&mut self, rx: Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut window = vec![first];
            while window.len() < 4 * self.max_batch {
                match rx.try_recv() {
                    Ok(m) => window.push(m),
                    Err(_) => break,
                }
            }
            let mut batch: Vec<Slot> = Vec::new();
            let mut batch_t = 0;
            for m in window {
                match m {
                    Msg::Request(req) => {
                        if let Op::Predict { x, t, cond } = req.op.clone() {
                            let fits = batch.len() < self.max_batch
                                && (batch.is_empty() || t == batch_t)
                                && !batch.iter().any(|s| s.req.stream == req.stream);
                            if !fits {
                                self.flush(&mut batch, batch_t);
                            }
                            batch_t = t;
                            batch.push(Slot { req, x, cond });
                        } else {
                            self.flush(&mut batch, batch_t);
                            self.single(req);
                        }
                    }
                    other => {
                        self.flush(&mut batch, batch_t);
                        self.control(other);
                    }
                }
            }
            self.flush(&mut batch, batch_t);
            self.streams.store(self.table.len(), Ordering::Relaxed);
            prom::streams(self.table.len());
        }
    }

    fn control(&mut self, m: Msg) {
        match m {
            Msg::Evict(now, tx) => {
                let n = self.table.evict(now, self.ttl);
                if n > 0 {
                    prom::evicted(n);
                    info!(
                        evicted = n,
                        streams = self.table.len(),
                        "idle streams evicted"
                    );
                }
                let _ = tx.send(n);
            }
            Msg::Reload(m, tx) => {
                let _ = tx.send(self.reload(*m));
            }
            Msg::Save(dir, tx) => {
                let r = self
                    .table
                    .save(&dir, &self.model.config)
                    .map_err(|e| e.to_string());
                let _ = tx.send(r);
            }
            Msg::Request(_) => unreachable!("requests are handled by the caller"),
        }
    }

    fn reload(&mut self, m: LoadedModel) -> Result<(), String> {
        let (old, new) = (&self.model.config, &m.config);
        if (old.layers, old.hidden, old.input, old.output)
            != (new.layers, new.hidden, new.input, new.output)
        {
            return Err(format!(
                "the new model has {} layers of {} units, {} inputs and {} outputs; the streams hold states of {} layers of {} units for {} inputs and {} outputs",
                new.layers,
                new.hidden,
                new.input,
                new.output,
                old.layers,
                old.hidden,
                old.input,
                old.output
            ));
        }
        if old != new {
            self.engine = make_engine(self.kind, &self.compute, new, self.threads)
                .map_err(|e| e.to_string())?;
        }
        *self.shared_model.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.model = m;
        Ok(())
    }

    fn expired(req: &Request) -> bool {
        req.deadline.is_some_and(|d| Instant::now() > d)
    }

    fn answer(req: Request, r: Result<Answer, ServeError>) {
        prom::waited(req.queued.elapsed());
        let _ = req.reply.send(r);
    }

    /// Checks a prediction's inputs and returns the stream's starting state (new streams from
    /// zero or the projection of `cond`).
    fn start_of(&self, s: &Slot, t: usize) -> Result<(Vec<f32>, Vec<f32>, u64), ServeError> {
        let m = &self.model.config;
        if t == 0 || s.x.len() != t * m.input {
            return Err(ServeError::BadInput(format!(
                "x: expected shape (t, {}) with t >= 1, got {} values for t = {t}",
                m.input,
                s.x.len()
            )));
        }
        if let Some(i) = s.x.iter().position(|v| !v.is_finite()) {
            return Err(ServeError::BadInput(format!(
                "x: expected finite values, got {} at index {i}",
                s.x[i]
            )));
        }
        if let Some(st) = self.table.get(&s.req.stream) {
            return Ok((st.h.clone(), st.c.clone(), st.steps));
        }
        if !self.table.has_room() {
            return Err(ServeError::Busy(
                "the stream table is full (--max-streams); reset idle streams or raise it".into(),
            ));
        }
        let cond = match (m.cond, &s.cond) {
            (Some(w), Some(c)) if c.len() != w => {
                return Err(ServeError::BadInput(format!(
                    "cond: expected shape ({w},), got ({},)",
                    c.len()
                )));
            }
            (None, Some(_)) => {
                return Err(ServeError::BadInput(
                    "cond: this model has no learned initial-state projection; send no cond".into(),
                ));
            }
            (_, c) => c.as_deref(),
        };
        let init = net::initial_states(m, &self.model.params, 1, Start::Reset { cond })
            .map_err(|e| ServeError::BadInput(e.to_string()))?;
        Ok((init.h().to_vec(), init.c().to_vec(), 0))
    }

    /// Runs the gathered predictions as one engine call.
    fn flush(&mut self, batch: &mut Vec<Slot>, t: usize) {
        if batch.is_empty() {
            return;
        }
        let m = self.model.config.clone();
        let (l, hd) = (m.layers, m.hidden);
        let mut ready = Vec::with_capacity(batch.len());
        for s in batch.drain(..) {
            if Self::expired(&s.req) {
                Self::answer(
                    s.req,
                    Err(ServeError::Deadline(
                        "the request's deadline passed before its turn".into(),
                    )),
                );
                continue;
            }
            match self.start_of(&s, t) {
                Ok(start) => ready.push((s, start)),
                Err(e) => Self::answer(s.req, Err(e)),
            }
        }
        if ready.is_empty() {
            return;
        }
        let n = ready.len();
        prom::batch(n);
        let mut x = Vec::with_capacity(n * t * m.input);
        let mut init = SlotStates::zeros(l, n, hd);
        {
            let (h, c) = init.hc_mut();
            for (i, (s, (h0, c0, _))) in ready.iter().enumerate() {
                x.extend_from_slice(&s.x);
                for k in 0..l {
                    let dst = (k * n + i) * hd;
                    h[dst..dst + hd].copy_from_slice(&h0[k * hd..(k + 1) * hd]);
                    c[dst..dst + hd].copy_from_slice(&c0[k * hd..(k + 1) * hd]);
                }
            }
        }
        let out = self.engine.forward(&self.model.params, &x, n, t, &init);
        let (y, fin) = match out {
            Ok(v) => v,
            Err(e) => {
                error!(cause = %e, "the engine failed on a batch");
                for (s, _) in ready {
                    Self::answer(s.req, Err(ServeError::Internal(e.to_string())));
                }
                return;
            }
        };
        let fo = m.output;
        let now = Instant::now();
        for (i, (s, (_, _, steps))) in ready.into_iter().enumerate() {
            let mut h = Vec::with_capacity(l * hd);
            let mut c = Vec::with_capacity(l * hd);
            for k in 0..l {
                h.extend_from_slice(&fin.layer_h(k)[i * hd..(i + 1) * hd]);
                c.extend_from_slice(&fin.layer_c(k)[i * hd..(i + 1) * hd]);
            }
            let rows = &y[i * t * fo..(i + 1) * t * fo];
            let steps = steps + t as u64;
            self.table.put(
                &s.req.stream,
                Stream {
                    h,
                    c,
                    last_y: Some(rows[(t - 1) * fo..].to_vec()),
                    last_x: Some(s.x[(t - 1) * m.input..].to_vec()),
                    steps,
                    used: now,
                },
            );
            Self::answer(
                s.req,
                Ok(Answer::Outputs {
                    y: rows.to_vec(),
                    rows: t,
                    steps,
                }),
            );
        }
    }

    /// A request that does not join a batch.
    fn single(&mut self, req: Request) {
        if Self::expired(&req) {
            return Self::answer(
                req,
                Err(ServeError::Deadline(
                    "the request's deadline passed before its turn".into(),
                )),
            );
        }
        let r = match &req.op {
            Op::Reset => {
                self.table.remove(&req.stream);
                Ok(Answer::Done)
            }
            Op::GetState => self.get_state(&req.stream),
            Op::SetState {
                h,
                h_shape,
                c,
                c_shape,
            } => self.set_state(&req.stream, (h, h_shape), (c, c_shape)),
            Op::Forecast { horizon, future } => {
                self.forecast(&req.stream, *horizon, future.as_ref())
            }
            Op::Predict { .. } => unreachable!("predictions are batched"),
        };
        Self::answer(req, r);
    }

    fn unknown(id: &str) -> ServeError {
        ServeError::NotFound(format!(
            "unknown stream `{id}`: it has seen no step (or was reset or evicted)"
        ))
    }

    fn get_state(&mut self, id: &str) -> Result<Answer, ServeError> {
        let m = &self.model.config;
        let s = self.table.get(id).ok_or_else(|| Self::unknown(id))?;
        Ok(Answer::State {
            h: s.h.clone(),
            c: s.c.clone(),
            shape: [m.layers, m.hidden],
            steps: s.steps,
        })
    }

    fn set_state(
        &mut self,
        id: &str,
        h: (&Vec<f32>, &Vec<usize>),
        c: (&Vec<f32>, &Vec<usize>),
    ) -> Result<Answer, ServeError> {
        let m = &self.model.config;
        let (l, hd) = (m.layers, m.hidden);
        let mut states = SlotStates::zeros(l, 1, hd);
        for (which, (values, shape)) in [('h', h), ('c', c)] {
            // per layer, so a wrong width reads like the seed's bug: `layer 0 h: expected (8,), got (2,)`
            let (layers, width) = match shape.as_slice() {
                [a, b] => (*a, *b),
                _ => {
                    return Err(ServeError::BadInput(format!(
                        "{which}: expected shape ({l}, {hd}), got {}",
                        model::error::fmt_shape(shape)
                    )));
                }
            };
            if layers != l {
                return Err(ServeError::BadInput(format!(
                    "{which}: expected ({l}, {hd}) (one row per layer), got {}",
                    model::error::fmt_shape(shape)
                )));
            }
            if values.len() != layers * width {
                return Err(ServeError::BadInput(format!(
                    "{which}: shape {} needs {} values, got {}",
                    model::error::fmt_shape(shape),
                    layers * width,
                    values.len()
                )));
            }
            if width != hd {
                return Err(ServeError::BadInput(format!(
                    "layer 0 {which}: expected ({hd},), got ({width},)"
                )));
            }
            for k in 0..l {
                let row = &values[k * hd..(k + 1) * hd];
                let r = if which == 'h' {
                    states.set_h(k, row, [1, hd])
                } else {
                    states.set_c(k, row, [1, hd])
                };
                r.map_err(|e| ServeError::BadInput(e.to_string()))?;
            }
        }
        if self.table.get(id).is_none() && !self.table.has_room() {
            return Err(ServeError::Busy(
                "the stream table is full (--max-streams)".into(),
            ));
        }
        let steps = self.table.get(id).map_or(0, |s| s.steps);
        self.table.put(
            id,
            Stream {
                h: states.h().to_vec(),
                c: states.c().to_vec(),
                last_y: None,
                last_x: None,
                steps,
                used: Instant::now(),
            },
        );
        Ok(Answer::Done)
    }

    /// The layout of a series model's inputs, from its checkpoint (`None` for other models).
    fn layout(&self) -> Option<InputLayout> {
        self.model
            .checkpoint
            .as_ref()
            .and_then(|c| c.spec.series.as_ref())
            .map(InputLayout::of)
            .filter(|l| l.width() == self.model.config.input)
    }

    fn forecast(
        &mut self,
        id: &str,
        horizon: usize,
        future: Option<&(Vec<f32>, Vec<usize>)>,
    ) -> Result<Answer, ServeError> {
        let m = self.model.config.clone();
        if horizon == 0 || horizon > 100_000 {
            return Err(ServeError::BadInput(format!(
                "horizon: expected 1 to 100000 steps, got {horizon}"
            )));
        }
        // a series model feeds its predictions back into its input columns and takes the rest of
        // a step's inputs from the request (known ahead) and the stream's last step (held)
        let layout = self.layout().unwrap_or(InputLayout {
            inputs: m.input,
            past: 0,
            future: 0,
            calendar: 0,
            flags: false,
        });
        // a quantile model feeds back each target's middle level, its levels sorted first
        let spec = self.model.checkpoint.as_ref().map(|c| &c.spec);
        let per = spec.map_or(1, |s| s.outputs_per_target());
        let mid = spec
            .and_then(|s| model::engine::Quantiles::new(&s.quantiles).ok())
            .map_or(0, |q| q.middle());
        if layout.inputs * per != m.output {
            return Err(ServeError::Precondition(format!(
                "a forecast feeds each prediction back as the next input, so the model's targets ({}) must be its input columns ({})",
                m.output / per,
                layout.inputs
            )));
        }
        let sorted = |y: &mut [f32]| {
            for levels in y.chunks_mut(per) {
                levels.sort_by(f32::total_cmp);
            }
        };
        let middle = |y: &[f32]| -> Vec<f32> { y.chunks(per).map(|l| l[mid]).collect() };
        let a = layout.ahead();
        let ahead: Vec<f32> = match future {
            None if a == 0 || horizon == 1 => Vec::new(),
            None => {
                return Err(ServeError::BadInput(format!(
                    "future: this model takes {a} inputs known ahead at every step ({} future covariates, then sin and cos of {} calendar features); expected them for the {} forecast steps after the first, shape ({}, {a})",
                    layout.future,
                    layout.calendar,
                    horizon - 1,
                    horizon - 1
                )));
            }
            Some((v, shape)) => {
                let want = [horizon - 1, a];
                if a == 0 && !v.is_empty() {
                    return Err(ServeError::BadInput(
                        "future: this model takes no inputs known ahead; send none".into(),
                    ));
                }
                if shape.as_slice() != want || v.len() != want[0] * want[1] {
                    return Err(ServeError::BadInput(format!(
                        "future: expected shape ({}, {a}) (the {} forecast steps after the first, each with the model's inputs known ahead), got {shape:?}",
                        want[0], want[0]
                    )));
                }
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(ServeError::BadInput(format!(
                        "future: expected finite values, got {} at index {i}",
                        v[i]
                    )));
                }
                v.clone()
            }
        };
        let s = self.table.get(id).ok_or_else(|| Self::unknown(id))?.clone();
        let Some(first) = s.last_y.clone() else {
            return Err(ServeError::Precondition(format!(
                "stream `{id}` has no prediction to continue from (its state was set, not computed); send at least one step first"
            )));
        };
        let last = match (&s.last_x, layout.past) {
            (Some(x), _) => x.clone(),
            (None, 0) => vec![0.0; m.input],
            (None, _) => {
                return Err(ServeError::Precondition(format!(
                    "stream `{id}` has no last step to hold its past covariates from (a stream restored from an older state file); send at least one step first"
                )));
            }
        };
        let (l, hd) = (m.layers, m.hidden);
        let mut state = SlotStates::from_flat(l, 1, hd, s.h.clone(), s.c.clone())
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let mut y = first;
        sorted(&mut y);
        let mut out = y.clone();
        let mut x = Vec::with_capacity(m.input);
        for k in 1..horizon {
            x.clear();
            layout.roll_out_step(&middle(&y), &last, &ahead[(k - 1) * a..k * a], &mut x);
            let (mut next, fin) = self
                .engine
                .forward(&self.model.params, &x, 1, 1, &state)
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            sorted(&mut next);
            out.extend_from_slice(&next);
            y = next;
            state = fin;
        }
        if let Some(st) = self.table.get(id).cloned() {
            self.table.put(
                id,
                Stream {
                    used: Instant::now(),
                    ..st
                },
            );
        }
        Ok(Answer::Outputs {
            y: out,
            rows: horizon,
            steps: s.steps,
        })
    }
}
