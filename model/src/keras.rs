//! Keras 3 weights of the seed's architecture: stacked `LSTM(H, return_sequences=True)` layers,
//! an optional `Dropout`, and a `TimeDistributed(Dense)` or `Dense` head. Read from a
//! `.weights.h5` file or a `.keras` archive (whose `config.json` gives the layer order, the head's
//! activation and the dropout rate), and written as a `.weights.h5` file that Keras' `load_weights`
//! reads into the model built by [`KERAS_MODEL_CODE`].
//!
//! Layout mapping (Keras -> PyTorch layout of [`crate::params`]): an LSTM's `kernel` `[in, 4H]`
//! is `weight_ih` transposed, its `recurrent_kernel` `[H, 4H]` is `weight_hh` transposed (gate
//! order i, f, c, o in both), its one `bias` `[4H]` is `bias_ih` with `bias_hh` zero; the Dense
//! `kernel` `[H, F_out]` is `head.weight` transposed. HDF5 is read and written with the pure-Rust
//! `hdf5-pure` crate: no C library.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use hdf5_pure::{AttrValue, File, FileBuilder};

use crate::config::{Head, ModelConfig};
use crate::error::{ModelError, check_finite, fmt_shape};
use crate::export::{LayerNames, LoadedModel};
use crate::params::ParamLayout;

/// The Keras code that builds the model [`save`] writes weights for (`L` LSTM layers of `H` units,
/// `F` input and `F_OUT` output features, the head's activation `ACT`).
pub const KERAS_MODEL_CODE: &str = r#"import keras
layers = [keras.Input(batch_shape=(None, None, F))]
for k in range(L):
    layers.append(keras.layers.LSTM(H, return_sequences=True, stateful=False,
                                    name="lstm" if k == 0 else f"lstm_{k}"))
layers.append(keras.layers.Dropout(0.2, name="dropout"))
layers.append(keras.layers.TimeDistributed(keras.layers.Dense(F_OUT, activation=ACT, name="dense"),
                                           name="time_distributed"))
model = keras.Sequential(layers)
model.load_weights("model.weights.h5")"#;

/// Whether `path` names Keras weights (`.h5` or `.keras`).
pub fn is_keras(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".h5") || name.ends_with(".keras") || name.ends_with(".hdf5")
}

fn bad(path: &Path, msg: String) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    }
}

/// The most values one variable may hold (1 GiB of f32).
const MAX_VALUES: usize = 1 << 28;

/// A dataset of `group`, as `(shape, values)`.
fn dataset(f: &File, path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
    let ds = f
        .dataset(name)
        .map_err(|e| bad(path, format!("{name}: {e}")))?;
    let shape: Vec<usize> = ds
        .shape()
        .map_err(|e| bad(path, format!("{name}: {e}")))?
        .into_iter()
        .map(|d| d as usize)
        .collect();
    // checked before reading: a compressed dataset could claim any size
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES);
    let Some(count) = count else {
        return Err(bad(
            path,
            format!(
                "{name}: shape {} holds more than {MAX_VALUES} values; no layer of a stacked LSTM is that large",
                fmt_shape(&shape)
            ),
        ));
    };
    let values = ds
        .read_f32()
        .map_err(|e| bad(path, format!("{name}: expected float values: {e}")))?;
    if values.len() != count {
        return Err(bad(
            path,
            format!(
                "{name}: shape {} needs {count} values, the data holds {}",
                fmt_shape(&shape),
                values.len()
            ),
        ));
    }
    check_finite(name, &values)?;
    Ok((shape, values))
}

/// A layer's variables in file order: shape and values.
type Vars = Vec<(Vec<usize>, Vec<f32>)>;

