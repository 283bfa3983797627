//! The stabilized parallel form of the mLSTM, with `[s, s]` matrices per (batch row, head):
//! the chunkwise form's reference in the tests.

use super::{divide, num_den_grads, Head, Memory};
use crate::gemm::{matmul, Mat};
use crate::math::{exp, sum};

/// One (batch row, head)'s forward quantities: the decay matrix D `[s, s]` (0 above the
/// diagonal), the raw scores S = q kᵀ, P = S ⊙ D, each row's stabilizer m and denominator,
/// and `num = P v` `[s, w]`.
pub(super) struct Rows {
    d: Vec<f32>,
    s: Vec<f32>,
    p: Vec<f32>,
    pub(super) m: Vec<f32>,
    pub(super) den: Vec<f32>,
    num: Vec<f32>,
}

/// The stabilized parallel mLSTM of one (batch row, head) from a zero memory.
pub(super) fn rows(h: Head) -> Rows {
    let (s, w) = (h.s, h.w);
    let (q, k, v) = (Mat::rows(h.q, w), Mat::rows(h.k, w), Mat::rows(h.v, w));
    // F_t = Σ_{u≤t} ln f_u; log D[t, u] = F_t − F_u + ĩ_u (u ≤ t); m_t = max(F_t, max_u log D).
    let mut f = vec![0.0f32; s];
    let mut acc = 0.0f32;
    for (f, &l) in f.iter_mut().zip(h.logf) {
        acc += l;
        *f = acc;
    }
    let (mut d, mut m) = (vec![0.0f32; s * s], vec![0.0f32; s]);
    for t in 0..s {
        let row = &mut d[t * s..(t + 1) * s];
        let mut mt = f[t];
        for u in 0..=t {
            row[u] = f[t] - f[u] + h.ig[u];
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
    let mut num = vec![0.0f32; s * w];
    matmul(&mut num, w, (s, w, s), (Mat::rows(&p, s), v), false, 1.0);
    Rows {
        d,
        s: sc,
        p,
        m,
        den,
        num,
    }
}

/// One (batch row, head)'s h `[s, w]` and the memory after its last position: weights
/// D[s−1, u]; C = Σ_u w_u v_u k_uᵀ, n = Σ_u w_u k_u.
pub(super) fn forward(h: Head) -> (Vec<f32>, Memory) {
    let (s, w) = (h.s, h.w);
    let mut r = rows(h);
    divide(&mut r.num, &r.den, &r.m, w);
    let wl = &r.d[(s - 1) * s..];
    let mut mem = Memory::zero(w);
    for ((ku, vu), &wu) in h.k.chunks_exact(w).zip(h.v.chunks_exact(w)).zip(wl) {
        for (cj, vj) in mem.c.chunks_exact_mut(w).zip(vu) {
            cj.iter_mut().zip(ku).for_each(|(c, ki)| *c += wu * vj * ki);
        }
        mem.n.iter_mut().zip(ku).for_each(|(n, ki)| *n += wu * ki);
    }
    mem.m = r.m[s - 1];
    (r.num, mem)
}

/// The gradients of one (batch row, head)'s q, k, v, ĩ, ln f from those of h, `gy` `[s, w]`.
pub(super) fn backward(h: Head, gy: &[f32]) -> [Vec<f32>; 5] {
    let (s, w) = (h.s, h.w);
    let (qm, km, vm) = (Mat::rows(h.q, w), Mat::rows(h.k, w), Mat::rows(h.v, w));
    let r = rows(h);
    let (dnum, dden) = num_den_grads(gy, (&r.num, &r.den, &r.m), w);
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
}
