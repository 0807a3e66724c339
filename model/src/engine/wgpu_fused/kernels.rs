//! The CubeCL kernels of the fused wgpu engine: the element-wise helpers, the GEMM and column
//! sum, the recurrences forward and backward over all time steps, and the head. The host code
//! in the parent module launches them.

use cubecl::prelude::*;

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
pub(super) fn gemm_kernel(
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
pub(super) fn colsum_kernel(
    a: &[f32],
    c: &mut [f32],
    rows: u32,
    cols: u32,
    c_off: u32,
    c_off2: u32,
) {
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
/// `hT_off` / `cT_off` (`[n, H]`): the states after step `t - 1`, or when `ragged` after each
/// slot's last valid step (its initial state when it has none), with the valid step counts `[n]`
/// as f32 in `data` at `valid_off`. Padded steps still run (their gradient is zero).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn lstm_forward<V: Size>(
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
    valid_off: u32,
    #[comptime] h: usize,
    #[comptime] masked: bool,
    #[comptime] ragged: bool,
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
        let mut len = t as usize;
        if ragged {
            len = data[valid_off as usize + slot] as usize;
        }
        while j < h {
            let (h0, c0) = (
                data[h0_off as usize + slot * h + j],
                data[c0_off as usize + slot * h + j],
            );
            hs[j] = h0;
            cs[j] = c0;
            if ragged && len == 0 {
                res[ht_off as usize + slot * h + j] = h0;
                res[ct_off as usize + slot * h + j] = c0;
            }
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
                if ragged && s + 1 == len {
                    res[ht_off as usize + slot * h + j] = hn;
                    res[ct_off as usize + slot * h + j] = c;
                }
                j += step;
            }
            sync_cube();
        }
        if !ragged {
            let last = (t as usize % 2) * h;
            let mut j = UNIT_POS_X as usize;
            while j < h {
                res[ht_off as usize + slot * h + j] = hs[last + j];
                res[ct_off as usize + slot * h + j] = cs[j];
                j += step;
            }
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
pub(super) fn lstm_backward<V: Size>(
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
/// loss against the targets in `data` at `y_off` (row sums into `res` at `loss_off`) and its
/// gradient at the head's pre-activation into `dz`. The loss is the squared error, or with `mae`
/// the absolute error, or with `huber` the Huber loss with threshold `delta`. When `ragged`, row
/// `slot * t + s` counts only if `s` is below the slot's valid step count (`[n]` as f32 in
/// `data` at `valid_off`); padded rows get a zero loss and gradient. When `observed`, each
/// output's loss and gradient are weighted by its 0/1 weight (`[rows, o]` in `data` at
/// `observed_off`): an unobserved target adds nothing. With `pinball`, output `q` has the
/// pinball loss at the level in `data` at `levels_off + q`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn head_kernel(
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
    t: u32,
    valid_off: u32,
    observed_off: u32,
    levels_off: u32,
    delta: f32,
    #[comptime] h: usize,
    #[comptime] o: usize,
    #[comptime] softmax: bool,
    #[comptime] train: bool,
    #[comptime] ragged: bool,
    #[comptime] observed: bool,
    #[comptime] mae: bool,
    #[comptime] huber: bool,
    #[comptime] pinball: bool,
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
            let mut live = true;
            if ragged {
                let slot = row / t as usize;
                let s = row - slot * t as usize;
                live = s < data[valid_off as usize + slot] as usize;
            }
            if live {
                let y = y_off as usize + p;
                let mut loss = 0.0f32;
                for q in 0..o {
                    let e = pred[p + q] - data[y + q];
                    let mut l = e * e;
                    let mut g = 2.0 * e;
                    if mae {
                        l = f32::abs(e);
                        g = 0.0f32;
                        if e > 0.0f32 {
                            g = 1.0f32;
                        }
                        if e < 0.0f32 {
                            g = -1.0f32;
                        }
                    } else if pinball {
                        let lv = data[levels_off as usize + q];
                        if e < 0.0f32 {
                            l = -lv * e;
                            g = -lv;
                        } else {
                            l = (1.0f32 - lv) * e;
                            g = 1.0f32 - lv;
                        }
                    } else if huber {
                        let a = f32::abs(e);
                        if a <= delta {
                            l = 0.5f32 * e * e;
                            g = e;
                        } else {
                            l = delta * (a - 0.5f32 * delta);
                            if e < 0.0f32 {
                                g = -delta;
                            } else {
                                g = delta;
                            }
                        }
                    }
                    if observed {
                        let w = data[observed_off as usize + p + q];
                        l *= w;
                        g *= w;
                    }
                    loss += l;
                    dz[p + q] = g;
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
            } else {
                res[loss_off as usize + row] = 0.0f32;
                for q in 0..o {
                    dz[p + q] = 0.0f32;
                }
            }
        }
    }
}
