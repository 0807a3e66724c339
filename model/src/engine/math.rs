//! Dense kernels for the CPU engine: a bounds-checked strided GEMM over `matrixmultiply`, and
//! branch-free `exp`, `sigmoid` and `tanh` that the compiler vectorizes (Cephes polynomials,
//! accurate to a few ulp); and the check of a step's [`Loss`] that every engine runs.

use crate::engine::{Loss, Quantiles};
use crate::error::ModelError;

/// Fails unless `loss` is well defined: a Huber `delta` must be positive and finite, pinball
/// levels ascending within (0, 1).
pub(crate) fn check_loss(loss: Loss) -> Result<(), ModelError> {
    match loss {
        Loss::Huber(delta) if !(delta.is_finite() && delta > 0.0) => Err(ModelError::Config {
            field: "loss".into(),
            msg: format!("the Huber loss needs a positive, finite delta, got {delta}"),
        }),
        Loss::Pinball(q) => {
            Quantiles::new(q.levels())
                .map(|_| ())
                .map_err(|msg| ModelError::Config {
                    field: "quantiles".into(),
                    msg,
                })
        }
        _ => Ok(()),
    }
}

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> View<'a> {
    /// Row-major view with row stride `rs`.
    pub(crate) fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// Transposed view of a row-major matrix whose rows have stride `rs`.
    pub(crate) fn t(data: &'a [f32], rs: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rs,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm {what}: index {last} out of {} values",
                self.data.len()
            );
        }
    }
}

/// `C = alpha * A B + beta * C` with `A` `m x k`, `B` `k x n`, `C` `m x n` with row stride `rsc`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: View<'_>,
    b: View<'_>,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let cv = View {
        data: c,
        rs: rsc,
        cs: 1,
    };
    cv.check(m, n, "C");
    if k == 0 {
        for i in 0..m {
            for v in &mut c[i * rsc..i * rsc + n] {
                *v *= beta;
            }
        }
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    // SAFETY: the checks above keep every accessed element of A, B and C inside its slice, the
    // strides are non-negative, and C does not alias A or B (it is a distinct &mut borrow).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// `C[m×n] (+)= A[m×k] · B[k×n]` for the small products of the recurrence (one per time step,
/// always with the same `B`), all row-major with row strides `rsc`, `rsa`, `rsb`. Blocks of up
/// to 4 rows × 64 columns keep their accumulators in registers, so nothing is packed or spilled;
/// every element is summed over `k` in order. With `FMA` the multiply-adds are fused (only
/// instantiated where the CPU has FMA; elsewhere `mul_add` would be a slow library call).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn small_gemm<const FMA: bool>(
    c: &mut [f32],
    rsc: usize,
    a: &[f32],
    rsa: usize,
    b: &[f32],
    rsb: usize,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    let mut j0 = 0;
    while j0 < n {
        let w = n - j0;
        let step = if w >= 64 {
            rows_of::<64, FMA>(c, rsc, a, rsa, b, rsb, (m, k, j0), accumulate)
        } else if w >= 32 {
            rows_of::<32, FMA>(c, rsc, a, rsa, b, rsb, (m, k, j0), accumulate)
        } else if w >= 16 {
            rows_of::<16, FMA>(c, rsc, a, rsa, b, rsb, (m, k, j0), accumulate)
        } else if w >= 8 {
            rows_of::<8, FMA>(c, rsc, a, rsa, b, rsb, (m, k, j0), accumulate)
        } else {
            rows_of::<1, FMA>(c, rsc, a, rsa, b, rsb, (m, k, j0), accumulate)
        };
        j0 += step;
    }
}

/// Columns `j0..j0+W` of every row, 4 rows at a time; returns `W`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_of<const W: usize, const FMA: bool>(
    c: &mut [f32],
    rsc: usize,
    a: &[f32],
    rsa: usize,
    b: &[f32],
    rsb: usize,
    (m, k, j0): (usize, usize, usize),
    accumulate: bool,
) -> usize {
    let mut r0 = 0;
    while r0 + 4 <= m {
        block::<4, W, FMA>(c, rsc, a, rsa, b, rsb, (r0, k, j0), accumulate);
        r0 += 4;
    }
    while r0 < m {
        block::<1, W, FMA>(c, rsc, a, rsa, b, rsb, (r0, k, j0), accumulate);
        r0 += 1;
    }
    W
}

