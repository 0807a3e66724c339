//! The training state machine shared by the in-process reference trainer and the coordinator:
//! authoritative parameters, Adam state, the step cursor and the committed `(h, c)` of every slot.
//!
//! A step is planned ([`Trainer::plan`]), its slots are cut into shards ([`Trainer::shard`]) that
//! any engine anywhere computes, and the summed results are committed once ([`Trainer::commit`]).
//! [`Trainer::step_local`] does all three in this process: it is the single-process ground
//! truth every distributed run is compared with.

use std::ops::Range;
use std::sync::Arc;

use crate::adam::AdamState;
use crate::checkpoint::Checkpoint;
use crate::config::{Compat, ModelConfig, TrainSpec, ValState};
use crate::dropout::DropoutKey;
use crate::engine::{Batch, Engine, Loss};
use crate::error::{ModelError, check_finite};
use crate::net::{self, Start};
use crate::params::{ParamLayout, init_params};
use crate::state::SlotStates;
use crate::stream::{Cursor, Streams, total_steps};
use data::series::SeriesData;
use data::series::schedule::{EpochPlan, SlotWork, epoch_order};
use data::windows::{Dataset, Split};

/// What a trainer trains on.
#[derive(Debug, Clone)]
pub enum Data {
    /// Equal windows in the Keras stateful layout (`.npz` or synthetic).
    Windows(Arc<Dataset>),
    /// Many series of any length, scheduled over the slots.
    Series(Arc<SeriesData>),
}

impl From<Arc<Dataset>> for Data {
    fn from(d: Arc<Dataset>) -> Self {
        Self::Windows(d)
    }
}

impl From<Arc<SeriesData>> for Data {
    fn from(d: Arc<SeriesData>) -> Self {
        Self::Series(d)
    }
}

impl Data {
    /// Where it came from.
    pub fn name(&self) -> &str {
        match self {
            Self::Windows(d) => &d.name,
            Self::Series(d) => &d.name,
        }
    }

    /// A digest of the data.
    pub fn fingerprint(&self) -> String {
        match self {
            Self::Windows(d) => d.fingerprint(),
            Self::Series(d) => d.fingerprint(),
        }
    }

    /// Input features.
    pub fn input_features(&self) -> usize {
        match self {
            Self::Windows(d) => d.input_features(),
            Self::Series(d) => d.fi,
        }
    }

    /// Target features.
    pub fn output_features(&self) -> usize {
        match self {
            Self::Windows(d) => d.output_features(),
            Self::Series(d) => d.fo,
        }
    }

    /// Width of the conditioning vectors, if any.
    pub fn cond_width(&self) -> Option<usize> {
        match self {
            Self::Windows(d) => d.cond_width(),
            Self::Series(_) => None,
        }
    }

    /// The series, when the data is series.
    pub fn series(&self) -> Option<&Arc<SeriesData>> {
        match self {
            Self::Series(d) => Some(d),
            Self::Windows(_) => None,
        }
    }
}

/// How steps are laid out over the slots.
#[derive(Debug, Clone)]
enum Schedule {
    /// Sequence `step * B + slot`.
    Windows(Streams),
    /// The epoch's series schedule.
    Series {
        /// Chunks in each series' training part.
        chunks: Vec<u64>,
        /// The plan of the cursor's epoch.
        plan: Arc<EpochPlan>,
        /// Its epoch.
        epoch: u64,
    },
}

/// What the next step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Epoch, step in epoch and global step id.
    pub cursor: Cursor,
    /// Whether the slots start from a reset rather than their carried state.
    pub reset: bool,
    /// Dropout masks of the step (`None` when dropout is 0).
    pub dropout: Option<DropoutKey>,
}

/// A step planned ahead of the commits before it ([`Trainer::plan_after`]).
#[derive(Debug, Clone)]
pub struct Ahead {
    /// Its position, reset and dropout key.
    pub plan: StepPlan,
    /// Steps in its epoch.
    pub steps_in_epoch: u64,
    /// Its learning rate (after warm-up and schedule).
    pub lr: f64,
    /// Its valid outputs: the divisor that turns the summed loss and gradient into the mean.
    pub outputs: usize,
    /// Series data: its epoch and that epoch's schedule.
    series: Option<(u64, Arc<EpochPlan>)>,
}

/// Everything needed to compute one shard of a step, anywhere.
#[derive(Debug, Clone)]
pub struct ShardData {
    /// Global slot ids.
    pub slots: Vec<u64>,
    /// Time steps.
    pub t: usize,
    /// Inputs `[n, t, F]`.
    pub x: Vec<f32>,
    /// Targets `[n, t, F_out]`.
    pub y: Vec<f32>,
    /// Conditioning vectors `[n, C]` (only at a reset with a projection configured).
    pub cond: Option<Vec<f32>>,
    /// Committed `(h, c)` of the slots (zeros at a reset).
    pub init: SlotStates,
    /// Whether the step starts from a reset.
    pub reset: bool,
    /// Dropout key of the step.
    pub dropout: Option<DropoutKey>,
    /// Valid steps of each slot (`None`: all `t`); the rest is padding.
    pub valid: Option<Vec<u32>>,
    /// Slots that start a new series: their initial state is zero whatever `init` holds.
    pub resets: Option<Vec<bool>>,
    /// Whether each target was observed (`[n, t, F_out]`; `None`: every one was): unobserved
    /// targets (missing values) add nothing to the loss or the gradients.
    pub observed: Option<Vec<bool>>,
    /// The loss per output.
    pub loss: Loss,
}

