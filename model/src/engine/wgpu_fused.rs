//! The fused engine on wgpu: the CPU engine's algorithm as CubeCL kernels on raw device buffers.
//!
//! A training step uploads three buffers (the flat parameters; every layer's `W_hh` regrouped
//! for the recurrences; one packed buffer of inputs, targets, initial states and dropout
//! factors), runs a fixed sequence of dispatches, and reads back one packed result buffer
//! (gradient, per-row loss partial sums, final states and initial-state gradients). Per step
//! and layer `k` the dispatches are:
//!
//! - forward: one GEMM for the input projection of all time steps plus both biases, then ONE
//!   recurrence dispatch over all `T` steps ([`lstm_forward`]: one cube per slot, units over the
//!   hidden index, `h` double-buffered and `c` in shared memory, one `sync_cube` per step,
//!   `W_hh` read from global memory as 4-vectors holding the four gates' weights of one
//!   `(q, j)`, so that a unit loads one vector per input and neighbouring units read
//!   neighbouring vectors);
//! - head: one dispatch for the dense head, softmax, squared error and its gradient;
//! - backward: GEMMs for the head's weight gradient and the gradient at the top layer's output,
//!   a column sum for the head bias; per layer (top down) ONE recurrence dispatch over all `T`
//!   steps ([`lstm_backward`], same cube layout, the gate-gradient row double-buffered in shared
//!   memory), GEMMs for `dW_ih = DAᵀ·X`, `dW_hh = DAᵀ·Hprev`, a column sum for both biases,
//!   and a GEMM for the gradient at the layer's input when there is a layer below.
//!
//! That is `2L` dispatches for the forward, 1 for the head, 3 for the head's backward and
//! `5L - 1` for the layers' backward: 17 per training step of a 2-layer model, `2L + 1` per
//! forward. Device buffers are allocated for a shard shape `(n, t)` and reused while it repeats;
//! uploads overwrite them in place. Dropout factors are computed on the host with [`DropoutMask`]
//! (WGSL has no 64-bit integers) and uploaded with the inputs; the top layer's recurrence
//! applies them as it writes its outputs and its backward applies them to the incoming gradient.

use cubecl::bytes::Bytes;
use cubecl::prelude::*;
use cubecl::server::Handle;

use burn::backend::DispatchDevice;
use burn::tensor::Device;

use crate::config::{Head, ModelConfig};
use crate::dropout::DropoutMask;
use crate::engine::{Batch, Engine, TrainOut, check_batch, check_forward};
use crate::error::ModelError;
use crate::params::ParamLayout;
use crate::state::SlotStates;

/// Units per cube of the one-dimensional element-wise kernels.
const ROW_CUBE: u32 = 64;
/// Side of the square cube of the GEMM kernel (each unit computes a 4 x 4 micro-tile).
const GEMM_TILE: u32 = 16;
/// Largest cube the recurrence kernels use; larger hidden sizes loop over the hidden index.
const MAX_RECURRENT_CUBE: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

/// Logistic sigmoid with the argument of `exp` clamped to the finite range, as on the CPU.
#[cube]
fn sigmoid(x: f32) -> f32 {
    let e = f32::exp(f32::clamp(-x, -87.3, 88.3));
    1.0 / (1.0 + e)
}

/// `tanh` as the CPU engine computes it: a polynomial near zero, `exp` elsewhere.
#[cube]
fn tanh_f(x: f32) -> f32 {
    let ax = f32::abs(x);
    if ax < 0.625 {
        let z = x * x;
        let p = (((-5.704_988_7e-3f32 * z + 2.063_909e-2_f32) * z - 5.373_971_6e-2f32) * z
            + 1.333_144_2e-1f32)
            * z
            - 3.333_328e-1_f32;
        p * z * x + x
    } else {
        let e = f32::exp(f32::min(2.0f32 * ax, 88.3f32));
        let m = 1.0f32 - 2.0f32 / (e + 1.0f32);
        if x < 0.0f32 { -m } else { m }
    }
}

/// Linear index of a unit in a one-dimensional launch spread over the x and y cube counts.
#[cube]
fn linear_pos() -> usize {
    let cube = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    cube * CUBE_DIM_X as usize + UNIT_POS_X as usize
}

