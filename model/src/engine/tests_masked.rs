//! Ragged batches and loss kinds: every engine's loss, gradient, final states and initial-state
//! gradients against a plain f64 reference that runs each row over its valid steps only (its
//! gradients by central finite differences), padded values that change nothing, and a batch
//! without padding that equals the unmasked one exactly. Unobserved targets (missing values,
//! [`Batch::observed`]) against the same reference with those terms dropped by hand.

use crate::config::{Head, ModelConfig};
use crate::dropout::{DropoutKey, DropoutMask};
use crate::engine::burn_ref::BurnEngine;
use crate::engine::cpu::CpuEngine;
use crate::engine::{Batch, Engine, Loss, TrainOut};
use crate::error::ModelError;
use crate::params::ParamLayout;
use crate::rng::Rng;
use crate::state::SlotStates;
use crate::tests::{random, random_states};

/// Every loss: squared, absolute, Huber, and the pinball loss at two levels (the model has two
/// outputs: one target, two quantiles, or two targets of one level each when read as such).
fn losses() -> [Loss; 4] {
    [
        Loss::Mse,
        Loss::Mae,
        Loss::Huber(0.5),
        Loss::Pinball(crate::engine::Quantiles::new(&[0.2, 0.7]).unwrap()),
    ]
}

/// The small model of these tests: input 2, hidden 4, 2 layers, output 2.
fn config(head: Head, dropout: f32) -> ModelConfig {
    ModelConfig {
        input: 2,
        hidden: 4,
        layers: 2,
        output: 2,
        head,
        dropout,
        cond: None,
    }
}

/// A ragged shard: lengths 0, 1 and `t` among others, random values everywhere (padding too).
struct Case {
    cfg: ModelConfig,
    n: usize,
    t: usize,
    p: Vec<f32>,
    x: Vec<f32>,
    y: Vec<f32>,
    valid: Vec<u32>,
    slots: Vec<u64>,
    key: Option<DropoutKey>,
    init: SlotStates,
    /// Whether each target was observed (`None`: all).
    observed: Option<Vec<bool>>,
}

impl Case {
    fn new(cfg: ModelConfig, seed: u64) -> Self {
        let (n, t) = (6, 7);
        let key = (cfg.dropout > 0.0).then_some(DropoutKey {
            seed: 5,
            epoch: 1,
            step: seed,
        });
        Self {
            p: random(ParamLayout::new(&cfg).len(), seed, 0.5),
            x: random(n * t * cfg.input, seed + 1, 1.0),
            y: random(n * t * cfg.output, seed + 2, 0.5),
            valid: vec![0, 1, 7, 3, 5, 2],
            slots: (0..n as u64).map(|s| 11 * s + 3).collect(),
            key,
            init: random_states(&cfg, n, seed + 3),
            observed: None,
            cfg,
            n,
            t,
        }
    }

    /// The same shard with about a third of its targets unobserved (seeded), some steps with
    /// none of their outputs observed and some with part of them.
    fn with_missing(mut self, seed: u64) -> Self {
        let mut rng = Rng::new(seed, "tests-masked-observed");
        let len = self.n * self.t * self.cfg.output;
        self.observed = Some((0..len).map(|_| rng.range(0.0, 1.0) > 0.35).collect());
        self
    }

    fn batch(&self, loss: Loss) -> Batch<'_> {
        Batch {
            n: self.n,
            t: self.t,
            x: &self.x,
            y: &self.y,
            slots: &self.slots,
            dropout: self.key,
            valid: Some(&self.valid),
            observed: self.observed.as_deref(),
            loss,
        }
    }

    /// The same shard with other random values in every padded step of `x` and `y`.
    fn repadded(&self, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let (mut x, mut y) = (self.x.clone(), self.y.clone());
        let (fx, fy) = (random(x.len(), seed, 3.0), random(y.len(), seed + 1, 3.0));
        for r in 0..self.n {
            for s in self.valid[r] as usize..self.t {
                let (i, o) = (self.cfg.input, self.cfg.output);
                let (a, b) = ((r * self.t + s) * i, (r * self.t + s) * o);
                x[a..a + i].copy_from_slice(&fx[a..a + i]);
                y[b..b + o].copy_from_slice(&fy[b..b + o]);
            }
        }
        (x, y)
    }
}