impl ShardData {
    /// The `(h, c)` the shard's slots start from: the reset state (zero, or the projection of
    /// the conditioning vectors) at a reset, zero for slots that start a new series, else `init`.
    pub fn initial_states(
        &self,
        model: &ModelConfig,
        params: &[f32],
    ) -> Result<SlotStates, ModelError> {
        if self.reset {
            return net::initial_states(
                model,
                params,
                self.slots.len(),
                Start::Reset {
                    cond: self.cond.as_deref(),
                },
            );
        }
        Ok(
            match self.resets.as_ref().filter(|r| r.iter().any(|&b| b)) {
                Some(r) => zero_rows(&self.init, r),
                None => self.init.clone(),
            },
        )
    }

    /// What a simulated computation of the shard returns (a benchmark aid that keeps everything
    /// but the compute real): no loss, a zero gradient, and final states equal to the initial
    /// ones, which pass every bound a real result must.
    pub fn simulated(
        &self,
        model: &ModelConfig,
        params: &[f32],
    ) -> Result<crate::engine::TrainOut, ModelError> {
        Ok(crate::engine::TrainOut {
            loss_sum: 0.0,
            grad: vec![0.0; params.len()],
            final_state: self.initial_states(model, params)?,
            init_grad: None,
        })
    }

    /// Computes the shard on `engine`: `(loss_sum, gradient of loss_sum, final states)`.
    pub fn compute(
        &self,
        engine: &mut dyn Engine,
        model: &ModelConfig,
        params: &[f32],
    ) -> Result<crate::engine::TrainOut, ModelError> {
        let batch = Batch {
            n: self.slots.len(),
            t: self.t,
            x: &self.x,
            y: &self.y,
            slots: &self.slots,
            dropout: self.dropout,
            valid: self.valid.as_deref(),
            observed: self.observed.as_deref(),
            loss: self.loss,
        };
        let reset_rows;
        let start = if self.reset {
            Start::Reset {
                cond: self.cond.as_deref(),
            }
        } else if let Some(r) = self.resets.as_ref().filter(|r| r.iter().any(|&b| b)) {
            reset_rows = zero_rows(&self.init, r);
            Start::Carry(&reset_rows)
        } else {
            Start::Carry(&self.init)
        };
        net::train_step(engine, model, params, &batch, start)
    }
}

/// A computed shard, as handed in for a step.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Global step id.
    pub step: u64,
    /// Shard index within the step.
    pub shard: u32,
    /// Sum of squared errors over the shard's outputs.
    pub loss_sum: f64,
    /// Gradient of `loss_sum` in the flat parameter layout.
    pub grad: Vec<f32>,
    /// Final `(h, c)` of the shard's slots.
    pub finals: SlotStates,
    /// Time the worker spent computing.
    pub compute_ms: f64,
}

/// The result of committing a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    /// The step that was committed.
    pub cursor: Cursor,
    /// Mean squared error of the step.
    pub loss: f64,
    /// Whether it was the last step of its epoch.
    pub epoch_end: bool,
    /// Whether it was the last step of the run.
    pub done: bool,
}

/// The training state machine.
#[derive(Debug, Clone)]
pub struct Trainer {
    spec: TrainSpec,
    data: Data,
    schedule: Schedule,
    layout: ParamLayout,
    params: Vec<f32>,
    adam: AdamState,
    cursor: Cursor,
    states: SlotStates,
    total: u64,
    /// The data's fingerprint, computed once (hashing the data at every checkpoint would stall
    /// the step that takes it).
    fingerprint: String,
    /// The states were set explicitly ([`Trainer::set_states`]) and no step has run since: the
    /// next step starts from them even where the reset policy would reset.
    explicit_states: bool,
    /// Buffers a commit computes its update in, kept for the next one.
    aside: Aside,
}

/// Reusable buffers for [`Trainer::commit`]; a copy of a trainer starts without them.
#[derive(Default)]
struct Aside(Option<(Vec<f32>, AdamState)>);

impl Clone for Aside {
    fn clone(&self) -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for Aside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aside")
    }
}

impl Trainer {
    /// A fresh run of `spec` on `data`, parameters initialized from the seed.
    pub fn new(spec: TrainSpec, data: impl Into<Data>) -> Result<Self, ModelError> {
        let data = data.into();
        let fingerprint = data.fingerprint();
        Self::with_fingerprint(spec, data, fingerprint)
    }