/// `C[c_off + i*c_rs + j] = sum_q A[a_off + i*a_rs + q*a_cs] * B[b_off + q*b_rs + j*b_cs]`
/// (plus `B[bias_a + j] + B[bias_b + j]` when `bias`) for `i < m`, `j < n`.
///
/// A cube of `TILE x TILE` units computes a block of `4 TILE x 4 TILE` outputs, each unit a
/// `4 x 4` micro-tile strided by `TILE` (so neighbouring units touch neighbouring addresses);
/// rows of blocks spread over the y and z cube counts. Loads of rows and columns past the edge
/// are clamped to the last one and their results are not stored.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_kernel(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    bias_a: u32,
    bias_b: u32,
    #[comptime] bias: bool,
) {
    let tile = CUBE_DIM_X as usize;
    let row_cube = CUBE_POS_Z as usize * CUBE_COUNT_Y as usize + CUBE_POS_Y as usize;
    let i0 = row_cube * 4 * tile + UNIT_POS_Y as usize;
    let j0 = CUBE_POS_X as usize * 4 * tile + UNIT_POS_X as usize;
    let (m, n) = (m as usize, n as usize);
    if i0 < m && j0 < n {
        let mut pa = Array::<usize>::new(4usize);
        let mut pb = Array::<usize>::new(4usize);
        let mut acc = Array::<f32>::new(16usize);
        #[unroll]
        for r in 0..4usize {
            pa[r] = a_off as usize + usize::min(i0 + r * tile, m - 1) * a_rs as usize;
            pb[r] = b_off as usize + usize::min(j0 + r * tile, n - 1) * b_cs as usize;
        }
        #[unroll]
        for e in 0..16usize {
            acc[e] = 0.0;
        }
        let (a_cs, b_rs) = (a_cs as usize, b_rs as usize);
        let mut ka = 0usize;
        let mut kb = 0usize;
        for _ in 0..k {
            let mut av = Array::<f32>::new(4usize);
            let mut bv = Array::<f32>::new(4usize);
            #[unroll]
            for r in 0..4usize {
                av[r] = a[pa[r] + ka];
                bv[r] = b[pb[r] + kb];
            }
            #[unroll]
            for r in 0..4usize {
                #[unroll]
                for q in 0..4usize {
                    acc[r * 4 + q] += av[r] * bv[q];
                }
            }
            ka += a_cs;
            kb += b_rs;
        }
        #[unroll]
        for q in 0..4usize {
            let j = j0 + q * tile;
            if j < n {
                let mut add = 0.0f32;
                if bias {
                    add = b[bias_a as usize + j] + b[bias_b as usize + j];
                }
                #[unroll]
                for r in 0..4usize {
                    let i = i0 + r * tile;
                    if i < m {
                        c[c_off as usize + i * c_rs as usize + j] = acc[r * 4 + q] + add;
                    }
                }
            }
        }
    }
}

/// `C[c_off + j] = C[c_off2 + j] = sum_r A[r * cols + j]` for `j < cols`.
#[cube(launch_unchecked)]
fn colsum_kernel(a: &[f32], c: &mut [f32], rows: u32, cols: u32, c_off: u32, c_off2: u32) {
    let j = linear_pos();
    if j < cols as usize {
        let cols = cols as usize;
        let mut p = j;
        let mut acc = 0.0f32;
        for _ in 0..rows {
            acc += a[p];
            p += cols;
        }
        c[c_off as usize + j] = acc;
        c[c_off2 as usize + j] = acc;
    }
}

/// The recurrence of one layer over all `t` steps; one cube per slot.
///
/// `acts` holds the layer's `[gates n*t*4H | cells n*t*H | tanh_c n*t*H | out n*t*H | hprev
/// n*t*H]`; on entry the gate region holds the input projection plus biases, on exit the gate
/// activations (i, f, g, o). `wv` holds at `w_off` the `[H (q), H (j)]` vectors (`V = 4`) of
/// `W_hh[g*H + j, q]` over the gates `g`. `data` holds the initial states at `h0_off` / `c0_off` (`[n, H]`)
/// and, when `masked`, the dropout factors `[n, t, H]` at `mask_off`, which multiply the
/// outputs written to `out` (not the recurrent state). Final states go to `res` at
/// `hT_off` / `cT_off` (`[n, H]`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn lstm_forward<V: Size>(
    acts: &mut [f32],
    wv: &[Vector<f32, V>],
    data: &[f32],
    res: &mut [f32],
    n: u32,
    t: u32,
    w_off: u32,
    h0_off: u32,
    c0_off: u32,
    mask_off: u32,
    ht_off: u32,
    ct_off: u32,
    #[comptime] h: usize,
    #[comptime] masked: bool,
) {
    let slot = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    // A whole cube past the last slot leaves before any barrier.
    if slot < n as usize {
        let nt = n as usize * t as usize;
        let (cells, tanh_c, out, hprev) = (nt * 4 * h, nt * 5 * h, nt * 6 * h, nt * 7 * h);
        let w_off = w_off as usize;
        let step = CUBE_DIM_X as usize;
        let mut hs = Shared::<[f32]>::new_slice(2 * h);
        let mut cs = Shared::<[f32]>::new_slice(h);
        let mut j = UNIT_POS_X as usize;
        while j < h {
            hs[j] = data[h0_off as usize + slot * h + j];
            cs[j] = data[c0_off as usize + slot * h + j];
            j += step;
        }
        sync_cube();
        for s in 0..t as usize {
            let cur = (s % 2) * h;
            let nxt = h - cur;
            let row = slot * t as usize + s;
            let g = row * 4 * h;
            let mut j = UNIT_POS_X as usize;
            while j < h {
                // the four gates' weights of (q, j) side by side: one vector load per q, and
                // neighbouring units read neighbouring vectors
                let mut acc = Vector::<f32, V>::new(0.0);
                let mut p = w_off + j;
                for q in 0..h {
                    acc += wv[p] * Vector::<f32, V>::new(hs[cur + q]);
                    p += h;
                }
                let gi = sigmoid(acts[g + j] + acc.extract(0usize));
                let gf = sigmoid(acts[g + h + j] + acc.extract(1usize));
                let gg = tanh_f(acts[g + 2 * h + j] + acc.extract(2usize));
                let go = sigmoid(acts[g + 3 * h + j] + acc.extract(3usize));
                let c = gf * cs[j] + gi * gg;
                let th = tanh_f(c);
                let hn = go * th;
                acts[g + j] = gi;
                acts[g + h + j] = gf;
                acts[g + 2 * h + j] = gg;
                acts[g + 3 * h + j] = go;
                let e = row * h + j;
                acts[cells + e] = c;
                acts[tanh_c + e] = th;
                acts[hprev + e] = hs[cur + j];
                if masked {
                    acts[out + e] = hn * data[mask_off as usize + e];
                } else {
                    acts[out + e] = hn;
                }
                hs[nxt + j] = hn;
                cs[j] = c;
                j += step;
            }
            sync_cube();
        }
        let last = (t as usize % 2) * h;
        let mut j = UNIT_POS_X as usize;
        while j < h {
            res[ht_off as usize + slot * h + j] = hs[last + j];
            res[ct_off as usize + slot * h + j] = cs[j];
            j += step;
        }
    }
}

