//! The model and training hyper-parameters, with `validate()` errors that name the field.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::ModelError;

/// Activation of the per-time-step dense head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// Identity: regression outputs.
    #[default]
    Linear,
    /// Softmax over the output features of each time step (the seed model's choice).
    Softmax,
}

impl FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(Self::Linear),
            "softmax" => Ok(Self::Softmax),
            other => Err(format!("expected `linear` or `softmax`, got `{other}`")),
        }
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Softmax => "softmax",
        })
    }
}

/// When slot states go back to zero (or to the learned initial state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetPolicy {
    /// Never: streams continue across epochs too.
    Never,
    /// At the start of every epoch (Keras' usual `reset_states()` callback).
    #[default]
    Epoch,
    /// Before every step whose index within the epoch is a multiple of `K` (so also at epoch start).
    Every(u64),
}

impl ResetPolicy {
    /// Whether states reset before step `step_in_epoch`.
    pub fn resets_at(&self, step_in_epoch: u64) -> bool {
        match *self {
            Self::Never => false,
            Self::Epoch => step_in_epoch == 0,
            Self::Every(k) => step_in_epoch.is_multiple_of(k),
        }
    }
}

impl FromStr for ResetPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Self::Never),
            "epoch" => Ok(Self::Epoch),
            _ => match s.strip_prefix("every:").map(str::parse::<u64>) {
                Some(Ok(k)) if k > 0 => Ok(Self::Every(k)),
                _ => Err(format!(
                    "expected `never`, `epoch` or `every:K` with K >= 1, got `{s}`"
                )),
            },
        }
    }
}

impl fmt::Display for ResetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::Epoch => f.write_str("epoch"),
            Self::Every(k) => write!(f, "every:{k}"),
        }
    }
}

impl Serialize for ResetPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ResetPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whose training rules a run follows, step for step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// Keras: one bias per LSTM layer (`bias_hh` stays zero), and Adam adds epsilon to `sqrt(v)`
    /// with a bias-corrected step size.
    #[default]
    Keras,
    /// PyTorch: both biases trained, and Adam adds epsilon to `sqrt(v_hat)`.
    Torch,
}

impl fmt::Display for Compat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Keras => "keras",
            Self::Torch => "torch",
        })
    }
}

/// The training loss per output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error.
    Mae,
    /// Huber loss with `--huber-delta`.
    Huber,
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mse => "mse",
            Self::Mae => "mae",
            Self::Huber => "huber",
        })
    }
}

/// How the learning rate changes over the run (after the linear warm-up of `warmup_steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout.
    #[default]
    Constant,
    /// Cosine decay from the rate to 0 over the steps after the warm-up.
    Cosine,
    /// Multiplied by `lr_gamma` every `lr_step_epochs` epochs.
    Step,
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
            Self::Step => "step",
        })
    }
}

fn default_huber_delta() -> f64 {
    1.0
}

fn default_lr_gamma() -> f64 {
    0.5
}

fn default_lr_step_epochs() -> u64 {
    1
}

/// Where validation streams start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ValState {
    /// From the final training state of the same slots (Keras `evaluate` on a stateful model).
    #[default]
    Carry,
    /// From zero (or the learned initial state).
    Zero,
}

impl FromStr for ValState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "carry" => Ok(Self::Carry),
            "zero" => Ok(Self::Zero),
            other => Err(format!("expected `carry` or `zero`, got `{other}`")),
        }
    }
}

impl fmt::Display for ValState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Carry => "carry",
            Self::Zero => "zero",
        })
    }
}

/// Shape of the network.
///
/// # Shapes
/// Input `[B, T, input]`, every LSTM layer's state `(h, c)` each `[B, hidden]`, output
/// `[B, T, output]`; parameters in the PyTorch `nn.LSTM` + `nn.Linear` layout (see `params`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Input features per time step (`F`).
    pub input: usize,
    /// LSTM units per layer (`H`).
    pub hidden: usize,
    /// Stacked LSTM layers.
    pub layers: usize,
    /// Output features per time step.
    pub output: usize,
    /// Head activation.
    pub head: Head,
    /// Dropout probability on the last LSTM layer's output sequence during training.
    pub dropout: f32,
    /// Width of the per-sequence conditioning vector that a learned projection maps to the initial
    /// `(h, c)` of every layer at each reset; `None` starts resets from zero.
    #[serde(default)]
    pub cond: Option<usize>,
}

