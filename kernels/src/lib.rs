//! kiln's fused CPU kernels: plain functions over f32 slices, each one pass over its data,
//! split across the rayon pool, with arithmetic the compiler vectorizes (AVX2 + FMA where the
//! CPU has them, checked at run time).
//!
//! They live in their own crate so that they are optimized in every profile (kiln's `dev`
//! profile compiles kiln itself without optimization). kiln's `runtime::fused` connects them to
//! Burn's tensors and autodiff; `tests/fused.rs` in kiln checks each against the plain Burn ops
//! it replaces.

use rayon::prelude::*;

/// Elements per rayon task: large enough that scheduling is noise.
const GRAIN: usize = 1 << 14;

/// Rows per rayon task for row-wise kernels over rows of `len` elements.
fn rows_per_task(len: usize) -> usize {
    (GRAIN / len.max(1)).max(1)
}

/// `a + b` elementwise, in `a` (summing the per-task partial gradients of a weight).
fn add(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
    a
}

// ---------------------------------------------------------------------------------------------
// Vectorizable arithmetic.

/// Compiles `$body` twice, once with AVX2 and FMA enabled, and runs that copy where the CPU has
/// them (checked at run time, cached by std); the plain copy runs elsewhere. Both are the same
/// source, so the results differ only in rounding of fused multiply-adds.
macro_rules! vectorized {
    ($($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block)*) => {$(
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? $body
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
                    return unsafe { wide($($arg),*) };
                }
            }
            $body
        }
    )*};
}

/// `e^x` for f32 in straight-line arithmetic the compiler can vectorize: x = k·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its degree-7 Taylor polynomial (truncation error < 6e-9 relative),
/// 2^k from the exponent bits. Below −87.3 the result is 0 (`f32::exp` gives a subnormal or
/// 0 there: a masked score contributes nothing), above 88.3 it stays at e^88.3 (finite); NaN
/// stays NaN. Relative error is within a few f32 ulps of `f32::exp`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let (nan, tiny) = (x.is_nan(), x < -87.3);
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + SHIFT;
    let k = t - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // Low bits of t hold k + 0x400000; adding the bias and shifting by 23 leaves (k + 127) << 23.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if nan {
        f32::NAN
    } else if tiny {
        0.0
    } else {
        p * scale
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sum and maximum of a slice with 8 independent lanes (so they vectorize).
#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

// ---------------------------------------------------------------------------------------------
// SiLU.

vectorized! {
    fn silu_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * sigmoid(x);
        }
    }
    fn silu_backward_chunk(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            let s = sigmoid(x);
            *d = g * s * (1.0 + x * (1.0 - s));
        }
    }
}

/// `y = x · sigmoid(x)`.
pub fn silu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(y, x)| silu_chunk(x, y));
}

/// The gradient of [`silu`]: `dx = g · s · (1 + x (1 − s))` with s = sigmoid(x).
pub fn silu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(g.par_chunks(GRAIN)))
        .for_each(|(d, (x, g))| silu_backward_chunk(x, g, d));
}

// ---------------------------------------------------------------------------------------------
// Row softmax with a causal limit.

/// Which keys a row of attention scores may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visible {
    /// Rows per query group: row r is query r mod `queries` (grouped attention stacks the G
    /// query heads of a KV head as G·s rows).
    pub queries: usize,
    /// Causal: query i sees keys j ≤ `offset` + i; otherwise every key.
    pub causal: bool,
    /// Positions before this call (incremental decoding).
    pub offset: usize,
}

impl Visible {
    /// Keys visible to row `r` of a matrix with `t` columns.
    fn limit(&self, r: usize, t: usize) -> usize {
        if self.causal {
            (self.offset + r % self.queries.max(1) + 1).min(t)
        } else {
            t
        }
    }
}

/// Softmax of each row of `t` elements of `x` (matrices of `rows` rows laid end to end) over
/// the keys `vis` lets it see; hidden keys get 0.
pub fn softmax_rows(x: &[f32], t: usize, rows: usize, vis: Visible, y: &mut [f32]) {
    let per = rows_per_task(t);
    y.par_chunks_mut(per * t)
        .zip(x.par_chunks(per * t))
        .enumerate()
        .for_each(|(task, (y, x))| {
            y.copy_from_slice(x);
            for (i, y) in y.chunks_mut(t).enumerate() {
                softmax_in_place(y, vis.limit((task * per + i) % rows, t));
            }
        });
}

/// The gradient of [`softmax_rows`] from its output `y`: `dx = y (g − Σ g·y)` on the visible
/// keys; `dx` must be zero elsewhere.
pub fn softmax_rows_backward(
    y: &[f32],
    g: &[f32],
    t: usize,
    rows: usize,
    vis: Visible,
    dx: &mut [f32],
) {
    let per = rows_per_task(t);
    dx.par_chunks_mut(per * t)
        .zip(y.par_chunks(per * t).zip(g.par_chunks(per * t)))
        .enumerate()
        .for_each(|(task, (d, (y, g)))| {
            for (i, (d, (y, g))) in d
                .chunks_mut(t)
                .zip(y.chunks(t).zip(g.chunks(t)))
                .enumerate()
            {
                let n = vis.limit((task * per + i) % rows, t);
                d[..n].copy_from_slice(&g[..n]);
                softmax_grad_in_place(&y[..n], &mut d[..n]);
            }
        });
}

// ---------------------------------------------------------------------------------------------
// RMSNorm and LayerNorm.

/// A row normalization over the last axis: RMSNorm `x · r · w` with r = 1/sqrt(mean(x²) + eps),
/// or, when `center`, LayerNorm `(x − mean) · r · w + b` with r = 1/sqrt(var + eps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norm {
    /// Subtract each row's mean first (LayerNorm).
    pub center: bool,
    /// Added to the variance (or mean square).
    pub eps: f32,
}

vectorized! {
    /// One row: writes y and returns (mean, r); the mean is 0 without centering.
    fn norm_row(x: &[f32], w: &[f32], b: &[f32], n: Norm, y: &mut [f32]) -> (f32, f32) {
        let d = x.len() as f32;
        let mu = if n.center { sum(x) / d } else { 0.0 };
        let mut acc = [0.0f32; 8];
        let (n8, len) = (x.len() / 8 * 8, x.len());
        for i in (0..n8).step_by(8) {
            for l in 0..8 {
                let c = x[i + l] - mu;
                acc[l] += c * c;
            }
        }
        let sq = acc.iter().sum::<f32>() + (n8..len).map(|i| (x[i] - mu) * (x[i] - mu)).sum::<f32>();
        let r = 1.0 / (sq / d + n.eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = (x - mu) * r * w;
        }
        for (y, &b) in y.iter_mut().zip(b) {
            *y += b;
        }
        (mu, r)
    }

    /// One row's gradients from the output's `g`: with x̂ = (x − mean)·r and u = g·w,
    /// `dx = r (u − mean(u) − x̂ mean(u x̂))` (RMSNorm: without the mean(u) term); `dw += g x̂`,
    /// `db += g` (when `db` is not empty).
    #[allow(clippy::too_many_arguments)]
    fn norm_row_backward(
        x: &[f32],
        w: &[f32],
        g: &[f32],
        stat: (f32, f32),
        center: bool,
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let d = x.len() as f32;
        let (mu, r) = stat;
        let (mut su, mut sux) = ([0.0f32; 8], [0.0f32; 8]);
        let (n8, len) = (x.len() / 8 * 8, x.len());
        for i in (0..n8).step_by(8) {
            for l in 0..8 {
                let u = g[i + l] * w[i + l];
                su[l] += u;
                sux[l] += u * (x[i + l] - mu) * r;
            }
        }
        let rest = n8..len;
        let su = su.iter().sum::<f32>() + rest.clone().map(|i| g[i] * w[i]).sum::<f32>();
        let sux = sux.iter().sum::<f32>()
            + rest.map(|i| g[i] * w[i] * (x[i] - mu) * r).sum::<f32>();
        let (mean_u, mean_ux) = (if center { su / d } else { 0.0 }, sux / d);
        for (((dx, &x), &w), &g) in dx.iter_mut().zip(x).zip(w).zip(g) {
            *dx = r * (g * w - mean_u - (x - mu) * r * mean_ux);
        }
        for ((dw, &x), &g) in dw.iter_mut().zip(x).zip(g) {
            *dw += g * (x - mu) * r;
        }
        for (db, &g) in db.iter_mut().zip(g) {
            *db += g;
        }
    }
}