    fn with_fingerprint(
        spec: TrainSpec,
        data: Data,
        fingerprint: String,
    ) -> Result<Self, ModelError> {
        check_spec_fits_data(&spec, &data)?;
        let params = init_params(&spec.model, spec.seed);
        let layout = ParamLayout::new(&spec.model);
        let (schedule, total) = match &data {
            Data::Windows(d) => {
                let streams = Streams::new(d.train.x.n, spec.batch_size, &d.name)?;
                let total = total_steps(&streams, spec.epochs, spec.max_steps);
                (Schedule::Windows(streams), total)
            }
            Data::Series(d) => {
                let t = series_timesteps(&spec);
                let chunks = d.chunks(t);
                let mut total = 0u64;
                for e in 0..spec.epochs {
                    total += series_plan(&spec, d, &chunks, e).steps;
                    if spec.max_steps.is_some_and(|m| total >= m) {
                        break;
                    }
                }
                let total = spec.max_steps.map_or(total, |m| m.min(total));
                let plan = Arc::new(series_plan(&spec, d, &chunks, 0));
                (
                    Schedule::Series {
                        chunks,
                        plan,
                        epoch: 0,
                    },
                    total,
                )
            }
        };
        let states = SlotStates::zeros(spec.model.layers, spec.batch_size, spec.model.hidden);
        Ok(Self {
            fingerprint,
            adam: AdamState::new(layout.len()),
            spec,
            data,
            schedule,
            layout,
            params,
            cursor: Cursor::default(),
            states,
            total,
            explicit_states: false,
            aside: Aside::default(),
        })
    }

    /// Continues the run saved in `ck`; refused when `data` is not the data it was trained on.
    pub fn resume(ck: Checkpoint, data: impl Into<Data>) -> Result<Self, ModelError> {
        let data = data.into();
        let fp = data.fingerprint();
        if fp != ck.fingerprint {
            return Err(ModelError::Checkpoint {
                path: ck.path.clone(),
                msg: format!(
                    "the checkpoint was trained on other data (fingerprint {}, from {}); the given data `{}` has fingerprint {fp}",
                    ck.fingerprint,
                    ck.data_name,
                    data.name()
                ),
            });
        }
        let mut t = Self::with_fingerprint(ck.spec.clone(), data, fp)?;
        if ck.params.len() != t.layout.len() {
            return Err(ModelError::Checkpoint {
                path: ck.path,
                msg: format!(
                    "expected {} parameters, got {}",
                    t.layout.len(),
                    ck.params.len()
                ),
            });
        }
        t.params = ck.params;
        t.adam = ck.adam;
        t.cursor = ck.cursor;
        t.refresh_epoch_plan();
        t.states = ck.states;
        t.explicit_states = ck.explicit_states;
        Ok(t)
    }

    /// The run's settings.
    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    /// The data.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Time steps per chunk.
    pub fn timesteps(&self) -> usize {
        match &self.data {
            Data::Windows(d) => d.timesteps(),
            Data::Series(_) => series_timesteps(&self.spec),
        }
    }

    /// Steps in the cursor's epoch.
    pub fn steps_in_epoch(&self) -> u64 {
        match &self.schedule {
            Schedule::Windows(s) => s.steps_per_epoch,
            Schedule::Series { plan, .. } => plan.steps,
        }
    }

    /// What slot `slot` holds in the step `plan`, for messages: `sequence N`, or the series id
    /// and chunk.
    pub fn slot_label(&self, plan: &StepPlan, slot: usize) -> String {
        self.slot_label_of(&self.at_cursor_epoch(plan), slot)
    }

    /// What slot `slot` holds in the step `a` (planned ahead), for messages.
    pub fn slot_label_of(&self, a: &Ahead, slot: usize) -> String {
        match (&self.schedule, &a.series, &self.data) {
            (Schedule::Windows(s), _, _) => {
                format!("sequence {}", s.sequence(a.plan.cursor.step, slot))
            }
            (_, Some((_, p)), Data::Series(d)) => match p.at(a.plan.cursor.step, slot) {
                SlotWork::Chunk { series, chunk } => {
                    format!("series `{}` chunk {chunk}", d.ids[series])
                }
                SlotWork::Idle => "idle".into(),
            },
            _ => unreachable!("series layout with series data"),
        }
    }

    /// What every slot does in the step `plan` (series data), for tests and logs.
    pub fn slot_work(&self, plan: &StepPlan) -> Option<Vec<SlotWork>> {
        match &self.schedule {
            Schedule::Series { plan: p, .. } => Some(
                (0..self.spec.batch_size)
                    .map(|s| p.at(plan.cursor.step, s))
                    .collect(),
            ),
            Schedule::Windows(_) => None,
        }
    }

    fn refresh_epoch_plan(&mut self) {
        if let (
            Schedule::Series {
                chunks,
                plan,
                epoch,
            },
            Data::Series(d),
        ) = (&mut self.schedule, &self.data)
            && *epoch != self.cursor.epoch
        {
            *plan = Arc::new(series_plan(&self.spec, d, chunks, self.cursor.epoch));
            *epoch = self.cursor.epoch;
        }
    }

    /// Current parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// How a summed gradient becomes this run's update, for replicas of the parameters.
    pub fn update_rule(&self) -> UpdateRule {
        UpdateRule {
            adam: self.spec.adam,
            compat: self.spec.compat,
            clip_norm: self.spec.clip_norm,
        }
    }