/// The loss of output `o` of a step, in f64.
fn loss64(loss: Loss, o: usize, p: f64, y: f64) -> f64 {
    let d = p - y;
    match loss {
        Loss::Pinball(levels) => {
            let q = f64::from(levels.level(o));
            if d < 0.0 { -q * d } else { (1.0 - q) * d }
        }
        Loss::Mse => d * d,
        Loss::Mae => d.abs(),
        Loss::Huber(delta) => {
            let delta = f64::from(delta);
            if d.abs() <= delta {
                0.5 * d * d
            } else {
                delta * (d.abs() - 0.5 * delta)
            }
        }
    }
}

/// The f64 reference of a whole shard, each row run alone over its valid steps only (no padding
/// anywhere): the loss sum and the final `(h, c)` `[layers, n, H]`. `p` is the flat parameter
/// vector and `h0` / `c0` the initial states `[layers, n, H]`, all in f64.
fn reference(c: &Case, loss: Loss, p: &[f64], h0: &[f64], c0: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let cfg = &c.cfg;
    let (n, t, h, fi, fo) = (c.n, c.t, cfg.hidden, cfg.input, cfg.output);
    let lay = ParamLayout::new(cfg);
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mask = c.key.map(|k| DropoutMask::new(k, cfg.dropout));
    let (mut fh, mut fc) = (h0.to_vec(), c0.to_vec());
    let mut total = 0.0;
    for r in 0..n {
        let v = c.valid[r] as usize;
        // the row's valid inputs only
        let mut seq: Vec<Vec<f64>> = (0..v)
            .map(|s| {
                c.x[(r * t + s) * fi..(r * t + s + 1) * fi]
                    .iter()
                    .map(|&a| f64::from(a))
                    .collect()
            })
            .collect();
        for k in 0..cfg.layers {
            let lo = lay.layer(k);
            let inp = lo.input;
            let st = (k * n + r) * h;
            let mut hv = h0[st..st + h].to_vec();
            let mut cv = c0[st..st + h].to_vec();
            for xs in seq.iter_mut() {
                let gate = |g: usize, j: usize| -> f64 {
                    let i = g * h + j;
                    let mut a = p[lo.b_ih + i] + p[lo.b_hh + i];
                    for q in 0..inp {
                        a += p[lo.w_ih + i * inp + q] * xs[q];
                    }
                    for q in 0..h {
                        a += p[lo.w_hh + i * h + q] * hv[q];
                    }
                    a
                };
                let mut nh = vec![0.0; h];
                for j in 0..h {
                    let (ig, fg, gg, og) = (
                        sig(gate(0, j)),
                        sig(gate(1, j)),
                        gate(2, j).tanh(),
                        sig(gate(3, j)),
                    );
                    cv[j] = fg * cv[j] + ig * gg;
                    nh[j] = og * cv[j].tanh();
                }
                hv = nh;
                *xs = hv.clone();
            }
            fh[st..st + h].copy_from_slice(&hv);
            fc[st..st + h].copy_from_slice(&cv);
        }
        // dropout factors of the slot's valid steps (element s * H + j of the slot)
        let factors: Vec<f64> = match mask {
            Some(m) => {
                let mut f = vec![0.0f32; t * h];
                m.fill_slot(c.slots[r], &mut f);
                f.iter().map(|&a| f64::from(a)).collect()
            }
            None => vec![1.0; t * h],
        };
        let (hw, hb) = (lay.head_w(), lay.head_b());
        for (s, hv) in seq.iter().enumerate() {
            let mut z: Vec<f64> = (0..fo)
                .map(|o| {
                    p[hb + o]
                        + (0..h)
                            .map(|j| p[hw + o * h + j] * hv[j] * factors[s * h + j])
                            .sum::<f64>()
                })
                .collect();
            if cfg.head == Head::Softmax {
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|a| (a - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                z = e.iter().map(|a| a / sum).collect();
            }
            for (o, &pv) in z.iter().enumerate() {
                let i = (r * t + s) * fo + o;
                // an unobserved target's term is dropped
                if c.observed.as_ref().is_none_or(|seen| seen[i]) {
                    total += loss64(loss, o, pv, f64::from(c.y[i]));
                }
            }
        }
    }
    (total, fh, fc)
}

/// The reference's loss, gradient (central differences in f64), final states and initial-state
/// gradients.
struct Expected {
    loss: f64,
    grad: Vec<f64>,
    fin_h: Vec<f64>,
    fin_c: Vec<f64>,
    init_h: Vec<f64>,
    init_c: Vec<f64>,
}

fn expected(c: &Case, loss: Loss) -> Expected {
    let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
    let (p, h0, c0) = (f64s(&c.p), f64s(c.init.h()), f64s(c.init.c()));
    let (l, fin_h, fin_c) = reference(c, loss, &p, &h0, &c0);
    let eps = 1e-6;
    let diff = |which: usize, i: usize| {
        let mut v = [p.clone(), h0.clone(), c0.clone()];
        let mut w = v.clone();
        v[which][i] += eps;
        w[which][i] -= eps;
        let up = reference(c, loss, &v[0], &v[1], &v[2]).0;
        let down = reference(c, loss, &w[0], &w[1], &w[2]).0;
        (up - down) / (2.0 * eps)
    };
    Expected {
        loss: l,
        grad: (0..p.len()).map(|i| diff(0, i)).collect(),
        init_h: (0..h0.len()).map(|i| diff(1, i)).collect(),
        init_c: (0..c0.len()).map(|i| diff(2, i)).collect(),
        fin_h,
        fin_c,
    }
}

/// Largest difference relative to the reference's largest magnitude (at least `floor`).
fn rel(got: &[f32], want: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let num = got
        .iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|b| b.abs()).fold(floor, f64::max);
    num / den
}

