//! `coordinator predict` and `coordinator export`.
//!
//! `predict` runs `N` input sequences as one batch of `N` streams and writes `y` `[N, T, F_out]`
//! and the final `h`, `c` `[layers, N, H]` (PyTorch's `h0`/`c0` layout), so a long stream is
//! predicted chunk by chunk by feeding one call's final state to the next as `--initial-state`.

use std::path::PathBuf;

use clap::Args;
use data::npy::{read_npy, read_npz, write_npz};
use data::windows::to_sequences;
use model::config::Head;
use model::device::{DeviceChoice, make_engine, resolve};
use model::engine::EngineKind;
use model::error::fmt_shape;
use model::export::export;
use model::net::{self, Start};
use model::state::SlotStates;

use crate::error::CoordError;

/// Options of `coordinator predict`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PredictArgs {
    /// A checkpoint (file or run directory), PyTorch-layout safetensors weights, or Keras 3
    /// weights (.weights.h5, .keras).
    #[arg(long, env = "CARRY_MODEL")]
    pub model: PathBuf,
    /// Input sequences (.npy), shaped (N, T, F) or flat (reshaped as (-1, T, F)).
    #[arg(long, env = "CARRY_INPUTS")]
    pub inputs: PathBuf,
    /// Initial state (.npz with `h` and `c`, each [layers, N, H]); default zero.
    #[arg(long, env = "CARRY_INITIAL_STATE")]
    pub initial_state: Option<PathBuf>,
    /// Conditioning vectors (.npy, [N, C]) for a model with a learned initial-state projection.
    #[arg(long, env = "CARRY_COND")]
    pub cond: Option<PathBuf>,
    /// Output file (.npz with y, h, c).
    #[arg(long, env = "CARRY_PREDICT_OUT")]
    pub out: PathBuf,
    /// Head activation for safetensors weights (a checkpoint knows its own).
    #[arg(long, env = "CARRY_HEAD", value_enum)]
    pub head: Option<Head>,
    /// Time steps for flat inputs.
    #[arg(long, default_value_t = 96)]
    pub timesteps: usize,
    /// Device.
    #[arg(long, env = "CARRY_DEVICE", value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Engine.
    #[arg(long, env = "CARRY_ENGINE", value_enum, default_value_t = EngineKind::Fused)]
    pub engine: EngineKind,
}

/// Options of `coordinator export`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ExportArgs {
    /// A checkpoint (file or run directory), safetensors weights or Keras 3 weights.
    #[arg(long, env = "CARRY_MODEL")]
    pub model: PathBuf,
    /// Destination: a .safetensors file (--format torch) or a .weights.h5 file (--format keras).
    #[arg(long, env = "CARRY_EXPORT_OUT")]
    pub out: PathBuf,
    /// torch: PyTorch-layout safetensors for `nn.LSTM` + `nn.Linear`; keras: Keras 3 weights for
    /// `model.load_weights` [default: torch, or keras when --out ends in .h5].
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Head activation to record for safetensors input.
    #[arg(long, value_enum)]
    pub head: Option<Head>,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// PyTorch-layout safetensors.
    Torch,
    /// Keras 3 `.weights.h5`.
    Keras,
}

fn config_err(field: &str, msg: String) -> CoordError {
    CoordError::Config {
        field: field.into(),
        msg,
    }
}

/// What `predict` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PredictSummary {
    /// Sequences.
    pub n: usize,
    /// Time steps.
    pub t: usize,
}

