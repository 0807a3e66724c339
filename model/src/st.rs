//! Reading and writing safetensors files of f32 tensors with string metadata, written
//! atomically ([`runtime::fs::write_atomic`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::ModelError;

/// A tensor read from a file: shape and f32 values.
pub type Loaded = (Vec<usize>, Vec<f32>);

/// Writes `tensors` (name, shape, values) and `meta` to `path` atomically.
pub fn write(
    path: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    meta: HashMap<String, String>,
) -> Result<(), ModelError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view =
            TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| ModelError::Checkpoint {
                path: path.into(),
                msg: format!("tensor {name}: {e}"),
            })?;
        views.push((name.to_string(), view));
    }
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Checkpoint {
        path: path.into(),
        msg: e.to_string(),
    })?;
    runtime::fs::write_atomic(path, &data).map_err(|e| ModelError::io(path, e.source))
}

/// Tensors by name and the string metadata of a file.
pub type Contents = (BTreeMap<String, Loaded>, HashMap<String, String>);

/// Reads every tensor (f32 or f64, converted to f32) and the metadata of a safetensors file.
pub fn read(path: &Path) -> Result<Contents, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let bad = |msg: String| ModelError::Checkpoint {
        path: path.into(),
        msg,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor {name}: expected dtype F32 or F64, got {other:?}"
                )));
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok((out, meta))
}
