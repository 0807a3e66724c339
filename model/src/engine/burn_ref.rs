//! The reference engine: Burn's stock `Lstm` modules and Burn's autodiff, on any Burn device
//! (the Flex CPU backend or wgpu). Each call loads the flat parameters into fresh modules, so the
//! engine holds no state between steps; it is slow (Burn runs every time step as separate small
//! ops) and exists to check the fused engines and to run where they cannot.
//!
//! A ragged batch ([`Batch::valid`] with a row shorter than `t`) or one with unobserved targets
//! ([`Batch::observed`]) multiplies the per-output losses by a 0/1 mask of the valid steps and
//! observed targets, and runs each layer's recurrence in segments that end at the
//! rows' valid lengths, reading each row's final state where its segment ends. Padded steps still
//! run (times a zero loss weight), so padded inputs and targets must be finite.

use burn::module::Param;
use burn::nn::{GateController, Linear, Lstm, LstmConfig, LstmState};
use burn::tensor::{Device, Tensor, TensorData, activation::softmax};

use crate::config::{Head, ModelConfig};
use crate::dropout::DropoutMask;
use crate::engine::math::check_loss;
use crate::engine::{Batch, Engine, Loss, TrainOut, check_batch, check_forward};
use crate::error::ModelError;
use crate::params::ParamLayout;
use crate::state::SlotStates;

/// Burn's stock LSTM on a Burn device.
#[derive(Debug)]
pub struct BurnEngine {
    cfg: ModelConfig,
    layout: ParamLayout,
    device: Device,
    label: String,
}

/// One forward pass's inputs.
struct Pass<'a> {
    x: &'a [f32],
    n: usize,
    t: usize,
    init: &'a SlotStates,
    /// Dropout factors `[n, t, H]`.
    mask: Option<Vec<f32>>,
    /// Track the initial states for their gradients.
    track_init: bool,
    /// Valid steps of each row, when some row is shorter than `t`.
    valid: Option<&'a [u32]>,
}

/// Predictions, final states, and the initial-state tensors.
type RunOut = (Tensor<3>, SlotStates, Vec<(Tensor<2>, Tensor<2>)>);

/// The modules of one network loaded from flat parameters.
struct Net {
    lstms: Vec<Lstm>,
    head: Linear,
}

impl BurnEngine {
    /// An engine for `cfg` on `device` (a device without autodiff; training adds it).
    pub fn new(cfg: &ModelConfig, device: Device, label: impl Into<String>) -> Self {
        Self {
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg),
            device,
            label: label.into(),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::Engine {
            engine: self.describe(),
            msg: msg.to_string(),
        }
    }

    fn build(&self, p: &[f32], dev: &Device) -> Net {
        let h = self.cfg.hidden;
        let linear = |w: Vec<f32>, shape: [usize; 2], b: &[f32]| Linear {
            weight: Param::from_data(TensorData::new(w, shape), dev),
            bias: Some(Param::from_data(
                TensorData::new(b.to_vec(), [b.len()]),
                dev,
            )),
        };
        let lstms = (0..self.cfg.layers)
            .map(|k| {
                let lo = self.layout.layer(k);
                let inp = lo.input;
                // PyTorch rows g*H..(g+1)*H of [4H, in], transposed to Burn's [in, H]
                let block = |off: usize, cols: usize, g: usize| -> Vec<f32> {
                    let mut out = vec![0.0; cols * h];
                    for j in 0..h {
                        for c in 0..cols {
                            out[c * h + j] = p[off + (g * h + j) * cols + c];
                        }
                    }
                    out
                };
                let gate = |g: usize| GateController {
                    input_transform: linear(
                        block(lo.w_ih, inp, g),
                        [inp, h],
                        &p[lo.b_ih + g * h..lo.b_ih + (g + 1) * h],
                    ),
                    hidden_transform: linear(
                        block(lo.w_hh, h, g),
                        [h, h],
                        &p[lo.b_hh + g * h..lo.b_hh + (g + 1) * h],
                    ),
                };
                let mut lstm = LstmConfig::new(inp, h, true).init(dev);
                lstm.input_gate = gate(0);
                lstm.forget_gate = Some(gate(1));
                lstm.cell_gate = gate(2);
                lstm.output_gate = gate(3);
                lstm
            })
            .collect();
        let (fo, hw, hb) = (self.cfg.output, self.layout.head_w(), self.layout.head_b());
        let mut w = vec![0.0; h * fo];
        for o in 0..fo {
            for j in 0..h {
                w[j * fo + o] = p[hw + o * h + j];
            }
        }
        let head = linear(w, [h, fo], &p[hb..hb + fo]);
        Net { lstms, head }
    }

