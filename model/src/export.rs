//! Weights in the PyTorch layout as safetensors: `torch.nn.LSTM(F, H, num_layers=L,
//! batch_first=True)` plus `nn.Linear(H, F_out)` load them with `load_state_dict` (the optional
//! initial-state projection goes under `init.*`). Import accepts such a file or a checkpoint.

use std::collections::HashMap;
use std::path::Path;

use crate::checkpoint::{self, Checkpoint};
use crate::config::{Head, ModelConfig};
use crate::error::{ModelError, check_finite};
use crate::params::ParamLayout;

/// Value of the `format` metadata key of exported weights.
pub const FORMAT: &str = "carry-pytorch-v1";

/// Writes `params` of `cfg` to `path` in the PyTorch layout.
pub fn export(path: &Path, cfg: &ModelConfig, params: &[f32]) -> Result<(), ModelError> {
    let layout = ParamLayout::new(cfg);
    layout.check_len(params)?;
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = layout
        .specs()
        .iter()
        .map(|s| (s.name.as_str(), s.shape.clone(), &params[s.range()]))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("head".into(), cfg.head.to_string());
    meta.insert("dropout".into(), cfg.dropout.to_string());
    crate::st::write(path, &tensors, meta)
}

/// A model read from a checkpoint or from PyTorch-layout weights.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The network's shape.
    pub config: ModelConfig,
    /// Flat parameters.
    pub params: Vec<f32>,
    /// The training checkpoint, when the file was one.
    pub checkpoint: Option<Checkpoint>,
    /// What the file calls each LSTM layer and the head, for messages.
    pub names: LayerNames,
}

/// The names a model file gives its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerNames {
    /// One per LSTM layer, bottom first.
    pub lstm: Vec<String>,
    /// The dense head.
    pub head: String,
}

impl LayerNames {
    /// The PyTorch layout's names (`lstm.*_l{k}`, `head`), used for checkpoints too.
    pub fn torch(layers: usize) -> Self {
        Self {
            lstm: (0..layers).map(|k| format!("lstm.*_l{k}")).collect(),
            head: "head".into(),
        }
    }
}

/// Reads a model from any file carry takes: Keras 3 weights (`.weights.h5`, `.keras`), a
/// checkpoint (file or run directory), or PyTorch-layout safetensors.
pub fn load_any(path: &Path, head: Option<Head>) -> Result<LoadedModel, ModelError> {
    if crate::keras::is_keras(path) {
        crate::keras::load(path, head)
    } else {
        load_model(path, head)
    }
}

/// Reads a model from a checkpoint (file or run directory) or a PyTorch-layout safetensors file.
/// For the latter, layers, hidden size and widths follow from the tensor shapes; `head` overrides
/// the activation recorded in the file (files from PyTorch record none: linear is assumed).
pub fn load_model(path: &Path, head: Option<Head>) -> Result<LoadedModel, ModelError> {
    let file = checkpoint::resolve(path);
    let (tensors, meta) = crate::st::read(&file)?;
    if meta.get("format").map(String::as_str) == Some(checkpoint::FORMAT) {
        let ck = Checkpoint::load(&file)?;
        let mut config = ck.spec.model.clone();
        if let Some(h) = head {
            config.head = h;
        }
        return Ok(LoadedModel {
            names: LayerNames::torch(config.layers),
            config,
            params: ck.params.clone(),
            checkpoint: Some(ck),
        });
    }
    let bad = |msg: String| ModelError::Checkpoint {
        path: file.clone(),
        msg,
    };
    let shape_of = |name: &str| tensors.get(name).map(|(s, _)| s.clone());
    let layers = (0..)
        .take_while(|k| tensors.contains_key(&format!("lstm.weight_ih_l{k}")))
        .count();
    if layers == 0 {
        let names: Vec<&String> = tensors.keys().collect();
        return Err(bad(format!(
            "expected PyTorch LSTM weights (lstm.weight_ih_l0, ...) or a checkpoint, got tensors {names:?}"
        )));
    }
    let w_ih0 = shape_of("lstm.weight_ih_l0").expect("counted above");
    let w_hh0 = shape_of("lstm.weight_hh_l0")
        .ok_or_else(|| bad("missing tensor `lstm.weight_hh_l0`".into()))?;
    let hidden = w_hh0.get(1).copied().unwrap_or(0);
    let input = w_ih0.get(1).copied().unwrap_or(0);
    let output =
        shape_of("head.weight").ok_or_else(|| bad("missing tensor `head.weight`".into()))?[0];
    let cond = shape_of("init.weight_l0").and_then(|s| s.get(1).copied());
    let head = match head {
        Some(h) => h,
        None => match meta.get("head") {
            Some(h) => h
                .parse()
                .map_err(|e: String| bad(format!("metadata `head`: {e}")))?,
            None => Head::Linear,
        },
    };
    let dropout = meta
        .get("dropout")
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    let config = ModelConfig {
        input,
        hidden,
        layers,
        output,
        head,
        dropout,
        cond,
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    let layout = ParamLayout::new(&config);
    let mut params = vec![0.0f32; layout.len()];
    for spec in layout.specs() {
        let (shape, values) = tensors
            .get(&spec.name)
            .ok_or_else(|| bad(format!("missing tensor `{}`", spec.name)))?;
        if *shape != spec.shape {
            return Err(bad(ModelError::shape(
                format!("tensor {}", spec.name),
                &spec.shape,
                shape,
            )
            .to_string()));
        }
        check_finite(&spec.name, values)?;
        params[spec.range()].copy_from_slice(values);
    }
    if let Some(extra) = tensors.keys().find(|k| layout.spec(k).is_none()) {
        return Err(bad(format!(
            "unexpected tensor `{extra}` for a {layers}-layer LSTM of {hidden} units"
        )));
    }
    Ok(LoadedModel {
        names: LayerNames::torch(config.layers),
        config,
        params,
        checkpoint: None,
    })
}
