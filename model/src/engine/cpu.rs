//! The fused CPU engine: each LSTM layer runs its whole sequence as one pass, with the input
//! projection of all time steps as one GEMM, one small GEMM per time step for the recurrence,
//! and the gate nonlinearities fused into the cell update; backward through time mirrors it and
//! turns the weight gradients into three large GEMMs per layer. Slots are independent, so a
//! shard's slots are split into contiguous ranges that run on separate threads, each with its own
//! reusable buffers; their gradients are summed at the end.
//!
//! Ragged batches ([`Batch::valid`]) are masked inline, in the same pass: padded steps (which
//! all come after a row's valid ones) have no loss, so nothing flows back into them, and they are
//! skipped. The GEMMs over all steps run over the spans of valid steps (consecutive full rows
//! merged, so a batch without padding makes the same calls as before), each step's recurrent
//! product over the runs of rows still valid, the element-wise work over valid steps only; a
//! row's final state is read at its last valid step. Padded inputs and targets are never read
//! (padded outputs are set to zero so that every buffer stays finite).

use crate::config::{Head, ModelConfig};
use crate::dropout::{DropoutKey, DropoutMask};
use crate::engine::math::{View, check_loss, gemm, sigmoid_slice, small_gemm, tanh, tanh_slice};
use crate::engine::{Batch, Engine, Loss, TrainOut, check_batch, check_forward};
use crate::error::ModelError;
use crate::params::ParamLayout;
use crate::state::SlotStates;

/// Below this many slots per thread, extra threads cost more than they save.
const MIN_SLOTS_PER_THREAD: usize = 2;

/// The fused CPU engine.
#[derive(Debug)]
pub struct CpuEngine {
    cfg: ModelConfig,
    layout: ParamLayout,
    threads: usize,
    workspaces: Vec<Workspace>,
}