    /// Adam's state.
    pub fn adam(&self) -> &AdamState {
        &self.adam
    }

    /// The next step's position.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Committed `(h, c)` of all `B` slots.
    pub fn states(&self) -> &SlotStates {
        &self.states
    }

    /// Starts from the given weights (`--init-from`) with a fresh optimizer. Under
    /// [`Compat::Keras`] each layer's `bias_hh` is folded into its `bias_ih` (Keras has one bias).
    /// The weights must have this run's layout.
    pub fn set_params(&mut self, mut params: Vec<f32>) -> Result<(), ModelError> {
        self.layout.check_len(&params)?;
        check_finite("parameters", &params)?;
        if self.spec.compat == Compat::Keras {
            let h4 = 4 * self.spec.model.hidden;
            for k in 0..self.spec.model.layers {
                let l = self.layout.layer(k);
                for i in 0..h4 {
                    params[l.b_ih + i] += params[l.b_hh + i];
                    params[l.b_hh + i] = 0.0;
                }
            }
        }
        self.params = params;
        self.adam = AdamState::new(self.layout.len());
        Ok(())
    }

    /// Replaces the `(h, c)` of all slots (explicit state, the Keras `set_value` of the seed);
    /// the next step starts from them even where the reset policy would reset. A wrong shape is
    /// an error naming the expected and the given shape.
    pub fn set_states(&mut self, states: SlotStates) -> Result<(), ModelError> {
        let want = [
            self.spec.model.layers,
            self.spec.batch_size,
            self.spec.model.hidden,
        ];
        let got = [states.layers(), states.slots(), states.hidden()];
        if want != got {
            return Err(ModelError::shape("states", &want, &got));
        }
        self.states = states;
        self.explicit_states = true;
        Ok(())
    }

    /// Total steps of the run.
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// Whether every step has been committed.
    pub fn is_done(&self) -> bool {
        self.cursor.global >= self.total
    }

    /// Valid outputs of the step `plan`: the divisor that turns sums into the batch mean.
    pub fn outputs_in(&self, plan: &StepPlan) -> usize {
        self.at_cursor_epoch(plan).outputs
    }

    /// Valid outputs of the step `a`: outputs of valid steps whose target was observed (one per
    /// quantile level of a quantile model).
    fn outputs_of(&self, a: &Ahead) -> usize {
        let fo = self.data.output_features();
        match (&a.series, &self.data) {
            (None, _) => self.spec.batch_size * self.timesteps() * fo,
            (Some((_, p)), Data::Series(d)) => {
                let t = self.timesteps();
                let observed: usize = (0..self.spec.batch_size)
                    .map(|s| match p.at(a.plan.cursor.step, s) {
                        w @ SlotWork::Chunk { series, chunk } => {
                            d.observed_in(series, chunk * t..chunk * t + chunk_valid(d, &w, t))
                        }
                        SlotWork::Idle => 0,
                    })
                    .sum();
                // a step whose every target is missing has a zero gradient; its divisor stays 1
                (observed * self.spec.outputs_per_target()).max(1)
            }
            _ => unreachable!("series plans with series data"),
        }
    }

    /// `plan` with the schedule of the cursor's epoch.
    fn at_cursor_epoch(&self, plan: &StepPlan) -> Ahead {
        let mut a = Ahead {
            plan: *plan,
            steps_in_epoch: self.steps_in_epoch(),
            lr: self
                .spec
                .lr_at(plan.cursor.global, plan.cursor.epoch, self.total),
            outputs: 0,
            series: match &self.schedule {
                Schedule::Series { plan, epoch, .. } => Some((*epoch, plan.clone())),
                Schedule::Windows(_) => None,
            },
        };
        a.outputs = self.outputs_of(&a);
        a
    }

    /// The next step, or `None` when the run is complete.
    pub fn plan(&self) -> Option<StepPlan> {
        self.plan_after(None).map(|a| a.plan)
    }

    /// The step after `prev` (the next step to commit when `None`), planned ahead of the commits
    /// before it: everything its shards need that does not depend on the parameters or on the
    /// states the step starts from. `None` past the end of the run. The coordinator hands out a
    /// few steps ahead this way, so that workers never wait for their next step's data.
    pub fn plan_after(&self, prev: Option<&Ahead>) -> Option<Ahead> {
        let c = match prev {
            None => self.cursor,
            Some(p) => p.plan.cursor.next(p.steps_in_epoch),
        };
        if c.global >= self.total {
            return None;
        }
        let series = match (&self.schedule, &self.data) {
            (Schedule::Windows(_), _) => None,
            (
                Schedule::Series {
                    plan,
                    epoch,
                    chunks,
                },
                Data::Series(d),
            ) => Some(match prev.and_then(|p| p.series.clone()) {
                Some(p) if p.0 == c.epoch => p,
                _ if *epoch == c.epoch => (c.epoch, plan.clone()),
                _ => (
                    c.epoch,
                    Arc::new(series_plan(&self.spec, d, chunks, c.epoch)),
                ),
            }),
            _ => unreachable!("the layout follows the data"),
        };
        let steps_in_epoch = match (&self.schedule, &series) {
            (Schedule::Windows(s), _) => s.steps_per_epoch,
            (_, Some((_, p))) => p.steps,
            _ => unreachable!("series layout with a series plan"),
        };
        let dropout = (self.spec.model.dropout > 0.0).then_some(DropoutKey {
            seed: self.spec.seed,
            epoch: c.epoch,
            step: c.step,
        });
        let explicit = self.explicit_states && c == self.cursor;
        let plan = StepPlan {
            cursor: c,
            // series reset slot by slot, at their boundaries ([`ShardData::resets`])
            reset: matches!(self.schedule, Schedule::Windows(_))
                && self.spec.reset.resets_at(c.step)
                && !explicit,
            dropout,
        };
        let mut a = Ahead {
            plan,
            steps_in_epoch,
            lr: self.spec.lr_at(c.global, c.epoch, self.total),
            outputs: 0,
            series,
        };
        a.outputs = self.outputs_of(&a);
        Some(a)
    }