    /// Runs the network; returns predictions `[n, t, out]`, the final states (with `valid`, each
    /// row's after its last valid step) and the initial state tensors (for their gradients).
    fn run(&self, net: &Net, dev: &Device, pass: Pass<'_>) -> Result<RunOut, ModelError> {
        let Pass {
            x,
            n,
            t,
            init,
            mask,
            track_init,
            valid,
        } = pass;
        let h = self.cfg.hidden;
        let mut input =
            Tensor::<3>::from_data(TensorData::new(x.to_vec(), [n, t, self.cfg.input]), dev);
        let (mut fin_h, mut fin_c) = (Vec::new(), Vec::new());
        let mut inits = Vec::new();
        for (k, lstm) in net.lstms.iter().enumerate() {
            let mut h0 =
                Tensor::<2>::from_data(TensorData::new(init.layer_h(k).to_vec(), [n, h]), dev);
            let mut c0 =
                Tensor::<2>::from_data(TensorData::new(init.layer_c(k).to_vec(), [n, h]), dev);
            if track_init {
                h0 = h0.require_grad();
                c0 = c0.require_grad();
            }
            inits.push((h0.clone(), c0.clone()));
            let state = LstmState::new(c0, h0);
            input = match valid {
                None => {
                    let (out, state) = lstm.forward(input, Some(state));
                    fin_h.extend(self.to_vec(state.hidden.detach())?);
                    fin_c.extend(self.to_vec(state.cell.detach())?);
                    out
                }
                Some(v) => {
                    // segments ending at every distinct valid length (and at t); rows without
                    // valid steps keep their initial state
                    let (mut lh, mut lc) = (init.layer_h(k).to_vec(), init.layer_c(k).to_vec());
                    let mut ends: Vec<usize> = v.iter().map(|&l| l as usize).collect();
                    ends.push(t);
                    ends.sort_unstable();
                    ends.dedup();
                    let (mut state, mut start, mut outs) = (state, 0, Vec::new());
                    for end in ends.into_iter().filter(|&e| e > 0) {
                        let seg = input.clone().narrow(1, start, end - start);
                        let (out, next) = lstm.forward(seg, Some(state));
                        outs.push(out);
                        let rows: Vec<usize> = (0..n).filter(|&r| v[r] as usize == end).collect();
                        if !rows.is_empty() {
                            let sh = self.to_vec(next.hidden.clone().detach())?;
                            let sc = self.to_vec(next.cell.clone().detach())?;
                            for r in rows {
                                lh[r * h..(r + 1) * h].copy_from_slice(&sh[r * h..(r + 1) * h]);
                                lc[r * h..(r + 1) * h].copy_from_slice(&sc[r * h..(r + 1) * h]);
                            }
                        }
                        (state, start) = (next, end);
                    }
                    fin_h.extend(lh);
                    fin_c.extend(lc);
                    Tensor::cat(outs, 1)
                }
            };
        }
        if let Some(m) = mask {
            input = input * Tensor::<3>::from_data(TensorData::new(m, [n, t, h]), dev);
        }
        let mut pred = net.head.forward(input);
        if self.cfg.head == Head::Softmax {
            pred = softmax(pred, 2);
        }
        let finals = SlotStates::from_flat(self.cfg.layers, n, h, fin_h, fin_c)?;
        Ok((pred, finals, inits))
    }

    fn to_vec<const D: usize>(&self, t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| self.err(format!("{e:?}")))
    }
}

impl Engine for BurnEngine {
    fn describe(&self) -> String {
        format!("burn stock LSTM on {}", self.label)
    }