/// Normalizes each row of `d = w.len()` elements (see [`Norm`]), plus `b` when given; each
/// row's (mean, r) goes to `stats` (two per row), what [`norm_backward`] reads.
pub fn norm(x: &[f32], w: &[f32], b: Option<&[f32]>, n: Norm, y: &mut [f32], stats: &mut [f32]) {
    let d = w.len();
    let b = b.unwrap_or(&[]);
    assert!(b.is_empty() || b.len() == d);
    let per = rows_per_task(d);
    y.par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d))
        .zip(stats.par_chunks_mut(2 * per))
        .for_each(|((y, x), st)| {
            for ((y, x), st) in y.chunks_mut(d).zip(x.chunks(d)).zip(st.chunks_mut(2)) {
                (st[0], st[1]) = norm_row(x, w, b, n, y);
            }
        });
}

/// The gradients of [`norm`]: `dx` (written), and the weight's and (with `bias`) the bias's
/// gradients (returned).
pub fn norm_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    stats: &[f32],
    (center, bias): (bool, bool),
    dx: &mut [f32],
) -> (Vec<f32>, Option<Vec<f32>>) {
    let d = w.len();
    let per = rows_per_task(d);
    let nb = if bias { d } else { 0 };
    // Each task accumulates its own partial weight and bias gradients ([dw | db]); they are
    // summed after.
    let acc = dx
        .par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d).zip(g.par_chunks(per * d)))
        .zip(stats.par_chunks(2 * per))
        .fold(
            || vec![0.0f32; d + nb],
            |mut acc, ((dx, (x, g)), st)| {
                let (dw, db) = acc.split_at_mut(d);
                let rows = dx.chunks_mut(d).zip(x.chunks(d).zip(g.chunks(d)));
                for ((dx, (x, g)), st) in rows.zip(st.chunks(2)) {
                    norm_row_backward(x, w, g, (st[0], st[1]), center, dx, dw, db);
                }
                acc
            },
        )
        .reduce(|| vec![0.0f32; d + nb], add);
    let (dw, db) = acc.split_at(d);
    (dw.to_vec(), bias.then(|| db.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Rotate-half RoPE.

vectorized! {
    /// One row: `sign` = 1 rotates forward (the op), −1 back (its gradient).
    fn rope_row(x: &[f32], c: &[f32], s: &[f32], sign: f32, y: &mut [f32]) {
        let half = c.len();
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for i in 0..half {
            let sn = sign * s[i];
            y1[i] = x1[i] * c[i] - x2[i] * sn;
            y2[i] = x1[i] * sn + x2[i] * c[i];
        }
    }
}

/// Rotate-half RoPE of `x` `[b, h, s, d]` (read through its strides) into `y` laid out as
/// `[b, s, h, d]`: the first half of each row becomes `x1·cos − x2·sin`, the second
/// `x1·sin + x2·cos`, where `table` holds per position d/2 cosines then d/2 sines. `sign` = −1
/// rotates back, which is the gradient. Batch rows run in parallel.
pub fn rope(x: View4, [_, h, s, d]: [usize; 4], table: &[f32], sign: f32, y: &mut [f32]) {
    let half = d / 2;
    y.par_chunks_mut(s * h * d).enumerate().for_each(|(bi, y)| {
        for hi in 0..h {
            let m = x.mat(bi, hi);
            m.check(s, d);
            for pos in 0..s {
                let xr = &m.data[pos * m.rs..pos * m.rs + d];
                let row = &table[pos * d..(pos + 1) * d];
                let yr = &mut y[(pos * h + hi) * d..(pos * h + hi + 1) * d];
                rope_row(xr, &row[..half], &row[half..], sign, yr);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Attention.

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (dividing `heads`: query head h reads KV head h / (heads / kv_heads)).
    pub kv_heads: usize,
    /// Query positions.
    pub queries: usize,
    /// Key positions.
    pub keys: usize,
    /// Features per query, key and value.
    pub dim: usize,
}

impl AttnShape {
    /// Query heads per KV head, and the row blocks of one head (see [`attn_blocks`]).
    fn plan(&self, vis: Visible) -> (usize, Vec<(usize, usize, usize)>) {
        let group = self.heads / self.kv_heads.max(1);
        (group, attn_blocks(self.queries, self.keys, vis))
    }
}

/// A strided view `[n0, n1, rows, cols]` of a slice with unit column stride: element
/// (a, b, r, c) is `data[off + a·strides[0] + b·strides[1] + r·strides[2] + c]`.
#[derive(Clone, Copy, Debug)]
pub struct View4<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Where element (0, 0, 0, 0) is.
    pub off: usize,
    /// Strides of the first three axes.
    pub strides: [usize; 3],
}

impl<'a> View4<'a> {
    /// The matrix (a, b, .., ..).
    fn mat(&self, a: usize, b: usize) -> Mat<'a> {
        let start = self.off + a * self.strides[0] + b * self.strides[1];
        Mat {
            data: &self.data[start.min(self.data.len())..],
            rs: self.strides[2],
            cs: 1,
        }
    }
}

/// A matrix operand: a slice and the strides of its rows and columns.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[_, cols]` matrix.
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[_, cols]` matrix.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
    /// The transpose of this matrix.
    fn t(self) -> Self {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// The same matrix from row `r` on.
    fn skip_rows(self, r: usize) -> Self {
        Mat {
            data: &self.data[r * self.rs..],
            ..self
        }
    }
    /// Panics unless the slice holds every element of an `[r, c]` matrix with these strides.
    fn check(&self, r: usize, c: usize) {
        if r > 0 && c > 0 {
            assert!(
                (r - 1) * self.rs + (c - 1) * self.cs < self.data.len(),
                "operand too short"
            );
        }
    }
}

/// `dst [m, n] (row-major) = scale · a [m, k] · b [k, n]`, plus `dst`'s own values when
/// `accumulate`.
/// `dst` may be uninitialized when not accumulating (gemm writes every element then).
fn gemm_raw(
    dst: &mut [std::mem::MaybeUninit<f32>],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    (a, b): (Mat, Mat),
    accumulate: bool,
    scale: f32,
    par: gemm::Parallelism,
) {
    assert!(n <= dst_rs && (m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len()));
    a.check(m, k);
    b.check(k, n);
    // SAFETY: dst holds the [m, n] matrix with row stride dst_rs, and a and b every element of
    // their [m, k] and [k, n] matrices (checked above); without `accumulate` gemm reads nothing
    // from dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `dst [m, n] (row stride dst_rs) = scale · a [m, k] · b [k, n]`, or `+=` when `accumulate`,
/// on this thread.
fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    (a, b): (Mat, Mat),
    accumulate: bool,
    scale: f32,
) {
    // SAFETY of the cast: f32 and MaybeUninit<f32> have the same layout, and gemm writes only
    // initialized values.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
    gemm_raw(
        dst,
        dst_rs,
        (m, n, k),
        (a, b),
        accumulate,
        scale,
        gemm::Parallelism::None,
    );
}

/// A new row-major `[m, n]` matrix `a · b` (plus `bias` on every row), computed by all
/// threads. The buffer is not zeroed first: gemm writes every element.
fn product(m: usize, n: usize, k: usize, a: Mat, b: Mat, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let spare = &mut out.spare_capacity_mut()[..m * n];
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n);
        for row in spare.chunks_mut(n) {
            for (o, &b) in row.iter_mut().zip(bias) {
                o.write(b);
            }
        }
    }
    gemm_raw(
        spare,
        n,
        (m, n, k),
        (a, b),
        bias.is_some(),
        1.0,
        gemm::Parallelism::Rayon(0),
    );
    // SAFETY: gemm wrote all m·n elements (each is the bias plus a product when accumulating).
    unsafe { out.set_len(m * n) };
    out
}

/// A linear map of `n` rows: `x [n, i] · w [i, o] (+ bias [o])` → `[n, o]`.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    i: usize,
    o: usize,
) -> Vec<f32> {
    product(n, o, i, Mat::rows(x, i), Mat::rows(w, o), bias)
}

/// The gradients of [`linear`] from the output's gradient `g [n, o]`: `dx = g · wᵀ`,
/// `dw = xᵀ · g`, `db = Σ_rows g`, each only when asked for.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    (n, i, o): (usize, usize, usize),
    want: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let dx = want[0].then(|| product(n, i, o, Mat::rows(g, o), Mat::transposed(w, o), None));
    let dw = want[1].then(|| product(i, o, n, Mat::transposed(x, i), Mat::rows(g, o), None));
    let db = want[2].then(|| {
        g.par_chunks(rows_per_task(o) * o)
            .fold(
                || vec![0.0f32; o],
                |mut acc, rows| {
                    for row in rows.chunks(o) {
                        acc.iter_mut().zip(row).for_each(|(a, r)| *a += r);
                    }
                    acc
                },
            )
            .reduce(|| vec![0.0f32; o], add)
    });
    [dx, dw, db]
}

vectorized! {
    /// Softmax of `row[..n]` in place; `row[n..]` becomes 0.
    fn softmax_in_place(row: &mut [f32], n: usize) {
        let (vis, hidden) = row.split_at_mut(n);
        let m = max(vis);
        for x in vis.iter_mut() {
            *x = exp(*x - m);
        }
        let inv = 1.0 / sum(vis);
        for x in vis.iter_mut() {
            *x *= inv;
        }
        hidden.fill(0.0);
    }
    /// `g ← y (g − Σ g·y)` in place (the softmax gradient from its output y).
    fn softmax_grad_in_place(y: &[f32], g: &mut [f32]) {
        let s = dot(y, g);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = y * (*g - s);
        }
    }
}

/// Query rows per block of causal attention: a block's products stop at the last key its last
/// row sees, which skips most of the hidden upper triangle (38 % of the work at 127 keys).
const ATTN_BLOCK: usize = 32;

/// The row blocks of one pair: `(first row, rows, keys the block needs)`. Causal rows come in
/// groups of `vis.queries` (one per query head of the KV head), each cut into blocks.
fn attn_blocks(rows: usize, keys: usize, vis: Visible) -> Vec<(usize, usize, usize)> {
    if !vis.causal {
        return vec![(0, rows, keys)];
    }
    let q = vis.queries.max(1);
    let mut out = Vec::new();
    for g0 in (0..rows).step_by(q) {
        let g1 = (g0 + q).min(rows);
        for r0 in (g0..g1).step_by(ATTN_BLOCK) {
            let n = ATTN_BLOCK.min(g1 - r0);
            out.push((r0, n, vis.limit(r0 + n - 1, keys)));
        }
    }
    out
}

/// Attention `o = softmax(scale · q kᵀ) v` per (batch, query head), each row over the keys
/// `vis` lets it see (hidden keys get probability 0; `vis.queries` is the number of query
/// positions). Query head h reads KV head h / (heads / kv_heads). `q` `[batch, heads, queries,
/// dim]`, `k` and `v` `[batch, kv_heads, keys, dim]` are read through their strides. Writes the
/// probabilities `p` `[batch, heads, queries, keys]` (what the backward pass needs) and `o` laid
/// out as `[batch, queries, heads, dim]` (the layout the heads are merged in). Batch rows run in
/// parallel.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: View4,
    k: View4,
    v: View4,
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    p: &mut [f32],
    o: &mut [f32],
) {
    let (heads, s, t, d) = (sh.heads, sh.queries, sh.keys, sh.dim);
    let (group, blocks) = sh.plan(vis);
    p.par_chunks_mut(heads * s * t)
        .zip(o.par_chunks_mut(s * heads * d))
        .enumerate()
        .for_each(|(bi, (p, o))| {
            for h in 0..heads {
                let (qm, km, vm) = (q.mat(bi, h), k.mat(bi, h / group), v.mat(bi, h / group));
                let ph = &mut p[h * s * t..(h + 1) * s * t];
                for &(r0, n, lim) in &blocks {
                    let pb = &mut ph[r0 * t..(r0 + n) * t];
                    matmul(pb, t, (n, lim, d), (qm.skip_rows(r0), km.t()), false, scale);
                    for (i, row) in pb.chunks_mut(t).enumerate() {
                        softmax_in_place(row, vis.limit(r0 + i, t));
                    }
                    let ob = &mut o[r0 * heads * d + h * d..];
                    matmul(
                        ob,
                        heads * d,
                        (n, d, lim),
                        (Mat::rows(pb, t), vm),
                        false,
                        1.0,
                    );
                }
            }
        });
}

/// The gradients of [`attention`] from its inputs, its probabilities `p` and the output's
/// gradient `go` (a view like q): writes `dq` laid out as `[batch, queries, heads, dim]` and
/// `dk`, `dv` as `[batch, keys, kv_heads, dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    (q, k, v, go): (View4, View4, View4, View4),
    p: &[f32],
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (heads, s, t, d) = (sh.heads, sh.queries, sh.keys, sh.dim);
    let (group, blocks) = sh.plan(vis);
    let kv_rs = sh.kv_heads * d;
    dq.par_chunks_mut(s * heads * d)
        .zip(
            dk.par_chunks_mut(t * kv_rs)
                .zip(dv.par_chunks_mut(t * kv_rs)),
        )
        .zip(p.par_chunks(heads * s * t))
        .enumerate()
        .for_each(|(bi, ((dq, (dk, dv)), p))| {
            dk.fill(0.0);
            dv.fill(0.0);
            let mut ds = vec![0.0f32; ATTN_BLOCK.max(s) * t];
            for h in 0..heads {
                let kh = h / group;
                let (qm, km, vm, gm) = (q.mat(bi, h), k.mat(bi, kh), v.mat(bi, kh), go.mat(bi, h));
                let ph = &p[h * s * t..(h + 1) * s * t];
                for &(r0, n, lim) in &blocks {
                    let pb = Mat::rows(&ph[r0 * t..], t);
                    let gob = gm.skip_rows(r0);
                    // dv += pᵀ · go
                    matmul(
                        &mut dv[kh * d..],
                        kv_rs,
                        (lim, d, n),
                        (pb.t(), gob),
                        true,
                        1.0,
                    );
                    // ds = softmax gradient of (go · vᵀ), rows of `lim`
                    matmul(&mut ds, lim, (n, lim, d), (gob, vm.t()), false, 1.0);
                    for (i, g) in ds.chunks_mut(lim).take(n).enumerate() {
                        softmax_grad_in_place(&ph[(r0 + i) * t..(r0 + i) * t + lim], g);
                    }
                    let dsb = Mat::rows(&ds, lim);
                    // dq = scale · ds · k; dk += scale · dsᵀ · q
                    let dqb = &mut dq[r0 * heads * d + h * d..];
                    matmul(dqb, heads * d, (n, d, lim), (dsb, km), false, scale);
                    let qb = qm.skip_rows(r0);
                    matmul(
                        &mut dk[kh * d..],
                        kv_rs,
                        (lim, d, n),
                        (dsb.t(), qb),
                        true,
                        scale,
                    );
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// AdamW.

/// The constants of one AdamW update (Loshchilov & Hutter, 2019), as kiln's trainer applies it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// Bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub bc1: f32,
    /// See `bc1`.
    pub bc2: f32,
    /// The parameter is first multiplied by this (1 − lr·weight decay, or 1).
    pub decay: f32,
    /// The gradient is first multiplied by this (global-norm clipping, or 1).
    pub clip: f32,
}

vectorized! {
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * h.clip;
            *m = *m * h.beta1 + g * (1.0 - h.beta1);
            *v = *v * h.beta2 + g * g * (1.0 - h.beta2);
            let update = (*m / h.bc1) / ((*v / h.bc2).sqrt() + h.eps);
            *p = *p * h.decay - update * h.lr;
        }
    }
}

/// One AdamW step in place: the moments `m`, `v` and the parameter `p` from its gradient `g`.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
    p.par_chunks_mut(GRAIN)
        .zip(g.par_chunks(GRAIN))
        .zip(m.par_chunks_mut(GRAIN).zip(v.par_chunks_mut(GRAIN)))
        .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, h));
}

// ---------------------------------------------------------------------------------------------
// Mamba's selective scan.

/// The inputs of a selective scan: dt, a, dtx, bm, cm (see [`selective_scan`]).
pub type ScanInputs<'a> = [&'a [f32]; 5];

/// The sizes of a selective scan: batch, positions, channels, state size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Channels (each has its own state vector).
    pub channels: usize,
    /// State size per channel.
    pub state: usize,
}

