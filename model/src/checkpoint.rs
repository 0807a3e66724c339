//! Checkpoints: parameters, Adam state, step cursor, the committed `(h, c)` of every slot, the
//! run's settings and a fingerprint of its data, in one safetensors file written atomically.
//!
//! Storage (this module) is separate from retention (the caller decides when to save).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::adam::AdamState;
use crate::config::TrainSpec;
use crate::error::{ModelError, check_finite};
use crate::params::ParamLayout;
use crate::state::SlotStates;
use crate::stream::Cursor;

/// File name of the latest checkpoint inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Value of the `format` metadata key.
pub const FORMAT: &str = "carry-checkpoint-v1";

/// A saved training state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Where it was read from (empty when built in memory).
    pub path: PathBuf,
    /// The run's settings.
    pub spec: TrainSpec,
    /// The next step to run.
    pub cursor: Cursor,
    /// Parameters (flat PyTorch layout).
    pub params: Vec<f32>,
    /// Optimizer state.
    pub adam: AdamState,
    /// Committed `(h, c)` of every slot, `[layers, B, H]`.
    pub states: SlotStates,
    /// Fingerprint of the training data.
    pub fingerprint: String,
    /// Description of the training data.
    pub data_name: String,
    /// Total steps of the run.
    pub total_steps: u64,
    /// The states were set explicitly and the next step starts from them.
    pub explicit_states: bool,
    /// Scaling statistics of series data (so outputs, forecasts and scores are in the user's
    /// units).
    pub scaler: Option<data::series::Scaler>,
}

/// The checkpoint file for `path`: the path itself if it is a file, else `path/checkpoint.safetensors`.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CHECKPOINT_FILE)
    } else {
        path.to_path_buf()
    }
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let m = &self.spec.model;
        let state_shape = vec![m.layers, self.spec.batch_size, m.hidden];
        let n = self.params.len();
        let mut meta = HashMap::new();
        meta.insert("format".into(), FORMAT.into());
        meta.insert(
            "spec".into(),
            serde_json::to_string(&self.spec).expect("spec serializes"),
        );
        meta.insert(
            "cursor".into(),
            serde_json::to_string(&self.cursor).expect("cursor serializes"),
        );
        meta.insert("adam_t".into(), self.adam.t.to_string());
        meta.insert("fingerprint".into(), self.fingerprint.clone());
        meta.insert("data".into(), self.data_name.clone());
        meta.insert("total_steps".into(), self.total_steps.to_string());
        if self.explicit_states {
            meta.insert("explicit_states".into(), "true".into());
        }
        if let Some(s) = &self.scaler {
            meta.insert(
                "scaler".into(),
                serde_json::to_string(s).expect("scaler serializes"),
            );
        }
        crate::st::write(
            path,
            &[
                ("params", vec![n], &self.params),
                ("adam.m", vec![n], &self.adam.m),
                ("adam.v", vec![n], &self.adam.v),
                ("state.h", state_shape.clone(), self.states.h()),
                ("state.c", state_shape, self.states.c()),
            ],
            meta,
        )
    }

    /// Reads a checkpoint from a file or a run directory, checking every shape and value.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let path = resolve(path);
        let (mut tensors, meta) = crate::st::read(&path)?;
        let bad = |msg: String| ModelError::Checkpoint {
            path: path.clone(),
            msg,
        };
        match meta.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => return Err(bad(format!("expected format {FORMAT}, got {other}"))),
            None => {
                return Err(bad(format!(
                    "expected a checkpoint (format {FORMAT}), got a file without a format tag"
                )));
            }
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("missing metadata `{k}`")))
        };
        let spec: TrainSpec =
            serde_json::from_str(get("spec")?).map_err(|e| bad(format!("metadata `spec`: {e}")))?;
        spec.validate()?;
        let cursor: Cursor = serde_json::from_str(get("cursor")?)
            .map_err(|e| bad(format!("metadata `cursor`: {e}")))?;
        let adam_t: u64 = get("adam_t")?
            .parse()
            .map_err(|e| bad(format!("metadata `adam_t`: {e}")))?;
        let total_steps: u64 = get("total_steps")?
            .parse()
            .map_err(|e| bad(format!("metadata `total_steps`: {e}")))?;
        let n = ParamLayout::new(&spec.model).len();
        let m = &spec.model;
        let state_shape = vec![m.layers, spec.batch_size, m.hidden];
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let (s, v) = tensors
                .remove(name)
                .ok_or_else(|| bad(format!("missing tensor `{name}`")))?;
            if s != shape {
                return Err(ModelError::Checkpoint {
                    path: path.clone(),
                    msg: ModelError::shape(format!("tensor {name}"), shape, &s).to_string(),
                });
            }
            check_finite(name, &v)?;
            Ok(v)
        };
        let params = take("params", &[n])?;
        let am = take("adam.m", &[n])?;
        let av = take("adam.v", &[n])?;
        let h = take("state.h", &state_shape)?;
        let c = take("state.c", &state_shape)?;
        let states = SlotStates::from_flat(m.layers, spec.batch_size, m.hidden, h, c)?;
        Ok(Self {
            path: path.clone(),
            spec,
            cursor,
            params,
            adam: AdamState {
                m: am,
                v: av,
                t: adam_t,
            },
            states,
            fingerprint: get("fingerprint")?.clone(),
            data_name: get("data")?.clone(),
            total_steps,
            explicit_states: meta.get("explicit_states").is_some_and(|v| v == "true"),
            scaler: match meta.get("scaler") {
                Some(s) => Some(
                    serde_json::from_str(s).map_err(|e| bad(format!("metadata `scaler`: {e}")))?,
                ),
                None => None,
            },
        })
    }
}
