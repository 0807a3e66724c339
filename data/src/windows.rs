//! Windows training data: the built-in synthetic generator and `.npz` files of equal windows, validated up front.
//!
//! Every array is checked before training starts: rank and sizes, `x`/`y` lengths, dtype (via
//! [`crate::npy`]), and finiteness. Errors name the array, the expected and the given shape.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{DataError, fmt_shape};
use crate::npy::{self, Array};
use crate::rng::Rng;

/// `N` sequences of `T` steps with `F` features, row-major `[N, T, F]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequences {
    /// Sequences.
    pub n: usize,
    /// Time steps per sequence.
    pub t: usize,
    /// Features per step.
    pub f: usize,
    /// `[n, t, f]` values.
    pub values: Vec<f32>,
}

impl Sequences {
    /// Sequence `i` as `[t, f]`.
    pub fn seq(&self, i: usize) -> &[f32] {
        let len = self.t * self.f;
        &self.values[i * len..(i + 1) * len]
    }

    /// Copies the given sequences, in order, into one `[len, t, f]` buffer.
    pub fn gather_into(&self, indices: impl IntoIterator<Item = usize>, out: &mut Vec<f32>) {
        out.clear();
        for i in indices {
            out.extend_from_slice(self.seq(i));
        }
    }

    /// The shape `(n, t, f)`.
    pub fn shape(&self) -> [usize; 3] {
        [self.n, self.t, self.f]
    }
}

/// Per-sequence conditioning vectors, `[n, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    /// Vector width.
    pub width: usize,
    /// `[n, width]` values.
    pub values: Vec<f32>,
}

/// Inputs, targets and optional conditioning vectors of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Inputs `[N, T, F]`.
    pub x: Sequences,
    /// Targets `[N, T, F_out]`.
    pub y: Sequences,
    /// Conditioning vectors `[N, C]`.
    pub cond: Option<Cond>,
}

/// A training set with an optional validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where it came from (file path or generator description), for messages.
    pub name: String,
    /// Training split.
    pub train: Split,
    /// Validation split.
    pub val: Option<Split>,
}

impl Dataset {
    /// Input features `F`.
    pub fn input_features(&self) -> usize {
        self.train.x.f
    }

    /// Target features.
    pub fn output_features(&self) -> usize {
        self.train.y.f
    }

    /// Time steps `T`.
    pub fn timesteps(&self) -> usize {
        self.train.x.t
    }

    /// Width of the conditioning vectors, if present.
    pub fn cond_width(&self) -> Option<usize> {
        self.train.cond.as_ref().map(|c| c.width)
    }

    /// A digest of every array's shape and values: resuming on other data is refused with it.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut add = |tag: &str, shape: &[usize], v: &[f32]| {
            h.update(tag.as_bytes());
            for d in shape {
                h.update((*d as u64).to_le_bytes());
            }
            for x in v {
                h.update(x.to_le_bytes());
            }
        };
        let mut add_split = |prefix: &str, s: &Split| {
            add(&format!("{prefix}x"), &s.x.shape(), &s.x.values);
            add(&format!("{prefix}y"), &s.y.shape(), &s.y.values);
            if let Some(c) = &s.cond {
                add(&format!("{prefix}cond"), &[s.x.n, c.width], &c.values);
            }
        };
        add_split("train.", &self.train);
        if let Some(v) = &self.val {
            add_split("val.", v);
        }
        let digest = h.finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// Parameters of the built-in synthetic data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    /// Training sequences.
    pub sequences: usize,
    /// Validation sequences (continuing the same streams after the training part).
    pub val_sequences: usize,
    /// Parallel streams; equal to the job's batch size so each slot continues its stream.
    pub streams: usize,
    /// Time steps per sequence.
    pub timesteps: usize,
    /// Generator seed.
    pub seed: u64,
    /// Standard deviation of the observation noise on the inputs.
    pub noise: f64,
}

impl SyntheticSpec {
    /// 2000 training and 400 validation sequences of 96 steps for `streams` streams.
    pub fn new(streams: usize, seed: u64) -> Self {
        Self {
            sequences: 2000,
            val_sequences: 400,
            streams,
            timesteps: 96,
            seed,
            noise: 0.05,
        }
    }
}