impl CpuEngine {
    /// An engine for `cfg` using up to `threads` threads (0 = all cores).
    pub fn new(cfg: &ModelConfig, threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        Self {
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg),
            threads,
            workspaces: Vec::new(),
        }
    }

    /// Contiguous slot ranges, one per thread: equal numbers of slots, or for a ragged batch
    /// about equal numbers of valid steps (each range keeps at least one slot).
    fn ranges(&self, n: usize, valid: Option<&[u32]>) -> Vec<(usize, usize)> {
        let parts = self.threads.min(n / MIN_SLOTS_PER_THREAD).max(1);
        let Some(v) = valid.filter(|_| parts > 1) else {
            return (0..parts)
                .map(|i| (i * n / parts, (i + 1) * n / parts))
                .collect();
        };
        // a slot costs its valid steps plus one step's worth of fixed work
        let total: usize = v.iter().map(|&l| l as usize + 1).sum();
        let mut bounds = vec![0usize];
        let mut acc = 0usize;
        for (r, &l) in v.iter().enumerate() {
            acc += l as usize + 1;
            let i = bounds.len();
            if i < parts && acc * parts >= i * total {
                // leave at least one slot to each later range
                bounds.push((r + 1).max(bounds[i - 1] + 1).min(n - (parts - i)));
            }
        }
        while bounds.len() < parts {
            let last = bounds[bounds.len() - 1];
            bounds.push(last + 1);
        }
        bounds.push(n);
        bounds.windows(2).map(|w| (w[0], w[1])).collect()
    }

    fn ensure_workspaces(&mut self, count: usize) {
        while self.workspaces.len() < count {
            self.workspaces.push(Workspace::default());
        }
    }

    /// Runs forward (and backward when `targets` is given) for every slot range in parallel.
    fn run(
        &mut self,
        params: &[f32],
        n: usize,
        t: usize,
        x: &[f32],
        targets: Option<Targets<'_>>,
        init: &SlotStates,
    ) -> Vec<(usize, usize)> {
        let ranges = self.ranges(n, targets.and_then(|tg| tg.valid));
        self.ensure_workspaces(ranges.len());
        let (cfg, layout) = (&self.cfg, &self.layout);
        let (fi, fo) = (cfg.input, cfg.output);
        let work = |ws: &mut Workspace, (r0, r1): (usize, usize)| {
            let m = r1 - r0;
            let h = cfg.hidden;
            let init_h: Vec<&[f32]> = (0..cfg.layers)
                .map(|k| &init.layer_h(k)[r0 * h..r1 * h])
                .collect();
            let init_c: Vec<&[f32]> = (0..cfg.layers)
                .map(|k| &init.layer_c(k)[r0 * h..r1 * h])
                .collect();
            let chunk = Chunk {
                cfg,
                layout,
                params,
                n: m,
                t,
                x: &x[r0 * t * fi..r1 * t * fi],
                h0: &init_h,
                c0: &init_c,
                valid: targets.and_then(|tg| tg.valid).map(|v| &v[r0..r1]),
            };
            match targets {
                None => pass_best(ws, &chunk, None),
                Some(Targets {
                    y,
                    slots,
                    key,
                    want_init,
                    loss,
                    observed,
                    ..
                }) => {
                    let mask = key.map(|k| (DropoutMask::new(k, cfg.dropout), &slots[r0..r1]));
                    let mask = mask.filter(|_| cfg.dropout > 0.0);
                    let train = Train {
                        y: &y[r0 * t * fo..r1 * t * fo],
                        observed: observed.map(|o| &o[r0 * t * fo..r1 * t * fo]),
                        mask,
                        want_init,
                        loss,
                    };
                    pass_best(ws, &chunk, Some(train));
                }
            }
        };
        if ranges.len() == 1 {
            work(&mut self.workspaces[0], ranges[0]);
        } else {
            std::thread::scope(|scope| {
                for (ws, &range) in self.workspaces.iter_mut().zip(&ranges) {
                    scope.spawn(move || work(ws, range));
                }
            });
        }
        ranges
    }

    /// Copies the final states (each row's state after its last valid step, its initial state
    /// when it has none) or, with `grads`, the initial-state gradients out of the workspaces.
    fn collect_states(
        &self,
        ranges: &[(usize, usize)],
        (n, t): (usize, usize),
        valid: Option<&[u32]>,
        init: &SlotStates,
        grads: bool,
    ) -> SlotStates {
        let (layers, h) = (self.cfg.layers, self.cfg.hidden);
        let mut out = SlotStates::zeros(layers, n, h);
        let (oh, oc) = out.hc_mut();
        for (ws, &(r0, r1)) in self.workspaces.iter().zip(ranges) {
            for k in 0..layers {
                for r in r0..r1 {
                    let dst = (k * n + r) * h;
                    let local = r - r0;
                    if grads {
                        oh[dst..dst + h].copy_from_slice(&ws.dh0[k][local * h..(local + 1) * h]);
                        oc[dst..dst + h].copy_from_slice(&ws.dc0[k][local * h..(local + 1) * h]);
                    } else {
                        let len = valid.map_or(t, |v| v[r] as usize);
                        if len == 0 {
                            oh[dst..dst + h].copy_from_slice(&init.layer_h(k)[r * h..(r + 1) * h]);
                            oc[dst..dst + h].copy_from_slice(&init.layer_c(k)[r * h..(r + 1) * h]);
                        } else {
                            let src = (local * t + len - 1) * h;
                            oh[dst..dst + h].copy_from_slice(&ws.outs[k][src..src + h]);
                            oc[dst..dst + h].copy_from_slice(&ws.cells[k][src..src + h]);
                        }
                    }
                }
            }
        }
        out
    }
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        format!("fused CPU engine ({} threads)", self.threads)
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
        let (n, t) = (batch.n, batch.t);
        if n == 0 || t == 0 {
            // nothing runs: no loss, no gradient, the states pass through
            let (layers, h) = (self.cfg.layers, self.cfg.hidden);
            return Ok(TrainOut {
                loss_sum: 0.0,
                grad: vec![0.0; self.layout.len()],
                final_state: init.clone(),
                init_grad: want_init_grad.then(|| SlotStates::zeros(layers, n, h)),
            });
        }
        let ranges = self.run(
            params,
            n,
            t,
            batch.x,
            Some(Targets {
                y: batch.y,
                slots: batch.slots,
                key: batch.dropout,
                want_init: want_init_grad,
                loss: batch.loss,
                valid: batch.valid,
                observed: batch.observed,
            }),
            init,
        );
        let mut grad = vec![0.0f32; self.layout.len()];
        let mut loss_sum = 0.0;
        for ws in &self.workspaces[..ranges.len()] {
            loss_sum += ws.loss;
            for (g, w) in grad.iter_mut().zip(&ws.grad) {
                *g += w;
            }
        }
        let final_state = self.collect_states(&ranges, (n, t), batch.valid, init, false);
        let init_grad =
            want_init_grad.then(|| self.collect_states(&ranges, (n, t), None, init, true));
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
        if n == 0 || t == 0 {
            return Ok((Vec::new(), init.clone()));
        }
        let ranges = self.run(params, n, t, x, None, init);
        let fo = self.cfg.output;
        let mut pred = Vec::with_capacity(n * t * fo);
        for (ws, &(r0, r1)) in self.workspaces.iter().zip(&ranges) {
            pred.extend_from_slice(&ws.pred[..(r1 - r0) * t * fo]);
        }
        Ok((
            pred,
            self.collect_states(&ranges, (n, t), None, init, false),
        ))
    }
}