    fn train_step(
        &mut self,
        params: &[f32],
        batch: &Batch<'_>,
        init: &SlotStates,
        want_init_grad: bool,
    ) -> Result<TrainOut, ModelError> {
        check_batch(&self.cfg, params.len(), self.layout.len(), batch, init)?;
        check_loss(batch.loss)?;
        let (n, t, h, fo) = (batch.n, batch.t, self.cfg.hidden, self.cfg.output);
        // only a batch with padding is masked
        let valid = batch.valid.filter(|v| v.iter().any(|&l| l as usize != t));
        let dev = self.device.clone().autodiff();
        let net = self.build(params, &dev);
        let mask = batch.dropout.filter(|_| self.cfg.dropout > 0.0).map(|key| {
            let m = DropoutMask::new(key, self.cfg.dropout);
            let mut v = vec![0.0; n * t * h];
            for (r, &slot) in batch.slots.iter().enumerate() {
                m.fill_slot(slot, &mut v[r * t * h..(r + 1) * t * h]);
            }
            v
        });
        let (pred, finals, inits) = self.run(
            &net,
            &dev,
            Pass {
                x: batch.x,
                n,
                t,
                init,
                mask,
                track_init: want_init_grad,
                valid,
            },
        )?;
        let y = Tensor::<3>::from_data(TensorData::new(batch.y.to_vec(), [n, t, fo]), &dev);
        let d = pred - y;
        let mut per = match batch.loss {
            Loss::Mse => d.powi_scalar(2),
            Loss::Mae => d.abs(),
            Loss::Huber(delta) => {
                let a = d.clone().abs();
                let linear = (a.clone() - 0.5 * delta) * delta;
                (d.powi_scalar(2) * 0.5).mask_where(a.greater_elem(delta), linear)
            }
            Loss::Pinball(levels) => {
                // (1 - q) d where the prediction is at or above the target, else -q d
                let q: Vec<f32> = (0..n * t * fo).map(|i| levels.level(i % fo)).collect();
                let q = Tensor::<3>::from_data(TensorData::new(q, [n, t, fo]), &dev);
                let below = d.clone().lower_elem(0.0);
                let above = (q.clone().neg() + 1.0) * d.clone();
                above.mask_where(below, q.neg() * d)
            }
        };
        if valid.is_some() || batch.observed.is_some() {
            let mut m = vec![1.0f32; n * t * fo];
            if let Some(v) = valid {
                for (r, &l) in v.iter().enumerate() {
                    m[(r * t + l as usize) * fo..(r + 1) * t * fo].fill(0.0);
                }
            }
            if let Some(o) = batch.observed {
                for (w, &seen) in m.iter_mut().zip(o) {
                    if !seen {
                        *w = 0.0;
                    }
                }
            }
            per = per * Tensor::<3>::from_data(TensorData::new(m, [n, t, fo]), &dev);
        }
        let loss = per.sum();
        let grads = loss.backward();
        let loss_sum = f64::from(self.to_vec(loss.detach())?[0]);
        let grad_of = |p: &Param<Tensor<2>>| p.val().grad(&grads);
        let grad_of1 = |p: &Option<Param<Tensor<1>>>| p.as_ref().and_then(|b| b.val().grad(&grads));
        let mut grad = vec![0.0f32; self.layout.len()];
        for (k, lstm) in net.lstms.iter().enumerate() {
            let lo = self.layout.layer(k);
            let gates = [
                &lstm.input_gate,
                lstm.forget_gate.as_ref().expect("forget gate"),
                &lstm.cell_gate,
                &lstm.output_gate,
            ];
            for (g, gate) in gates.into_iter().enumerate() {
                for (lin, off, cols, boff) in [
                    (&gate.input_transform, lo.w_ih, lo.input, lo.b_ih),
                    (&gate.hidden_transform, lo.w_hh, h, lo.b_hh),
                ] {
                    if let Some(gw) = grad_of(&lin.weight) {
                        let v = self.to_vec(gw)?; // [cols, H]
                        for j in 0..h {
                            for c in 0..cols {
                                grad[off + (g * h + j) * cols + c] = v[c * h + j];
                            }
                        }
                    }
                    if let Some(gb) = grad_of1(&lin.bias) {
                        grad[boff + g * h..boff + (g + 1) * h].copy_from_slice(&self.to_vec(gb)?);
                    }
                }
            }
        }
        if let Some(gw) = grad_of(&net.head.weight) {
            let v = self.to_vec(gw)?; // [H, out]
            let hw = self.layout.head_w();
            for o in 0..fo {
                for j in 0..h {
                    grad[hw + o * h + j] = v[j * fo + o];
                }
            }
        }
        if let Some(gb) = grad_of1(&net.head.bias) {
            let hb = self.layout.head_b();
            grad[hb..hb + fo].copy_from_slice(&self.to_vec(gb)?);
        }
        let init_grad = if want_init_grad {
            let (mut gh, mut gc) = (Vec::new(), Vec::new());
            for (h0, c0) in &inits {
                let zero = || vec![0.0; n * h];
                gh.extend(
                    h0.grad(&grads)
                        .map(|g| self.to_vec(g))
                        .transpose()?
                        .unwrap_or_else(zero),
                );
                gc.extend(
                    c0.grad(&grads)
                        .map(|g| self.to_vec(g))
                        .transpose()?
                        .unwrap_or_else(zero),
                );
            }
            Some(SlotStates::from_flat(self.cfg.layers, n, h, gh, gc)?)
        } else {
            None
        };
        let final_state = finals;
        Ok(TrainOut {
            loss_sum,
            grad,
            final_state,
            init_grad,
        })
    }

    fn forward(
        &mut self,
        params: &[f32],
        x: &[f32],
        n: usize,
        t: usize,
        init: &SlotStates,
    ) -> Result<(Vec<f32>, SlotStates), ModelError> {
        check_forward(&self.cfg, params.len(), self.layout.len(), x, n, t, init)?;
        let dev = self.device.clone();
        let net = self.build(params, &dev);
        let (pred, finals, _) = self.run(
            &net,
            &dev,
            Pass {
                x,
                n,
                t,
                init,
                mask: None,
                track_init: false,
                valid: None,
            },
        )?;
        Ok((self.to_vec(pred)?, finals))
    }
}
