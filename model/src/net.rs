//! The model-level step: how a step starts (carried state, zero, or the learned projection of a
//! conditioning vector), on top of any [`Engine`].

use crate::config::ModelConfig;
use crate::engine::{Batch, Engine, TrainOut};
use crate::error::ModelError;
use crate::params::ParamLayout;
use crate::state::SlotStates;

/// Where a step's slots start from.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// The states carried from the previous batch (or set explicitly).
    Carry(&'a SlotStates),
    /// A reset: zero, or with a conditioning projection configured, the projection of each
    /// slot's conditioning vector (`[n, C]`).
    Reset {
        /// Conditioning vectors of the slots' sequences.
        cond: Option<&'a [f32]>,
    },
}

/// The initial states of `n` slots for `start`.
pub fn initial_states(
    cfg: &ModelConfig,
    params: &[f32],
    n: usize,
    start: Start<'_>,
) -> Result<SlotStates, ModelError> {
    match start {
        Start::Carry(s) => Ok(s.clone()),
        Start::Reset { cond } => match (cfg.cond, cond) {
            (None, _) => Ok(SlotStates::zeros(cfg.layers, n, cfg.hidden)),
            (Some(w), Some(c)) => {
                if c.len() != n * w {
                    return Err(ModelError::shape(
                        "conditioning vectors",
                        &[n, w],
                        &[c.len() / w.max(1), w],
                    ));
                }
                Ok(project(cfg, &ParamLayout::new(cfg), params, c, n))
            }
            (Some(w), None) => Err(ModelError::Data {
                source_name: "conditioning".into(),
                msg: format!(
                    "the model projects a conditioning vector of width {w} to its initial state, but none was given"
                ),
            }),
        },
    }
}

/// `h0 = tanh(W_h c + b_h)`, `c0 = W_c c + b_c` for every layer and slot.
fn project(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    params: &[f32],
    cond: &[f32],
    n: usize,
) -> SlotStates {
    let (h, w) = (cfg.hidden, cfg.cond.unwrap_or(0));
    let mut out = SlotStates::zeros(cfg.layers, n, h);
    let (oh, oc) = out.hc_mut();
    for k in 0..cfg.layers {
        let (wo, bo) = layout.init(k).expect("projection configured");
        for r in 0..n {
            let cv = &cond[r * w..(r + 1) * w];
            for j in 0..2 * h {
                let row = &params[wo + j * w..wo + (j + 1) * w];
                let z = params[bo + j] + row.iter().zip(cv).map(|(a, b)| a * b).sum::<f32>();
                let dst = (k * n + r) * h + (j % h);
                if j < h {
                    oh[dst] = z.tanh();
                } else {
                    oc[dst] = z;
                }
            }
        }
    }
    out
}

/// One training step of a shard from `start`, with the projection's gradient folded in.
pub fn train_step(
    engine: &mut dyn Engine,
    cfg: &ModelConfig,
    params: &[f32],
    batch: &Batch<'_>,
    start: Start<'_>,
) -> Result<TrainOut, ModelError> {
    let init = initial_states(cfg, params, batch.n, start)?;
    let projected = matches!(start, Start::Reset { cond: Some(_) }) && cfg.cond.is_some();
    let mut out = engine.train_step(params, batch, &init, projected)?;
    if projected {
        let cond = match start {
            Start::Reset { cond: Some(c) } => c,
            _ => unreachable!("projected implies a conditioning vector"),
        };
        let g = out.init_grad.as_ref().ok_or_else(|| ModelError::Engine {
            engine: engine.describe(),
            msg: "no initial-state gradient returned".into(),
        })?;
        let layout = ParamLayout::new(cfg);
        let (h, w, n) = (cfg.hidden, cfg.cond.unwrap_or(0), batch.n);
        for k in 0..cfg.layers {
            let (wo, bo) = layout.init(k).expect("projection configured");
            for r in 0..n {
                let cv = &cond[r * w..(r + 1) * w];
                for j in 0..2 * h {
                    let src = (k * n + r) * h + (j % h);
                    let dz = if j < h {
                        let h0 = init.layer_h(k)[r * h + j];
                        g.h()[src] * (1.0 - h0 * h0)
                    } else {
                        g.c()[src]
                    };
                    out.grad[bo + j] += dz;
                    for (gw, c) in out.grad[wo + j * w..wo + (j + 1) * w].iter_mut().zip(cv) {
                        *gw += dz * c;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Predictions and final states of `n` sequences from `start`, without dropout.
pub fn forward(
    engine: &mut dyn Engine,
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    n: usize,
    t: usize,
    start: Start<'_>,
) -> Result<(Vec<f32>, SlotStates), ModelError> {
    let init = initial_states(cfg, params, n, start)?;
    engine.forward(params, x, n, t, &init)
}
