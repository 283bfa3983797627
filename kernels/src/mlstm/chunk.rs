//! The chunkwise form of the mLSTM: positions in chunks of L, each chunk's `[L, L]` blocks of
//! the parallel form plus the memory entering it.
//!
//! With g_t = Σ ln f_u over the chunk's positions up to t (so F_t = F_{before} + g_t) and the
//! entering memory C̃ = Σ_{u before} e^{F_before − F_u + ĩ_u − m_prev} v_u k_uᵀ (likewise ñ),
//! position t of the chunk weighs the memory by e^{a_t}, a_t = g_t + m_prev, and position u ≤ t
//! of the chunk by e^{log D[t, u]}, log D[t, u] = g_t − g_u + ĩ_u: the parallel form's exponents
//! exactly, so m_t = max(a_t, max_u log D[t, u]) is its stabilizer (the first chunk has
//! m_prev = 0, a_t = F_t). With α_t = e^{a_t − m_t}:
//! `num_t = α_t C̃ q_t + Σ_u D[t, u] (q_t·k_u) v_u`, `den_t = α_t ñ·q_t + Σ_u D[t, u] q_t·k_u`;
//! and at the chunk's last position e the memory leaving it is
//! C̃' = α_e C̃ + Σ_u D[e, u] v_u k_uᵀ, ñ' = α_e ñ + Σ_u D[e, u] k_u, m' = m_e.

use super::{divide, num_den_grads, Head, Memory};
use crate::gemm::{matmul, Mat};
use crate::math::{dot, exp, sum};

impl<'a> Head<'a> {
    /// q, k, v from position `t0` on, as matrices.
    fn mats(&self, t0: usize) -> [Mat<'a>; 3] {
        [self.q, self.k, self.v].map(|x| Mat::rows(&x[t0 * self.w..], self.w))
    }

    /// Position `t`'s row of x `[s, w]`.
    fn row<'b>(&self, x: &'b [f32], t: usize) -> &'b [f32] {
        &x[t * self.w..(t + 1) * self.w]
    }
}

/// The running sums g of a chunk's ln f.
fn local_cumsum(logf: &[f32]) -> Vec<f32> {
    let mut acc = 0.0f32;
    logf.iter()
        .map(|&l| {
            acc += l;
            acc
        })
        .collect()
}

/// Row t of a chunk's decay block into `row` (`[l]`, zero past t): D[t, u] = e^{g_t − g_u +
/// ĩ_u − m_t}; returns m_t and α_t = e^{g_t + m_prev − m_t}.
fn decay_row(g: &[f32], ig: &[f32], t: usize, m_prev: f32, row: &mut [f32]) -> (f32, f32) {
    let a = g[t] + m_prev;
    let mut mt = a;
    for u in 0..=t {
        row[u] = g[t] - g[u] + ig[u];
        mt = mt.max(row[u]);
    }
    for x in &mut row[..=t] {
        *x = exp(*x - mt);
    }
    row[t + 1..].iter_mut().for_each(|x| *x = 0.0);
    (mt, exp(a - mt))
}

/// One chunk's forward quantities, recomputed by the backward pass: the decay block D, the raw
/// scores S = q kᵀ and P = S ⊙ D `[l, l]`, each row's m and α, C̃ q_t `[l, w]` and ñ·q_t, num
/// `[l, w]` and den.
struct Chunk {
    d: Vec<f32>,
    s: Vec<f32>,
    p: Vec<f32>,
    m: Vec<f32>,
    alpha: Vec<f32>,
    cq: Vec<f32>,
    nq: Vec<f32>,
    num: Vec<f32>,
    den: Vec<f32>,
}

/// The chunk of positions `t0 .. t0 + l` entered with memory `mem`.
fn chunk(h: &Head, t0: usize, l: usize, mem: &Memory) -> Chunk {
    let w = h.w;
    let g = local_cumsum(&h.logf[t0..t0 + l]);
    let ig = &h.ig[t0..t0 + l];
    let (mut d, mut m, mut alpha) = (vec![0.0f32; l * l], vec![0.0f32; l], vec![0.0f32; l]);
    for (t, row) in d.chunks_exact_mut(l).enumerate() {
        (m[t], alpha[t]) = decay_row(&g, ig, t, mem.m, row);
    }
    let [q, k, v] = h.mats(t0);
    let mut sc = vec![0.0f32; l * l];
    matmul(&mut sc, l, (l, l, w), (q, k.t()), false, 1.0);
    let p: Vec<f32> = sc.iter().zip(&d).map(|(a, b)| a * b).collect();
    // C̃ q_t: C̃ is [v index, k index], so row t of q C̃ᵀ.
    let mut cq = vec![0.0f32; l * w];
    matmul(
        &mut cq,
        w,
        (l, w, w),
        (q, Mat::rows(&mem.c, w).t()),
        false,
        1.0,
    );
    let nq: Vec<f32> = (0..l).map(|t| dot(h.row(h.q, t0 + t), &mem.n)).collect();
    let mut num: Vec<f32> = cq
        .chunks_exact(w)
        .zip(&alpha)
        .flat_map(|(r, &a)| r.iter().map(move |x| a * x))
        .collect();
    matmul(&mut num, w, (l, w, l), (Mat::rows(&p, l), v), true, 1.0);
    let den = p
        .chunks_exact(l)
        .zip(alpha.iter().zip(&nq))
        .map(|(r, (a, nq))| sum(r) + a * nq)
        .collect();
    Chunk {
        d,
        s: sc,
        p,
        m,
        alpha,
        cq,
        nq,
        num,
        den,
    }
}

