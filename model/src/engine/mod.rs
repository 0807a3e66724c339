//! Compute engines: one training step (forward, loss, backward through time) of a shard of slots.
//!
//! - [`cpu::CpuEngine`]: the fused engine on the CPU, each layer's whole sequence forward and its
//!   BPTT backward as one pass over flat buffers, slots split over threads.
//! - [`burn_ref::BurnEngine`]: Burn's stock `Lstm` modules with Burn's autodiff, on the Flex CPU
//!   backend or wgpu; the reference the fused engines are checked against.
//! - [`wgpu_fused::WgpuFusedEngine`]: the fused engine on wgpu, one CubeCL dispatch per layer
//!   for the recurrence forward and one for its backward.
//!
//! All engines take parameters and return gradients in the flat PyTorch layout of
//! [`crate::params`], and compute the gradient of the *sum* of the per-output losses ([`Loss`]) of
//! their shard's valid steps (and observed targets, [`Batch::observed`]), so shard results add up
//! to the whole batch's.

pub mod burn_ref;
pub mod cpu;
pub(crate) mod math;
pub mod wgpu_fused;

#[cfg(test)]
mod tests_masked;

use crate::config::ModelConfig;
use crate::dropout::DropoutKey;
use crate::error::ModelError;
use crate::state::SlotStates;

/// One shard of one step: `n` slots of `t` steps.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Slots in the shard.
    pub n: usize,
    /// Time steps.
    pub t: usize,
    /// Inputs `[n, t, input]`.
    pub x: &'a [f32],
    /// Targets `[n, t, output]`.
    pub y: &'a [f32],
    /// Global slot index of each row (dropout masks are keyed on it).
    pub slots: &'a [u64],
    /// Dropout masks for this step; `None` turns dropout off.
    pub dropout: Option<DropoutKey>,
    /// Valid steps of each row (`None`: all `t`). Steps at or past a row's valid length are
    /// padding: they add nothing to the loss or the gradients, and the row's final state is its
    /// state after its last valid step (its initial state when it has none).
    pub valid: Option<&'a [u32]>,
    /// Whether each target was observed (`[n, t, output]`; `None`: all were). An unobserved
    /// target (a missing value of a table) adds nothing to the loss or the gradients, like a
    /// padded step; the states run through its step as usual.
    pub observed: Option<&'a [bool]>,
    /// The loss whose sum is computed.
    pub loss: Loss,
}

/// Most quantiles a quantile model predicts.
pub const MAX_QUANTILES: usize = 16;

/// The quantile levels a quantile model predicts, ascending, each strictly between 0 and 1.
/// Output `o` of a step predicts level [`Quantiles::level`]`(o)` of target `o / len`: the
/// outputs of one target are side by side, one per level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    levels: [f32; MAX_QUANTILES],
    len: u8,
}

impl Quantiles {
    /// The levels `levels`; an error says what is wrong with them.
    pub fn new(levels: &[f32]) -> Result<Self, String> {
        if levels.is_empty() || levels.len() > MAX_QUANTILES {
            return Err(format!(
                "expected 1 to {MAX_QUANTILES} quantile levels, got {}",
                levels.len()
            ));
        }
        if let Some(q) = levels.iter().find(|q| !(**q > 0.0 && **q < 1.0)) {
            return Err(format!("expected levels strictly between 0 and 1, got {q}"));
        }
        if let Some(w) = levels.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "expected ascending levels without repeats, got {} then {}",
                w[0], w[1]
            ));
        }
        let mut out = [0.0; MAX_QUANTILES];
        out[..levels.len()].copy_from_slice(levels);
        Ok(Self {
            levels: out,
            len: levels.len() as u8,
        })
    }

    /// The levels.
    pub fn levels(&self) -> &[f32] {
        &self.levels[..self.len as usize]
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none (never, for levels made by [`Quantiles::new`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The level output `o` of a step predicts.
    pub fn level(&self, o: usize) -> f32 {
        self.levels[o % self.len as usize]
    }

    /// The index of the level a forecast feeds back: the one closest to 0.5 (the median when
    /// 0.5 is among them; the lower of two equally close).
    pub fn middle(&self) -> usize {
        let mut best = 0;
        for (i, &q) in self.levels().iter().enumerate() {
            if (q - 0.5).abs() < (self.levels[best] - 0.5).abs() {
                best = i;
            }
        }
        best
    }
}

/// The per-output loss of a training step; engines return the sum over valid outputs and its
/// gradient.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// `(p - y)^2`.
    #[default]
    Mse,
    /// `|p - y|` (gradient `sign(p - y)`, 0 at 0).
    Mae,
    /// `0.5 d^2` for `|d| <= delta`, else `delta (|d| - 0.5 delta)`, with `d = p - y` (PyTorch's
    /// `HuberLoss`, Keras' `Huber`).
    Huber(f32),
    /// The pinball (quantile) loss of output `o` at level `q = levels.level(o)`: `q (y - p)` for
    /// `y > p`, else `(1 - q) (p - y)` (gradient `-q`, else `1 - q`), as darts'
    /// `QuantileRegression` and neuralforecast's `MQLoss`. The targets are repeated, one per
    /// level, so that output `o` has its own (see [`Quantiles`]).
    Pinball(Quantiles),
}

impl Loss {
    /// The loss of output `o` of a step (its index within the step) and its derivative with
    /// respect to the prediction.
    pub fn value_and_grad(self, o: usize, p: f32, y: f32) -> (f32, f32) {
        let d = p - y;
        match self {
            Self::Pinball(levels) => {
                let q = levels.level(o);
                if d < 0.0 {
                    (-q * d, -q)
                } else {
                    ((1.0 - q) * d, 1.0 - q)
                }
            }
            Self::Mse => (d * d, 2.0 * d),
            Self::Mae => (
                d.abs(),
                if d > 0.0 {
                    1.0
                } else if d < 0.0 {
                    -1.0
                } else {
                    0.0
                },
            ),
            Self::Huber(delta) => {
                if d.abs() <= delta {
                    (0.5 * d * d, d)
                } else {
                    (delta * (d.abs() - 0.5 * delta), delta * d.signum())
                }
            }
        }
    }
}

/// What a training step returns.
#[derive(Debug, Clone)]
pub struct TrainOut {
    /// Sum of the per-output losses over the shard's valid outputs.
    pub loss_sum: f64,
    /// Gradient of `loss_sum` in the flat parameter layout.
    pub grad: Vec<f32>,
    /// Final `(h, c)` of every layer for the shard's slots.
    pub final_state: SlotStates,
    /// Gradient of `loss_sum` with respect to the initial `(h, c)`, when asked for.
    pub init_grad: Option<SlotStates>,
}

/// A compute engine.
pub trait Engine: Send {
    /// Engine and device, for logs.
    fn describe(&self) -> String;

    /// Forward, the loss of the valid steps ([`Batch::loss`], [`Batch::valid`]), and backward
    /// through time of one shard from `init`.
    fn train_step(
        &mut self,
        params: &[f32],
        batch: &Batch<'_>,
        init: &SlotStates,
        want_init_grad: bool,
    ) -> Result<TrainOut, ModelError>;

    /// Predictions `[n, t, output]` and final states from `init`, without dropout.
    fn forward(
        &mut self,
        params: &[f32],
        x: &[f32],
        n: usize,
        t: usize,
        init: &SlotStates,
    ) -> Result<(Vec<f32>, SlotStates), ModelError>;
}

/// Which engine implementation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Fused whole-sequence kernels (CPU or CubeCL on wgpu).
    #[default]
    Fused,
    /// Burn's stock `Lstm` with Burn's autodiff.
    Burn,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fused => "fused",
            Self::Burn => "burn",
        })
    }
}