/// One `R × W` block of `C` with its accumulators in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<const R: usize, const W: usize, const FMA: bool>(
    c: &mut [f32],
    rsc: usize,
    a: &[f32],
    rsa: usize,
    b: &[f32],
    rsb: usize,
    (r0, k, j0): (usize, usize, usize),
    accumulate: bool,
) {
    let mut acc = [[0.0f32; W]; R];
    if accumulate {
        for (rr, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(&c[(r0 + rr) * rsc + j0..(r0 + rr) * rsc + j0 + W]);
        }
    }
    for kk in 0..k {
        let bv: &[f32; W] = b[kk * rsb + j0..kk * rsb + j0 + W]
            .try_into()
            .expect("block width");
        for (rr, row) in acc.iter_mut().enumerate() {
            let av = a[(r0 + rr) * rsa + kk];
            for (x, &y) in row.iter_mut().zip(bv) {
                *x = madd::<FMA>(av, y, *x);
            }
        }
    }
    for (rr, row) in acc.iter().enumerate() {
        c[(r0 + rr) * rsc + j0..(r0 + rr) * rsc + j0 + W].copy_from_slice(row);
    }
}

/// `a * b + c`, fused when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// `e^x`, clamped to the finite range.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let m = x * LOG2E + MAGIC;
    let n = m - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n: the integer n sits in m's low bits as 0x4B40_0000 + n.
    let pow2 = f32::from_bits((m.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23);
    y * pow2
}

/// Logistic sigmoid.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Hyperbolic tangent: a polynomial near zero (keeps relative accuracy), `exp` elsewhere.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    let e = exp(2.0 * ax);
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    if ax < 0.625 { small } else { large }
}

/// Applies `sigmoid` in place.
#[inline]
pub(crate) fn sigmoid_slice(v: &mut [f32]) {
    for x in v {
        *x = sigmoid(*x);
    }
}

/// Applies `tanh` in place.
#[inline]
pub(crate) fn tanh_slice(v: &mut [f32]) {
    for x in v {
        *x = tanh(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_std_to_a_few_ulp() {
        let mut worst = [0.0f64; 3];
        let mut x = -30.0f32;
        while x < 30.0 {
            let e_ref = (f64::from(x)).exp();
            if e_ref < 1e37 && e_ref > 1e-37 {
                worst[0] = worst[0].max(((f64::from(exp(x)) - e_ref) / e_ref).abs());
            }
            let s_ref = 1.0 / (1.0 + (-f64::from(x)).exp());
            worst[1] = worst[1].max((f64::from(sigmoid(x)) - s_ref).abs() / s_ref.max(1e-30));
            let t_ref = f64::from(x).tanh();
            let terr = (f64::from(tanh(x)) - t_ref).abs() / t_ref.abs().max(1e-30);
            worst[2] = worst[2].max(terr);
            x += 0.0137;
        }
        assert!(worst[0] < 5e-7, "exp rel err {}", worst[0]);
        assert!(worst[1] < 1e-6, "sigmoid rel err {}", worst[1]);
        assert!(worst[2] < 1e-6, "tanh rel err {}", worst[2]);
        assert_eq!(tanh(0.0), 0.0);
        assert!((tanh(1e-6) - 1e-6).abs() < 1e-12);
        assert_eq!(sigmoid(-200.0), 0.0f32.max(sigmoid(-200.0)));
        assert!(sigmoid(200.0) == 1.0 && tanh(200.0) == 1.0 && tanh(-200.0) == -1.0);
    }

    #[test]
    fn gemm_handles_transposed_views() {
        // A 2x3, B^T given as 2x3 (so B is 3x2)
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let mut c = [10.0; 4];
        gemm(
            2,
            3,
            2,
            1.0,
            View::rows(&a, 3),
            View::t(&bt, 3),
            1.0,
            &mut c,
            2,
        );
        assert_eq!(c, [14.0, 12.0, 20.0, 15.0]);
    }
}