/// Mamba's selective scan, per batch row in parallel: for each position t and channel c,
/// `h[c] ← exp(dt[t, c] · a[c]) ⊙ h[c] + dtx[t, c] · bm[t]` (vectors over the state) and
/// `y[t, c] = cm[t] · h[c]`. `dt`, `dtx` are `[batch, len, channels]`, `bm`, `cm`
/// `[batch, len, state]`, `a` `[channels, state]`, `h` `[batch, channels, state]` (the initial
/// state in, the final one out). Writes `y` and, when given, every state after every position
/// into `hs` `[batch, len, channels, state]` (what the backward pass needs).
#[allow(clippy::too_many_arguments)]
pub fn selective_scan(
    [dt, a, dtx, bm, cm]: ScanInputs,
    sh: ScanShape,
    h: &mut [f32],
    y: &mut [f32],
    hs: Option<&mut [f32]>,
) {
    let ScanShape {
        len: s,
        channels: e,
        state: n,
        ..
    } = sh;
    let (hs, keep) = match hs {
        Some(hs) => (hs, true),
        None => (&mut [][..], false),
    };
    let hs_chunk = if keep { s * e * n } else { 0 };
    let go = |bi: usize, h: &mut [f32], y: &mut [f32], hs: &mut [f32]| {
        for t in 0..s {
            let row = bi * s + t;
            let (bt, ct) = (&bm[row * n..][..n], &cm[row * n..][..n]);
            let (d, u) = (&dt[row * e..][..e], &dtx[row * e..][..e]);
            scan_step(h, a, d, u, bt, ct, &mut y[t * e..(t + 1) * e]);
            if keep {
                hs[t * e * n..(t + 1) * e * n].copy_from_slice(h);
            }
        }
    };
    if keep {
        h.par_chunks_mut(e * n)
            .zip(y.par_chunks_mut(s * e))
            .zip(hs.par_chunks_mut(hs_chunk))
            .enumerate()
            .for_each(|(bi, ((h, y), hs))| go(bi, h, y, hs));
    } else {
        h.par_chunks_mut(e * n)
            .zip(y.par_chunks_mut(s * e))
            .enumerate()
            .for_each(|(bi, (h, y))| go(bi, h, y, &mut []));
    }
}