    /// The data and initial states of `slots` for the next step.
    pub fn shard(&self, plan: &StepPlan, slots: Range<usize>) -> ShardData {
        self.shard_of(&self.at_cursor_epoch(plan), slots)
    }

    /// The data of `slots` in the step `a` (planned with [`Trainer::plan_after`]); their initial
    /// states are the committed ones when `a` is the next step to commit, else zero (whoever
    /// computes a later step starts it from the states its previous step ended with).
    pub fn shard_of(&self, a: &Ahead, slots: Range<usize>) -> ShardData {
        self.shard_parts(a, slots, true)
    }

    /// The states `slots` start step `a` from (see [`ShardData::initial_states`]), without
    /// gathering the step's data.
    pub fn start_states_of(
        &self,
        a: &Ahead,
        slots: Range<usize>,
    ) -> Result<SlotStates, ModelError> {
        self.shard_parts(a, slots, false)
            .initial_states(&self.spec.model, &self.params)
    }

    /// [`Trainer::shard_of`], with the inputs and targets left empty unless `with_data`.
    fn shard_parts(&self, a: &Ahead, slots: Range<usize>, with_data: bool) -> ShardData {
        let plan = &a.plan;
        let loss = self.spec.loss_fn();
        let slot_list: Vec<usize> = slots.clone().collect();
        let m = &self.spec.model;
        let init = if plan.cursor == self.cursor && !plan.reset {
            self.states.gather(&slot_list)
        } else {
            SlotStates::zeros(m.layers, slot_list.len(), m.hidden)
        };
        match (&self.schedule, &self.data) {
            (Schedule::Windows(streams), Data::Windows(d)) => {
                let seqs: Vec<usize> = slots
                    .clone()
                    .map(|s| streams.sequence(plan.cursor.step, s))
                    .collect();
                let mut shard = gather_shard(&d.train, &seqs, &slot_list, plan, init, with_data);
                shard.loss = loss;
                shard
            }
            (Schedule::Series { .. }, Data::Series(d)) => {
                let p = &a
                    .series
                    .as_ref()
                    .expect("series steps carry their epoch plan")
                    .1;
                let t = self.timesteps();
                let works: Vec<SlotWork> =
                    slots.clone().map(|s| p.at(plan.cursor.step, s)).collect();
                let (mut x, mut y) = (Vec::new(), Vec::new());
                let mut observed = Vec::new();
                let masked = with_data && d.observed.is_some();
                let mut valid = Vec::with_capacity(works.len());
                for w in &works {
                    let len = chunk_valid(d, w, t);
                    if with_data {
                        if let SlotWork::Chunk { series, chunk } = *w {
                            let a = chunk * t;
                            x.extend_from_slice(&d.x_of(series)[a * d.fi..(a + len) * d.fi]);
                            y.extend_from_slice(&d.y_of(series)[a * d.fo..(a + len) * d.fo]);
                            if let Some(o) = d.observed_of(series) {
                                observed.extend_from_slice(&o[a * d.fo..(a + len) * d.fo]);
                            }
                        }
                        x.resize(x.len() + (t - len) * d.fi, 0.0);
                        y.resize(y.len() + (t - len) * d.fo, 0.0);
                        if masked {
                            observed.resize(y.len(), false);
                        }
                    }
                    valid.push(len as u32);
                }
                // a quantile model has one output per level of each target: each target is
                // repeated once per level
                let per = self.spec.outputs_per_target();
                if per > 1 {
                    y = y
                        .iter()
                        .flat_map(|&v| std::iter::repeat_n(v, per))
                        .collect();
                    observed = observed
                        .iter()
                        .flat_map(|&v| std::iter::repeat_n(v, per))
                        .collect();
                }
                ShardData {
                    slots: slot_list.iter().map(|&s| s as u64).collect(),
                    t,
                    x,
                    y,
                    cond: None,
                    init,
                    reset: false,
                    dropout: plan.dropout,
                    valid: Some(valid),
                    resets: Some(works.iter().map(SlotWork::resets).collect()),
                    observed: masked.then_some(observed),
                    loss,
                }
            }
            _ => unreachable!("the layout follows the data"),
        }
    }

