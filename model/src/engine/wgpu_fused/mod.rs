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
//! - head: one dispatch for the dense head, softmax, the loss ([`Loss`]) and its gradient;
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
//!
//! A ragged batch ([`Batch::valid`] with a row shorter than `t`) uploads the valid step counts
//! with the inputs and compiles the head and forward recurrence with the `ragged` flag: the head
//! gives padded steps a zero loss and gradient (so their gate gradients come out exactly zero
//! in the backward, which needs no change), and the forward recurrence writes each slot's final
//! state at its last valid step. Padded steps still run, so padded inputs must be finite. A
//! batch without padding takes the unflagged kernels. Unobserved targets ([`Batch::observed`])
//! upload a 0/1 weight per output and compile the head with the `observed` flag: an unobserved
//! output gets a zero loss and gradient.

use cubecl::bytes::Bytes;
use cubecl::prelude::*;
use cubecl::server::Handle;

use burn::backend::DispatchDevice;
use burn::tensor::Device;

use crate::config::{Head, ModelConfig};
use crate::dropout::DropoutMask;
use crate::engine::math::check_loss;
use crate::engine::{Batch, Engine, Loss, TrainOut, check_batch, check_forward};
use crate::error::ModelError;
use crate::params::ParamLayout;
use crate::state::SlotStates;

/// Units per cube of the one-dimensional element-wise kernels.
const ROW_CUBE: u32 = 64;
/// Side of the square cube of the GEMM kernel (each unit computes a 4 x 4 micro-tile).
const GEMM_TILE: u32 = 16;
/// Largest cube the recurrence kernels use; larger hidden sizes loop over the hidden index.
const MAX_RECURRENT_CUBE: u32 = 256;

mod kernels;

use kernels::*;

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
    /// `[x n*t*I | y n*t*O | h0 L*n*H | c0 L*n*H | mask n*t*H | valid n | observed n*t*O |
    /// levels O]`.
    y: usize,
    h0: usize,
    c0: usize,
    mask: usize,
    valid: usize,
    observed: usize,
    levels: usize,
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
        let valid = mask + nt * cfg.hidden;
        let observed = valid + n;
        let levels = observed + nt * cfg.output;
        let data_len = levels + cfg.output;
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
            valid,
            observed,
            levels,
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

/// What a training pass computes beyond the forward.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// Some rows have padded steps (their valid step counts are uploaded).
    ragged: bool,
    /// Some targets are unobserved (a 0/1 weight per output is uploaded).
    observed: bool,
    loss: Loss,
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
    fn run(&self, ws: &Workspace, train: Option<Step>, masked: bool) -> Result<(), ModelError> {
        let ragged = train.is_some_and(|s| s.ragged);
        let observed = train.is_some_and(|s| s.observed);
        let (mae, huber, pinball, delta) = match train.map_or(Loss::Mse, |s| s.loss) {
            Loss::Mse => (false, false, false, 0.0),
            Loss::Mae => (true, false, false, 0.0),
            Loss::Huber(d) => (false, true, false, d),
            Loss::Pinball(_) => (false, false, true, 0.0),
        };
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
                    pk.valid as u32,
                    h,
                    top && masked,
                    ragged,
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
                t as u32,
                pk.valid as u32,
                pk.observed as u32,
                pk.levels as u32,
                delta,
                h,
                fo,
                cfg.head == Head::Softmax,
                train.is_some(),
                ragged,
                observed,
                mae,
                huber,
                pinball,
            );
        }
        if train.is_none() {
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
        check_loss(batch.loss)?;
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
        // rows shorter than `t` take the ragged kernels; a batch without padding runs as unmasked
        let lens = batch.valid.filter(|v| v.iter().any(|&l| l as usize != t));
        // the counts travel as f32, exact up to 2^24
        if lens.is_some() && t > 1 << 24 {
            return Err(self.err(format!(
                "a ragged shard of {t} steps exceeds the 2^24 steps the engine masks"
            )));
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
        if let Some(v) = lens {
            let off = ws.pack.valid;
            for (dst, &l) in ws.staging[off..off + n].iter_mut().zip(v) {
                *dst = l as f32;
            }
        }
        let observed = batch.observed.filter(|o| o.iter().any(|&seen| !seen));
        if let Some(o) = observed {
            let off = ws.pack.observed;
            for (dst, &seen) in ws.staging[off..off + o.len()].iter_mut().zip(o) {
                *dst = if seen { 1.0 } else { 0.0 };
            }
        }
        if let Loss::Pinball(q) = batch.loss {
            let off = ws.pack.levels;
            for (o, dst) in ws.staging[off..off + self.cfg.output]
                .iter_mut()
                .enumerate()
            {
                *dst = q.level(o);
            }
        }
        self.upload(&mut ws, params, batch.x, Some(batch.y), init);
        let step = Step {
            ragged: lens.is_some(),
            observed: observed.is_some(),
            loss: batch.loss,
        };
        let out = self
            .run(&ws, Some(step), mask.is_some())
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
            .run(&ws, None, false)
            .and_then(|()| self.read(&[&ws.pred, &ws.res]));
        let pk = ws.pack;
        self.ws = Some(ws);
        let mut out = out?;
        let res = out.pop().unwrap_or_default();
        let pred = out.pop().unwrap_or_default();
        Ok((pred, self.states(&res, n, pk.ht, pk.ct)?))
    }
}