vectorized! {
    /// One position's step for every channel: updates the states `h` `[e, n]` and writes
    /// `y[c] = cm · h[c]`.
    #[allow(clippy::too_many_arguments)]
    fn scan_step(
        h: &mut [f32],
        a: &[f32],
        dt: &[f32],
        dtx: &[f32],
        b: &[f32],
        c: &[f32],
        y: &mut [f32],
    ) {
        let n = b.len();
        for (((h, a), (&d, &u)), y) in h
            .chunks_exact_mut(n)
            .zip(a.chunks_exact(n))
            .zip(dt.iter().zip(dtx))
            .zip(y.iter_mut())
        {
            for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
                *h = exp(d * a) * *h + u * b;
            }
            *y = dot(c, h);
        }
    }
}

/// The gradients of [`selective_scan`] from the states `hs` it kept, the initial state `h0`
/// and the gradient `gy` of `y`: returns (d dt, d a, d dtx, d bm, d cm), shaped like the
/// inputs. Runs backward through time, per batch row in parallel; `a`'s gradient is summed
/// over the rows.
pub fn selective_scan_backward(
    [dt, a, dtx, bm, cm]: ScanInputs,
    sh: ScanShape,
    h0: &[f32],
    hs: &[f32],
    gy: &[f32],
) -> [Vec<f32>; 5] {
    let ScanShape {
        batch,
        len: s,
        channels: e,
        state: n,
    } = sh;
    let mut gdt = vec![0.0f32; batch * s * e];
    let mut gdtx = vec![0.0f32; batch * s * e];
    let mut gb = vec![0.0f32; batch * s * n];
    let mut gc = vec![0.0f32; batch * s * n];
    let ga = gdt
        .par_chunks_mut(s * e)
        .zip(gdtx.par_chunks_mut(s * e))
        .zip(gb.par_chunks_mut(s * n).zip(gc.par_chunks_mut(s * n)))
        .enumerate()
        .fold(
            || vec![0.0f32; e * n],
            |mut ga, (bi, ((gdt, gdtx), (gb, gc)))| {
                // The gradient flowing into the state, per channel.
                let mut gh = vec![0.0f32; e * n];
                let mut scratch = vec![0.0f32; 2 * n];
                for t in (0..s).rev() {
                    let row = bi * s + t;
                    let (bt, ct) = (&bm[row * n..][..n], &cm[row * n..][..n]);
                    let (gbt, gct) = (&mut gb[t * n..][..n], &mut gc[t * n..][..n]);
                    let cur = &hs[row * e * n..][..e * n];
                    let prev = if t == 0 {
                        &h0[bi * e * n..][..e * n]
                    } else {
                        &hs[(row - 1) * e * n..][..e * n]
                    };
                    scan_step_backward(
                        (&mut gh, &mut ga, &mut scratch),
                        (gbt, gct),
                        (cur, prev, a),
                        (
                            &dt[row * e..][..e],
                            &dtx[row * e..][..e],
                            &gy[row * e..][..e],
                        ),
                        (bt, ct),
                        (&mut gdt[t * e..(t + 1) * e], &mut gdtx[t * e..(t + 1) * e]),
                    );
                }
                ga
            },
        )
        .reduce(|| vec![0.0f32; e * n], add);
    [gdt, ga, gdtx, gb, gc]
}

/// The state gradient, `a`'s gradient and scratch space (2n values).
type ScanGrads<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// One position's step backward for every channel: adds y's gradient to each state's,
/// accumulates the gradients of a, b and c, writes those of dt and dtx, and carries the state
/// gradients to the previous position. Arguments: see [`ScanGrads`]; b's and c's gradients at
/// this position; this state, the previous one and `a`; dt, dtx and y's gradient at this
/// position; b and c; where dt's and dtx's gradients go.
fn scan_step_backward(
    g: ScanGrads,
    gbc: (&mut [f32], &mut [f32]),
    states: (&[f32], &[f32], &[f32]),
    pos: (&[f32], &[f32], &[f32]),
    bc: (&[f32], &[f32]),
    out: (&mut [f32], &mut [f32]),
) {
    scan_step_backward_wide(g.0, g.1, g.2, gbc.0, gbc.1, states, pos, bc, out);
}