/// The memory leaving the chunk `t0 .. t0 + l` entered with `mem`: with e its last position,
/// C̃' = α_e C̃ + Σ_u D[e, u] v_u k_uᵀ, ñ' = α_e ñ + Σ_u D[e, u] k_u, m' = m_e. Only row e of the
/// decay block is needed.
fn advance(h: &Head, t0: usize, l: usize, mem: &Memory) -> Memory {
    let w = h.w;
    let g = local_cumsum(&h.logf[t0..t0 + l]);
    let mut gamma = vec![0.0f32; l];
    let (m, beta) = decay_row(&g, &h.ig[t0..t0 + l], l - 1, mem.m, &mut gamma);
    let [_, k, _] = h.mats(t0);
    let mut c: Vec<f32> = mem.c.iter().map(|x| beta * x).collect();
    let mut n: Vec<f32> = mem.n.iter().map(|x| beta * x).collect();
    let mut gv = vec![0.0f32; l * w];
    for (u, &gu) in gamma.iter().enumerate() {
        let (vu, ku) = (h.row(h.v, t0 + u), h.row(h.k, t0 + u));
        gv[u * w..(u + 1) * w]
            .iter_mut()
            .zip(vu)
            .for_each(|(o, x)| *o = gu * x);
        n.iter_mut().zip(ku).for_each(|(o, x)| *o += gu * x);
    }
    // C̃'[j, i] += Σ_u (D[e, u] v_u)_j k_u,i.
    matmul(&mut c, w, (w, w, l), (Mat::rows(&gv, w).t(), k), true, 1.0);
    Memory { c, n, m }
}

/// The starts of the chunks of `s` positions, `l` each (the last may be shorter).
fn starts(
    s: usize,
    l: usize,
) -> impl DoubleEndedIterator<Item = (usize, usize)> + ExactSizeIterator {
    assert!(l > 0, "chunks of no positions");
    (0..s).step_by(l).map(move |t0| (t0, l.min(s - t0)))
}

/// One (batch row, head)'s h `[s, w]` and final memory, in chunks of `lc` positions.
pub(super) fn forward(h: Head, lc: usize) -> (Vec<f32>, Memory) {
    let w = h.w;
    let mut out = Vec::with_capacity(h.s * w);
    let mut mem = Memory::zero(w);
    for (t0, l) in starts(h.s, lc) {
        let mut ch = chunk(&h, t0, l, &mem);
        divide(&mut ch.num, &ch.den, &ch.m, w);
        out.extend_from_slice(&ch.num);
        mem = advance(&h, t0, l, &mem);
    }
    (out, mem)
}