fn assert_matches(what: &str, got: &TrainOut, want: &Expected) {
    let dl = (got.loss_sum - want.loss).abs() / want.loss.abs().max(1e-3);
    assert!(dl <= 1e-5, "{what}: loss {} vs {}", got.loss_sum, want.loss);
    let ig = got.init_grad.as_ref().expect("initial-state gradient");
    for (name, u, v, floor) in [
        ("grad", &got.grad[..], &want.grad[..], 1e-3),
        ("final h", got.final_state.h(), &want.fin_h[..], 1.0),
        ("final c", got.final_state.c(), &want.fin_c[..], 1.0),
        ("init grad h", ig.h(), &want.init_h[..], 1e-3),
        ("init grad c", ig.c(), &want.init_c[..], 1e-3),
    ] {
        let r = rel(u, v, floor);
        assert!(r <= 1e-5, "{what}: {name} relative difference {r}");
    }
}

/// Bit-for-bit equality of two steps (`==` on floats, so `-0.0 == 0.0`).
fn assert_same(what: &str, a: &TrainOut, b: &TrainOut) {
    assert_eq!(a.loss_sum, b.loss_sum, "{what}: loss");
    assert!(a.grad == b.grad, "{what}: gradient differs");
    assert!(
        a.final_state == b.final_state,
        "{what}: final state differs"
    );
    assert!(
        a.init_grad == b.init_grad,
        "{what}: initial-state gradient differs"
    );
}

/// The configurations: linear head without and with dropout, softmax head with dropout.
fn configs() -> [ModelConfig; 3] {
    [
        config(Head::Linear, 0.0),
        config(Head::Linear, 0.3),
        config(Head::Softmax, 0.3),
    ]
}