    /// Applies the summed gradient of a step, stores the final states of every slot, advances.
    ///
    /// `finals` must cover every slot exactly once (the caller's shard plan guarantees it).
    pub fn commit(
        &mut self,
        plan: &StepPlan,
        grad_sum: &[f32],
        loss_sum: f64,
        finals: &[(Range<usize>, &SlotStates)],
    ) -> Result<Committed, ModelError> {
        if plan.cursor != self.cursor {
            return Err(ModelError::Engine {
                engine: "trainer".into(),
                msg: format!(
                    "commit of step {} while the next step is {}",
                    plan.cursor.global, self.cursor.global
                ),
            });
        }
        if grad_sum.len() != self.layout.len() {
            return Err(ModelError::shape(
                "gradient",
                &[self.layout.len()],
                &[grad_sum.len()],
            ));
        }
        check_finite("gradient", grad_sum)?;
        if !loss_sum.is_finite() {
            return Err(ModelError::NonFinite {
                what: "loss".into(),
                index: 0,
                value: loss_sum as f32,
            });
        }
        let covered: usize = finals.iter().map(|(r, _)| r.len()).sum();
        if covered != self.spec.batch_size {
            return Err(ModelError::shape(
                "final states (slots)",
                &[self.spec.batch_size],
                &[covered],
            ));
        }
        let a = self.at_cursor_epoch(plan);
        // The update is computed aside and committed only when every value is finite: a step
        // that would poison the model is refused whole, and nothing non-finite is ever stored.
        // The aside buffers are the previous step's, reused.
        let (mut params, mut adam) = self
            .aside
            .0
            .take()
            .unwrap_or_else(|| (Vec::new(), AdamState::new(0)));
        params.clone_from(&self.params);
        adam.m.clone_from(&self.adam.m);
        adam.v.clone_from(&self.adam.v);
        adam.t = self.adam.t;
        self.update_rule().apply(
            &self.spec.model,
            &self.layout,
            a.lr,
            a.outputs,
            grad_sum,
            &mut params,
            &mut adam,
        );
        let step = self.cursor.global;
        let finite = check_finite(
            &format!("parameters after the update of step {step}"),
            &params,
        )
        .and_then(|()| check_finite(&format!("Adam first moments after step {step}"), &adam.m))
        .and_then(|()| check_finite(&format!("Adam second moments after step {step}"), &adam.v));
        if let Err(e) = finite {
            self.aside.0 = Some((params, adam));
            return Err(e);
        }
        let old = (
            std::mem::replace(&mut self.params, params),
            std::mem::replace(&mut self.adam, adam),
        );
        self.aside.0 = Some(old);
        self.explicit_states = false;
        for (range, st) in finals {
            let slots: Vec<usize> = range.clone().collect();
            self.states.scatter(&slots, st);
        }
        let cursor = self.cursor;
        self.cursor = cursor.next(self.steps_in_epoch());
        self.refresh_epoch_plan();
        Ok(Committed {
            cursor,
            loss: loss_sum / a.outputs as f64,
            epoch_end: self.cursor.epoch != cursor.epoch,
            done: self.is_done(),
        })
    }

    /// Computes and commits the next step in this process, the whole batch in one shard.
    pub fn step_local(&mut self, engine: &mut dyn Engine) -> Result<Option<Committed>, ModelError> {
        let Some(plan) = self.plan() else {
            return Ok(None);
        };
        let b = self.spec.batch_size;
        let shard = self.shard(&plan, 0..b);
        let out = shard.compute(engine, &self.spec.model, &self.params)?;
        self.commit(&plan, &out.grad, out.loss_sum, &[(0..b, &out.final_state)])
            .map(Some)
    }

    /// Mean loss (the run's loss per output) on the validation data; no dropout, no update.
    ///
    /// Windows are laid out as `B` streams like training and start from the final training states
    /// (or zero, per `val_state`). Series continue from their state at the end of their training
    /// part: each series is run from zero over its training steps, and its last `--val-steps`
    /// steps are scored (their observed targets only).
    pub fn validate(&self, engine: &mut dyn Engine) -> Result<Option<f64>, ModelError> {
        match &self.data {
            Data::Windows(d) => self.validate_windows(d, engine),
            Data::Series(d) => self.validate_series(d, engine),
        }
    }

    fn validate_series(
        &self,
        d: &SeriesData,
        engine: &mut dyn Engine,
    ) -> Result<Option<f64>, ModelError> {
        let k = d.spec.val_steps;
        if k == 0 {
            return Ok(None);
        }
        let rows: Vec<&[f32]> = (0..d.len()).map(|i| d.x_of(i)).collect();
        let (preds, _) = crate::packed::forward_rows(
            engine,
            &self.spec.model,
            &self.params,
            &rows,
            None,
            self.spec.batch_size,
        )?;
        let loss = self.spec.loss_fn();
        let per = self.spec.outputs_per_target();
        let width = d.fo * per;
        let (mut total, mut count) = (0.0f64, 0usize);
        for (i, p) in preds.iter().enumerate() {
            let (y, o) = (d.y_of(i), d.observed_of(i));
            // output j of step s predicts target j / per of that step
            for s in d.train_steps[i]..d.train_steps[i] + k {
                for j in 0..width {
                    let t = s * d.fo + j / per;
                    if o.is_none_or(|o| o[t]) {
                        total += loss_value(loss, j, p[s * width + j], y[t]);
                        count += 1;
                    }
                }
            }
        }
        // every validation target missing: nothing to score
        Ok((count > 0).then(|| total / count as f64))
    }