/// `sum_{g, i} da[base + i][g] * W_hh[g*H + i, j]`, with the gate gradients of each `i` and the
/// weights `W_hh[g*H + i, j]` of the four gates side by side, the latter from `w` on with
/// stride `H`.
#[cube]
fn dh_recurrent<V: Size>(
    da: &Shared<[Vector<f32, V>]>,
    wv: &[Vector<f32, V>],
    base: usize,
    w: usize,
    #[comptime] h: usize,
) -> f32 {
    let mut acc = Vector::<f32, V>::new(0.0);
    let mut p = w;
    for i in 0..h {
        acc += da[base + i] * wv[p];
        p += h;
    }
    acc.extract(0usize) + acc.extract(1usize) + acc.extract(2usize) + acc.extract(3usize)
}

/// Backward through time of one layer over all `t` steps; one cube per slot.
///
/// `wv` holds at `w_off` the `[H (i), H (j)]` vectors (`V = 4`) of `W_hh[g*H + i, j]` over the
/// gates `g`; the gate gradients of the next step wait in shared memory as the same kind of
/// vectors, double-buffered. Reads the activations written by [`lstm_forward`], the gradient at the layer's outputs `dy`
/// `[n, t, H]` (times the dropout factors in `data` at `mask_off` when `masked`) and the initial
/// cell state in `data` at `c0_off`; writes the gate pre-activation gradients `da`
/// `[n, t, 4H]` and the initial-state gradients to `res` at `dh0_off` / `dc0_off`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn lstm_backward<V: Size>(
    acts: &[f32],
    wv: &[Vector<f32, V>],
    data: &[f32],
    dy: &[f32],
    da: &mut [f32],
    res: &mut [f32],
    n: u32,
    t: u32,
    w_off: u32,
    c0_off: u32,
    mask_off: u32,
    dh0_off: u32,
    dc0_off: u32,
    #[comptime] h: usize,
    #[comptime] masked: bool,
) {
    let slot = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    if slot < n as usize {
        let t = t as usize;
        let nt = n as usize * t;
        let (cells, tanh_c) = (nt * 4 * h, nt * 5 * h);
        let w_off = w_off as usize;
        let step = CUBE_DIM_X as usize;
        let g4 = 4 * h;
        let mut das = Shared::<[Vector<f32, V>]>::new_slice(2 * h);
        let mut dcs = Shared::<[f32]>::new_slice(h);
        let mut j = UNIT_POS_X as usize;
        while j < h {
            dcs[j] = 0.0;
            j += step;
        }
        for back in 0..t {
            let s = t - 1 - back;
            let cur = (s % 2) * h;
            let nxt = h - cur;
            let row = slot * t + s;
            let g = row * g4;
            let mut j = UNIT_POS_X as usize;
            while j < h {
                // gradient reaching h_s through the next step's gates
                let mut dh = 0.0f32;
                if s + 1 < t {
                    dh = dh_recurrent::<V>(&das, wv, nxt, w_off + j, h);
                }
                let e = row * h + j;
                let mut dyv = dy[e];
                if masked {
                    dyv *= data[mask_off as usize + e];
                }
                let gi = acts[g + j];
                let gf = acts[g + h + j];
                let gg = acts[g + 2 * h + j];
                let go = acts[g + 3 * h + j];
                let cprev = if s == 0 {
                    data[c0_off as usize + slot * h + j]
                } else {
                    acts[cells + e - h]
                };
                let th = acts[tanh_c + e];
                let dhj = dyv + dh;
                let dc = dhj * go * (1.0 - th * th) + dcs[j];
                let d_i = dc * gg * gi * (1.0 - gi);
                let d_f = dc * cprev * gf * (1.0 - gf);
                let d_g = dc * gi * (1.0 - gg * gg);
                let d_o = dhj * th * go * (1.0 - go);
                da[g + j] = d_i;
                da[g + h + j] = d_f;
                da[g + 2 * h + j] = d_g;
                da[g + 3 * h + j] = d_o;
                let mut dv = Vector::<f32, V>::new(d_i);
                dv.insert(1usize, d_f);
                dv.insert(2usize, d_g);
                dv.insert(3usize, d_o);
                das[cur + j] = dv;
                dcs[j] = dc * gf;
                j += step;
            }
            sync_cube();
        }
        // step 0 left its gate gradients in the first half
        let mut j = UNIT_POS_X as usize;
        while j < h {
            let dh = dh_recurrent::<V>(&das, wv, 0, w_off + j, h);
            res[dh0_off as usize + slot * h + j] = dh;
            res[dc0_off as usize + slot * h + j] = dcs[j];
            j += step;
        }
    }
}