/// Checks that a batch and its initial states have the sizes `cfg` expects.
pub(crate) fn check_batch(
    cfg: &ModelConfig,
    params_len: usize,
    expected_params: usize,
    batch: &Batch<'_>,
    init: &SlotStates,
) -> Result<(), ModelError> {
    let (n, t) = (batch.n, batch.t);
    check_forward(cfg, params_len, expected_params, batch.x, n, t, init)?;
    check_len("targets", batch.y, n, t, cfg.output)?;
    if let Loss::Pinball(q) = batch.loss
        && !cfg.output.is_multiple_of(q.len())
    {
        return Err(ModelError::Config {
            field: "quantiles".into(),
            msg: format!(
                "a model of {} outputs cannot predict {} quantile levels of each target (one output per level per target)",
                cfg.output,
                q.len()
            ),
        });
    }
    if let Some(o) = batch.observed
        && o.len() != n * t * cfg.output
    {
        return Err(ModelError::Shape {
            what: "observed targets".into(),
            expected: format!(
                "{} flags for ({n}, {t}, {})",
                n * t * cfg.output,
                cfg.output
            ),
            got: format!("{} flags", o.len()),
        });
    }
    if batch.slots.len() != n {
        return Err(ModelError::shape("slot ids", &[n], &[batch.slots.len()]));
    }
    if let Some(v) = batch.valid {
        if v.len() != n {
            return Err(ModelError::shape("valid lengths", &[n], &[v.len()]));
        }
        if let Some((row, &len)) = v.iter().enumerate().find(|(_, l)| **l as usize > t) {
            return Err(ModelError::Shape {
                what: "valid lengths".into(),
                expected: format!("at most {t} valid steps per row"),
                got: format!("{len} for row {row}"),
            });
        }
    }
    Ok(())
}

/// Checks the parameters, inputs `[n, t, input]` and initial states of a forward pass.
pub(crate) fn check_forward(
    cfg: &ModelConfig,
    params_len: usize,
    expected_params: usize,
    x: &[f32],
    n: usize,
    t: usize,
    init: &SlotStates,
) -> Result<(), ModelError> {
    if params_len != expected_params {
        return Err(ModelError::shape(
            "parameters",
            &[expected_params],
            &[params_len],
        ));
    }
    check_len("inputs", x, n, t, cfg.input)?;
    check_init(cfg, n, init)
}

fn check_len(what: &str, v: &[f32], n: usize, t: usize, f: usize) -> Result<(), ModelError> {
    if v.len() != n * t * f {
        return Err(ModelError::Shape {
            what: what.into(),
            expected: format!("{} values for ({n}, {t}, {f})", n * t * f),
            got: format!("{} values", v.len()),
        });
    }
    Ok(())
}

/// Checks that initial states are `[layers, n, hidden]`.
fn check_init(cfg: &ModelConfig, n: usize, init: &SlotStates) -> Result<(), ModelError> {
    let want = [cfg.layers, n, cfg.hidden];
    let got = [init.layers(), init.slots(), init.hidden()];
    if want != got {
        return Err(ModelError::shape("initial state", &want, &got));
    }
    Ok(())
}
