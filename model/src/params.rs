//! Parameters as one flat f32 vector in a fixed order, the PyTorch layout.
//!
//! Order: for each layer `k`: `lstm.weight_ih_l{k}` `[4H, in]`, `lstm.weight_hh_l{k}` `[4H, H]`,
//! `lstm.bias_ih_l{k}` `[4H]`, `lstm.bias_hh_l{k}` `[4H]` (gate blocks i, f, g, o); then
//! `head.weight` `[out, H]`, `head.bias` `[out]`; then, with a conditioning projection, for each
//! layer `init.weight_l{k}` `[2H, C]` and `init.bias_l{k}` `[2H]` (rows `0..H` give `h0`
//! through tanh, rows `H..2H` give `c0`). Gradients use the same order, so the flat vector is the
//! wire format and every process agrees on it without exchanging names.

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::rng::Rng;

/// One named tensor inside the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch-style name.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Start within the flat vector.
    pub offset: usize,
}

impl ParamSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element range within the flat vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Offsets of one LSTM layer's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOffsets {
    /// Layer input width.
    pub input: usize,
    /// `weight_ih` `[4H, input]`.
    pub w_ih: usize,
    /// `weight_hh` `[4H, H]`.
    pub w_hh: usize,
    /// `bias_ih` `[4H]`.
    pub b_ih: usize,
    /// `bias_hh` `[4H]`.
    pub b_hh: usize,
}

/// The layout of all parameters of a [`ModelConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    layers: Vec<LayerOffsets>,
    head_w: usize,
    head_b: usize,
    /// `(weight, bias)` offsets of each layer's initial-state projection.
    init: Vec<(usize, usize)>,
    total: usize,
}

impl ParamLayout {
    /// Checks that `params` has this layout's length.
    pub fn check_len(&self, params: &[f32]) -> Result<(), ModelError> {
        if params.len() == self.len() {
            Ok(())
        } else {
            Err(ModelError::shape(
                "parameters",
                &[self.len()],
                &[params.len()],
            ))
        }
    }