/// The dense head of every row `[n*t]`: predictions into `pred` `[rows, o]`; when `train`, the
/// squared error against the targets in `data` at `y_off` (row sums into `res` at `loss_off`)
/// and its gradient at the head's pre-activation into `dz`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn head_kernel(
    top: &[f32],
    params: &[f32],
    data: &[f32],
    pred: &mut [f32],
    dz: &mut [f32],
    res: &mut [f32],
    rows: u32,
    top_off: u32,
    hw: u32,
    hb: u32,
    y_off: u32,
    loss_off: u32,
    #[comptime] h: usize,
    #[comptime] o: usize,
    #[comptime] softmax: bool,
    #[comptime] train: bool,
) {
    let row = linear_pos();
    if row < rows as usize {
        let x = top_off as usize + row * h;
        let p = row * o;
        for q in 0..o {
            let w = hw as usize + q * h;
            let mut z = 0.0f32;
            for j in 0..h {
                z += top[x + j] * params[w + j];
            }
            pred[p + q] = z + params[hb as usize + q];
        }
        if softmax {
            let mut mx = pred[p];
            for q in 1..o {
                mx = f32::max(mx, pred[p + q]);
            }
            let mut sum = 0.0f32;
            for q in 0..o {
                let e = f32::exp(f32::clamp(pred[p + q] - mx, -87.3, 88.3));
                pred[p + q] = e;
                sum += e;
            }
            for q in 0..o {
                pred[p + q] /= sum;
            }
        }
        if train {
            let y = y_off as usize + p;
            let mut loss = 0.0f32;
            for q in 0..o {
                let e = pred[p + q] - data[y + q];
                loss += e * e;
                dz[p + q] = 2.0 * e;
            }
            res[loss_off as usize + row] = loss;
            if softmax {
                let mut dot = 0.0f32;
                for q in 0..o {
                    dot += dz[p + q] * pred[p + q];
                }
                for q in 0..o {
                    dz[p + q] = pred[p + q] * (dz[p + q] - dot);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

/// A device buffer of `len` elements (f32 values, or 4-vectors of them for `Workspace::wv`).
#[derive(Debug, Clone)]
struct Buf {
    handle: Handle,
    len: usize,
}

impl Buf {
    fn arg(&self) -> BufferArg {
        // SAFETY: `len` is the number of elements the handle was allocated with.
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}

/// Offsets inside the packed upload and result buffers for one shard shape.
#[derive(Debug, Clone, Copy)]
struct Packing {
    /// `[x n*t*I | y n*t*O | h0 L*n*H | c0 L*n*H | mask n*t*H]`.
    y: usize,
    h0: usize,
    c0: usize,
    mask: usize,
    data_len: usize,
    /// `[grad P | loss n*t | hT L*n*H | cT L*n*H | dh0 L*n*H | dc0 L*n*H]`.
    loss: usize,
    ht: usize,
    ct: usize,
    dh0: usize,
    dc0: usize,
    res_len: usize,
}

impl Packing {
    fn new(cfg: &ModelConfig, params: usize, n: usize, t: usize) -> Self {
        let (nt, st) = (n * t, cfg.layers * n * cfg.hidden);
        let y = nt * cfg.input;
        let h0 = y + nt * cfg.output;
        let c0 = h0 + st;
        let mask = c0 + st;
        let data_len = mask + nt * cfg.hidden;
        let loss = params;
        let ht = loss + nt;
        let ct = ht + st;
        let dh0 = ct + st;
        let dc0 = dh0 + st;
        Self {
            y,
            h0,
            c0,
            mask,
            data_len,
            loss,
            ht,
            ct,
            dh0,
            dc0,
            res_len: dc0 + st,
        }
    }
}

/// Device buffers for one shard shape `(n, t)`, reused while it repeats.
#[derive(Debug)]
struct Workspace {
    n: usize,
    t: usize,
    pack: Packing,
    params: Buf,
    /// Per layer `W_hh` regrouped for the recurrences, four gates per vector: `[H (q), H (j)]`
    /// with `W_hh[g*H + j, q]` for the forward, then `[H (i), H (j)]` with `W_hh[g*H + i, j]` for
    /// the backward (`len` counts vectors).
    wv: Buf,
    data: Buf,
    /// Per layer `[gates n*t*4H | cells n*t*H | tanh_c n*t*H | out n*t*H | hprev n*t*H]`.
    acts: Vec<Buf>,
    pred: Buf,
    dz: Buf,
    dy: Buf,
    da: Buf,
    res: Buf,
    /// Host staging for the packed upload.
    staging: Vec<f32>,
}

/// The fused LSTM engine on a wgpu device.
pub struct WgpuFusedEngine {
    cfg: ModelConfig,
    layout: ParamLayout,
    client: ComputeClient,
    adapter: String,
    /// Units per cube of the recurrence kernels.
    rec_cube: u32,
    max_count: (u32, u32, u32),
    /// Largest buffer the adapter binds, bytes.
    max_buffer: u64,
    ws: Option<Workspace>,
}

type ComputeClient = cubecl::client::Client;

impl std::fmt::Debug for WgpuFusedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuFusedEngine")
            .field("cfg", &self.cfg)
            .field("adapter", &self.adapter)
            .field("client", &self.client.name())
            .field("rec_cube", &self.rec_cube)
            .field("workspace", &self.ws.as_ref().map(|w| (w.n, w.t)))
            .finish()
    }
}

/// Splits `blocks` cubes over two dimensions within the device's per-dimension limits.
fn spread(blocks: usize, max: (u32, u32)) -> Option<(u32, u32)> {
    let blocks = blocks.max(1);
    let x = blocks.min(max.0 as usize);
    let y = blocks.div_ceil(x);
    (y <= max.1 as usize).then_some((x as u32, y as u32))
}

impl WgpuFusedEngine {
    /// An engine for `cfg` on the wgpu `device` (as [`crate::device::resolve`] returns it);
    /// `adapter` describes it for logs.
    pub fn new(cfg: &ModelConfig, device: &Device, adapter: &str) -> Result<Self, ModelError> {
        cfg.validate()?;
        let cube_device = match device.as_dispatch() {
            DispatchDevice::Cube(d @ cubecl::Device::Wgpu(_)) => d.clone(),
            other => {
                return Err(ModelError::Device {
                    requested: "wgpu".into(),
                    msg: format!("the fused wgpu engine needs a wgpu device, got {other:?}"),
                });
            }
        };
        let client =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cube_device.client()))
                .map_err(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the wgpu runtime failed to start".into());
                    ModelError::Device {
                        requested: "wgpu".into(),
                        msg,
                    }
                })?;
        let hw = &client.properties().hardware;
        let rec_cube = (cfg.hidden as u32)
            .min(MAX_RECURRENT_CUBE)
            .min(hw.max_units_per_cube)
            .min(hw.max_cube_dim.0)
            .max(1);
        let shared = 9 * cfg.hidden * std::mem::size_of::<f32>();
        if shared > hw.max_shared_memory_size {
            return Err(ModelError::Engine {
                engine: format!("fused wgpu ({adapter})"),
                msg: format!(
                    "hidden size {} needs {shared} bytes of shared memory per cube, the adapter offers {}",
                    cfg.hidden, hw.max_shared_memory_size
                ),
            });
        }
        if GEMM_TILE * GEMM_TILE > hw.max_units_per_cube || ROW_CUBE > hw.max_units_per_cube {
            return Err(ModelError::Engine {
                engine: format!("fused wgpu ({adapter})"),
                msg: format!(
                    "the adapter allows only {} units per cube",
                    hw.max_units_per_cube
                ),
            });
        }
        let max_count = hw.max_cube_count;
        let max_buffer = client.properties().memory.max_page_size;
        tracing::debug!(%adapter, client = client.name(), rec_cube, max_buffer, "fused wgpu engine ready");
        Ok(Self {
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg),
            client,
            adapter: adapter.to_string(),
            rec_cube,
            max_count,
            max_buffer,
            ws: None,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::Engine {
            engine: self.describe(),
            msg: msg.to_string(),
        }
    }

    fn empty(&self, len: usize) -> Buf {
        Buf {
            handle: self.client.empty(len.max(1) * 4),
            len: len.max(1),
        }
    }

    /// The workspace for `(n, t)`, allocated on first use of that shape.
    fn workspace(&mut self, n: usize, t: usize) -> Result<Workspace, ModelError> {
        if let Some(ws) = self.ws.take()
            && ws.n == n
            && ws.t == t
        {
            return Ok(ws);
        }
        let (cfg, p) = (&self.cfg, self.layout.len());
        let pack = Packing::new(cfg, p, n, t);
        let (nt, h) = (n * t, cfg.hidden);
        // every buffer must fit one binding (which also keeps the kernels' u32 indices exact)
        let largest = [
            pack.data_len,
            pack.res_len,
            nt * 8 * h,
            p,
            cfg.layers * 8 * h * h,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let bytes = largest as u64 * 4;
        if bytes > self.max_buffer.min(u64::from(u32::MAX)) {
            return Err(self.err(format!(
                "a shard of {n} slots x {t} steps needs a {bytes}-byte buffer, the adapter binds at most {} bytes",
                self.max_buffer
            )));
        }
        // the gradient of parameters the engine does not train (the initial-state projection)
        // stays zero: those values are never written
        let res = Buf {
            handle: self
                .client
                .create(Bytes::from_elems(vec![0.0f32; pack.res_len])),
            len: pack.res_len,
        };
        tracing::debug!(n, t, "fused wgpu engine: allocating device buffers");
        Ok(Workspace {
            n,
            t,
            pack,
            params: self.empty(p),
            wv: Buf {
                handle: self.client.empty(cfg.layers * 2 * h * h * 16),
                len: cfg.layers * 2 * h * h,
            },
            data: self.empty(pack.data_len),
            acts: (0..cfg.layers).map(|_| self.empty(nt * 8 * h)).collect(),
            pred: self.empty(nt * cfg.output),
            dz: self.empty(nt * cfg.output),
            dy: self.empty(nt * h),
            da: self.empty(nt * 4 * h),
            res,
            staging: vec![0.0; pack.data_len],
        })
    }

    /// Launches `C = A·B (+ biases)` with strided views; see [`gemm_kernel`].
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: &Buf,
        (a_off, a_rs, a_cs): (usize, usize, usize),
        b: &Buf,
        (b_off, b_rs, b_cs): (usize, usize, usize),
        c: &Buf,
        (c_off, c_rs): (usize, usize),
        bias: Option<(usize, usize)>,
    ) -> Result<(), ModelError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let block = 4 * GEMM_TILE as usize;
        let bx = n.div_ceil(block);
        if bx > self.max_count.0 as usize {
            return Err(self.err(format!(
                "a GEMM with {n} columns exceeds the adapter's dispatch size"
            )));
        }
        let (by, bz) =
            spread(m.div_ceil(block), (self.max_count.1, self.max_count.2)).ok_or_else(|| {
                self.err(format!(
                    "a GEMM with {m} rows exceeds the adapter's dispatch size"
                ))
            })?;
        let (ba, bb) = bias.unwrap_or((0, 0));
        // SAFETY: the callers' views stay inside the buffers they pass (all sized from the same
        // shard shape); loads past the edges are clamped and stores are guarded.
        unsafe {
            gemm_kernel::launch_unchecked(
                &self.client,
                CubeCount::Static(bx as u32, by, bz),
                CubeDim::new_2d(GEMM_TILE, GEMM_TILE),
                a.arg(),
                b.arg(),
                c.arg(),
                m as u32,
                n as u32,
                k as u32,
                a_off as u32,
                a_rs as u32,
                a_cs as u32,
                b_off as u32,
                b_rs as u32,
                b_cs as u32,
                c_off as u32,
                c_rs as u32,
                ba as u32,
                bb as u32,
                bias.is_some(),
            );
        }
        Ok(())
    }

    /// Launches the column sums of `a` `[rows, cols]` into `c` at `off` and `off2`.
    fn colsum(
        &self,
        a: &Buf,
        rows: usize,
        cols: usize,
        c: &Buf,
        off: usize,
        off2: usize,
    ) -> Result<(), ModelError> {
        let count = self.count_1d(cols.div_ceil(ROW_CUBE as usize))?;
        // SAFETY: `a` holds `rows * cols` values and `c` has room at `off` and `off2` (callers).
        unsafe {
            colsum_kernel::launch_unchecked(
                &self.client,
                count,
                CubeDim::new_1d(ROW_CUBE),
                a.arg(),
                c.arg(),
                rows as u32,
                cols as u32,
                off as u32,
                off2 as u32,
            );
        }
        Ok(())
    }

    fn count_1d(&self, blocks: usize) -> Result<CubeCount, ModelError> {
        let (x, y) = spread(blocks, (self.max_count.0, self.max_count.1)).ok_or_else(|| {
            self.err(format!("{blocks} cubes exceed the adapter's dispatch size"))
        })?;
        Ok(CubeCount::Static(x, y, 1))
    }

    /// Forward of every layer and the head; with `train`, also the loss and backward.
    fn run(&self, ws: &Workspace, train: bool, masked: bool) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let (n, t, h, fo) = (ws.n, ws.t, cfg.hidden, cfg.output);
        let (nt, g4, pk) = (n * t, 4 * h, ws.pack);
        let st = n * h;
        let out_region = nt * 6 * h;
        let hprev_region = nt * 7 * h;
        let slots = self.count_1d(n)?;
        let rec = CubeDim::new_1d(self.rec_cube);
        for k in 0..cfg.layers {
            let lo = self.layout.layer(k);
            let top = k + 1 == cfg.layers;
            // input projection of all steps plus both biases into the gate region
            let (input, in_off) = if k == 0 {
                (&ws.data, 0)
            } else {
                (&ws.acts[k - 1], out_region)
            };
            self.gemm(
                (nt, g4, lo.input),
                input,
                (in_off, lo.input, 1),
                &ws.params,
                (lo.w_ih, 1, lo.input),
                &ws.acts[k],
                (0, g4),
                Some((lo.b_ih, lo.b_hh)),
            )?;
            // SAFETY: every index is within the buffers allocated for this (n, t) (see Packing
            // and the region layout of `acts`); cubes past the last slot return at once.
            unsafe {
                lstm_forward::launch_unchecked(
                    &self.client,
                    slots.clone(),
                    rec,
                    4,
                    ws.acts[k].arg(),
                    ws.wv.arg(),
                    ws.data.arg(),
                    ws.res.arg(),
                    n as u32,
                    t as u32,
                    (k * 2 * h * h) as u32,
                    (pk.h0 + k * st) as u32,
                    (pk.c0 + k * st) as u32,
                    pk.mask as u32,
                    (pk.ht + k * st) as u32,
                    (pk.ct + k * st) as u32,
                    h,
                    top && masked,
                );
            }
        }
        let top = &ws.acts[cfg.layers - 1];
        let (hw, hb) = (self.layout.head_w(), self.layout.head_b());
        // SAFETY: rows past `nt` return at once; the rest index within the shard's buffers.
        unsafe {
            head_kernel::launch_unchecked(
                &self.client,
                self.count_1d(nt.div_ceil(ROW_CUBE as usize))?,
                CubeDim::new_1d(ROW_CUBE),
                top.arg(),
                ws.params.arg(),
                ws.data.arg(),
                ws.pred.arg(),
                ws.dz.arg(),
                ws.res.arg(),
                nt as u32,
                out_region as u32,
                hw as u32,
                hb as u32,
                pk.y as u32,
                pk.loss as u32,
                h,
                fo,
                cfg.head == Head::Softmax,
                train,
            );
        }
        if !train {
            return Ok(());
        }
        // head: dW = dzᵀ·top, db = column sums of dz, dy = dz·W (dropout applied by the backward)
        self.gemm(
            (fo, h, nt),
            &ws.dz,
            (0, 1, fo),
            top,
            (out_region, h, 1),
            &ws.res,
            (hw, h),
            None,
        )?;
        self.colsum(&ws.dz, nt, fo, &ws.res, hb, hb)?;
        self.gemm(
            (nt, h, fo),
            &ws.dz,
            (0, fo, 1),
            &ws.params,
            (hw, h, 1),
            &ws.dy,
            (0, h),
            None,
        )?;
        for k in (0..cfg.layers).rev() {
            let lo = self.layout.layer(k);
            let top = k + 1 == cfg.layers;
            // SAFETY: as for the forward recurrence.
            unsafe {
                lstm_backward::launch_unchecked(
                    &self.client,
                    slots.clone(),
                    rec,
                    4,
                    ws.acts[k].arg(),
                    ws.wv.arg(),
                    ws.data.arg(),
                    ws.dy.arg(),
                    ws.da.arg(),
                    ws.res.arg(),
                    n as u32,
                    t as u32,
                    (k * 2 * h * h + h * h) as u32,
                    (pk.c0 + k * st) as u32,
                    pk.mask as u32,
                    (pk.dh0 + k * st) as u32,
                    (pk.dc0 + k * st) as u32,
                    h,
                    top && masked,
                );
            }
            let (input, in_off) = if k == 0 {
                (&ws.data, 0)
            } else {
                (&ws.acts[k - 1], out_region)
            };
            // dW_ih = DAᵀ·X, dW_hh = DAᵀ·Hprev, biases = column sums of DA
            self.gemm(
                (g4, lo.input, nt),
                &ws.da,
                (0, 1, g4),
                input,
                (in_off, lo.input, 1),
                &ws.res,
                (lo.w_ih, lo.input),
                None,
            )?;
            self.gemm(
                (g4, h, nt),
                &ws.da,
                (0, 1, g4),
                &ws.acts[k],
                (hprev_region, h, 1),
                &ws.res,
                (lo.w_hh, h),
                None,
            )?;
            self.colsum(&ws.da, nt, g4, &ws.res, lo.b_ih, lo.b_hh)?;
            if k > 0 {
                // gradient at the layer's input, the output of the layer below
                self.gemm(
                    (nt, lo.input, g4),
                    &ws.da,
                    (0, g4, 1),
                    &ws.params,
                    (lo.w_ih, lo.input, 1),
                    &ws.dy,
                    (0, h),
                    None,
                )?;
            }
        }
        Ok(())
    }

    /// Uploads parameters and the packed inputs.
    fn upload(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        x: &[f32],
        y: Option<&[f32]>,
        init: &SlotStates,
    ) {
        let pk = ws.pack;
        let st = init.h().len();
        let s = &mut ws.staging;
        s[..x.len()].copy_from_slice(x);
        if let Some(y) = y {
            s[pk.y..pk.y + y.len()].copy_from_slice(y);
        }
        s[pk.h0..pk.h0 + st].copy_from_slice(init.h());
        s[pk.c0..pk.c0 + st].copy_from_slice(init.c());
        // W_hh regrouped with the four gates side by side (see `Workspace::wv`)
        let h = self.cfg.hidden;
        let mut wv = Vec::with_capacity(ws.wv.len * 4);
        for k in 0..self.cfg.layers {
            let w = &params[self.layout.layer(k).w_hh..][..4 * h * h];
            for (a, b) in [(h, 1), (1, h)] {
                // forward: (q, j) -> W[g*H + j, q]; backward: (i, j) -> W[g*H + i, j]
                for u in 0..h {
                    for v in 0..h {
                        wv.extend((0..4).map(|g| w[g * h * h + v * a + u * b]));
                    }
                }
            }
        }
        self.client
            .write(&ws.params.handle, Bytes::from_elems(params.to_vec()));
        self.client.write(&ws.wv.handle, Bytes::from_elems(wv));
        self.client
            .write(&ws.data.handle, Bytes::from_elems(s.clone()));
    }

    fn read(&self, bufs: &[&Buf]) -> Result<Vec<Vec<f32>>, ModelError> {
        let handles = bufs.iter().map(|b| b.handle.clone()).collect();
        let bytes = self
            .client
            .read(handles)
            .map_err(|e| self.err(format!("device read failed: {e}")))?;
        Ok(bytes
            .iter()
            .zip(bufs)
            .map(|(b, buf)| f32::from_bytes(b)[..buf.len].to_vec())
            .collect())
    }

    fn states(
        &self,
        res: &[f32],
        n: usize,
        h_off: usize,
        c_off: usize,
    ) -> Result<SlotStates, ModelError> {
        let len = self.cfg.layers * n * self.cfg.hidden;
        SlotStates::from_flat(
            self.cfg.layers,
            n,
            self.cfg.hidden,
            res[h_off..h_off + len].to_vec(),
            res[c_off..c_off + len].to_vec(),
        )
    }
}