vectorized! {
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn scan_step_backward_wide(
        gh: &mut [f32],
        ga: &mut [f32],
        scratch: &mut [f32],
        gb: &mut [f32],
        gc: &mut [f32],
        states: (&[f32], &[f32], &[f32]),
        pos: (&[f32], &[f32], &[f32]),
        bc: (&[f32], &[f32]),
        out: (&mut [f32], &mut [f32]),
    ) {
        let (cur, prev, a) = states;
        let (dt, dtx, gy) = pos;
        let (b, c) = bc;
        let (gdt, gdtx) = out;
        let n = b.len();
        let (da, gda) = scratch.split_at_mut(n);
        for c_ in 0..dt.len() {
            let r = c_ * n..(c_ + 1) * n;
            let (d, u, gy) = (dt[c_], dtx[c_], gy[c_]);
            let (g, ga) = (&mut gh[r.clone()], &mut ga[r.clone()]);
            let (cur, prev, a) = (&cur[r.clone()], &prev[r.clone()], &a[r]);
            // y = c · h: the state's gradient gains gy·c, c's gains gy·h.
            for (((g, gc), &cj), &h) in g.iter_mut().zip(gc.iter_mut()).zip(c).zip(cur) {
                *g += gy * cj;
                *gc += gy * h;
            }
            // h = exp(d a) ⊙ h_prev + u b
            gdtx[c_] = dot(g, b);
            for (gb, &g) in gb.iter_mut().zip(g.iter()) {
                *gb += g * u;
            }
            for ((((da, gda), &aj), &p), &g) in
                da.iter_mut().zip(gda.iter_mut()).zip(a).zip(prev).zip(g.iter())
            {
                *da = exp(d * aj);
                *gda = g * p * *da;
            }
            gdt[c_] = dot(gda, a);
            for (ga, &gda) in ga.iter_mut().zip(gda.iter()) {
                *ga += gda * d;
            }
            for (g, &da) in g.iter_mut().zip(da.iter()) {
                *g *= da;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The LSTM recurrence.

/// The sizes of an LSTM recurrence: batch, positions, hidden width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Hidden width (the gates are 4 × this).
    pub hidden: usize,
}

impl LstmShape {
    /// Batch rows per rayon task: the batch split evenly over the pool, so that each task's
    /// recurrent product is one `[rows, h] × [h, 4h]` product per position.
    fn rows_per_task(&self) -> usize {
        let tasks = rayon::current_num_threads().clamp(1, self.batch.max(1));
        self.batch.div_ceil(tasks).max(1)
    }
}

/// `tanh x` from [`exp`]: `(1 − e^{−2|x|}) / (1 + e^{−2|x|})` with x's sign (no overflow;
/// absolute error about 1e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let t = exp(-2.0 * x.abs());
    ((1.0 - t) / (1.0 + t)).copysign(x)
}

vectorized! {
    /// One position's cell update of one row: `gates` `[4h]` holds the pre-activations
    /// (i, f, g, o) and gets the activations; `h`, `c` `[h]` are updated in place.
    fn lstm_cell(gates: &mut [f32], h: &mut [f32], c: &mut [f32]) {
        let w = h.len();
        let (i, rest) = gates.split_at_mut(w);
        let (f, rest) = rest.split_at_mut(w);
        let (g, o) = rest.split_at_mut(w);
        for j in 0..w {
            let (ij, fj, gj, oj) = (sigmoid(i[j]), sigmoid(f[j]), tanh(g[j]), sigmoid(o[j]));
            c[j] = fj * c[j] + ij * gj;
            h[j] = oj * tanh(c[j]);
            (i[j], f[j], g[j], o[j]) = (ij, fj, gj, oj);
        }
    }

    /// One position's cell update backward for one row. In: the activations `act` `[4h]`,
    /// this cell `c` and the previous one `c_prev`, the gradient `dh` of this h (from the
    /// output and the next position). `dc` holds the gradient of this cell from the next
    /// position and gets that of the previous cell; `dg` `[4h]` gets the gradients of the
    /// pre-activations.
    fn lstm_cell_backward(
        act: &[f32],
        c: &[f32],
        c_prev: &[f32],
        dh: &[f32],
        dc: &mut [f32],
        dg: &mut [f32],
    ) {
        let w = c.len();
        let (i, f, g, o) = (&act[..w], &act[w..2 * w], &act[2 * w..3 * w], &act[3 * w..]);
        let (di, rest) = dg.split_at_mut(w);
        let (df, rest) = rest.split_at_mut(w);
        let (dgg, d_o) = rest.split_at_mut(w);
        for j in 0..w {
            let tc = tanh(c[j]);
            let dcj = dc[j] + dh[j] * o[j] * (1.0 - tc * tc);
            d_o[j] = dh[j] * tc * o[j] * (1.0 - o[j]);
            di[j] = dcj * g[j] * i[j] * (1.0 - i[j]);
            dgg[j] = dcj * i[j] * (1.0 - g[j] * g[j]);
            df[j] = dcj * c_prev[j] * f[j] * (1.0 - f[j]);
            dc[j] = dcj * f[j];
        }
    }
}

/// The LSTM recurrence over `xw` `[batch, len, 4h]` (the input projection plus both biases,
/// gates in the order i, f, g, o) with the recurrent weight `w_hh` `[h, 4h]`: per position
/// `gates = xw_t + h · w_hh`, `c ← σ(f) c + σ(i) tanh(g)`, `h ← σ(o) tanh(c)`, `y_t = h`.
/// `h`, `c` `[batch, h]` hold the initial state in and the final one out; `y` is
/// `[batch, len, h]`. Runs per block of batch rows in parallel. With `keep`, also writes the
/// gate activations `[batch, len, 4h]` and every cell `[batch, len, h]` (what
/// [`lstm_backward`] reads).
pub fn lstm(
    xw: &[f32],
    w_hh: &[f32],
    sh: LstmShape,
    (h, c): (&mut [f32], &mut [f32]),
    y: &mut [f32],
    keep: Option<(&mut [f32], &mut [f32])>,
) {
    let LstmShape {
        batch,
        len: s,
        hidden: w,
    } = sh;
    assert!(xw.len() == batch * s * 4 * w && w_hh.len() == w * 4 * w);
    assert!(h.len() == batch * w && c.len() == batch * w && y.len() == batch * s * w);
    let rb = sh.rows_per_task();
    let blocks = batch.div_ceil(rb);
    // Each task's share of the kept activations and cells (empty slices when not kept).
    let (acts, cells): (Vec<&mut [f32]>, Vec<&mut [f32]>) = match keep {
        Some((a, cs)) => {
            assert!(a.len() == xw.len() && cs.len() == y.len());
            (
                a.chunks_mut(rb * s * 4 * w).collect(),
                cs.chunks_mut(rb * s * w).collect(),
            )
        }
        None => (0..blocks).map(|_| <_>::default()).unzip(),
    };
    let tasks: Vec<_> = h
        .chunks_mut(rb * w)
        .zip(c.chunks_mut(rb * w))
        .zip(y.chunks_mut(rb * s * w))
        .zip(acts.into_iter().zip(cells))
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(blk, (((h, c), y), (acts, cells)))| {
            let rows = h.len() / w;
            let mut gates = vec![0.0f32; rows * 4 * w];
            for t in 0..s {
                for (r, g) in gates.chunks_exact_mut(4 * w).enumerate() {
                    let src = ((blk * rb + r) * s + t) * 4 * w;
                    g.copy_from_slice(&xw[src..src + 4 * w]);
                }
                let ops = (Mat::rows(h, w), Mat::rows(w_hh, 4 * w));
                matmul(&mut gates, 4 * w, (rows, 4 * w, w), ops, true, 1.0);
                for (r, g) in gates.chunks_exact_mut(4 * w).enumerate() {
                    let (hr, cr) = (&mut h[r * w..(r + 1) * w], &mut c[r * w..(r + 1) * w]);
                    lstm_cell(g, hr, cr);
                    let at = (r * s + t) * w;
                    y[at..at + w].copy_from_slice(hr);
                    if !cells.is_empty() {
                        cells[at..at + w].copy_from_slice(cr);
                        acts[4 * at..4 * (at + w)].copy_from_slice(g);
                    }
                }
            }
        });
}

/// The gradients of [`lstm`] from the gradient `gy` of y, the kept activations `acts` and
/// cells, the outputs `y` and the initial state `(h0, c0)`: returns the gradients of `xw`
/// (those of the gate pre-activations, `[batch, len, 4h]`) and of `w_hh`. Runs backward
/// through time per block of batch rows in parallel (each position's recurrent gradient is one
/// `[rows, 4h] × [4h, h]` product), then `w_hh`'s gradient as one product over all positions.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
    w_hh: &[f32],
    sh: LstmShape,
    (h0, c0): (&[f32], &[f32]),
    (acts, cells, y): (&[f32], &[f32], &[f32]),
    gy: &[f32],
) -> [Vec<f32>; 2] {
    let LstmShape {
        batch,
        len: s,
        hidden: w,
    } = sh;
    assert!(acts.len() == batch * s * 4 * w && cells.len() == batch * s * w);
    assert!(y.len() == cells.len() && gy.len() == cells.len() && w_hh.len() == 4 * w * w);
    assert!(h0.len() == batch * w && c0.len() == batch * w);
    let rb = sh.rows_per_task();
    let mut dxw = vec![0.0f32; batch * s * 4 * w];
    dxw.par_chunks_mut(rb * s * 4 * w)
        .enumerate()
        .for_each(|(blk, dxw)| {
            let rows = dxw.len() / (s * 4 * w);
            let first = blk * rb;
            // The gradients flowing into h and c from the next position.
            let mut dh_next = vec![0.0f32; rows * w];
            let mut dc = vec![0.0f32; rows * w];
            let mut dh = vec![0.0f32; w];
            for t in (0..s).rev() {
                for r in 0..rows {
                    let at = ((first + r) * s + t) * w;
                    for ((d, &g), &n) in dh.iter_mut().zip(&gy[at..at + w]).zip(&dh_next[r * w..]) {
                        *d = g + n;
                    }
                    let c_prev = if t == 0 {
                        &c0[(first + r) * w..][..w]
                    } else {
                        &cells[at - w..at]
                    };
                    let dg = &mut dxw[(r * s + t) * 4 * w..][..4 * w];
                    lstm_cell_backward(
                        &acts[4 * at..4 * (at + w)],
                        &cells[at..at + w],
                        c_prev,
                        &dh,
                        &mut dc[r * w..(r + 1) * w],
                        dg,
                    );
                }
                // dh_next = dgates_t · w_hhᵀ (the rows of this position are s·4h apart).
                let dg = Mat {
                    data: &dxw[t * 4 * w..],
                    rs: s * 4 * w,
                    cs: 1,
                };
                let ops = (dg, Mat::transposed(w_hh, 4 * w));
                matmul(&mut dh_next, w, (rows, w, 4 * w), ops, false, 1.0);
            }
        });
    // w_hh's gradient: Σ over rows and positions of h_{t−1}ᵀ · dgates_t.
    let mut h_prev = vec![0.0f32; batch * s * w];
    h_prev
        .par_chunks_mut(s * w)
        .enumerate()
        .for_each(|(bi, hp)| {
            hp[..w].copy_from_slice(&h0[bi * w..(bi + 1) * w]);
            hp[w..].copy_from_slice(&y[bi * s * w..(bi * s + s - 1) * w]);
        });
    let dw = product(
        w,
        4 * w,
        batch * s,
        Mat::transposed(&h_prev, w),
        Mat::rows(&dxw, 4 * w),
        None,
    );
    [dxw, dw]
}