/// A training pass of one chunk: its targets, dropout masks, whether initial-state gradients
/// are wanted, and the loss.
#[derive(Clone, Copy)]
struct Train<'a> {
    y: &'a [f32],
    /// Whether each target was observed (`None`: all).
    observed: Option<&'a [bool]>,
    mask: Option<(DropoutMask, &'a [u64])>,
    want_init: bool,
    loss: Loss,
}

/// Forward, and backward when training, of one chunk. Inlined into the variants below, which
/// compile it for wider vector units.
#[inline(always)]
fn pass<const FMA: bool>(ws: &mut Workspace, c: &Chunk<'_>, train: Option<Train<'_>>) {
    match train {
        None => ws.forward::<FMA>(c, None),
        Some(tr) => {
            ws.forward::<FMA>(c, tr.mask);
            ws.backward::<FMA>(c, &tr, tr.mask.is_some());
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn pass_avx512(ws: &mut Workspace, c: &Chunk<'_>, train: Option<Train<'_>>) {
    pass::<true>(ws, c, train);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pass_avx2(ws: &mut Workspace, c: &Chunk<'_>, train: Option<Train<'_>>) {
    pass::<true>(ws, c, train);
}

/// [`pass`] compiled for the widest vector unit this CPU has (AVX-512 or AVX2 with fused
/// multiply-adds in the recurrence; the element-wise code is the same everywhere).
fn pass_best(ws: &mut Workspace, c: &Chunk<'_>, train: Option<Train<'_>>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { pass_avx512(ws, c, train) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { pass_avx2(ws, c, train) };
        }
    }
    pass::<false>(ws, c, train);
}

/// What a training (rather than inference) pass needs beyond the inputs.
#[derive(Clone, Copy)]
struct Targets<'a> {
    y: &'a [f32],
    slots: &'a [u64],
    key: Option<DropoutKey>,
    want_init: bool,
    loss: Loss,
    /// Valid steps of each row (`None`: all `t`).
    valid: Option<&'a [u32]>,
    /// Whether each target was observed (`None`: all).
    observed: Option<&'a [bool]>,
}

/// The inputs of one contiguous range of slots.
struct Chunk<'a> {
    cfg: &'a ModelConfig,
    layout: &'a ParamLayout,
    params: &'a [f32],
    n: usize,
    t: usize,
    x: &'a [f32],
    h0: &'a [&'a [f32]],
    c0: &'a [&'a [f32]],
    /// Valid steps of each row (`None`: all `t`).
    valid: Option<&'a [u32]>,
}