/// Noisy 2-D trajectories: each stream is a point moving around its own ellipse (center, radii,
/// angular speed and direction drawn per stream). Inputs are the noisy positions, targets the
/// clean next positions. Sequence `i` is chunk `i / streams` of stream `i % streams`, the Keras
/// stateful layout, so carried state lets the model keep what it learned about its stream; the
/// validation chunks continue the same streams after the training chunks.
pub fn synthetic(spec: &SyntheticSpec) -> Dataset {
    let b = spec.streams.max(1);
    let t = spec.timesteps;
    let train_chunks = spec.sequences.div_ceil(b);
    let val_chunks = spec.val_sequences.div_ceil(b);
    let len = (train_chunks + val_chunks) * t + 1;
    let mut rng = Rng::new(spec.seed, "synthetic");
    // [stream][time] clean positions and noisy observations
    let mut clean = Vec::with_capacity(b);
    let mut noisy = Vec::with_capacity(b);
    for _ in 0..b {
        let (cx, cy) = (rng.range(-0.3, 0.3), rng.range(-0.3, 0.3));
        let rx = rng.range(0.3, 0.7);
        let ry = rx * rng.range(0.6, 1.0);
        let dir = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let omega = dir * rng.range(0.06, 0.2);
        let phase = rng.range(0.0, std::f64::consts::TAU);
        let tilt = rng.range(0.0, std::f64::consts::PI);
        let (ct, st) = (tilt.cos(), tilt.sin());
        let mut c = Vec::with_capacity(len * 2);
        let mut o = Vec::with_capacity(len * 2);
        for k in 0..len {
            let a = omega * k as f64 + phase;
            let (ex, ey) = (rx * a.cos(), ry * a.sin());
            let (px, py) = (cx + ct * ex - st * ey, cy + st * ex + ct * ey);
            c.push([px, py]);
            o.push([
                px + spec.noise * rng.normal(),
                py + spec.noise * rng.normal(),
            ]);
        }
        clean.push(c);
        noisy.push(o);
    }
    let make = |first_chunk: usize, n: usize| -> Split {
        let mut x = Vec::with_capacity(n * t * 2);
        let mut y = Vec::with_capacity(n * t * 2);
        for i in 0..n {
            let (stream, chunk) = (i % b, first_chunk + i / b);
            for k in chunk * t..(chunk + 1) * t {
                x.extend(noisy[stream][k].iter().map(|&v| v as f32));
                y.extend(clean[stream][k + 1].iter().map(|&v| v as f32));
            }
        }
        Split {
            x: Sequences {
                n,
                t,
                f: 2,
                values: x,
            },
            y: Sequences {
                n,
                t,
                f: 2,
                values: y,
            },
            cond: None,
        }
    };
    let train = make(0, spec.sequences);
    let val = (spec.val_sequences > 0).then(|| make(train_chunks, spec.val_sequences));
    Dataset {
        name: format!(
            "synthetic(sequences={}, streams={}, seed={})",
            spec.sequences, spec.streams, spec.seed
        ),
        train,
        val,
    }
}

/// Reshapes an array to `[N, T, F]`: a 3-D array is taken as is; any other array is flat data
/// reshaped as `(-1, T, F)` when its size divides by `T * F`.
pub fn to_sequences(arr: Array, what: &str, t: usize, f: usize) -> Result<Sequences, DataError> {
    let err = |msg: String| DataError::Invalid {
        source_name: what.into(),
        msg,
    };
    let seqs = if let [n, tt, ff] = arr.shape[..] {
        Sequences {
            n,
            t: tt,
            f: ff,
            values: arr.data,
        }
    } else {
        let size = arr.data.len();
        if t == 0 || f == 0 || !size.is_multiple_of(t * f) || size == 0 {
            return Err(err(format!(
                "expected shape (N, {t}, {f}) or flat data whose size divides by {t}*{f} = {}, got shape {} ({size} values)",
                t * f,
                fmt_shape(&arr.shape)
            )));
        }
        Sequences {
            n: size / (t * f),
            t,
            f,
            values: arr.data,
        }
    };
    if seqs.t == 0 || seqs.f == 0 {
        return Err(err(format!(
            "expected at least 1 time step and 1 feature, got shape {}",
            fmt_shape(&seqs.shape())
        )));
    }
    crate::error::check_finite(what, &seqs.values)?;
    Ok(seqs)
}

/// The arrays a training `.npz` may hold.
pub const NPZ_ARRAYS: [&str; 6] = ["x", "y", "x_val", "y_val", "cond", "cond_val"];

/// Loads `x`, `y` and optionally `x_val`, `y_val`, `cond`, `cond_val` from an `.npz` file; flat
/// arrays are reshaped as `(-1, t, f)`. At most the memory available is used (see
/// [`load_npz_with`]).
pub fn load_npz(path: &Path, t: usize, f: usize) -> Result<Dataset, DataError> {
    load_npz_with(path, t, f, None)
}