impl Engine for WgpuFusedEngine {
    fn describe(&self) -> String {
        format!("fused wgpu engine ({})", self.adapter)
    }

    fn train_step(
        &mut self,
        params: &[f32],
        batch: &Batch<'_>,
        init: &SlotStates,
        want_init_grad: bool,
    ) -> Result<TrainOut, ModelError> {
        check_batch(&self.cfg, params.len(), self.layout.len(), batch, init)?;
        let (n, t, h) = (batch.n, batch.t, self.cfg.hidden);
        if n == 0 || t == 0 {
            // nothing runs: no loss, no gradient, the states pass through
            let zeros = SlotStates::zeros(self.cfg.layers, n, h);
            return Ok(TrainOut {
                loss_sum: 0.0,
                grad: vec![0.0; self.layout.len()],
                final_state: init.clone(),
                init_grad: want_init_grad.then_some(zeros),
            });
        }
        let mut ws = self.workspace(n, t)?;
        let mask = batch
            .dropout
            .filter(|_| self.cfg.dropout > 0.0)
            .map(|k| DropoutMask::new(k, self.cfg.dropout));
        if let Some(m) = mask {
            let off = ws.pack.mask;
            for (r, &slot) in batch.slots.iter().enumerate() {
                m.fill_slot(
                    slot,
                    &mut ws.staging[off + r * t * h..off + (r + 1) * t * h],
                );
            }
        }
        self.upload(&mut ws, params, batch.x, Some(batch.y), init);
        let out = self
            .run(&ws, true, mask.is_some())
            .and_then(|()| self.read(&[&ws.res]));
        let pk = ws.pack;
        self.ws = Some(ws);
        let res = out?.remove(0);
        let p = self.layout.len();
        let loss_sum = res[pk.loss..pk.loss + n * t]
            .iter()
            .map(|&v| f64::from(v))
            .sum();
        let final_state = self.states(&res, n, pk.ht, pk.ct)?;
        let init_grad = if want_init_grad {
            Some(self.states(&res, n, pk.dh0, pk.dc0)?)
        } else {
            None
        };
        Ok(TrainOut {
            loss_sum,
            grad: res[..p].to_vec(),
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
        let mut ws = self.workspace(n, t)?;
        self.upload(&mut ws, params, x, None, init);
        let out = self
            .run(&ws, false, false)
            .and_then(|()| self.read(&[&ws.pred, &ws.res]));
        let pk = ws.pack;
        self.ws = Some(ws);
        let mut out = out?;
        let res = out.pop().unwrap_or_default();
        let pred = out.pop().unwrap_or_default();
        Ok((pred, self.states(&res, n, pk.ht, pk.ct)?))
    }
}