    /// The layout for `cfg`.
    pub fn new(cfg: &ModelConfig) -> Self {
        let h = cfg.hidden;
        let mut specs = Vec::new();
        let mut total = 0;
        let mut push = |name: String, shape: Vec<usize>| {
            let spec = ParamSpec {
                name,
                shape,
                offset: total,
            };
            total += spec.len();
            let offset = spec.offset;
            specs.push(spec);
            offset
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for k in 0..cfg.layers {
            let input = if k == 0 { cfg.input } else { h };
            let w_ih = push(format!("lstm.weight_ih_l{k}"), vec![4 * h, input]);
            let w_hh = push(format!("lstm.weight_hh_l{k}"), vec![4 * h, h]);
            let b_ih = push(format!("lstm.bias_ih_l{k}"), vec![4 * h]);
            let b_hh = push(format!("lstm.bias_hh_l{k}"), vec![4 * h]);
            layers.push(LayerOffsets {
                input,
                w_ih,
                w_hh,
                b_ih,
                b_hh,
            });
        }
        let head_w = push("head.weight".into(), vec![cfg.output, h]);
        let head_b = push("head.bias".into(), vec![cfg.output]);
        let mut init = Vec::new();
        if let Some(c) = cfg.cond {
            for k in 0..cfg.layers {
                let w = push(format!("init.weight_l{k}"), vec![2 * h, c]);
                let b = push(format!("init.bias_l{k}"), vec![2 * h]);
                init.push((w, b));
            }
        }
        Self {
            specs,
            layers,
            head_w,
            head_b,
            init,
            total,
        }
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether there are no parameters (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// All tensors in order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The tensor called `name`.
    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Offsets of LSTM layer `k`.
    pub fn layer(&self, k: usize) -> LayerOffsets {
        self.layers[k]
    }

    /// Offset of `head.weight` `[out, H]`.
    pub fn head_w(&self) -> usize {
        self.head_w
    }

    /// Offset of `head.bias` `[out]`.
    pub fn head_b(&self) -> usize {
        self.head_b
    }

    /// `(weight, bias)` offsets of layer `k`'s initial-state projection, if configured.
    pub fn init(&self, k: usize) -> Option<(usize, usize)> {
        self.init.get(k).copied()
    }
}

/// Initial parameters as Keras initializes the seed's stack: Glorot-uniform input kernels and
/// head, orthogonal recurrent kernels, zero biases except the forget gate's at 1.
pub fn init_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed, "init");
    let mut p = vec![0.0f32; layout.len()];
    let h = cfg.hidden;
    for k in 0..cfg.layers {
        let l = layout.layer(k);
        // Keras' kernel is [in, 4H]; its Glorot limit uses fan_in = in, fan_out = 4H.
        glorot(
            &mut p[l.w_ih..l.w_ih + 4 * h * l.input],
            l.input,
            4 * h,
            &mut rng,
        );
        orthogonal_columns(&mut p[l.w_hh..l.w_hh + 4 * h * h], 4 * h, h, &mut rng);
        p[l.b_ih + h..l.b_ih + 2 * h].fill(1.0); // unit forget bias
    }
    let out = cfg.output;
    glorot(
        &mut p[layout.head_w()..layout.head_w() + out * h],
        h,
        out,
        &mut rng,
    );
    if let Some(c) = cfg.cond {
        for k in 0..cfg.layers {
            let (w, _) = layout.init(k).expect("projection configured");
            glorot(&mut p[w..w + 2 * h * c], c, 2 * h, &mut rng);
        }
    }
    p
}

fn glorot(out: &mut [f32], fan_in: usize, fan_out: usize, rng: &mut Rng) {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    for v in out {
        *v = rng.range(-limit, limit) as f32;
    }
}

/// Fills a row-major `[rows, cols]` matrix (rows >= cols) with orthonormal columns, the transpose
/// of Keras' orthogonal `[H, 4H]` recurrent kernel (QR of a Gaussian matrix, signs fixed by R).
fn orthogonal_columns(out: &mut [f32], rows: usize, cols: usize, rng: &mut Rng) {
    let mut a: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
    // Modified Gram-Schmidt over columns; dividing by the norm gives R's diagonal a positive sign.
    for j in 0..cols {
        for i in 0..j {
            let dot: f64 = (0..rows).map(|r| a[r * cols + i] * a[r * cols + j]).sum();
            for r in 0..rows {
                a[r * cols + j] -= dot * a[r * cols + i];
            }
        }
        let norm = (0..rows)
            .map(|r| a[r * cols + j].powi(2))
            .sum::<f64>()
            .sqrt();
        for r in 0..rows {
            a[r * cols + j] /= norm;
        }
    }
    for (o, v) in out.iter_mut().zip(a) {
        *o = v as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_pytorch_names_and_sizes() {
        let cfg = ModelConfig::seed();
        let l = ParamLayout::new(&cfg);
        let names: Vec<&str> = l.specs().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lstm.weight_ih_l0",
                "lstm.weight_hh_l0",
                "lstm.bias_ih_l0",
                "lstm.bias_hh_l0",
                "lstm.weight_ih_l1",
                "lstm.weight_hh_l1",
                "lstm.bias_ih_l1",
                "lstm.bias_hh_l1",
                "head.weight",
                "head.bias",
            ]
        );
        // PyTorch: 4H*(in+H) + 8H per layer, then out*H + out.
        assert_eq!(l.len(), (32 * 10 + 64) + (32 * 16 + 64) + 16 + 2);
        assert_eq!(l.spec("lstm.weight_ih_l1").unwrap().shape, vec![32, 8]);
    }

    #[test]
    fn init_is_keras_like_and_deterministic() {
        let cfg = ModelConfig {
            hidden: 6,
            ..ModelConfig::seed()
        };
        let a = init_params(&cfg, 1);
        assert_eq!(a, init_params(&cfg, 1));
        assert_ne!(a, init_params(&cfg, 2));
        let l = ParamLayout::new(&cfg);
        let h = 6;
        let k0 = l.layer(0);
        // forget bias 1, the rest 0
        assert!(a[k0.b_ih..k0.b_ih + h].iter().all(|&v| v == 0.0));
        assert!(a[k0.b_ih + h..k0.b_ih + 2 * h].iter().all(|&v| v == 1.0));
        assert!(a[k0.b_hh..k0.b_hh + 4 * h].iter().all(|&v| v == 0.0));
        // columns of W_hh [4H, H] are orthonormal
        let w = &a[k0.w_hh..k0.w_hh + 4 * h * h];
        for i in 0..h {
            for j in 0..h {
                let dot: f32 = (0..4 * h).map(|r| w[r * h + i] * w[r * h + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "({i},{j}) = {dot}");
            }
        }
        // Glorot bound for the input kernel
        let limit = (6.0f32 / (2.0 + 24.0)).sqrt();
        assert!(
            a[k0.w_ih..k0.w_ih + 4 * h * 2]
                .iter()
                .all(|v| v.abs() <= limit)
        );
    }
}