// ---------------------------------------------------------------------------------------------
// xLSTM's sLSTM recurrence.

/// The sizes of an sLSTM recurrence: batch, positions, heads, width per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlstmShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Heads (the recurrence is block-diagonal over them).
    pub heads: usize,
    /// Width per head.
    pub head_dim: usize,
}

impl SlstmShape {
    fn rows_per_task(&self) -> usize {
        LstmShape {
            batch: self.batch,
            len: self.len,
            hidden: 1,
        }
        .rows_per_task()
    }
    /// The model width, heads × width per head.
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// The mLSTM kernels' inputs: q, k, v `[batch, heads, len, dh]`, ĩ, ln f
    /// `[batch, heads, len]`.
    fn check_mlstm_inputs(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (ig, logf): (&[f32], &[f32]),
    ) {
        let gates = self.batch * self.heads * self.len;
        assert!(q.len() == gates * self.head_dim && k.len() == q.len() && v.len() == q.len());
        assert!(ig.len() == gates && logf.len() == gates);
    }
}

/// `ln(1 + u)` for u in [0, 1], in straight-line arithmetic the compiler can vectorize:
/// `2 atanh(t)` with t = u / (2 + u) ≤ 1/3, by its odd series to t¹⁹ (truncation error below
/// 1e-10).
#[inline(always)]
fn ln_1p_unit(u: f32) -> f32 {
    let t = u / (2.0 + u);
    let t2 = t * t;
    let mut p = 1.0 / 19.0;
    for k in [17.0f32, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0] {
        p = p * t2 + 1.0 / k;
    }
    2.0 * t * p
}

/// `ln σ(x)` = `−(max(−x, 0) + ln(1 + e^{−|x|}))`, without overflow.
#[inline(always)]
pub fn log_sigmoid(x: f32) -> f32 {
    -((-x).max(0.0) + ln_1p_unit(exp(-x.abs())))
}

/// Values kept per position, head and row for the backward pass: z, i, f, o, σ(f̃) (the
/// activations) then c and n, each `head_dim` wide.
const SLSTM_KEPT: usize = 7;

vectorized! {
    /// One position's cell update of one row of one head: `pre` `[4 dh]` holds the
    /// pre-activations (z̃, ĩ, f̃, õ); `c`, `n`, `m`, `h` `[dh]` are updated in place; `kept`
    /// `[7 dh]` gets the activations and the new c and n.
    fn slstm_cell(pre: &[f32], st: [&mut [f32]; 4], kept: &mut [f32]) {
        let [c, n, m, h] = st;
        let w = c.len();
        let (pz, rest) = pre.split_at(w);
        let (pi, rest) = rest.split_at(w);
        let (pf, po) = rest.split_at(w);
        let (kz, rest) = kept.split_at_mut(w);
        let (ki, rest) = rest.split_at_mut(w);
        let (kf, rest) = rest.split_at_mut(w);
        let (ko, rest) = rest.split_at_mut(w);
        let (ksf, rest) = rest.split_at_mut(w);
        let (kc, kn) = rest.split_at_mut(w);
        for j in 0..w {
            let z = tanh(pz[j]);
            let ip = pi[j];
            let sf = sigmoid(pf[j]);
            let logf = log_sigmoid(pf[j]);
            let o = sigmoid(po[j]);
            let m_new = if logf + m[j] > ip { logf + m[j] } else { ip };
            let i = exp(ip - m_new);
            let f = exp(logf + m[j] - m_new);
            c[j] = f * c[j] + i * z;
            n[j] = f * n[j] + i;
            m[j] = m_new;
            h[j] = o * c[j] / n[j];
            (kz[j], ki[j], kf[j], ko[j], ksf[j], kc[j], kn[j]) = (z, i, f, o, sf, c[j], n[j]);
        }
    }
}

vectorized! {
    /// One position's cell update backward for one row of one head. In: `kept` `[7 dh]`
    /// from [`slstm_cell`], the previous c and n, the gradient `dh` of this h. `dc`, `dn`
    /// hold the gradients of this c and n from the next position and get those of the
    /// previous ones; `dpre` `[4 dh]` gets the gradients of the pre-activations. The
    /// stabilizer m is held constant: the outputs do not depend on it (c and n carry the same
    /// factor e^{−m}, which cancels in h = o c / n), so its gradient paths sum to zero.
    fn slstm_cell_backward(
        kept: &[f32],
        prev: (&[f32], &[f32]),
        dh: &[f32],
        dc: &mut [f32],
        dn: &mut [f32],
        dpre: &mut [f32],
    ) {
        let w = dh.len();
        let (c_prev, n_prev) = prev;
        for j in 0..w {
            let [z, i, f, o, sf, c, n] = [0, 1, 2, 3, 4, 5, 6].map(|g| kept[g * w + j]);
            let dhj = dh[j];
            let d_o = dhj * c / n;
            let dcj = dc[j] + dhj * o / n;
            // (dh·o/n)·(c/n), not dh·o·c/n²: n² underflows for tiny n where c/n stays ≤ 1.
            let dnj = dn[j] - (dhj * o / n) * (c / n);
            let df = dcj * c_prev[j] + dnj * n_prev[j];
            let di = dcj * z + dnj;
            dpre[j] = dcj * i * (1.0 - z * z);
            dpre[w + j] = di * i;
            dpre[2 * w + j] = df * f * (1.0 - sf);
            dpre[3 * w + j] = d_o * o * (1.0 - o);
            dc[j] = dcj * f;
            dn[j] = dnj * f;
        }
    }
}

/// xLSTM's sLSTM recurrence (Beck et al. 2024) with the paper's stabilizer. `xw`
/// `[batch, len, 4, heads, dh]` holds the input's pre-activations (z̃, ĩ, f̃, õ; projection
/// plus bias), `r` `[heads, dh, 4 dh]` the recurrent weights (block-diagonal over heads,
/// columns gate-major). Per position and head: `pre = xw_t + h · r`, z = tanh z̃,
/// o = σ(õ), m' = max(ln σ(f̃) + m, ĩ), i = e^{ĩ − m'}, f = e^{ln σ(f̃) + m − m'},
/// c ← f c + i z, n ← f n + i, h = o c / n. `state` = c, n, m, h `[batch, heads, dh]`, the
/// initial state in and the final one out; `y` `[batch, len, heads · dh]` gets every h. Runs
/// per block of batch rows in parallel. With `keep` (`[batch, len, heads, 7 dh]`), also
/// writes what [`slstm_backward`] reads.
pub fn slstm(
    xw: &[f32],
    r: &[f32],
    sh: SlstmShape,
    state: [&mut [f32]; 4],
    y: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    assert!(xw.len() == batch * s * 4 * d && r.len() == nh * w * 4 * w);
    assert!(state.iter().all(|x| x.len() == batch * d) && y.len() == batch * s * d);
    let rb = sh.rows_per_task();
    let blocks = batch.div_ceil(rb);
    let kept: Vec<&mut [f32]> = match keep {
        Some(k) => {
            assert_eq!(k.len(), batch * s * nh * SLSTM_KEPT * w);
            k.chunks_mut(rb * s * nh * SLSTM_KEPT * w).collect()
        }
        None => (0..blocks).map(|_| <&mut [f32]>::default()).collect(),
    };
    let [c, n, m, h] = state;
    let tasks: Vec<_> = c
        .chunks_mut(rb * d)
        .zip(n.chunks_mut(rb * d))
        .zip(m.chunks_mut(rb * d).zip(h.chunks_mut(rb * d)))
        .zip(y.chunks_mut(rb * s * d).zip(kept))
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(blk, (((c, n), (m, h)), (y, kept)))| {
            let rows = c.len() / d;
            let mut pre = vec![0.0f32; rows * 4 * w];
            let mut scratch = vec![0.0f32; SLSTM_KEPT * w];
            for t in 0..s {
                for hd in 0..nh {
                    for (r_, p) in pre.chunks_exact_mut(4 * w).enumerate() {
                        let src = ((blk * rb + r_) * s + t) * 4 * d + hd * w;
                        for (g, pg) in p.chunks_exact_mut(w).enumerate() {
                            pg.copy_from_slice(&xw[src + g * d..][..w]);
                        }
                    }
                    // pre += h · r_hd (the rows of this head's h are d apart).
                    let hm = Mat {
                        data: &h[hd * w..],
                        rs: d,
                        cs: 1,
                    };
                    let rm = Mat::rows(&r[hd * w * 4 * w..(hd + 1) * w * 4 * w], 4 * w);
                    matmul(&mut pre, 4 * w, (rows, 4 * w, w), (hm, rm), true, 1.0);
                    for (r_, p) in pre.chunks_exact(4 * w).enumerate() {
                        let at = r_ * d + hd * w;
                        let st = [&mut c[at..at + w], &mut n[at..at + w], &mut m[at..at + w]];
                        let [cs, ns, ms] = st;
                        let k = if kept.is_empty() {
                            &mut scratch[..]
                        } else {
                            let base = ((r_ * s + t) * nh + hd) * SLSTM_KEPT * w;
                            &mut kept[base..base + SLSTM_KEPT * w]
                        };
                        slstm_cell(p, [cs, ns, ms, &mut h[at..at + w]], k);
                        y[(r_ * s + t) * d + hd * w..][..w].copy_from_slice(&h[at..at + w]);
                    }
                }
            }
        });
}

