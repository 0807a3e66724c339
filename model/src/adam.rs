//! Adam on flat vectors, with Keras' update rule (epsilon outside the bias correction).

use crate::config::AdamConfig;

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

    /// Applies one update with gradient `grad` to `params`.
    pub fn step(&mut self, cfg: &AdamConfig, params: &mut [f32], grad: &[f32]) {
        assert_eq!(params.len(), grad.len(), "adam: gradient length");
        assert_eq!(params.len(), self.m.len(), "adam: state length");
        self.t += 1;
        let t = self.t as i32;
        let alpha = (cfg.lr * (1.0 - cfg.beta2.powi(t)).sqrt() / (1.0 - cfg.beta1.powi(t))) as f32;
        let (b1, b2, eps) = (cfg.beta1 as f32, cfg.beta2 as f32, cfg.epsilon as f32);
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m += (g - *m) * (1.0 - b1);
            *v += (g * g - *v) * (1.0 - b2);
            *p -= alpha * *m / (v.sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_about_lr() {
        let cfg = AdamConfig::default();
        let mut s = AdamState::new(3);
        let mut p = vec![1.0, 2.0, 3.0];
        s.step(&cfg, &mut p, &[0.5, -2.0, 0.0]);
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
            s.step(&cfg, &mut p, &g);
        }
        assert!(p.iter().all(|x| (x - 1.0).abs() < 1e-2), "{p:?}");
    }
}
