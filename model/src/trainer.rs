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
use crate::data::{Dataset, Split};
use crate::dropout::DropoutKey;
use crate::engine::{Batch, Engine};
use crate::error::{ModelError, check_finite};
use crate::net::{self, Start};
use crate::params::{ParamLayout, init_params};
use crate::state::SlotStates;
use crate::stream::{Cursor, Streams, total_steps};

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
}

impl ShardData {
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
        };
        let start = if self.reset {
            Start::Reset {
                cond: self.cond.as_deref(),
            }
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
    data: Arc<Dataset>,
    streams: Streams,
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
}

impl Trainer {
    /// A fresh run of `spec` on `data`, parameters initialized from the seed.
    pub fn new(spec: TrainSpec, data: Arc<Dataset>) -> Result<Self, ModelError> {
        let fingerprint = data.fingerprint();
        Self::with_fingerprint(spec, data, fingerprint)
    }

    fn with_fingerprint(
        spec: TrainSpec,
        data: Arc<Dataset>,
        fingerprint: String,
    ) -> Result<Self, ModelError> {
        check_spec_fits_data(&spec, &data)?;
        let params = init_params(&spec.model, spec.seed);
        let layout = ParamLayout::new(&spec.model);
        let streams = Streams::new(data.train.x.n, spec.batch_size, &data.name)?;
        let states = SlotStates::zeros(spec.model.layers, spec.batch_size, spec.model.hidden);
        let total = total_steps(&streams, spec.epochs, spec.max_steps);
        Ok(Self {
            fingerprint,
            adam: AdamState::new(layout.len()),
            spec,
            data,
            streams,
            layout,
            params,
            cursor: Cursor::default(),
            states,
            total,
            explicit_states: false,
        })
    }

    /// Continues the run saved in `ck`; refused when `data` is not the data it was trained on.
    pub fn resume(ck: Checkpoint, data: Arc<Dataset>) -> Result<Self, ModelError> {
        let fp = data.fingerprint();
        if fp != ck.fingerprint {
            return Err(ModelError::Checkpoint {
                path: ck.path.clone(),
                msg: format!(
                    "the checkpoint was trained on other data (fingerprint {}, from {}); the given data `{}` has fingerprint {fp}",
                    ck.fingerprint, ck.data_name, data.name
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
        t.states = ck.states;
        t.explicit_states = ck.explicit_states;
        Ok(t)
    }

    /// The run's settings.
    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    /// The data.
    pub fn data(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// The stream layout of the training data.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Current parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
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

    /// Outputs per step: the divisor that turns sums into the batch mean.
    pub fn outputs_per_step(&self) -> usize {
        self.spec.batch_size * self.data.timesteps() * self.data.output_features()
    }

    /// The next step, or `None` when the run is complete.
    pub fn plan(&self) -> Option<StepPlan> {
        if self.is_done() {
            return None;
        }
        let c = self.cursor;
        let dropout = (self.spec.model.dropout > 0.0).then_some(DropoutKey {
            seed: self.spec.seed,
            epoch: c.epoch,
            step: c.step,
        });
        Some(StepPlan {
            cursor: c,
            reset: self.spec.reset.resets_at(c.step) && !self.explicit_states,
            dropout,
        })
    }

    /// The data and initial states of `slots` for the next step.
    pub fn shard(&self, plan: &StepPlan, slots: Range<usize>) -> ShardData {
        let split = &self.data.train;
        let seqs: Vec<usize> = slots
            .clone()
            .map(|s| self.streams.sequence(plan.cursor.step, s))
            .collect();
        gather_shard(split, &seqs, slots, plan, &self.states)
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
        let count = self.outputs_per_step() as f32;
        let mut grad: Vec<f32> = grad_sum.iter().map(|g| g / count).collect();
        if self.spec.compat == Compat::Keras {
            // one bias per layer, as Keras has: bias_hh stays what it is (zero)
            for k in 0..self.spec.model.layers {
                let b = self.layout.layer(k).b_hh;
                grad[b..b + 4 * self.spec.model.hidden].fill(0.0);
            }
        }
        if let Some(max) = self.spec.clip_norm {
            clip_to_norm(&mut grad, max);
        }
        // The update is computed aside and committed only when every value is finite: a step
        // that would poison the model is refused whole, and nothing non-finite is ever stored.
        let mut params = self.params.clone();
        let mut adam = self.adam.clone();
        adam.step(&self.spec.adam, self.spec.compat, &mut params, &grad);
        let step = self.cursor.global;
        check_finite(
            &format!("parameters after the update of step {step}"),
            &params,
        )?;
        check_finite(&format!("Adam first moments after step {step}"), &adam.m)?;
        check_finite(&format!("Adam second moments after step {step}"), &adam.v)?;
        self.params = params;
        self.adam = adam;
        self.explicit_states = false;
        for (range, st) in finals {
            let slots: Vec<usize> = range.clone().collect();
            self.states.scatter(&slots, st);
        }
        let cursor = self.cursor;
        self.cursor = cursor.next(&self.streams);
        Ok(Committed {
            cursor,
            loss: loss_sum / f64::from(count),
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

    /// Mean squared error on the validation split, laid out as `B` streams like training and
    /// starting from the final training states (or zero, per `val_state`); no dropout, no update.
    pub fn validate(&self, engine: &mut dyn Engine) -> Result<Option<f64>, ModelError> {
        let Some(val) = &self.data.val else {
            return Ok(None);
        };
        let b = self.spec.batch_size;
        let streams = Streams::new(val.x.n, b, &format!("{} (validation)", self.data.name))?;
        let model = &self.spec.model;
        let t = val.x.t;
        let mut states = match self.spec.val_state {
            ValState::Carry => Some(self.states.clone()),
            ValState::Zero => None,
        };
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
            total += pred
                .iter()
                .zip(&y)
                .map(|(p, q)| f64::from(p - q).powi(2))
                .sum::<f64>();
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
            data_name: self.data.name.clone(),
            total_steps: self.total,
            explicit_states: self.explicit_states,
        }
    }
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

fn gather_cond(c: &crate::data::Cond, seqs: &[usize]) -> Vec<f32> {
    seqs.iter()
        .flat_map(|&i| c.values[i * c.width..(i + 1) * c.width].iter().copied())
        .collect()
}

fn gather_shard(
    split: &Split,
    seqs: &[usize],
    slots: Range<usize>,
    plan: &StepPlan,
    states: &SlotStates,
) -> ShardData {
    let mut x = Vec::new();
    let mut y = Vec::new();
    split.x.gather_into(seqs.iter().copied(), &mut x);
    split.y.gather_into(seqs.iter().copied(), &mut y);
    let slot_list: Vec<usize> = slots.collect();
    let init = if plan.reset {
        SlotStates::zeros(states.layers(), slot_list.len(), states.hidden())
    } else {
        states.gather(&slot_list)
    };
    ShardData {
        slots: slot_list.iter().map(|&s| s as u64).collect(),
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
    }
}

/// Checks that the model's input, output and conditioning widths fit the data.
pub fn check_spec_fits_data(spec: &TrainSpec, data: &Dataset) -> Result<(), ModelError> {
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
    if m.output != data.output_features() {
        return err(
            "output",
            format!(
                "expected the data's {} target features, got {}",
                data.output_features(),
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