impl ModelConfig {
    /// The seed model: 2 x LSTM(8), dropout 0.2, dense head to 2 outputs.
    pub fn seed() -> Self {
        Self {
            input: 2,
            hidden: 8,
            layers: 2,
            output: 2,
            head: Head::Linear,
            dropout: 0.2,
            cond: None,
        }
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, msg: String| {
            Err(ModelError::Config {
                field: field.into(),
                msg,
            })
        };
        if self.input == 0 {
            return bad("input", "expected at least 1 input feature, got 0".into());
        }
        if self.hidden == 0 || self.hidden > 4096 {
            return bad(
                "hidden",
                format!("expected 1..=4096 units, got {}", self.hidden),
            );
        }
        if self.layers == 0 || self.layers > 16 {
            return bad(
                "layers",
                format!("expected 1..=16 layers, got {}", self.layers),
            );
        }
        if self.output == 0 {
            return bad("output", "expected at least 1 output feature, got 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("expected a probability in [0, 1), got {}", self.dropout),
            );
        }
        if self.cond == Some(0) {
            return bad(
                "cond",
                "expected a conditioning width of at least 1, got 0".into(),
            );
        }
        Ok(())
    }
}

/// Adam hyper-parameters (Keras defaults: epsilon 1e-7, not bias-corrected).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub epsilon: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }
}

impl AdamConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, msg: String| {
            Err(ModelError::Config {
                field: field.into(),
                msg,
            })
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(
                "lr",
                format!("expected a positive learning rate, got {}", self.lr),
            );
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad(
                "beta1",
                format!("expected a value in [0, 1), got {}", self.beta1),
            );
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad(
                "beta2",
                format!("expected a value in [0, 1), got {}", self.beta2),
            );
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad(
                "epsilon",
                format!("expected a positive epsilon, got {}", self.epsilon),
            );
        }
        Ok(())
    }
}

/// Everything that determines the numbers a training run produces (saved in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The network.
    pub model: ModelConfig,
    /// Optimizer.
    pub adam: AdamConfig,
    /// Global batch size `B` (number of parallel streams).
    pub batch_size: usize,
    /// Epochs to run.
    pub epochs: u64,
    /// Optional cap on the total number of steps.
    pub max_steps: Option<u64>,
    /// Seed for initialization and dropout.
    pub seed: u64,
    /// State reset policy.
    pub reset: ResetPolicy,
    /// Where validation streams start.
    pub val_state: ValState,
    /// Clip the whole batch's gradient to this global L2 norm before the update
    /// (`torch.nn.utils.clip_grad_norm_`, Keras `global_clipnorm`); `None` leaves it as it is.
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// Whose training rules to follow (checkpoints before this option trained as `keras` does,
    /// but with both biases).
    #[serde(default)]
    pub compat: Compat,
    /// The loss per output.
    #[serde(default)]
    pub loss: LossKind,
    /// Where the Huber loss turns from quadratic to linear.
    #[serde(default = "default_huber_delta")]
    pub huber_delta: f64,
    /// Learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Factor of the `step` schedule.
    #[serde(default = "default_lr_gamma")]
    pub lr_gamma: f64,
    /// Epochs between the `step` schedule's decays.
    #[serde(default = "default_lr_step_epochs")]
    pub lr_step_epochs: u64,
    /// How a table of series becomes training data (`None`: `.npz` windows or synthetic data).
    #[serde(default)]
    pub series: Option<data::series::SeriesSpec>,
    /// Quantile levels to predict (series data): one output per level per target, trained with
    /// the pinball loss instead of `loss`; empty: point forecasts.
    #[serde(default)]
    pub quantiles: Vec<f32>,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            model: ModelConfig::seed(),
            adam: AdamConfig::default(),
            batch_size: 10,
            epochs: 1,
            max_steps: None,
            seed: 0,
            reset: ResetPolicy::default(),
            val_state: ValState::default(),
            clip_norm: None,
            compat: Compat::default(),
            loss: LossKind::default(),
            huber_delta: default_huber_delta(),
            lr_schedule: LrSchedule::default(),
            warmup_steps: 0,
            lr_gamma: default_lr_gamma(),
            lr_step_epochs: default_lr_step_epochs(),
            series: None,
            quantiles: Vec::new(),
        }
    }
}