    fn validate_windows(
        &self,
        data: &Dataset,
        engine: &mut dyn Engine,
    ) -> Result<Option<f64>, ModelError> {
        let Some(val) = &data.val else {
            return Ok(None);
        };
        let b = self.spec.batch_size;
        let streams = Streams::new(val.x.n, b, &format!("{} (validation)", data.name))?;
        let model = &self.spec.model;
        let t = val.x.t;
        let mut states = match self.spec.val_state {
            ValState::Carry => Some(self.states.clone()),
            ValState::Zero => None,
        };
        let loss = self.spec.loss_fn();
        let mut total = 0.0f64;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for step in 0..streams.steps_per_epoch {
            let seqs: Vec<usize> = (0..b).map(|s| streams.sequence(step, s)).collect();
            if step > 0 && self.spec.reset.resets_at(step) {
                states = None;
            }
            val.x.gather_into(seqs.iter().copied(), &mut x);
            val.y.gather_into(seqs.iter().copied(), &mut y);
            let cond = val.cond.as_ref().map(|c| gather_cond(c, &seqs));
            let start = match &states {
                Some(s) => Start::Carry(s),
                None => Start::Reset {
                    cond: cond.as_deref(),
                },
            };
            let (pred, fin) = net::forward(engine, model, &self.params, &x, b, t, start)?;
            total += loss_sum(loss, val.y.f, &pred, &y);
            states = Some(fin);
        }
        let count = streams.steps_per_epoch as f64 * (b * t * val.y.f) as f64;
        Ok(Some(total / count))
    }

    /// A checkpoint of the current state.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            path: Default::default(),
            spec: self.spec.clone(),
            cursor: self.cursor,
            params: self.params.clone(),
            adam: self.adam.clone(),
            states: self.states.clone(),
            fingerprint: self.fingerprint.clone(),
            data_name: self.data.name().to_string(),
            total_steps: self.total,
            explicit_states: self.explicit_states,
            scaler: self.data.series().map(|d| d.scaler.clone()),
        }
    }
}

/// How a step's summed gradient becomes its update: the part of a run's settings that every
/// replica of the parameters applies, so that replicas given the same summed gradient stay
/// identical bit for bit ([`Trainer::commit`] and the workers' replicas both call
/// [`UpdateRule::apply`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateRule {
    /// Adam's decays and epsilon (its `lr` is replaced by each step's).
    pub adam: crate::config::AdamConfig,
    /// Whose biases and Adam rule.
    pub compat: Compat,
    /// Global gradient norm to clip to.
    pub clip_norm: Option<f64>,
}

impl UpdateRule {
    /// Applies the update of a step with learning rate `lr` whose `outputs` valid outputs summed
    /// to `grad_sum`: the mean gradient (with `bias_hh` left alone under [`Compat::Keras`]),
    /// clipped to `clip_norm`, through Adam, into `params` and `adam`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        model: &ModelConfig,
        layout: &ParamLayout,
        lr: f64,
        outputs: usize,
        grad_sum: &[f32],
        params: &mut [f32],
        adam: &mut AdamState,
    ) {
        let count = outputs as f32;
        let mut grad: Vec<f32> = grad_sum.iter().map(|g| g / count).collect();
        if self.compat == Compat::Keras {
            // one bias per layer, as Keras has: bias_hh stays what it is (zero)
            for k in 0..model.layers {
                let b = layout.layer(k).b_hh;
                grad[b..b + 4 * model.hidden].fill(0.0);
            }
        }
        if let Some(max) = self.clip_norm {
            clip_to_norm(&mut grad, max);
        }
        let mut rule = self.adam;
        rule.lr = lr;
        adam.step(&rule, self.compat, params, &grad);
    }
}