/// The numbered variables (`vars/0`, `vars/1`, ...) of the group at `vars`.
fn vars(f: &File, path: &Path, vars: &str) -> Result<Vars, ModelError> {
    let Ok(g) = f.group(vars) else {
        return Ok(Vec::new());
    };
    let names = g
        .datasets()
        .map_err(|e| bad(path, format!("{vars}: {e}")))?;
    let mut idx: Vec<usize> = names.iter().filter_map(|n| n.parse().ok()).collect();
    idx.sort_unstable();
    if idx.len() != names.len() || idx.iter().enumerate().any(|(i, &n)| i != n) {
        return Err(bad(
            path,
            format!("{vars}: expected variables named 0, 1, ..., got {names:?}"),
        ));
    }
    idx.iter()
        .map(|i| dataset(f, path, &format!("{vars}/{i}")))
        .collect()
}

/// What a layer group of the file holds.
enum Layer {
    /// An LSTM: kernel, recurrent kernel, and bias (when it has one).
    Lstm(Vars),
    /// A Dense head (plain or inside TimeDistributed): kernel and bias.
    Dense(Vars),
    /// No weights (Dropout, Activation, Input, ...).
    Empty,
}

fn describe(v: &[(Vec<usize>, Vec<f32>)]) -> String {
    v.iter()
        .map(|(s, _)| fmt_shape(s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn layer(f: &File, path: &Path, name: &str) -> Result<Layer, ModelError> {
    let base = format!("layers/{name}");
    let cell = vars(f, path, &format!("{base}/cell/vars"))?;
    if !cell.is_empty() {
        // an LSTM's recurrent kernel is (H, 4H); a GRU's is (H, 3H), a SimpleRNN's (H, H)
        let lstm = matches!(cell.get(1), Some((r, _)) if r.len() == 2 && r[1] == 4 * r[0]);
        if !lstm {
            return Err(bad(
                path,
                format!(
                    "layer `{name}`: expected an LSTM cell (kernel (in, 4H), recurrent kernel (H, 4H), bias (4H,)), got weights {}; GRU and SimpleRNN layers are not LSTMs",
                    describe(&cell)
                ),
            ));
        }
        return Ok(Layer::Lstm(cell));
    }
    let wrapped = vars(f, path, &format!("{base}/layer/vars"))?;
    let own = vars(f, path, &format!("{base}/vars"))?;
    match (wrapped.is_empty(), own.is_empty()) {
        (true, true) => Ok(Layer::Empty),
        (false, true) => Ok(Layer::Dense(wrapped)),
        (true, false) if own.len() <= 2 && own[0].0.len() == 2 => Ok(Layer::Dense(own)),
        _ => Err(bad(
            path,
            format!(
                "layer `{name}`: expected an LSTM (a cell with kernel (in, 4H), recurrent kernel (H, 4H), bias (4H,)), a Dense head or a layer without weights, got weights {}",
                describe(if own.is_empty() { &wrapped } else { &own })
            ),
        )),
    }
}

/// Sorts Keras' automatic names in creation order: `lstm`, `lstm_1`, `lstm_2`, ...
fn natural_key(name: &str) -> (String, u64) {
    match name.rsplit_once('_') {
        Some((base, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
            (base.to_string(), n.parse().unwrap_or(0))
        }
        _ => (name.to_string(), 0),
    }
}

/// What a `.keras` archive's `config.json` says of its layers: their order, the head's
/// activation, the dropout rate.
#[derive(Debug, Default)]
struct ArchiveConfig {
    order: Vec<String>,
    activation: Option<String>,
    dropout: Option<f32>,
}

fn archive_config(text: &str) -> ArchiveConfig {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return ArchiveConfig::default();
    };
    let mut out = ArchiveConfig::default();
    let layers = v["config"]["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for l in layers {
        let cfg = &l["config"];
        let name = cfg["name"].as_str().unwrap_or_default().to_string();
        match l["class_name"].as_str().unwrap_or_default() {
            "Dropout" => out.dropout = cfg["rate"].as_f64().map(|r| r as f32),
            "Dense" => out.activation = cfg["activation"].as_str().map(String::from),
            "TimeDistributed" => {
                out.activation = cfg["layer"]["config"]["activation"]
                    .as_str()
                    .map(String::from)
            }
            _ => {}
        }
        if !name.is_empty() {
            out.order.push(name);
        }
    }
    out
}

/// Reads the weights file and, for an archive, its configuration.
fn open(path: &Path) -> Result<(Vec<u8>, Option<ArchiveConfig>), ModelError> {
    let io = |e| ModelError::io(path, e);
    if !path
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".keras")
    {
        return Ok((std::fs::read(path).map_err(io)?, None));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| bad(path, format!("expected a .keras (zip) archive: {e}")))?;
    let mut text = String::new();
    if let Ok(c) = zip.by_name("config.json") {
        c.take(16 << 20).read_to_string(&mut text).map_err(io)?;
    }
    let mut entry = zip.by_name("model.weights.h5").map_err(|_| {
        bad(
            path,
            "expected model.weights.h5 in the .keras archive, it has none".into(),
        )
    })?;
    // a weights file bigger than this is not the seed's architecture
    let mut bytes = Vec::new();
    (&mut entry)
        .take(1 << 31)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok((bytes, Some(archive_config(&text))))
}

/// Reads Keras 3 weights of a stacked LSTM with a Dense head. Sizes come from the file; the
/// head's activation from the archive's configuration, else `head`, else linear.
pub fn load(path: &Path, head: Option<Head>) -> Result<LoadedModel, ModelError> {
    let (bytes, archive) = open(path)?;
    let f = File::from_bytes(bytes)
        .map_err(|e| bad(path, format!("expected an HDF5 file of Keras weights: {e}")))?;
    let names = f
        .group("layers")
        .and_then(|g| g.groups())
        .map_err(|_| {
            bad(
                path,
                "expected Keras 3 weights (a `layers` group), got none; weights saved by Keras 2 (`.h5` with `model_weights`) are not read".into(),
            )
        })?;
    let mut names: Vec<String> = names;
    // a `.keras` archive says the layers' order; a weights file alone gives names only, and
    // Keras' automatic names sort in creation order among layers of one kind
    let ordered = archive.as_ref().is_some_and(|a| !a.order.is_empty());
    match archive.as_ref().filter(|a| !a.order.is_empty()) {
        Some(a) => names.sort_by_key(|n| a.order.iter().position(|o| o == n).unwrap_or(usize::MAX)),
        None => names.sort_by_key(|n| natural_key(n)),
    }
    let mut lstms = Vec::new();
    let mut dense = None;
    for n in &names {
        match layer(&f, path, n)? {
            Layer::Lstm(v) => {
                if ordered && dense.is_some() {
                    return Err(bad(
                        path,
                        format!(
                            "layer `{n}`: an LSTM after the Dense head; expected LSTM layers, then the head"
                        ),
                    ));
                }
                lstms.push((n.clone(), v));
            }
            Layer::Dense(v) => {
                if let Some((first, _)) = &dense {
                    return Err(bad(
                        path,
                        format!("layers `{first}` and `{n}`: expected one Dense head, got two"),
                    ));
                }
                dense = Some((n.clone(), v));
            }
            Layer::Empty => {}
        }
    }
    if lstms.is_empty() {
        return Err(bad(
            path,
            format!("expected at least one LSTM layer, got layers {names:?}"),
        ));
    }
    let (dname, dvars) = dense.ok_or_else(|| {
        bad(
            path,
            format!("expected a Dense (or TimeDistributed(Dense)) head, got layers {names:?}"),
        )
    })?;
    // shapes, layer by layer
    let (_, first) = &lstms[0];
    let input = first[0].0.first().copied().unwrap_or(0);
    let hidden = first.get(1).and_then(|r| r.0.first()).copied().unwrap_or(0);
    let expect = |layer: &str, what: &str, want: &[usize], got: &[usize]| {
        if want == got {
            Ok(())
        } else {
            Err(bad(
                path,
                format!(
                    "layer `{layer}` {what}: expected {}, got {}",
                    fmt_shape(want),
                    fmt_shape(got)
                ),
            ))
        }
    };
    for (k, (n, v)) in lstms.iter().enumerate() {
        if !(v.len() == 2 || v.len() == 3) {
            return Err(bad(
                path,
                format!(
                    "layer `{n}`: expected an LSTM cell's kernel, recurrent kernel and bias, got weights {}",
                    describe(v)
                ),
            ));
        }
        let inp = if k == 0 { input } else { hidden };
        expect(n, "recurrent kernel", &[hidden, 4 * hidden], &v[1].0)?;
        expect(n, "kernel", &[inp, 4 * hidden], &v[0].0)?;
        if let Some(b) = v.get(2) {
            expect(n, "bias", &[4 * hidden], &b.0)?;
        }
    }
    let output = dvars[0].0.get(1).copied().unwrap_or(0);
    expect(&dname, "kernel", &[hidden, output], &dvars[0].0)?;
    if let Some(b) = dvars.get(1) {
        expect(&dname, "bias", &[output], &b.0)?;
    }
    let head = match archive.as_ref().and_then(|a| a.activation.as_deref()) {
        Some("softmax") => Head::Softmax,
        Some("linear") | None => head.unwrap_or(Head::Linear),
        Some(other) => {
            return Err(bad(
                path,
                format!("layer `{dname}`: expected activation linear or softmax, got `{other}`"),
            ));
        }
    };
    let config = ModelConfig {
        input,
        hidden,
        layers: lstms.len(),
        output,
        head,
        dropout: archive.as_ref().and_then(|a| a.dropout).unwrap_or(0.0),
        cond: None,
    };
    config.validate().map_err(|e| bad(path, e.to_string()))?;
    let layout = ParamLayout::new(&config);
    let mut params = vec![0.0f32; layout.len()];
    let h4 = 4 * hidden;
    let transpose_into = |dst: &mut [f32], src: &[f32], rows: usize, cols: usize| {
        // src [rows, cols] -> dst [cols, rows]
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    };
    for (k, (_, v)) in lstms.iter().enumerate() {
        let l = layout.layer(k);
        transpose_into(
            &mut params[l.w_ih..l.w_ih + h4 * l.input],
            &v[0].1,
            l.input,
            h4,
        );
        transpose_into(
            &mut params[l.w_hh..l.w_hh + h4 * hidden],
            &v[1].1,
            hidden,
            h4,
        );
        if let Some(b) = v.get(2) {
            params[l.b_ih..l.b_ih + h4].copy_from_slice(&b.1);
        }
    }
    let hw = layout.head_w();
    transpose_into(
        &mut params[hw..hw + output * hidden],
        &dvars[0].1,
        hidden,
        output,
    );
    if let Some(b) = dvars.get(1) {
        params[layout.head_b()..layout.head_b() + output].copy_from_slice(&b.1);
    }
    Ok(LoadedModel {
        names: LayerNames {
            lstm: lstms.iter().map(|(n, _)| n.clone()).collect(),
            head: dname.clone(),
        },
        config,
        params,
        checkpoint: None,
    })
}

/// Writes `params` of `cfg` as Keras 3 weights for the model [`KERAS_MODEL_CODE`] builds. Keras
/// has one bias per LSTM layer: `bias_ih + bias_hh` is written (exactly `bias_ih` after training
/// with `--compat keras`, where `bias_hh` stays zero).
pub fn save(path: &Path, cfg: &ModelConfig, params: &[f32]) -> Result<(), ModelError> {
    let layout = ParamLayout::new(cfg);
    layout.check_len(params)?;
    if cfg.cond.is_some() {
        return Err(bad(
            path,
            "the learned initial-state projection has no Keras equivalent; export this model with --format torch".into(),
        ));
    }
    let (h, h4) = (cfg.hidden, 4 * cfg.hidden);
    let transpose = |src: &[f32], rows: usize, cols: usize| {
        // src [rows, cols] -> [cols, rows]
        let mut out = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = src[r * cols + c];
            }
        }
        out
    };
    let mut b = FileBuilder::new();
    let mut layers = b.create_group("layers");
    let named = |g: &mut hdf5_pure::GroupBuilder, name: &str| {
        g.set_attr("name", AttrValue::String(name.into()));
    };
    for k in 0..cfg.layers {
        let l = layout.layer(k);
        let name = if k == 0 {
            "lstm".to_string()
        } else {
            format!("lstm_{k}")
        };
        let mut g = layers.create_group(&name);
        let mut cell = g.create_group("cell");
        let mut v = cell.create_group("vars");
        named(&mut v, "lstm_cell");
        let kernel = transpose(&params[l.w_ih..l.w_ih + h4 * l.input], h4, l.input);
        let recurrent = transpose(&params[l.w_hh..l.w_hh + h4 * h], h4, h);
        let bias: Vec<f32> = (0..h4)
            .map(|i| params[l.b_ih + i] + params[l.b_hh + i])
            .collect();
        v.create_dataset("0")
            .with_f32_data(&kernel)
            .with_shape(&[l.input as u64, h4 as u64]);
        v.create_dataset("1")
            .with_f32_data(&recurrent)
            .with_shape(&[h as u64, h4 as u64]);
        v.create_dataset("2")
            .with_f32_data(&bias)
            .with_shape(&[h4 as u64]);
        cell.add_group(v.finish());
        g.add_group(cell.finish());
        let mut own = g.create_group("vars");
        named(&mut own, &name);
        g.add_group(own.finish());
        layers.add_group(g.finish());
    }
    let mut drop = layers.create_group("dropout");
    let mut dv = drop.create_group("vars");
    named(&mut dv, "dropout");
    drop.add_group(dv.finish());
    layers.add_group(drop.finish());
    let mut td = layers.create_group("time_distributed");
    let mut inner = td.create_group("layer");
    let mut iv = inner.create_group("vars");
    named(&mut iv, "dense");
    let hw = layout.head_w();
    let kernel = transpose(&params[hw..hw + cfg.output * h], cfg.output, h);
    iv.create_dataset("0")
        .with_f32_data(&kernel)
        .with_shape(&[h as u64, cfg.output as u64]);
    iv.create_dataset("1")
        .with_f32_data(&params[layout.head_b()..layout.head_b() + cfg.output])
        .with_shape(&[cfg.output as u64]);
    inner.add_group(iv.finish());
    td.add_group(inner.finish());
    let mut tv = td.create_group("vars");
    named(&mut tv, "time_distributed");
    td.add_group(tv.finish());
    layers.add_group(td.finish());
    b.add_group(layers.finish());
    let mut top = b.create_group("vars");
    named(&mut top, "sequential");
    b.add_group(top.finish());
    let bytes = b
        .finish()
        .map_err(|e| bad(path, format!("encoding HDF5: {e}")))?;
    runtime::fs::write_atomic(path, &bytes).map_err(|e| ModelError::io(path, e.source))
}