impl TrainSpec {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.model.validate()?;
        self.adam.validate()?;
        let bad = |field: &str, msg: String| {
            Err(ModelError::Config {
                field: field.into(),
                msg,
            })
        };
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return bad(
                "batch_size",
                format!("expected 1..=1048576, got {}", self.batch_size),
            );
        }
        if self.epochs == 0 {
            return bad("epochs", "expected at least 1 epoch, got 0".into());
        }
        if self.max_steps == Some(0) {
            return bad("steps", "expected at least 1 step, got 0".into());
        }
        if let Some(c) = self.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad(
                "clip_norm",
                format!("expected a positive finite norm, got {c}"),
            );
        }
        if !(self.huber_delta.is_finite() && self.huber_delta > 0.0) {
            return bad(
                "huber_delta",
                format!("expected a positive finite value, got {}", self.huber_delta),
            );
        }
        if !(self.lr_gamma.is_finite() && self.lr_gamma > 0.0 && self.lr_gamma <= 1.0) {
            return bad(
                "lr_gamma",
                format!("expected a factor in (0, 1], got {}", self.lr_gamma),
            );
        }
        if self.lr_step_epochs == 0 {
            return bad("lr_step_epochs", "expected at least 1 epoch, got 0".into());
        }
        if self.loss != LossKind::Mse && self.model.head == Head::Softmax {
            return bad(
                "loss",
                format!(
                    "the softmax head is trained with squared error; `{}` needs the linear head",
                    self.loss
                ),
            );
        }
        if !self.quantiles.is_empty() {
            if let Err(m) = crate::engine::Quantiles::new(&self.quantiles) {
                return bad("quantiles", m);
            }
            if self.series.is_none() {
                return bad(
                    "quantiles",
                    "quantile forecasts are made of series data (--data FILE.csv, .csv.gz, .parquet or a ragged .npz); windows train point predictions".into(),
                );
            }
            if self.model.head == Head::Softmax {
                return bad(
                    "quantiles",
                    "quantiles need the linear head; the softmax head sums its outputs to 1".into(),
                );
            }
        }
        if let Some(s) = &self.series {
            if s.timesteps == 0 {
                return bad(
                    "timesteps",
                    "expected at least 1 step per chunk, got 0".into(),
                );
            }
            if self.model.cond.is_some() {
                return bad(
                    "init_from_cond",
                    "series data has no conditioning vectors; series start from zero states".into(),
                );
            }
        }
        Ok(())
    }

    /// Outputs per target: one per quantile level, or 1 for point forecasts.
    pub fn outputs_per_target(&self) -> usize {
        self.quantiles.len().max(1)
    }

    /// The per-output loss of the run.
    pub fn loss_fn(&self) -> crate::engine::Loss {
        if let Ok(q) = crate::engine::Quantiles::new(&self.quantiles) {
            return crate::engine::Loss::Pinball(q);
        }
        match self.loss {
            LossKind::Mse => crate::engine::Loss::Mse,
            LossKind::Mae => crate::engine::Loss::Mae,
            LossKind::Huber => crate::engine::Loss::Huber(self.huber_delta as f32),
        }
    }

    /// The learning rate of global step `step` in epoch `epoch` of a run of `total` steps.
    pub fn lr_at(&self, step: u64, epoch: u64, total: u64) -> f64 {
        let base = self.adam.lr;
        let w = self.warmup_steps;
        if step < w {
            return base * (step + 1) as f64 / w as f64;
        }
        match self.lr_schedule {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(w).max(1) as f64;
                let p = ((step - w) as f64 / span).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            LrSchedule::Step => {
                let k = (epoch / self.lr_step_epochs).min(i32::MAX as u64) as i32;
                base * self.lr_gamma.powi(k)
            }
        }
    }

    /// Checks that a run saved with `saved` can continue under these settings: everything that
    /// determines the numbers must match. Epochs, the step cap and where validation starts may
    /// change (a resumed run can be extended).
    pub fn check_resume(&self, saved: &TrainSpec) -> Result<(), ModelError> {
        let differs = |field: &str, given: String, saved: String| {
            if given == saved {
                Ok(())
            } else {
                Err(ModelError::Config {
                    field: field.into(),
                    msg: format!("the checkpoint has {saved}, the configuration {given}"),
                })
            }
        };
        let m = (&self.model, &saved.model);
        differs("input", m.0.input.to_string(), m.1.input.to_string())?;
        differs("output", m.0.output.to_string(), m.1.output.to_string())?;
        differs("hidden", m.0.hidden.to_string(), m.1.hidden.to_string())?;
        differs("layers", m.0.layers.to_string(), m.1.layers.to_string())?;
        differs("head", m.0.head.to_string(), m.1.head.to_string())?;
        differs("dropout", m.0.dropout.to_string(), m.1.dropout.to_string())?;
        let cond = |c: Option<usize>| c.map_or("none".into(), |w| format!("width {w}"));
        differs("init_from_cond", cond(m.0.cond), cond(m.1.cond))?;
        let a = (&self.adam, &saved.adam);
        differs("lr", a.0.lr.to_string(), a.1.lr.to_string())?;
        differs("beta1", a.0.beta1.to_string(), a.1.beta1.to_string())?;
        differs("beta2", a.0.beta2.to_string(), a.1.beta2.to_string())?;
        differs("epsilon", a.0.epsilon.to_string(), a.1.epsilon.to_string())?;
        differs(
            "batch_size",
            self.batch_size.to_string(),
            saved.batch_size.to_string(),
        )?;
        differs("seed", self.seed.to_string(), saved.seed.to_string())?;
        differs(
            "reset_states",
            self.reset.to_string(),
            saved.reset.to_string(),
        )?;
        let clip = |c: Option<f64>| c.map_or("none".into(), |c| c.to_string());
        differs("clip_norm", clip(self.clip_norm), clip(saved.clip_norm))?;
        differs("compat", self.compat.to_string(), saved.compat.to_string())?;
        differs("loss", self.loss.to_string(), saved.loss.to_string())?;
        differs(
            "quantiles",
            format!("{:?}", self.quantiles),
            format!("{:?}", saved.quantiles),
        )?;
        differs(
            "huber_delta",
            self.huber_delta.to_string(),
            saved.huber_delta.to_string(),
        )?;
        differs(
            "lr_schedule",
            self.lr_schedule.to_string(),
            saved.lr_schedule.to_string(),
        )?;
        differs(
            "warmup_steps",
            self.warmup_steps.to_string(),
            saved.warmup_steps.to_string(),
        )?;
        let series = |s: &Option<data::series::SeriesSpec>| {
            s.as_ref().map_or("windows".to_string(), |s| {
                format!(
                    "series (inputs {:?}, targets {:?}, scale {}, val_steps {}, timesteps {}, shuffle {})",
                    s.input_columns, s.target_columns, s.scale, s.val_steps, s.timesteps, s.shuffle
                )
            })
        };
        differs("data", series(&self.series), series(&saved.series))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_policies_parse_and_apply() {
        assert_eq!("never".parse::<ResetPolicy>().unwrap(), ResetPolicy::Never);
        assert_eq!(
            "every:3".parse::<ResetPolicy>().unwrap(),
            ResetPolicy::Every(3)
        );
        let err = "every:0".parse::<ResetPolicy>().unwrap_err();
        assert!(err.contains("every:K") && err.contains("every:0"), "{err}");
        assert!("sometimes".parse::<ResetPolicy>().is_err());
        let every3 = ResetPolicy::Every(3);
        let resets: Vec<u64> = (0..7).filter(|&s| every3.resets_at(s)).collect();
        assert_eq!(resets, vec![0, 3, 6]);
        assert!(ResetPolicy::Epoch.resets_at(0) && !ResetPolicy::Epoch.resets_at(1));
        assert!(!ResetPolicy::Never.resets_at(0));
        assert_eq!(every3.to_string(), "every:3");
    }

    fn spec() -> TrainSpec {
        TrainSpec {
            model: ModelConfig::seed(),
            adam: AdamConfig::default(),
            batch_size: 10,
            epochs: 3,
            max_steps: None,
            seed: 1,
            reset: ResetPolicy::Epoch,
            val_state: ValState::Carry,
            clip_norm: None,
            compat: Compat::Keras,
            ..Default::default()
        }
    }

    #[test]
    fn resume_needs_the_settings_that_determine_the_numbers() {
        let saved = spec();
        let longer = TrainSpec {
            epochs: 9,
            max_steps: Some(100),
            val_state: ValState::Zero,
            ..spec()
        };
        longer
            .check_resume(&saved)
            .expect("extending a run is allowed");
        let mut other = spec();
        other.model.hidden = 16;
        let e = other.check_resume(&saved).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid `hidden`: the checkpoint has 8, the configuration 16"
        );
        let mut other = spec();
        other.adam.lr = 0.01;
        let e = other.check_resume(&saved).unwrap_err().to_string();
        assert!(e.contains("`lr`") && e.contains("0.001"), "{e}");
        let other = TrainSpec {
            clip_norm: Some(1.0),
            ..spec()
        };
        let e = other.check_resume(&saved).unwrap_err().to_string();
        assert!(e.contains("clip_norm") && e.contains("none"), "{e}");
        let other = TrainSpec {
            reset: ResetPolicy::Every(3),
            ..spec()
        };
        assert!(other.check_resume(&saved).is_err());
        let other = TrainSpec { seed: 2, ..spec() };
        assert!(other.check_resume(&saved).is_err());
    }

    #[test]
    fn learning_rate_schedules_and_warmup() {
        let mut s = spec();
        s.adam.lr = 0.1;
        assert_eq!(s.lr_at(0, 0, 100), 0.1);
        assert_eq!(s.lr_at(99, 3, 100), 0.1);
        s.warmup_steps = 4;
        for (g, want) in [0.025, 0.05, 0.075, 0.1, 0.1].into_iter().enumerate() {
            assert!((s.lr_at(g as u64, 0, 100) - want).abs() < 1e-15, "step {g}");
        }
        s.lr_schedule = LrSchedule::Cosine;
        assert_eq!(s.lr_at(4, 0, 104), 0.1);
        assert!((s.lr_at(54, 0, 104) - 0.05).abs() < 1e-12, "half way");
        assert!(s.lr_at(103, 0, 104) < 1e-4 && s.lr_at(103, 0, 104) > 0.0);
        s.warmup_steps = 0;
        s.lr_schedule = LrSchedule::Step;
        s.lr_gamma = 0.5;
        s.lr_step_epochs = 2;
        let by_epoch: Vec<f64> = (0..5).map(|e| s.lr_at(e * 10, e, 100)).collect();
        assert_eq!(by_epoch, [0.1, 0.1, 0.05, 0.05, 0.025]);
        s.lr_gamma = 1.5;
        assert!(s.validate().unwrap_err().to_string().contains("lr_gamma"));
        s.lr_gamma = 0.5;
        s.loss = LossKind::Mae;
        s.model.head = Head::Softmax;
        assert!(s.validate().unwrap_err().to_string().contains("softmax"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut m = ModelConfig::seed();
        m.dropout = 1.0;
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("dropout") && e.contains("[0, 1)"), "{e}");
        m = ModelConfig::seed();
        m.hidden = 0;
        assert!(m.validate().unwrap_err().to_string().contains("hidden"));
    }
}
