//! Adam on flat vectors, with Keras' update rule (epsilon added to `sqrt(v)`, the step size
//! bias-corrected) or PyTorch's (epsilon added to `sqrt(v_hat)`).

use crate::config::{AdamConfig, Compat};

/// Optimizer state: first and second moments and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Updates applied so far.
    pub t: u64,
}

impl AdamState {
    /// Zero moments for `len` parameters.
    pub fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// Applies one update with gradient `grad` to `params` by `rule`'s formula.
    pub fn step(&mut self, cfg: &AdamConfig, rule: Compat, params: &mut [f32], grad: &[f32]) {
        assert_eq!(params.len(), grad.len(), "adam: gradient length");
        assert_eq!(params.len(), self.m.len(), "adam: state length");
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2, eps) = (cfg.beta1 as f32, cfg.beta2 as f32, cfg.epsilon as f32);
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
        let moments = params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v);
        match rule {
            Compat::Keras => {
                let alpha = (cfg.lr * bc2.sqrt() / bc1) as f32;
                for (((p, &g), m), v) in moments {
                    *m += (g - *m) * (1.0 - b1);
                    *v += (g * g - *v) * (1.0 - b2);
                    *p -= alpha * *m / (v.sqrt() + eps);
                }
            }
            Compat::Torch => {
                // torch.optim.Adam: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
                let step = (cfg.lr / bc1) as f32;
                let root_bc2 = bc2.sqrt() as f32;
                for (((p, &g), m), v) in moments {
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    *p -= step * *m / (v.sqrt() / root_bc2 + eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_rules_differ_where_epsilon_goes() {
        let cfg = AdamConfig {
            epsilon: 1e-3,
            ..AdamConfig::default()
        };
        let (mut k, mut t) = (AdamState::new(1), AdamState::new(1));
        let (mut pk, mut pt) = (vec![0.0f32], vec![0.0f32]);
        k.step(&cfg, Compat::Keras, &mut pk, &[1e-3]);
        t.step(&cfg, Compat::Torch, &mut pt, &[1e-3]);
        // step 1: m_hat = g, v_hat = g^2; keras divides by sqrt(v) + eps with sqrt(v) = g * sqrt(bc2)
        let (g, lr, eps, bc2) = (1e-3f64, 1e-3, 1e-3, 1.0 - 0.999f64);
        let want_t = -lr * g / (g + eps);
        let want_k = -lr * bc2.sqrt() / 0.1 * (0.1 * g) / ((bc2 * g * g).sqrt() + eps);
        assert!(
            (f64::from(pt[0]) - want_t).abs() < 1e-8,
            "{} vs {want_t}",
            pt[0]
        );
        assert!(
            (f64::from(pk[0]) - want_k).abs() < 1e-8,
            "{} vs {want_k}",
            pk[0]
        );
        assert!((pk[0] - pt[0]).abs() > 1e-5);
    }

    #[test]
    fn first_step_moves_each_parameter_by_about_lr() {
        let cfg = AdamConfig::default();
        let mut s = AdamState::new(3);
        let mut p = vec![1.0, 2.0, 3.0];
        s.step(&cfg, Compat::Keras, &mut p, &[0.5, -2.0, 0.0]);
        assert!((p[0] - (1.0 - 1e-3)).abs() < 1e-6, "{}", p[0]);
        assert!((p[1] - (2.0 + 1e-3)).abs() < 1e-6, "{}", p[1]);
        assert_eq!(p[2], 3.0);
        assert_eq!(s.t, 1);
    }

    #[test]
    fn minimizes_a_quadratic() {
        let cfg = AdamConfig {
            lr: 0.05,
            ..AdamConfig::default()
        };
        let mut s = AdamState::new(2);
        let mut p = vec![3.0f32, -2.0];
        for _ in 0..2000 {
            let g: Vec<f32> = p.iter().map(|x| 2.0 * (x - 1.0)).collect();
            s.step(&cfg, Compat::Keras, &mut p, &g);
        }
        assert!(p.iter().all(|x| (x - 1.0).abs() < 1e-2), "{p:?}");
    }
}