/// For every configuration and loss: `engine`'s ragged step matches the reference, padded values
/// change nothing, and a batch whose rows are all full equals the unmasked batch exactly.
fn check_engine(make: &dyn Fn(&ModelConfig) -> Box<dyn Engine>) {
    for (ci, cfg) in configs().into_iter().enumerate() {
        let case = Case::new(cfg.clone(), 40 + 10 * ci as u64);
        let mut e = make(&cfg);
        for loss in losses() {
            let what = format!(
                "{} {:?} dropout {} {loss:?}",
                e.describe(),
                cfg.head,
                cfg.dropout
            );
            let want = expected(&case, loss);
            let got = e
                .train_step(&case.p, &case.batch(loss), &case.init, true)
                .unwrap();
            assert_matches(&what, &got, &want);

            // other values in the padded steps change nothing
            let (x, y) = case.repadded(900 + ci as u64);
            let other = Batch {
                x: &x,
                y: &y,
                ..case.batch(loss)
            };
            let again = e.train_step(&case.p, &other, &case.init, true).unwrap();
            assert_same(&format!("{what} repadded"), &again, &got);

            // all rows full: the same as no mask at all
            let full = vec![case.t as u32; case.n];
            let none = Batch {
                valid: None,
                ..case.batch(loss)
            };
            let all = Batch {
                valid: Some(&full),
                ..case.batch(loss)
            };
            let a = e.train_step(&case.p, &none, &case.init, true).unwrap();
            let b = e.train_step(&case.p, &all, &case.init, true).unwrap();
            assert_same(&format!("{what} all valid"), &b, &a);
        }
    }
}

/// The same shard with other random values in every unobserved target.
fn refilled_targets(c: &Case, seed: u64) -> Vec<f32> {
    let other = random(c.y.len(), seed, 3.0);
    let seen = c.observed.as_ref().expect("a case with missing targets");
    c.y.iter()
        .zip(&other)
        .zip(seen)
        .map(|((&y, &o), &s)| if s { y } else { o })
        .collect()
}

/// For every configuration and loss, on ragged shards with a third of their targets missing:
/// `engine`'s loss, gradient, final states and initial-state gradients equal the reference that
/// drops the missing terms by hand, other values in the missing targets change nothing, and a
/// mask with every target observed equals no mask exactly.
fn check_engine_observed(make: &dyn Fn(&ModelConfig) -> Box<dyn Engine>) {
    for (ci, cfg) in configs().into_iter().enumerate() {
        let case = Case::new(cfg.clone(), 140 + 10 * ci as u64).with_missing(7 + ci as u64);
        let mut e = make(&cfg);
        for loss in losses() {
            let what = format!(
                "{} {:?} dropout {} {loss:?} with missing targets",
                e.describe(),
                cfg.head,
                cfg.dropout
            );
            let want = expected(&case, loss);
            let got = e
                .train_step(&case.p, &case.batch(loss), &case.init, true)
                .unwrap();
            assert_matches(&what, &got, &want);
            // the dropped terms really are dropped: the full loss differs
            let full = Case {
                observed: None,
                ..Case::new(cfg.clone(), 140 + 10 * ci as u64)
            };
            let all = e
                .train_step(&full.p, &full.batch(loss), &full.init, true)
                .unwrap();
            assert!(all.loss_sum > got.loss_sum, "{what}: nothing was masked");

            let y = refilled_targets(&case, 600 + ci as u64);
            let other = Batch {
                y: &y,
                ..case.batch(loss)
            };
            let again = e.train_step(&case.p, &other, &case.init, true).unwrap();
            assert_same(&format!("{what} refilled"), &again, &got);

            let seen = vec![true; case.y.len()];
            let every = Batch {
                observed: Some(&seen),
                ..full.batch(loss)
            };
            let a = e.train_step(&full.p, &every, &full.init, true).unwrap();
            assert_same(&format!("{what} all observed"), &a, &all);
        }
    }
}