/// Runs `predict`.
pub(crate) fn predict(a: &PredictArgs) -> Result<PredictSummary, CoordError> {
    let m = model::export::load_any(&a.model, a.head)?;
    let cfg = &m.config;
    let inputs_name = a.inputs.display().to_string();
    let x = to_sequences(read_npy(&a.inputs)?, &inputs_name, a.timesteps, cfg.input)?;
    if x.f != cfg.input {
        return Err(model::ModelError::Data {
            source_name: inputs_name,
            msg: format!(
                "expected {} input features per step for this model, got shape {}",
                cfg.input,
                fmt_shape(&x.shape())
            ),
        }
        .into());
    }
    let (n, t) = (x.n, x.t);
    let init = match &a.initial_state {
        None => None,
        Some(p) => {
            let mut arrays = read_npz(p)?;
            let want = [cfg.layers, n, cfg.hidden];
            let mut take = |k: &str| -> Result<Vec<f32>, CoordError> {
                let arr = arrays.remove(k).ok_or_else(|| {
                    config_err(
                        "initial_state",
                        format!(
                            "{}: expected arrays `h` and `c`, missing `{k}`",
                            p.display()
                        ),
                    )
                })?;
                if arr.shape != want {
                    return Err(model::ModelError::shape(
                        format!("{}: {k}", p.display()),
                        &want,
                        &arr.shape,
                    )
                    .into());
                }
                Ok(arr.data)
            };
            let (h, c) = (take("h")?, take("c")?);
            Some(SlotStates::from_flat(cfg.layers, n, cfg.hidden, h, c)?)
        }
    };
    let cond = match &a.cond {
        None => None,
        Some(p) => {
            let arr = read_npy(p)?;
            let w = cfg.cond.unwrap_or(0);
            if arr.shape != [n, w] {
                return Err(model::ModelError::shape(
                    format!("{}", p.display()),
                    &[n, w],
                    &arr.shape,
                )
                .into());
            }
            Some(arr.data)
        }
    };
    let mut engine = make_engine(a.engine, &resolve(a.device)?, cfg, 0)?;
    let start = match &init {
        Some(s) => Start::Carry(s),
        None => Start::Reset {
            cond: cond.as_deref(),
        },
    };
    let (y, fin) = net::forward(engine.as_mut(), cfg, &m.params, &x.values, n, t, start)?;
    let sh = [cfg.layers, n, cfg.hidden];
    write_npz(
        &a.out,
        &[
            ("y", &[n, t, cfg.output], &y),
            ("h", &sh, fin.h()),
            ("c", &sh, fin.c()),
        ],
    )?;
    Ok(PredictSummary { n, t })
}

/// Runs `export`.
pub(crate) fn export_model(a: &ExportArgs) -> Result<(), CoordError> {
    let m = model::export::load_any(&a.model, a.head)?;
    let format = a.format.unwrap_or(if model::keras::is_keras(&a.out) {
        ExportFormat::Keras
    } else {
        ExportFormat::Torch
    });
    match format {
        ExportFormat::Torch => export(&a.out, &m.config, &m.params)?,
        ExportFormat::Keras => {
            let name = a.out.to_string_lossy();
            if !name.ends_with(".weights.h5") {
                return Err(config_err(
                    "out",
                    format!(
                        "Keras 3's load_weights reads files named *.weights.h5; got {}",
                        a.out.display()
                    ),
                ));
            }
            model::keras::save(&a.out, &m.config, &m.params)?;
            tracing::info!(
                out = %a.out.display(),
                "Keras weights written; build the model with this code, then call load_weights:\n{}",
                keras_code(&m.config)
            );
        }
    }
    Ok(())
}

/// [`model::keras::KERAS_MODEL_CODE`] with the sizes of `cfg` filled in.
fn keras_code(cfg: &model::config::ModelConfig) -> String {
    let act = match cfg.head {
        Head::Linear => "\"linear\"",
        Head::Softmax => "\"softmax\"",
    };
    model::keras::KERAS_MODEL_CODE
        .replace(
            "batch_shape=(None, None, F)",
            &format!("batch_shape=(None, None, {})", cfg.input),
        )
        .replace("range(L)", &format!("range({})", cfg.layers))
        .replace("LSTM(H,", &format!("LSTM({},", cfg.hidden))
        .replace("Dropout(0.2", &format!("Dropout({}", cfg.dropout))
        .replace("Dense(F_OUT", &format!("Dense({}", cfg.output))
        .replace("activation=ACT", &format!("activation={act}"))
}