/// The gradients of [`slstm`] from the gradient `gy` of y, the values it kept, its outputs
/// `y` and the initial c, n and h `[batch, heads, dh]`: returns the gradients of `xw`
/// (`[batch, len, 4, heads, dh]`) and of `r`. Backward through time per block of batch rows
/// in parallel; each position's recurrent gradients are two small products per head.
pub fn slstm_backward(
    r: &[f32],
    sh: SlstmShape,
    (c0, n0, h0): (&[f32], &[f32], &[f32]),
    (kept, y): (&[f32], &[f32]),
    gy: &[f32],
) -> [Vec<f32>; 2] {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    assert!(kept.len() == batch * s * nh * SLSTM_KEPT * w && y.len() == batch * s * d);
    assert!(gy.len() == y.len() && h0.len() == batch * d);
    assert!(c0.len() == batch * d && n0.len() == batch * d && r.len() == nh * w * 4 * w);
    let rb = sh.rows_per_task();
    let mut dxw = vec![0.0f32; batch * s * 4 * d];
    let dr = dxw
        .par_chunks_mut(rb * s * 4 * d)
        .enumerate()
        .map(|(blk, dxw)| {
            let rows = dxw.len() / (s * 4 * d);
            let first = blk * rb;
            let mut dr = vec![0.0f32; nh * w * 4 * w];
            // Gradients flowing into h, c and n from the next position, [rows, d].
            let mut dh_next = vec![0.0f32; rows * d];
            let (mut dc, mut dn) = (vec![0.0f32; rows * d], vec![0.0f32; rows * d]);
            let mut dpre = vec![0.0f32; rows * 4 * w];
            let mut dh = vec![0.0f32; w];
            let mut dh_prev = vec![0.0f32; rows * w];
            for t in (0..s).rev() {
                for hd in 0..nh {
                    for (r_, dp) in dpre.chunks_exact_mut(4 * w).enumerate() {
                        let bi = first + r_;
                        let at = r_ * d + hd * w;
                        let yo = (bi * s + t) * d + hd * w;
                        for ((o, &g), &x) in dh.iter_mut().zip(&gy[yo..yo + w]).zip(&dh_next[at..])
                        {
                            *o = g + x;
                        }
                        let base = ((bi * s + t) * nh + hd) * SLSTM_KEPT * w;
                        let prev = if t == 0 {
                            let o = bi * d + hd * w;
                            (&c0[o..o + w], &n0[o..o + w])
                        } else {
                            let pb = base - nh * SLSTM_KEPT * w;
                            (&kept[pb + 5 * w..pb + 6 * w], &kept[pb + 6 * w..pb + 7 * w])
                        };
                        let (dcs, dns) = (&mut dc[at..at + w], &mut dn[at..at + w]);
                        let k = &kept[base..base + SLSTM_KEPT * w];
                        slstm_cell_backward(k, prev, &dh, dcs, dns, dp);
                        let dst = (r_ * s + t) * 4 * d + hd * w;
                        for (g, dg) in dp.chunks_exact(w).enumerate() {
                            dxw[dst + g * d..][..w].copy_from_slice(dg);
                        }
                    }
                    let rm = &r[hd * w * 4 * w..(hd + 1) * w * 4 * w];
                    // The previous h of these rows: y at t − 1, or the initial h.
                    let hp = if t == 0 {
                        Mat {
                            data: &h0[first * d + hd * w..],
                            rs: d,
                            cs: 1,
                        }
                    } else {
                        Mat {
                            data: &y[(first * s + t - 1) * d + hd * w..],
                            rs: s * d,
                            cs: 1,
                        }
                    };
                    // r_hd's gradient += h_prevᵀ · dpre; h_prev's = dpre · r_hdᵀ.
                    let drh = &mut dr[hd * w * 4 * w..(hd + 1) * w * 4 * w];
                    let ops = (hp.t(), Mat::rows(&dpre, 4 * w));
                    matmul(drh, 4 * w, (w, 4 * w, rows), ops, true, 1.0);
                    let ops = (Mat::rows(&dpre, 4 * w), Mat::transposed(rm, 4 * w));
                    matmul(&mut dh_prev, w, (rows, w, 4 * w), ops, false, 1.0);
                    for (r_, g) in dh_prev.chunks_exact(w).enumerate() {
                        dh_next[r_ * d + hd * w..][..w].copy_from_slice(g);
                    }
                }
            }
            dr
        })
        .reduce(|| vec![0.0f32; nh * w * 4 * w], add);
    [dxw, dr]
}

// ---------------------------------------------------------------------------------------------
// xLSTM's mLSTM cells (parallel form, from a zero memory).

/// The sizes of an mLSTM: batch, positions, heads, width per head.
pub type MlstmShape = SlstmShape;

/// One (batch row, head)'s forward quantities, recomputed by the backward pass: the decay
/// matrix D `[s, s]` (0 above the diagonal), the raw scores S = q kᵀ, P = S ⊙ D, each row's
/// stabilizer m and denominator.
struct MlstmRows {
    d: Vec<f32>,
    s: Vec<f32>,
    p: Vec<f32>,
    m: Vec<f32>,
    den: Vec<f32>,
}

/// The stabilized parallel mLSTM of one (batch row, head) from a zero memory, and `num = P v`.
/// `q`, `k`, `v` are `[s, dh]` matrices (rows `rs` apart), `ig`, `logf` `[s]`.
fn mlstm_rows(
    (q, k, v): (Mat, Mat, Mat),
    ig: &[f32],
    logf: &[f32],
    (s, w): (usize, usize),
    num: &mut [f32],
) -> MlstmRows {
    // F_t = Σ_{u≤t} ln f_u; log D[t, u] = F_t − F_u + ĩ_u (u ≤ t); m_t = max(F_t, max_u log D).
    let mut f = vec![0.0f32; s];
    let mut acc = 0.0f32;
    for (f, &l) in f.iter_mut().zip(logf) {
        acc += l;
        *f = acc;
    }
    let (mut d, mut m) = (vec![0.0f32; s * s], vec![0.0f32; s]);
    for t in 0..s {
        let row = &mut d[t * s..(t + 1) * s];
        let mut mt = f[t];
        for u in 0..=t {
            row[u] = f[t] - f[u] + ig[u];
            mt = mt.max(row[u]);
        }
        for x in &mut row[..=t] {
            *x = exp(*x - mt);
        }
        m[t] = mt;
    }
    let mut sc = vec![0.0f32; s * s];
    matmul(&mut sc, s, (s, s, w), (q, k.t()), false, 1.0);
    let p: Vec<f32> = sc.iter().zip(&d).map(|(a, b)| a * b).collect();
    let den = p.chunks_exact(s).map(sum).collect();
    matmul(num, w, (s, w, s), (Mat::rows(&p, s), v), false, 1.0);
    MlstmRows {
        d,
        s: sc,
        p,
        m,
        den,
    }
}