#[test]
fn missing_targets_on_the_cpu_engine_match_the_reference_without_their_terms() {
    for threads in [1, 3] {
        check_engine_observed(&|cfg| Box::new(CpuEngine::new(cfg, threads)));
    }
}

#[test]
fn missing_targets_on_the_burn_engine_match_the_reference_without_their_terms() {
    check_engine_observed(&|cfg| {
        Box::new(BurnEngine::new(cfg, burn::tensor::Device::flex(), "flex"))
    });
}

/// Needs a wgpu adapter, like the other device tests.
#[test]
fn missing_targets_on_the_fused_wgpu_engine_match_the_reference_without_their_terms() {
    use crate::engine::wgpu_fused::WgpuFusedEngine;
    let compute = crate::device::resolve(crate::device::DeviceChoice::Wgpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for a software one)");
    let crate::device::Compute::Wgpu { device, adapter } = compute else {
        panic!("expected wgpu")
    };
    check_engine_observed(&|cfg| Box::new(WgpuFusedEngine::new(cfg, &device, &adapter).unwrap()));
}

#[test]
fn masked_cpu_engine_matches_the_per_row_reference() {
    for threads in [1, 3] {
        check_engine(&|cfg| Box::new(CpuEngine::new(cfg, threads)));
    }
}

#[test]
fn masked_burn_engine_matches_the_per_row_reference() {
    check_engine(&|cfg| Box::new(BurnEngine::new(cfg, burn::tensor::Device::flex(), "flex")));
}

/// Needs a wgpu adapter, like the other device tests (Mesa's lavapipe provides one in CI).
#[test]
fn masked_fused_wgpu_engine_matches_the_per_row_reference() {
    use crate::engine::wgpu_fused::WgpuFusedEngine;
    let compute = crate::device::resolve(crate::device::DeviceChoice::Wgpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for a software one)");
    let crate::device::Compute::Wgpu { device, adapter } = compute else {
        panic!("expected wgpu")
    };
    check_engine(&|cfg| Box::new(WgpuFusedEngine::new(cfg, &device, &adapter).unwrap()));
}

/// Larger ragged shards (wider layers, more rows per thread than one register block) on the CPU
/// engine against Burn's stock LSTM: loss, gradient, final states and initial-state gradients
/// within 1e-5 relative.
#[test]
fn masked_cpu_engine_matches_burn_on_larger_shapes() {
    for (hidden, head) in [(16usize, Head::Linear), (64, Head::Softmax)] {
        let cfg = ModelConfig {
            hidden,
            dropout: 0.2,
            ..config(head, 0.0)
        };
        let (n, t) = (16usize, 24usize);
        let seed = hidden as u64;
        let scale = 0.4 * (8.0 / hidden as f64).sqrt().min(1.0);
        let p = random(ParamLayout::new(&cfg).len(), seed, scale);
        let x = random(n * t * cfg.input, seed + 1, 1.0);
        let y = random(n * t * cfg.output, seed + 2, 0.5);
        let init = random_states(&cfg, n, seed + 3);
        let slots: Vec<u64> = (0..n as u64).collect();
        let mut rng = Rng::new(seed, "lengths");
        let mut valid: Vec<u32> = (0..n)
            .map(|_| (rng.uniform() * (t + 1) as f64).min(t as f64) as u32)
            .collect();
        valid[..3].copy_from_slice(&[0, t as u32, 1]);
        let mut stock = BurnEngine::new(&cfg, burn::tensor::Device::flex(), "flex");
        for loss in losses() {
            let batch = Batch {
                n,
                t,
                x: &x,
                y: &y,
                slots: &slots,
                dropout: Some(DropoutKey {
                    seed: 3,
                    epoch: 0,
                    step: 1,
                }),
                valid: Some(&valid),
                observed: None,
                loss,
            };
            let b = stock.train_step(&p, &batch, &init, true).unwrap();
            for threads in [1, 2] {
                let a = CpuEngine::new(&cfg, threads)
                    .train_step(&p, &batch, &init, true)
                    .unwrap();
                let what = format!("H={hidden} {head:?} {loss:?} {threads} threads");
                let dl = (a.loss_sum - b.loss_sum).abs() / b.loss_sum.abs();
                assert!(dl <= 1e-5, "{what}: loss {} vs {}", a.loss_sum, b.loss_sum);
                let (ia, ib) = (a.init_grad.as_ref().unwrap(), b.init_grad.as_ref().unwrap());
                for (name, u, v) in [
                    ("grad", &a.grad[..], &b.grad[..]),
                    ("final h", a.final_state.h(), b.final_state.h()),
                    ("final c", a.final_state.c(), b.final_state.c()),
                    ("init grad h", ia.h(), ib.h()),
                    ("init grad c", ia.c(), ib.c()),
                ] {
                    let want: Vec<f64> = v.iter().map(|&w| f64::from(w)).collect();
                    let r = rel(u, &want, 1e-12);
                    assert!(r <= 1e-5, "{what}: {name} relative difference {r}");
                }
            }
        }
    }
}