/// A digest of parameters, to check that replicas are identical bit for bit (xxh3 of their
/// little-endian bytes).
pub fn digest(values: &[f32]) -> u64 {
    if cfg!(target_endian = "little") {
        return xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(values));
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = [0u8; 4096];
    for chunk in values.chunks(buf.len() / 4) {
        for (b, v) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    h.digest()
}

/// Sum of the loss over predictions `p` and targets `y` of steps of `width` outputs, in f64.
pub fn loss_sum(loss: Loss, width: usize, p: &[f32], y: &[f32]) -> f64 {
    p.iter()
        .zip(y)
        .enumerate()
        .map(|(i, (&a, &b))| loss_value(loss, i % width, a, b))
        .sum()
}

/// The loss of output `o` of a step (the squared error in f64).
fn loss_value(loss: Loss, o: usize, p: f32, y: f32) -> f64 {
    match loss {
        Loss::Mse => f64::from(p - y).powi(2),
        _ => f64::from(loss.value_and_grad(o, p, y).0),
    }
}

/// Steps per chunk of a series run.
fn series_timesteps(spec: &TrainSpec) -> usize {
    spec.series.as_ref().map_or(1, |s| s.timesteps.max(1))
}

/// The schedule of epoch `epoch` of a series run. Shuffled, series are taken longest first, in
/// a seeded random order among series of as many chunks: the slots then finish the epoch together
/// instead of idling while the last long series runs (bucketing by length, as
/// `bucket_by_sequence_length` does). Unshuffled, they are taken in file order.
fn series_plan(spec: &TrainSpec, d: &SeriesData, chunks: &[u64], epoch: u64) -> EpochPlan {
    let shuffle = d.spec.shuffle;
    let mut order = epoch_order(d.len(), spec.seed, epoch, shuffle);
    if shuffle {
        order.sort_by_key(|&s| std::cmp::Reverse(chunks[s]));
    }
    EpochPlan::new(chunks, &order, spec.batch_size)
}

/// Valid steps of a slot's work in chunks of `t`.
fn chunk_valid(d: &SeriesData, w: &SlotWork, t: usize) -> usize {
    match *w {
        SlotWork::Chunk { series, chunk } => (d.train_steps[series] - chunk * t).min(t),
        SlotWork::Idle => 0,
    }
}

/// `states` with the rows where `reset` is set put to zero.
fn zero_rows(states: &SlotStates, reset: &[bool]) -> SlotStates {
    let mut out = states.clone();
    let (n, hd) = (states.slots(), states.hidden());
    let (h, c) = out.hc_mut();
    for k in 0..states.layers() {
        for (r, _) in reset.iter().enumerate().filter(|(_, z)| **z) {
            let a = (k * n + r) * hd;
            h[a..a + hd].fill(0.0);
            c[a..a + hd].fill(0.0);
        }
    }
    out
}

/// Scales `grad` so that its global L2 norm is at most `max`, as
/// `torch.nn.utils.clip_grad_norm_` does (factor `max / (norm + 1e-6)` when below 1).
pub fn clip_to_norm(grad: &mut [f32], max: f64) {
    let norm = l2_norm(grad);
    let factor = max / (norm + 1e-6);
    if factor < 1.0 {
        let f = factor as f32;
        for g in grad {
            *g *= f;
        }
    }
}

/// The L2 norm of `v`, accumulated in f64.
pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

fn gather_cond(c: &data::windows::Cond, seqs: &[usize]) -> Vec<f32> {
    seqs.iter()
        .flat_map(|&i| c.values[i * c.width..(i + 1) * c.width].iter().copied())
        .collect()
}

fn gather_shard(
    split: &Split,
    seqs: &[usize],
    slots: &[usize],
    plan: &StepPlan,
    init: SlotStates,
    with_data: bool,
) -> ShardData {
    let mut x = Vec::new();
    let mut y = Vec::new();
    if with_data {
        split.x.gather_into(seqs.iter().copied(), &mut x);
        split.y.gather_into(seqs.iter().copied(), &mut y);
    }
    ShardData {
        slots: slots.iter().map(|&s| s as u64).collect(),
        t: split.x.t,
        x,
        y,
        cond: if plan.reset {
            split.cond.as_ref().map(|c| gather_cond(c, seqs))
        } else {
            None
        },
        init,
        reset: plan.reset,
        dropout: plan.dropout,
        valid: None,
        resets: None,
        observed: None,
        loss: Loss::Mse,
    }
}

/// Checks that the model's input, output and conditioning widths fit the data.
pub fn check_spec_fits_data(spec: &TrainSpec, data: &Data) -> Result<(), ModelError> {
    spec.validate()?;
    let m = &spec.model;
    let err = |field: &str, msg: String| {
        Err(ModelError::Config {
            field: field.into(),
            msg,
        })
    };
    if m.input != data.input_features() {
        return err(
            "input",
            format!(
                "expected the data's {} input features, got {}",
                data.input_features(),
                m.input
            ),
        );
    }
    let per = spec.outputs_per_target();
    if m.output != data.output_features() * per {
        return err(
            "output",
            format!(
                "expected the data's {} target features{}, got {}",
                data.output_features() * per,
                if per > 1 {
                    format!(" ({} targets x {per} quantiles)", data.output_features())
                } else {
                    String::new()
                },
                m.output
            ),
        );
    }
    if m.cond != data.cond_width() {
        return match (m.cond, data.cond_width()) {
            (Some(w), None) => err(
                "cond",
                format!(
                    "a conditioning projection of width {w} needs a `cond` array in the data, which has none"
                ),
            ),
            (None, Some(w)) => err(
                "cond",
                format!(
                    "the data has conditioning vectors of width {w}; enable the projection (--init-from-cond) or remove `cond`"
                ),
            ),
            (a, b) => err(
                "cond",
                format!("expected width {b:?} from the data, got {a:?}"),
            ),
        };
    }
    Ok(())
}