/// [`mlstm_rows`] of (batch row, head) `bh` of `[batch · heads, s, dh]` inputs: returns its
/// forward quantities, `num` and its q, k, v as matrices.
fn mlstm_head<'a>(
    (q, k, v): (&'a [f32], &'a [f32], &'a [f32]),
    (ig, logf): (&[f32], &[f32]),
    bh: usize,
    (s, w): (usize, usize),
) -> (MlstmRows, Vec<f32>, [Mat<'a>; 3]) {
    let o = bh * s * w..(bh + 1) * s * w;
    let mats = [&q[o.clone()], &k[o.clone()], &v[o]].map(|x| Mat::rows(x, w));
    let g = bh * s..(bh + 1) * s;
    let mut num = vec![0.0f32; s * w];
    let qkv = (mats[0], mats[1], mats[2]);
    let r = mlstm_rows(qkv, &ig[g.clone()], &logf[g], (s, w), &mut num);
    (r, num, mats)
}

/// xLSTM's mLSTM cells (Beck et al. 2024) in the stabilized parallel form, from a zero memory,
/// per (batch row, head) in parallel. `q`, `k`, `v` are `[batch, heads, len, dh]` (k already
/// scaled by 1/√dh), `ig`, `logf` `[batch, heads, len]` (input gate pre-activations and
/// ln σ of the forget gate's). Per position t: D[t, u] = e^{F_t − F_u + ĩ_u − m_t} for u ≤ t
/// (F the running sum of ln f, m_t the largest exponent, F_t included), `num = (q kᵀ ⊙ D) v`,
/// `den = Σ_u (q kᵀ ⊙ D)[t, u]`, `h = num / max(|den|, e^{−m_t})`. Writes h into `y`
/// `[batch, len, heads · dh]` and the memory after the last position (C `[batch, heads, dh,
/// dh]`, n `[batch, heads, dh]`, m `[batch, heads]`) into `fin`.
pub fn mlstm(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (ig, logf): (&[f32], &[f32]),
    sh: MlstmShape,
    y: &mut [f32],
    fin: (&mut [f32], &mut [f32], &mut [f32]),
) {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    sh.check_mlstm_inputs((q, k, v), (ig, logf));
    assert_eq!(y.len(), q.len());
    let (c_fin, n_fin, m_fin) = fin;
    assert!(c_fin.len() == batch * nh * w * w && n_fin.len() == batch * nh * w);
    assert!(m_fin.len() == batch * nh);
    // Per (batch row, head): h [s, dh], C, n and m.
    type Cells = (Vec<f32>, Vec<f32>, Vec<f32>, f32);
    let out: Vec<Cells> = (0..batch * nh)
        .into_par_iter()
        .map(|bh| {
            let (r, mut num, [_, km, vm]) = mlstm_head((q, k, v), (ig, logf), bh, (s, w));
            for t in 0..s {
                let den = r.den[t].abs().max(exp(-r.m[t]));
                num[t * w..(t + 1) * w].iter_mut().for_each(|x| *x /= den);
            }
            // The memory after the last position: weights D[s−1, u]; C = Σ_u w_u v_u k_uᵀ,
            // n = Σ_u w_u k_u.
            let wl = &r.d[(s - 1) * s..];
            let (kk, vv) = (km.data, vm.data);
            let mut c = vec![0.0f32; w * w];
            let mut n = vec![0.0f32; w];
            for u in 0..s {
                let (ku, vu) = (&kk[u * w..(u + 1) * w], &vv[u * w..(u + 1) * w]);
                for j in 0..w {
                    for i in 0..w {
                        c[j * w + i] += wl[u] * vu[j] * ku[i];
                    }
                }
                for i in 0..w {
                    n[i] += wl[u] * ku[i];
                }
            }
            (num, c, n, r.m[s - 1])
        })
        .collect();
    for (bh, (h, c, n, m)) in out.into_iter().enumerate() {
        let (bi, hd) = (bh / nh, bh % nh);
        for t in 0..s {
            y[(bi * s + t) * d + hd * w..][..w].copy_from_slice(&h[t * w..(t + 1) * w]);
        }
        c_fin[bh * w * w..(bh + 1) * w * w].copy_from_slice(&c);
        n_fin[bh * w..(bh + 1) * w].copy_from_slice(&n);
        m_fin[bh] = m;
    }
}

/// The gradients of [`mlstm`]'s h from `gy` (`[batch, len, heads · dh]`): returns those of q,
/// k, v (`[batch, heads, len, dh]`), ĩ and ln f (`[batch, heads, len]`). Recomputes the forward
/// quantities per (batch row, head); the stabilizer m is held constant (h does not depend on
/// it except through the floor e^{−m} of the denominator, which the plain path detaches too).
pub fn mlstm_backward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (ig, logf): (&[f32], &[f32]),
    sh: MlstmShape,
    gy: &[f32],
) -> [Vec<f32>; 5] {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    sh.check_mlstm_inputs((q, k, v), (ig, logf));
    assert_eq!(gy.len(), q.len());
    let parts: Vec<[Vec<f32>; 5]> = (0..batch * nh)
        .into_par_iter()
        .map(|bh| {
            let (bi, hd) = (bh / nh, bh % nh);
            let (r, num, [qm, km, vm]) = mlstm_head((q, k, v), (ig, logf), bh, (s, w));
            // h = num / den', den' = max(|den|, e^{−m}).
            let mut dnum = vec![0.0f32; s * w];
            let mut dden = vec![0.0f32; s];
            for t in 0..s {
                let floor = exp(-r.m[t]);
                let den_abs = r.den[t].abs();
                let dp = den_abs.max(floor);
                let gt = &gy[(bi * s + t) * d + hd * w..][..w];
                let nt = &num[t * w..(t + 1) * w];
                let mut ddp = 0.0f32;
                for j in 0..w {
                    dnum[t * w + j] = gt[j] / dp;
                    ddp -= gt[j] * nt[j] / (dp * dp);
                }
                dden[t] = if den_abs > floor {
                    ddp * if r.den[t] > 0.0 {
                        1.0
                    } else if r.den[t] < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                } else {
                    0.0
                };
            }
            // dP = dnum vᵀ + dden (row-wise); dv = Pᵀ dnum.
            let mut dpm = vec![0.0f32; s * s];
            matmul(
                &mut dpm,
                s,
                (s, s, w),
                (Mat::rows(&dnum, w), vm.t()),
                false,
                1.0,
            );
            let mut dv = vec![0.0f32; s * w];
            let pt = Mat::rows(&r.p, s).t();
            matmul(&mut dv, w, (s, w, s), (pt, Mat::rows(&dnum, w)), false, 1.0);
            // dS = dP ⊙ D; d log D = dP ⊙ S ⊙ D (the causal part only).
            let mut ds = vec![0.0f32; s * s];
            let (mut dig, mut df) = (vec![0.0f32; s], vec![0.0f32; s]);
            for t in 0..s {
                for u in 0..=t {
                    let i = t * s + u;
                    let dpv = dpm[i] + dden[t];
                    ds[i] = dpv * r.d[i];
                    let dl = dpv * r.s[i] * r.d[i];
                    // log D[t, u] = F_t − F_u + ĩ_u.
                    df[t] += dl;
                    df[u] -= dl;
                    dig[u] += dl;
                }
            }
            let mut dq = vec![0.0f32; s * w];
            let mut dk = vec![0.0f32; s * w];
            matmul(&mut dq, w, (s, w, s), (Mat::rows(&ds, s), km), false, 1.0);
            matmul(
                &mut dk,
                w,
                (s, w, s),
                (Mat::rows(&ds, s).t(), qm),
                false,
                1.0,
            );
            // F = cumsum(ln f): d ln f_u = Σ_{t ≥ u} dF_t.
            let mut dlogf = vec![0.0f32; s];
            let mut acc = 0.0f32;
            for t in (0..s).rev() {
                acc += df[t];
                dlogf[t] = acc;
            }
            [dq, dk, dv, dig, dlogf]
        })
        .collect();
    let mut out: [Vec<f32>; 5] = [
        Vec::with_capacity(q.len()),
        Vec::with_capacity(q.len()),
        Vec::with_capacity(q.len()),
        Vec::with_capacity(ig.len()),
        Vec::with_capacity(ig.len()),
    ];
    for p in parts {
        for (o, x) in out.iter_mut().zip(p) {
            o.extend_from_slice(&x);
        }
    }
    out
}