/// However the CPU engine splits a ragged shard over threads (by valid steps), every row's final
/// state and initial-state gradient is bit-identical, and loss and gradient agree to rounding.
#[test]
fn cpu_threads_split_ragged_shards_without_changing_rows() {
    let cfg = config(Head::Linear, 0.3);
    let t = 5usize;
    let mut rng = Rng::new(3, "splits");
    for trial in 0..40u64 {
        let n = 2 + (trial as usize % 11);
        let mut valid: Vec<u32> = (0..n)
            .map(|_| (rng.uniform() * (t + 1) as f64).min(t as f64) as u32)
            .collect();
        if trial % 4 == 0 {
            // all the work in one row
            valid.fill(0);
            valid[trial as usize % n] = t as u32;
        }
        let p = random(ParamLayout::new(&cfg).len(), trial, 0.5);
        let x = random(n * t * cfg.input, trial + 1, 1.0);
        let y = random(n * t * cfg.output, trial + 2, 0.5);
        let init = random_states(&cfg, n, trial + 3);
        let slots: Vec<u64> = (0..n as u64).collect();
        let batch = Batch {
            n,
            t,
            x: &x,
            y: &y,
            slots: &slots,
            dropout: Some(DropoutKey {
                seed: 1,
                epoch: 2,
                step: trial,
            }),
            valid: Some(&valid),
            observed: None,
            loss: Loss::Huber(0.5),
        };
        let one = CpuEngine::new(&cfg, 1)
            .train_step(&p, &batch, &init, true)
            .unwrap();
        for threads in 2..=5 {
            let many = CpuEngine::new(&cfg, threads)
                .train_step(&p, &batch, &init, true)
                .unwrap();
            let what = format!("valid {valid:?}, {threads} threads");
            assert_eq!(many.final_state, one.final_state, "{what}");
            assert_eq!(many.init_grad, one.init_grad, "{what}");
            assert!((many.loss_sum - one.loss_sum).abs() <= 1e-9 * one.loss_sum.max(1.0));
            let want: Vec<f64> = one.grad.iter().map(|&g| f64::from(g)).collect();
            assert!(rel(&many.grad, &want, 1e-12) <= 1e-6, "{what}: gradient");
        }
    }
}