/// The gradients of one (batch row, head)'s q, k, v `[s, w]`, ĩ and ln f `[s]` from those of
/// h, `gy` `[s, w]`, in chunks of `lc` positions (the m's constant).
pub(super) fn backward(h: Head, gy: &[f32], lc: usize) -> [Vec<f32>; 5] {
    let (s, w) = (h.s, h.w);
    // The memory entering each chunk.
    let mut mems = Vec::with_capacity(s.div_ceil(lc));
    let mut mem = Memory::zero(w);
    for (t0, l) in starts(s, lc) {
        let next = advance(&h, t0, l, &mem);
        mems.push(std::mem::replace(&mut mem, next));
    }
    let (mut dq, mut dk, mut dv) = (
        vec![0.0f32; s * w],
        vec![0.0f32; s * w],
        vec![0.0f32; s * w],
    );
    let (mut dig, mut dlogf) = (vec![0.0f32; s], vec![0.0f32; s]);
    // The gradient of the memory leaving the chunk (none leaves the last: `fin` has none).
    let (mut dc, mut dn) = (vec![0.0f32; w * w], vec![0.0f32; w]);
    for (ci, (t0, l)) in starts(s, lc).enumerate().rev() {
        let mem = &mems[ci];
        let ch = chunk(&h, t0, l, mem);
        let (dnum, dden) = num_den_grads(&gy[t0 * w..(t0 + l) * w], (&ch.num, &ch.den, &ch.m), w);
        let [q, k, v] = h.mats(t0);
        let rows = t0 * w..(t0 + l) * w;
        let (dq_c, dk_c, dv_c) = (&mut dq[rows.clone()], &mut dk[rows.clone()], &mut dv[rows]);
        let dig_c = &mut dig[t0..t0 + l];
        // dg_t: the gradient of g_t.
        let mut dg = vec![0.0f32; l];
        let e = l - 1;
        let (gamma, beta) = (&ch.d[e * l..], ch.alpha[e]);
        if ci + 1 < mems.len() {
            // C̃' = β C̃ + Σ_u γ_u v_u k_uᵀ, ñ' = β ñ + Σ_u γ_u k_u: dv_u += γ_u dC̃' k_u,
            // dk_u += γ_u (dC̃'ᵀ v_u + dñ'), d log γ_u = γ_u (v_u·dC̃' k_u + dñ'·k_u).
            let mut kd = vec![0.0f32; l * w];
            matmul(
                &mut kd,
                w,
                (l, w, w),
                (k, Mat::rows(&dc, w).t()),
                false,
                1.0,
            );
            let mut vd = vec![0.0f32; l * w];
            matmul(&mut vd, w, (l, w, w), (v, Mat::rows(&dc, w)), false, 1.0);
            for (u, &gu) in gamma.iter().enumerate() {
                let (ku, vu) = (h.row(h.k, t0 + u), h.row(h.v, t0 + u));
                let (kdu, vdu) = (&kd[u * w..(u + 1) * w], &vd[u * w..(u + 1) * w]);
                let lu = gu * (dot(vu, kdu) + dot(&dn, ku));
                // log γ_u = g_e − g_u + ĩ_u − m_e.
                dg[e] += lu;
                dg[u] -= lu;
                dig_c[u] += lu;
                let dvu = &mut dv_c[u * w..(u + 1) * w];
                dvu.iter_mut().zip(kdu).for_each(|(o, x)| *o += gu * x);
                let dku = &mut dk_c[u * w..(u + 1) * w];
                for ((o, x), y) in dku.iter_mut().zip(vdu).zip(&dn) {
                    *o += gu * (x + y);
                }
            }
            // log β = g_e + m_prev − m_e.
            dg[e] += beta * (dot(&dc, &mem.c) + dot(&dn, &mem.n));
        }
        // Within the chunk, as the parallel form: dP = dnum vᵀ + dden (row-wise), dv = Pᵀ dnum,
        // dS = dP ⊙ D, d log D = dP ⊙ S ⊙ D (the causal part only).
        let dnm = Mat::rows(&dnum, w);
        let mut dpm = vec![0.0f32; l * l];
        matmul(&mut dpm, l, (l, l, w), (dnm, v.t()), false, 1.0);
        matmul(
            dv_c,
            w,
            (l, w, l),
            (Mat::rows(&ch.p, l).t(), dnm),
            true,
            1.0,
        );
        let mut ds = vec![0.0f32; l * l];
        for t in 0..l {
            for u in 0..=t {
                let i = t * l + u;
                let dpv = dpm[i] + dden[t];
                ds[i] = dpv * ch.d[i];
                let dl = dpv * ch.s[i] * ch.d[i];
                // log D[t, u] = g_t − g_u + ĩ_u − m_t.
                dg[t] += dl;
                dg[u] -= dl;
                dig_c[u] += dl;
            }
        }
        matmul(dq_c, w, (l, w, l), (Mat::rows(&ds, l), k), true, 1.0);
        matmul(dk_c, w, (l, w, l), (Mat::rows(&ds, l).t(), q), true, 1.0);
        // The memory's part: α_t (C̃ q_t, ñ·q_t), log α_t = g_t + m_prev − m_t.
        let an: Vec<f32> = dnum
            .chunks_exact(w)
            .zip(&ch.alpha)
            .flat_map(|(r, &a)| r.iter().map(move |x| a * x))
            .collect();
        for t in 0..l {
            let ad = ch.alpha[t] * dden[t];
            dg[t] += dot(&an[t * w..(t + 1) * w], &ch.cq[t * w..(t + 1) * w]) + ad * ch.nq[t];
            let dqt = &mut dq_c[t * w..(t + 1) * w];
            dqt.iter_mut().zip(&mem.n).for_each(|(o, x)| *o += ad * x);
        }
        // dq_t += α_t C̃ᵀ dnum_t.
        let cm = Mat::rows(&mem.c, w);
        matmul(dq_c, w, (l, w, w), (Mat::rows(&an, w), cm), true, 1.0);
        if ci > 0 {
            // The gradient of the memory entering this chunk (leaving the one before):
            // dC̃ = β dC̃' + Σ_t α_t dnum_t q_tᵀ, dñ = β dñ' + Σ_t α_t dden_t q_t.
            dc.iter_mut().for_each(|x| *x *= beta);
            matmul(&mut dc, w, (w, w, l), (Mat::rows(&an, w).t(), q), true, 1.0);
            dn.iter_mut().for_each(|x| *x *= beta);
            for (t, (a, dd)) in ch.alpha.iter().zip(&dden).enumerate() {
                let qt = h.row(h.q, t0 + t);
                dn.iter_mut().zip(qt).for_each(|(o, x)| *o += a * dd * x);
            }
        }
        // g_t = Σ_{u ≤ t in the chunk} ln f_u (earlier chunks reach t through the memory).
        let mut acc = 0.0f32;
        for t in (0..l).rev() {
            acc += dg[t];
            dlogf[t0 + t] = acc;
        }
    }
    [dq, dk, dv, dig, dlogf]
}
