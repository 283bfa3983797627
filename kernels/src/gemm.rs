//! Matrix operands and products: strided views of 4-D tensors, and gemm on one thread or
//! split across the rayon pool.

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
    #[inline]
    pub(crate) fn mat(&self, a: usize, b: usize) -> Mat<'a> {
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
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[_, cols]` matrix.
    #[inline]
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[_, cols]` matrix.
    #[inline]
    pub(crate) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
    /// The transpose of this matrix.
    #[inline]
    pub(crate) fn t(self) -> Self {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// The same matrix from row `r` on.
    #[inline]
    pub(crate) fn skip_rows(self, r: usize) -> Self {
        Mat {
            data: &self.data[r * self.rs..],
            ..self
        }
    }
    /// Panics unless the slice holds every element of an `[r, c]` matrix with these strides.
    #[inline]
    pub(crate) fn check(&self, r: usize, c: usize) {
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
pub(crate) fn matmul(
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
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    bias: Option<&[f32]>,
) -> Vec<f32> {
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