/// The CPU engine never reads padded inputs or targets: NaN and infinity there change nothing.
#[test]
fn cpu_engine_never_reads_padding() {
    for (ci, cfg) in configs().into_iter().enumerate() {
        let case = Case::new(cfg.clone(), 60 + ci as u64);
        let (mut x, mut y) = (case.x.clone(), case.y.clone());
        for r in 0..case.n {
            for s in case.valid[r] as usize..case.t {
                let (i, o) = (cfg.input, cfg.output);
                x[(r * case.t + s) * i..(r * case.t + s + 1) * i].fill(f32::NAN);
                y[(r * case.t + s) * o..(r * case.t + s + 1) * o].fill(f32::INFINITY);
            }
        }
        for threads in [1, 3] {
            let mut e = CpuEngine::new(&cfg, threads);
            for loss in losses() {
                let clean = e
                    .train_step(&case.p, &case.batch(loss), &case.init, true)
                    .unwrap();
                let b = Batch {
                    x: &x,
                    y: &y,
                    ..case.batch(loss)
                };
                let dirty = e.train_step(&case.p, &b, &case.init, true).unwrap();
                let what = format!("{threads} threads {:?} {loss:?}", cfg.head);
                assert_same(&what, &dirty, &clean);
            }
        }
    }
}

/// Rows without valid steps: no loss, no gradient, the initial states pass through.
#[test]
fn rows_without_valid_steps_change_nothing() {
    let cfg = config(Head::Linear, 0.3);
    let case = Case::new(cfg.clone(), 70);
    let none = vec![0u32; case.n];
    let engines: Vec<Box<dyn Engine>> = vec![
        Box::new(CpuEngine::new(&cfg, 2)),
        Box::new(BurnEngine::new(&cfg, burn::tensor::Device::flex(), "flex")),
    ];
    for mut e in engines {
        for loss in losses() {
            let b = Batch {
                valid: Some(&none),
                ..case.batch(loss)
            };
            let out = e.train_step(&case.p, &b, &case.init, true).unwrap();
            assert_eq!(out.loss_sum, 0.0, "{}", e.describe());
            assert!(out.grad.iter().all(|&g| g == 0.0), "{}", e.describe());
            assert_eq!(out.final_state, case.init, "{}", e.describe());
            let ig = out.init_grad.unwrap();
            assert!(ig.h().iter().chain(ig.c()).all(|&g| g == 0.0));
        }
    }
}

#[test]
fn bad_huber_deltas_and_valid_lengths_are_rejected() {
    let cfg = config(Head::Linear, 0.0);
    let case = Case::new(cfg.clone(), 80);
    let long = vec![case.t as u32 + 1; case.n];
    let short = vec![1u32; case.n - 1];
    let engines: Vec<Box<dyn Engine>> = vec![
        Box::new(CpuEngine::new(&cfg, 1)),
        Box::new(BurnEngine::new(&cfg, burn::tensor::Device::flex(), "flex")),
    ];
    for mut e in engines {
        for delta in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let r = e.train_step(&case.p, &case.batch(Loss::Huber(delta)), &case.init, false);
            assert!(
                matches!(r, Err(ModelError::Config { ref field, .. }) if field == "loss"),
                "{}: delta {delta}",
                e.describe()
            );
        }
        let three = Loss::Pinball(crate::engine::Quantiles::new(&[0.1, 0.5, 0.9]).unwrap());
        let r = e.train_step(&case.p, &case.batch(three), &case.init, false);
        assert!(
            matches!(r, Err(ModelError::Config { ref field, .. }) if field == "quantiles"),
            "{}: three levels of two outputs",
            e.describe()
        );
        let seen = vec![true; case.y.len() - 1];
        let b = Batch {
            observed: Some(&seen),
            ..case.batch(Loss::Mse)
        };
        assert!(
            matches!(e.train_step(&case.p, &b, &case.init, false), Err(ModelError::Shape { ref what, .. }) if what == "observed targets"),
            "{}",
            e.describe()
        );
        for v in [&long, &short] {
            let b = Batch {
                valid: Some(v),
                ..case.batch(Loss::Mse)
            };
            assert!(
                matches!(
                    e.train_step(&case.p, &b, &case.init, false),
                    Err(ModelError::Shape { .. })
                ),
                "{}",
                e.describe()
            );
        }
    }
}