impl Chunk<'_> {
    /// Valid steps of row `r`.
    #[inline(always)]
    fn len(&self, r: usize) -> usize {
        self.valid.map_or(self.t, |v| v[r] as usize)
    }

    /// Steps the recurrences run: up to the longest row's last valid step.
    fn steps(&self) -> usize {
        self.valid
            .map_or(self.t, |v| v.iter().map(|&l| l as usize).max().unwrap_or(0))
    }

    /// The ranges `a..b` of flat step rows (row `r`, step `s` at `r * t + s`) that hold valid
    /// steps, consecutive full rows merged: without padding, the one range `0..n*t`.
    fn spans(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for r in 0..self.n {
            let (a, b) = (r * self.t, r * self.t + self.len(r));
            match out.last_mut() {
                _ if a == b => {}
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
        out
    }

    /// The maximal runs `r0..r1` of consecutive rows with step `s` valid (without padding, the
    /// one run `0..n` while `s < t`). Each row's products do not depend on the runs.
    fn runs(&self, s: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut r = 0;
        std::iter::from_fn(move || {
            while r < self.n && self.len(r) <= s {
                r += 1;
            }
            if r == self.n {
                return None;
            }
            let r0 = r;
            while r < self.n && self.len(r) > s {
                r += 1;
            }
            Some((r0, r))
        })
    }
}

/// Per-thread buffers, grown on demand and reused across steps.
#[derive(Debug, Default)]
struct Workspace {
    /// Per layer `[n, t, 4H]`: pre-activations, then gate activations (i, f, g, o).
    gates: Vec<Vec<f32>>,
    /// Per layer `[n, t, H]` cell states.
    cells: Vec<Vec<f32>>,
    /// Per layer `[n, t, H]` `tanh(c)`.
    tanh_c: Vec<Vec<f32>>,
    /// Per layer `[n, t, H]` outputs `h`.
    outs: Vec<Vec<f32>>,
    /// Per layer `[n, t, H]` previous hidden state of every step (`h0` at step 0).
    hprev: Vec<Vec<f32>>,
    /// `[n, t, H]` dropout factors.
    mask: Vec<f32>,
    /// `[n, t, H]` top output after dropout.
    dropped: Vec<f32>,
    /// `[n, t, out]` predictions.
    pred: Vec<f32>,
    /// `[n, t, out]` gradient at the head's pre-activation.
    dz: Vec<f32>,
    /// `[n, t, H]` gradient at the current layer's outputs.
    dy: Vec<f32>,
    /// `[n, t, 4H]` gradient at the gate pre-activations.
    da: Vec<f32>,
    /// `[n, H]` running gradients through time.
    dh: Vec<f32>,
    dc: Vec<f32>,
    /// Per layer `[n, H]` gradients at the initial state.
    dh0: Vec<Vec<f32>>,
    dc0: Vec<Vec<f32>>,
    /// `[4H]` summed biases.
    bias: Vec<f32>,
    /// `[H, 4H]` the current layer's `W_hh` transposed.
    wt: Vec<f32>,
    grad: Vec<f32>,
    loss: f64,
}

fn sized(v: &mut Vec<f32>, len: usize) {
    v.resize(len, 0.0);
}

fn sized_layers(v: &mut Vec<Vec<f32>>, layers: usize, len: usize) {
    v.resize_with(layers, Vec::new);
    for l in v.iter_mut() {
        sized(l, len);
    }
}

impl Workspace {
    #[inline(always)]
    fn forward<const FMA: bool>(&mut self, c: &Chunk<'_>, mask: Option<(DropoutMask, &[u64])>) {
        let cfg = c.cfg;
        let (n, t, h, fo) = (c.n, c.t, cfg.hidden, cfg.output);
        let g4 = 4 * h;
        let p = c.params;
        sized_layers(&mut self.gates, cfg.layers, n * t * g4);
        sized_layers(&mut self.cells, cfg.layers, n * t * h);
        sized_layers(&mut self.tanh_c, cfg.layers, n * t * h);
        sized_layers(&mut self.outs, cfg.layers, n * t * h);
        sized_layers(&mut self.hprev, cfg.layers, n * t * h);
        sized(&mut self.bias, g4);
        let spans = c.spans();
        for k in 0..cfg.layers {
            let lo = c.layout.layer(k);
            let w_ih = &p[lo.w_ih..lo.w_ih + g4 * lo.input];
            let w_hh = &p[lo.w_hh..lo.w_hh + g4 * h];
            for j in 0..g4 {
                self.bias[j] = p[lo.b_ih + j] + p[lo.b_hh + j];
            }
            let (below, rest) = self.outs.split_at_mut(k);
            let out = &mut rest[0];
            let input: &[f32] = if k == 0 { c.x } else { &below[k - 1] };
            let gates = &mut self.gates[k];
            let cells = &mut self.cells[k];
            let tanh_c = &mut self.tanh_c[k];
            // input projection of every valid step at once, plus both biases
            for &(a, b) in &spans {
                gemm(
                    b - a,
                    lo.input,
                    g4,
                    1.0,
                    View::rows(&input[a * lo.input..], lo.input),
                    View::t(w_ih, lo.input),
                    0.0,
                    &mut gates[a * g4..],
                    g4,
                );
                for row in gates[a * g4..b * g4].chunks_exact_mut(g4) {
                    for (a, b) in row.iter_mut().zip(&self.bias) {
                        *a += b;
                    }
                }
            }
            // W_hhᵀ, so each step's recurrent product runs over contiguous gate rows
            let wt = &mut self.wt;
            sized(wt, g4 * h);
            for i in 0..g4 {
                for kk in 0..h {
                    wt[kk * g4 + i] = w_hh[i * h + kk];
                }
            }
            // padded steps are not computed; their outputs are set to zero (the copies into
            // `hprev` and the dropout products run over all steps)
            for r in 0..n {
                out[(r * t + c.len(r)) * h..(r + 1) * t * h].fill(0.0);
            }
            for s in 0..c.steps() {
                // the recurrent product of the rows still running (all rows: one product)
                for (r0, r1) in c.runs(s) {
                    let (hp, rs): (&[f32], usize) = if s == 0 {
                        (&c.h0[k][r0 * h..], h)
                    } else {
                        (&out[(r0 * t + s - 1) * h..], t * h)
                    };
                    small_gemm::<FMA>(
                        &mut gates[(r0 * t + s) * g4..],
                        t * g4,
                        hp,
                        rs,
                        wt,
                        g4,
                        (r1 - r0, h, g4),
                        true,
                    );
                }
                for r in 0..n {
                    if s >= c.len(r) {
                        continue;
                    }
                    let idx = r * t + s;
                    let row = &mut gates[idx * g4..(idx + 1) * g4];
                    sigmoid_slice(&mut row[..2 * h]);
                    tanh_slice(&mut row[2 * h..3 * h]);
                    sigmoid_slice(&mut row[3 * h..]);
                    let (prev, cur) = cells.split_at_mut(idx * h);
                    let cprev = if s == 0 {
                        &c.c0[k][r * h..(r + 1) * h]
                    } else {
                        &prev[(idx - 1) * h..]
                    };
                    let cur = &mut cur[..h];
                    let tc = &mut tanh_c[idx * h..(idx + 1) * h];
                    let o = &mut out[idx * h..(idx + 1) * h];
                    let (gi, rest) = row.split_at(h);
                    let (gf, rest) = rest.split_at(h);
                    let (gg, go) = rest.split_at(h);
                    for j in 0..h {
                        let cv = gf[j] * cprev[j] + gi[j] * gg[j];
                        cur[j] = cv;
                        let th = tanh(cv);
                        tc[j] = th;
                        o[j] = go[j] * th;
                    }
                }
            }
            let hprev = &mut self.hprev[k];
            for r in 0..n {
                let base = r * t * h;
                hprev[base..base + h].copy_from_slice(&c.h0[k][r * h..(r + 1) * h]);
                hprev[base + h..base + t * h].copy_from_slice(&out[base..base + (t - 1) * h]);
            }
        }
        // dropout on the top layer's outputs, then the per-step dense head
        let top = &self.outs[cfg.layers - 1];
        let d: &[f32] = match mask {
            Some((m, slots)) => {
                sized(&mut self.mask, n * t * h);
                sized(&mut self.dropped, n * t * h);
                // padded steps (zero outputs, zero gradients) need no factors
                for (r, &slot) in slots.iter().enumerate() {
                    let (a, b, e) = (r * t * h, (r * t + c.len(r)) * h, (r + 1) * t * h);
                    m.fill_slot(slot, &mut self.mask[a..b]);
                    self.mask[b..e].fill(0.0);
                }
                for ((d, x), m) in self.dropped.iter_mut().zip(top).zip(&self.mask) {
                    *d = x * m;
                }
                &self.dropped
            }
            None => top,
        };
        let hw = &p[c.layout.head_w()..c.layout.head_w() + fo * h];
        let hb = &p[c.layout.head_b()..c.layout.head_b() + fo];
        sized(&mut self.pred, n * t * fo);
        for &(a, b) in &spans {
            gemm(
                b - a,
                h,
                fo,
                1.0,
                View::rows(&d[a * h..], h),
                View::t(hw, h),
                0.0,
                &mut self.pred[a * fo..],
                fo,
            );
            for row in self.pred[a * fo..b * fo].chunks_exact_mut(fo) {
                for (z, b) in row.iter_mut().zip(hb) {
                    *z += b;
                }
                if cfg.head == Head::Softmax {
                    softmax(row);
                }
            }
        }
    }

    #[inline(always)]
    fn backward<const FMA: bool>(&mut self, c: &Chunk<'_>, tr: &Train<'_>, dropout: bool) {
        let (y, want_init, loss_kind) = (tr.y, tr.want_init, tr.loss);
        let cfg = c.cfg;
        let (n, t, h, fo) = (c.n, c.t, cfg.hidden, cfg.output);
        let g4 = 4 * h;
        let p = c.params;
        let layout = c.layout;
        sized(&mut self.grad, layout.len());
        self.grad.fill(0.0);
        sized(&mut self.dz, n * t * fo);
        sized(&mut self.dy, n * t * h);
        sized(&mut self.da, n * t * g4);
        sized(&mut self.dh, n * h);
        sized(&mut self.dc, n * h);
        sized_layers(&mut self.dh0, cfg.layers, n * h);
        sized_layers(&mut self.dc0, cfg.layers, n * h);

        // the loss of the valid steps and its gradient at the head's output; padded steps and
        // unobserved targets get none
        let mut loss = 0.0f64;
        for r in 0..n {
            let (v0, v1, end) = (r * t * fo, (r * t + c.len(r)) * fo, (r + 1) * t * fo);
            let outs = self.dz[v0..v1]
                .iter_mut()
                .zip(&self.pred[v0..v1])
                .zip(&y[v0..v1]);
            // `j % fo` is the output's index within its step (the pinball loss's level)
            match tr.observed {
                None => {
                    for (j, ((dz, &pv), &yv)) in outs.enumerate() {
                        let (l, g) = loss_kind.value_and_grad(j % fo, pv, yv);
                        loss += f64::from(l);
                        *dz = g;
                    }
                }
                Some(o) => {
                    for (j, (((dz, &pv), &yv), &seen)) in outs.zip(&o[v0..v1]).enumerate() {
                        *dz = if seen {
                            let (l, g) = loss_kind.value_and_grad(j % fo, pv, yv);
                            loss += f64::from(l);
                            g
                        } else {
                            0.0
                        };
                    }
                }
            }
            self.dz[v1..end].fill(0.0);
        }
        self.loss = loss;
        // from here on, the products and sums over steps run over the valid ones only
        let spans = c.spans();
        if cfg.head == Head::Softmax {
            for &(a, b) in &spans {
                let dz = self.dz[a * fo..b * fo].chunks_exact_mut(fo);
                for (dz, pr) in dz.zip(self.pred[a * fo..b * fo].chunks_exact(fo)) {
                    let dot: f32 = dz.iter().zip(pr.iter()).map(|(a, b)| a * b).sum();
                    for (d, &pv) in dz.iter_mut().zip(pr) {
                        *d = pv * (*d - dot);
                    }
                }
            }
        }
        let top = &self.outs[cfg.layers - 1];
        let d: &[f32] = if dropout { &self.dropped } else { top };
        let (hw, hb) = (layout.head_w(), layout.head_b());
        for &(a, b) in &spans {
            gemm(
                fo,
                b - a,
                h,
                1.0,
                View::t(&self.dz[a * fo..], fo),
                View::rows(&d[a * h..], h),
                1.0,
                &mut self.grad[hw..hw + fo * h],
                h,
            );
        }
        for &(a, b) in &spans {
            for row in self.dz[a * fo..b * fo].chunks_exact(fo) {
                for (g, v) in self.grad[hb..hb + fo].iter_mut().zip(row) {
                    *g += v;
                }
            }
        }
        for &(a, b) in &spans {
            gemm(
                b - a,
                fo,
                h,
                1.0,
                View::rows(&self.dz[a * fo..], fo),
                View::rows(&p[hw..hw + fo * h], h),
                0.0,
                &mut self.dy[a * h..],
                h,
            );
        }
        if dropout {
            for (g, m) in self.dy.iter_mut().zip(&self.mask) {
                *g *= m;
            }
        }

        for k in (0..cfg.layers).rev() {
            let lo = layout.layer(k);
            let w_hh = &p[lo.w_hh..lo.w_hh + g4 * h];
            let gates = &self.gates[k];
            let cells = &self.cells[k];
            let tanh_c = &self.tanh_c[k];
            self.dh.fill(0.0);
            self.dc.fill(0.0);
            // padded steps have no gradient (the initial-state product reads step 0 of every
            // row, also of rows without valid steps)
            for r in 0..n {
                self.da[(r * t + c.len(r)) * g4..(r + 1) * t * g4].fill(0.0);
            }
            for s in (0..c.steps()).rev() {
                // the gradient through the next step's gates, of the rows that have one (the
                // others' `dh` stays zero)
                for (r0, r1) in c.runs(s + 1) {
                    let da = &self.da[(r0 * t + s + 1) * g4..];
                    let dh = &mut self.dh[r0 * h..];
                    small_gemm::<FMA>(dh, h, da, t * g4, w_hh, h, (r1 - r0, g4, h), false);
                }
                for r in 0..n {
                    if s >= c.len(r) {
                        continue;
                    }
                    let idx = r * t + s;
                    let row = &gates[idx * g4..(idx + 1) * g4];
                    let cprev = if s == 0 {
                        &c.c0[k][r * h..(r + 1) * h]
                    } else {
                        &cells[(idx - 1) * h..idx * h]
                    };
                    let tc = &tanh_c[idx * h..(idx + 1) * h];
                    let dyv = &self.dy[idx * h..(idx + 1) * h];
                    let dh = &self.dh[r * h..(r + 1) * h];
                    let dc = &mut self.dc[r * h..(r + 1) * h];
                    let da = &mut self.da[idx * g4..(idx + 1) * g4];
                    let (da_i, rest) = da.split_at_mut(h);
                    let (da_f, rest) = rest.split_at_mut(h);
                    let (da_g, da_o) = rest.split_at_mut(h);
                    for j in 0..h {
                        let (i, f, g, o) = (row[j], row[h + j], row[2 * h + j], row[3 * h + j]);
                        let dhj = dyv[j] + dh[j];
                        let th = tc[j];
                        let dcj = dhj * o * (1.0 - th * th) + dc[j];
                        da_i[j] = dcj * g * i * (1.0 - i);
                        da_f[j] = dcj * cprev[j] * f * (1.0 - f);
                        da_g[j] = dcj * i * (1.0 - g * g);
                        da_o[j] = dhj * th * o * (1.0 - o);
                        dc[j] = dcj * f;
                    }
                }
            }
            if want_init {
                gemm(
                    n,
                    g4,
                    h,
                    1.0,
                    View::rows(&self.da, t * g4),
                    View::rows(w_hh, h),
                    0.0,
                    &mut self.dh0[k],
                    h,
                );
                self.dc0[k].copy_from_slice(&self.dc);
            }
            let input: &[f32] = if k == 0 { c.x } else { &self.outs[k - 1] };
            let grad = &mut self.grad;
            for &(a, b) in &spans {
                gemm(
                    g4,
                    b - a,
                    lo.input,
                    1.0,
                    View::t(&self.da[a * g4..], g4),
                    View::rows(&input[a * lo.input..], lo.input),
                    1.0,
                    &mut grad[lo.w_ih..lo.w_ih + g4 * lo.input],
                    lo.input,
                );
            }
            for &(a, b) in &spans {
                gemm(
                    g4,
                    b - a,
                    h,
                    1.0,
                    View::t(&self.da[a * g4..], g4),
                    View::rows(&self.hprev[k][a * h..], h),
                    1.0,
                    &mut grad[lo.w_hh..lo.w_hh + g4 * h],
                    h,
                );
            }
            for &(a, b) in &spans {
                for row in self.da[a * g4..b * g4].chunks_exact(g4) {
                    for (g, v) in grad[lo.b_ih..lo.b_ih + g4].iter_mut().zip(row) {
                        *g += v;
                    }
                }
            }
            let (bi, bh) = (lo.b_ih, lo.b_hh);
            grad.copy_within(bi..bi + g4, bh);
            if k > 0 {
                let w_ih = &p[lo.w_ih..lo.w_ih + g4 * lo.input];
                for &(a, b) in &spans {
                    gemm(
                        b - a,
                        g4,
                        lo.input,
                        1.0,
                        View::rows(&self.da[a * g4..], g4),
                        View::rows(w_ih, lo.input),
                        0.0,
                        &mut self.dy[a * lo.input..],
                        lo.input,
                    );
                }
            }
        }
    }
}

/// Softmax of one row in place.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = crate::engine::math::exp(*v - max);
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}