/// [`load_npz`] with a ceiling on the bytes the arrays may need in memory. Only the expected
/// arrays are read, and each one's declared shape is checked against the ceiling (and the memory
/// available) and against the entry's real size before it is decompressed.
pub fn load_npz_with(
    path: &Path,
    t: usize,
    f: usize,
    max_bytes: Option<u64>,
) -> Result<Dataset, DataError> {
    let name = path.display().to_string();
    let mut arrays = npy::read_npz_with(
        path,
        &npy::NpzOptions {
            names: Some(&NPZ_ARRAYS),
            max_bytes,
        },
    )?;
    let data_err = |msg: String| DataError::Invalid {
        source_name: name.clone(),
        msg,
    };
    let mut take = |key: &str| arrays.remove(key);
    let (x, y) = match (take("x"), take("y")) {
        (Some(x), Some(y)) => (x, y),
        (x, y) => {
            let missing: Vec<&str> = [("x", x.is_none()), ("y", y.is_none())]
                .iter()
                .filter(|m| m.1)
                .map(|m| m.0)
                .collect();
            return Err(data_err(format!(
                "expected arrays `x` and `y`, missing {}",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )));
        }
    };
    let (x_val, y_val) = (take("x_val"), take("y_val"));
    let (cond, cond_val) = (take("cond"), take("cond_val"));
    let train = split(&name, "", x, y, cond, t, f)?;
    let val = match (x_val, y_val) {
        (Some(xv), Some(yv)) => {
            if train.cond.is_some() && cond_val.is_none() {
                return Err(data_err(
                    "`cond` is given, so `cond_val` is expected too, but it is missing".into(),
                ));
            }
            let v = split(&name, "_val", xv, yv, cond_val, t, f)?;
            if (v.x.t, v.x.f, v.y.f) != (train.x.t, train.x.f, train.y.f) {
                return Err(data_err(format!(
                    "x_val/y_val: expected steps and features like x/y ({}, {}, {}), got ({}, {}, {})",
                    train.x.t, train.x.f, train.y.f, v.x.t, v.x.f, v.y.f
                )));
            }
            if let (Some(a), Some(b)) = (&train.cond, &v.cond)
                && a.width != b.width
            {
                return Err(data_err(format!(
                    "cond_val: expected width {} like cond, got {}",
                    a.width, b.width
                )));
            }
            Some(v)
        }
        (None, None) => {
            if cond_val.is_some() {
                return Err(data_err(
                    "`cond_val` is given without `x_val` and `y_val`".into(),
                ));
            }
            None
        }
        (Some(_), None) => {
            return Err(data_err(
                "`x_val` is given, so `y_val` is expected too, but it is missing".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(data_err(
                "`y_val` is given, so `x_val` is expected too, but it is missing".into(),
            ));
        }
    };
    Ok(Dataset { name, train, val })
}

fn split(
    file: &str,
    suffix: &str,
    x: Array,
    y: Array,
    cond: Option<Array>,
    t: usize,
    f: usize,
) -> Result<Split, DataError> {
    let (xn, yn) = (format!("{file}: x{suffix}"), format!("{file}: y{suffix}"));
    let x = to_sequences(x, &xn, t, f)?;
    let y_features = if y.shape.len() == 3 { 0 } else { x.f };
    let y = to_sequences(y, &yn, x.t, y_features)?;
    if y.n != x.n || y.t != x.t {
        return Err(DataError::Invalid {
            source_name: file.into(),
            msg: format!(
                "x{suffix} and y{suffix} must hold the same sequences and steps: x{suffix} is {}, y{suffix} is {}",
                fmt_shape(&x.shape()),
                fmt_shape(&y.shape())
            ),
        });
    }
    let cond = match cond {
        None => None,
        Some(c) => {
            let what = format!("{file}: cond{suffix}");
            match c.shape[..] {
                [n, w] if n == x.n && w > 0 => {
                    crate::error::check_finite(&what, &c.data)?;
                    Some(Cond {
                        width: w,
                        values: c.data,
                    })
                }
                _ => {
                    return Err(DataError::Invalid {
                        source_name: what,
                        msg: format!("expected shape ({}, C), got {}", x.n, fmt_shape(&c.shape)),
                    });
                }
            }
        }
    };
    Ok(Split { x, y, cond })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::write_npz;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("carry-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn synthetic_streams_continue_across_batches() {
        let spec = SyntheticSpec {
            sequences: 40,
            val_sequences: 20,
            ..SyntheticSpec::new(10, 3)
        };
        let d = synthetic(&spec);
        assert_eq!(d.train.x.shape(), [40, 96, 2]);
        assert_eq!(d.val.as_ref().unwrap().x.shape(), [20, 96, 2]);
        // target of the last step of sequence i is the clean position that the next chunk of
        // the same stream (sequence i + B) starts near
        for i in 0..30 {
            let last_target = &d.train.y.seq(i)[95 * 2..96 * 2];
            let next_first_input = &d.train.x.seq(i + 10)[0..2];
            for k in 0..2 {
                assert!(
                    (last_target[k] - next_first_input[k]).abs() < 0.4,
                    "stream continuity"
                );
            }
        }
        assert_eq!(d, synthetic(&spec), "deterministic");
        assert_ne!(
            d.fingerprint(),
            synthetic(&SyntheticSpec { seed: 4, ..spec }).fingerprint()
        );
    }

    #[test]
    fn npz_flat_and_3d_load() {
        let p = tmp("ok.npz");
        let x: Vec<f32> = (0..2 * 96 * 2).map(|v| v as f32).collect();
        write_npz(&p, &[("x", &[384], &x), ("y", &[2, 96, 2], &x)]).unwrap();
        let d = load_npz(&p, 96, 2).unwrap();
        assert_eq!(d.train.x.shape(), [2, 96, 2]);
        assert_eq!(d.train.y.shape(), [2, 96, 2]);
        assert!(d.val.is_none());
    }

    fn load_err(arrays: &[(&str, &[usize], &[f32])]) -> String {
        let p = tmp("bad.npz");
        write_npz(&p, arrays).unwrap();
        load_npz(&p, 96, 2).unwrap_err().to_string()
    }

    #[test]
    fn every_data_error_is_clear() {
        let v = vec![0.0f32; 2 * 96 * 2];
        let e = load_err(&[("x", &[1000], &vec![0.0; 1000]), ("y", &[2, 96, 2], &v)]);
        assert!(
            e.contains("x") && e.contains("96*2 = 192") && e.contains("(1000,)"),
            "{e}"
        );
        let e = load_err(&[("x", &[2, 96, 2], &v)]);
        assert!(e.contains("missing `y`"), "{e}");
        let e = load_err(&[("x", &[2, 96, 2], &v), ("y", &[1, 96, 2], &v[..192])]);
        assert!(
            e.contains("same sequences") && e.contains("(2, 96, 2)") && e.contains("(1, 96, 2)"),
            "{e}"
        );
        let mut nan = v.clone();
        nan[7] = f32::NAN;
        let e = load_err(&[("x", &[2, 96, 2], &nan), ("y", &[2, 96, 2], &v)]);
        assert!(
            e.contains("x") && e.contains("finite") && e.contains("index 7"),
            "{e}"
        );
        let e = load_err(&[
            ("x", &[2, 96, 2], &v),
            ("y", &[2, 96, 2], &v),
            ("x_val", &[2, 96, 2], &v),
        ]);
        assert!(e.contains("y_val") && e.contains("missing"), "{e}");
        let e = load_err(&[
            ("x", &[2, 96, 2], &v),
            ("y", &[2, 96, 2], &v),
            ("w", &[1], &[0.0]),
        ]);
        assert!(e.contains("unexpected array `w`"), "{e}");
        let e = load_err(&[
            ("x", &[2, 96, 2], &v),
            ("y", &[2, 96, 2], &v),
            ("cond", &[3, 2], &[0.0; 6]),
        ]);
        assert!(
            e.contains("cond") && e.contains("(2, C)") && e.contains("(3, 2)"),
            "{e}"
        );
        let e = load_err(&[
            ("x", &[2, 96, 2], &v),
            ("y", &[2, 96, 2], &v),
            ("x_val", &[1, 48, 2], &v[..96]),
            ("y_val", &[1, 48, 2], &v[..96]),
        ]);
        assert!(
            e.contains("x_val/y_val") && e.contains("(96, 2, 2)") && e.contains("(48, 2, 2)"),
            "{e}"
        );
        let p = tmp("notzip.npz");
        std::fs::write(&p, b"hello").unwrap();
        let e = load_npz(&p, 96, 2).unwrap_err().to_string();
        assert!(e.contains("notzip.npz"), "{e}");
    }
}