/// The layer names [`save`] writes, for messages and tests.
pub fn layer_names(cfg: &ModelConfig) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for k in 0..cfg.layers {
        let name = if k == 0 {
            "lstm".to_string()
        } else {
            format!("lstm_{k}")
        };
        out.insert(name, "LSTM");
    }
    out.insert("dropout".into(), "Dropout");
    out.insert("time_distributed".into(), "TimeDistributed(Dense)");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::init_params;

    #[test]
    fn carry_weights_go_to_keras_and_back_unchanged() {
        let dir = std::env::temp_dir().join(format!("carry-keras-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ModelConfig {
            hidden: 5,
            layers: 3,
            output: 3,
            dropout: 0.0,
            ..ModelConfig::seed()
        };
        let params = init_params(&cfg, 9);
        let p = dir.join("m.weights.h5");
        save(&p, &cfg, &params).unwrap();
        let back = load(&p, None).unwrap();
        assert_eq!(back.config, cfg);
        assert_eq!(
            back.params, params,
            "bias_hh is zero, so the round trip is exact"
        );
        assert_eq!(layer_names(&cfg).len(), 5);
        let e = load(&dir.join("none.weights.h5"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.weights.h5"), "{e}");
        std::fs::write(dir.join("junk.h5"), b"not hdf5").unwrap();
        let e = load(&dir.join("junk.h5"), None).unwrap_err().to_string();
        assert!(e.contains("expected an HDF5 file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
