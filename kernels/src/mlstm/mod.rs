//! xLSTM's mLSTM cells from a zero memory, and their gradients, in the chunkwise form (memory
//! linear in the positions); the parallel form, quadratic in them, is the tests' reference.
//!
//! Both compute, per (batch row, head), with F_t = Σ_{u≤t} ln f_u and log D[t, u] =
//! F_t − F_u + ĩ_u for u ≤ t: the stabilizer m_t = max(F_t, max_u log D[t, u]) (a zero initial
//! memory with m = 0), D[t, u] = e^{log D[t, u] − m_t}, `num_t = Σ_u D[t, u] (q_t·k_u) v_u`,
//! `den_t = Σ_u D[t, u] (q_t·k_u)` and `h_t = num_t / max(|den_t|, e^{−m_t})`; and the memory
//! after the last position e: C = Σ_u D[e, u] v_u k_uᵀ, n = Σ_u D[e, u] k_u, m_e. The backward
//! pass holds every m constant (the plain path detaches it).

mod chunk;
#[cfg(test)]
mod parallel;
#[cfg(test)]
mod tests;

use crate::math::exp;
use crate::slstm::SlstmShape;
use rayon::prelude::*;

/// The sizes of an mLSTM: batch, positions, heads, width per head.
pub type MlstmShape = SlstmShape;

/// Positions per chunk of the chunkwise form: each chunk computes its own `[L, L]` decay and
/// score blocks and reads the earlier positions through the memory entering it.
pub const MLSTM_CHUNK: usize = 64;

impl SlstmShape {
    /// The mLSTM kernels' inputs: q, k, v `[batch, heads, len, dh]`, ĩ, ln f
    /// `[batch, heads, len]`.
    fn check_mlstm_inputs(&self, ((q, k, v), (ig, logf)): Inputs) {
        let gates = self.batch * self.heads * self.len;
        assert!(q.len() == gates * self.head_dim && k.len() == q.len() && v.len() == q.len());
        assert!(ig.len() == gates && logf.len() == gates);
    }
}

/// q, k, v and ĩ, ln f.
type Inputs<'a> = ((&'a [f32], &'a [f32], &'a [f32]), (&'a [f32], &'a [f32]));

/// One (batch row, head)'s inputs: q, k, v `[s, w]` row-major (k already scaled), ĩ and
/// ln f `[s]`.
#[derive(Clone, Copy)]
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    ig: &'a [f32],
    logf: &'a [f32],
    s: usize,
    w: usize,
}

impl<'a> Head<'a> {
    /// (batch row, head) `bh` of `[batch · heads, s, w]` inputs.
    fn of(((q, k, v), (ig, logf)): Inputs<'a>, bh: usize, (s, w): (usize, usize)) -> Self {
        let o = bh * s * w..(bh + 1) * s * w;
        let g = bh * s..(bh + 1) * s;
        Head {
            q: &q[o.clone()],
            k: &k[o.clone()],
            v: &v[o],
            ig: &ig[g.clone()],
            logf: &logf[g],
            s,
            w,
        }
    }
}

/// A memory: C̃ `[w, w]` (`c[j·w + i]` weighs v_j k_i, as in [`mlstm`]'s `fin`), ñ `[w]` and the
/// stabilizer m they are divided by (C̃ = Σ_u e^{(log weight of u) − m} v_u k_uᵀ).
#[derive(Clone, Debug)]
struct Memory {
    c: Vec<f32>,
    n: Vec<f32>,
    m: f32,
}

impl Memory {
    fn zero(w: usize) -> Self {
        Memory {
            c: vec![0.0; w * w],
            n: vec![0.0; w],
            m: 0.0,
        }
    }
}

/// `h_t = num_t / max(|den_t|, e^{−m_t})` in place, rows of `w`.
fn divide(num: &mut [f32], den: &[f32], m: &[f32], w: usize) {
    for ((row, den), m) in num.chunks_exact_mut(w).zip(den).zip(m) {
        let den = den.abs().max(exp(-m));
        row.iter_mut().for_each(|x| *x /= den);
    }
}

/// The gradients of `h = num / max(|den|, e^{−m})` (m constant) from `gy`, rows of `w`:
/// returns those of num `[rows, w]` and den `[rows]`.
fn num_den_grads(
    gy: &[f32],
    (num, den, m): (&[f32], &[f32], &[f32]),
    w: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut dnum = vec![0.0f32; num.len()];
    let mut dden = vec![0.0f32; den.len()];
    for t in 0..den.len() {
        let floor = exp(-m[t]);
        let den_abs = den[t].abs();
        let dp = den_abs.max(floor);
        let (gt, nt) = (&gy[t * w..(t + 1) * w], &num[t * w..(t + 1) * w]);
        let mut ddp = 0.0f32;
        for j in 0..w {
            dnum[t * w + j] = gt[j] / dp;
            ddp -= gt[j] * nt[j] / (dp * dp);
        }
        dden[t] = if den_abs > floor {
            ddp * if den[t] > 0.0 {
                1.0
            } else if den[t] < 0.0 {
                -1.0
            } else {
                0.0
            }
        } else {
            0.0
        };
    }
    (dnum, dden)
}

/// Runs `cells` (h `[s, w]` and the final memory of one (batch row, head)) on every (batch
/// row, head) in parallel; writes h into `y` `[batch, len, heads · dh]` and the memories into
/// `fin`.
fn forward_with(
    ins: Inputs,
    sh: MlstmShape,
    y: &mut [f32],
    (c_fin, n_fin, m_fin): (&mut [f32], &mut [f32], &mut [f32]),
    cells: impl Fn(Head) -> (Vec<f32>, Memory) + Sync,
) {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    sh.check_mlstm_inputs(ins);
    assert_eq!(y.len(), ins.0 .0.len());
    assert!(c_fin.len() == batch * nh * w * w && n_fin.len() == batch * nh * w);
    assert!(m_fin.len() == batch * nh);
    let out: Vec<(Vec<f32>, Memory)> = (0..batch * nh)
        .into_par_iter()
        .map(|bh| cells(Head::of(ins, bh, (s, w))))
        .collect();
    for (bh, (h, mem)) in out.into_iter().enumerate() {
        let (bi, hd) = (bh / nh, bh % nh);
        for t in 0..s {
            y[(bi * s + t) * d + hd * w..][..w].copy_from_slice(&h[t * w..(t + 1) * w]);
        }
        c_fin[bh * w * w..(bh + 1) * w * w].copy_from_slice(&mem.c);
        n_fin[bh * w..(bh + 1) * w].copy_from_slice(&mem.n);
        m_fin[bh] = mem.m;
    }
}

/// Runs `grads` (the gradients of q, k, v, ĩ, ln f of one (batch row, head) from its rows of
/// `gy`, `[s, w]`) on every (batch row, head) in parallel; returns them concatenated (each
/// (batch row, head) copies its own into place, so only the threads' temporaries add to them).
fn backward_with(
    ins: Inputs,
    sh: MlstmShape,
    gy: &[f32],
    grads: impl Fn(Head, &[f32]) -> [Vec<f32>; 5] + Sync,
) -> [Vec<f32>; 5] {
    let SlstmShape {
        len: s,
        heads: nh,
        head_dim: w,
        ..
    } = sh;
    let d = sh.width();
    sh.check_mlstm_inputs(ins);
    let (n, gates) = (ins.0 .0.len(), ins.1 .0.len());
    assert_eq!(gy.len(), n);
    let [mut dq, mut dk, mut dv, mut dig, mut dlogf] =
        [n, n, n, gates, gates].map(|len| vec![0.0f32; len]);
    if n == 0 {
        return [dq, dk, dv, dig, dlogf];
    }
    dq.par_chunks_mut(s * w)
        .zip(dk.par_chunks_mut(s * w))
        .zip(dv.par_chunks_mut(s * w))
        .zip(dig.par_chunks_mut(s))
        .zip(dlogf.par_chunks_mut(s))
        .enumerate()
        .for_each(|(bh, ((((dq, dk), dv), dig), dlogf))| {
            let (bi, hd) = (bh / nh, bh % nh);
            let mut g = Vec::with_capacity(s * w);
            for t in 0..s {
                g.extend_from_slice(&gy[(bi * s + t) * d + hd * w..][..w]);
            }
            let got = grads(Head::of(ins, bh, (s, w)), &g);
            for (o, x) in [dq, dk, dv, dig, dlogf].into_iter().zip(got) {
                o.copy_from_slice(&x);
            }
        });
    [dq, dk, dv, dig, dlogf]
}

/// xLSTM's mLSTM cells (Beck et al. 2024) from a zero memory, per (batch row, head) in
/// parallel, in the chunkwise form: chunks of [`MLSTM_CHUNK`] positions, each computing its
/// own `[L, L]` blocks of the stabilized parallel form and reading the earlier positions
/// through the memory entering it, so memory is linear in the positions and time about linear.
/// `q`, `k`, `v` are `[batch, heads, len, dh]` (k already scaled by 1/√dh), `ig`, `logf`
/// `[batch, heads, len]` (input gate pre-activations and ln σ of the forget gate's). Per
/// position t (see the module's doc): `h = num / max(|den|, e^{−m_t})`, equal to the parallel
/// form. Writes h into `y` `[batch, len, heads · dh]` and the memory after the last position
/// (C `[batch, heads, dh, dh]`, n `[batch, heads, dh]`, m `[batch, heads]`) into `fin`.
pub fn mlstm(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (ig, logf): (&[f32], &[f32]),
    sh: MlstmShape,
    y: &mut [f32],
    fin: (&mut [f32], &mut [f32], &mut [f32]),
) {
    forward_with(((q, k, v), (ig, logf)), sh, y, fin, |h| {
        chunk::forward(h, MLSTM_CHUNK)
    });
}

/// The gradients of [`mlstm`]'s h from `gy` (`[batch, len, heads · dh]`): returns those of q,
/// k, v (`[batch, heads, len, dh]`), ĩ and ln f (`[batch, heads, len]`). Per (batch row, head)
/// a forward sweep keeps the memory entering each chunk (⌈len / L⌉ · (dh² + dh + 1) floats),
/// then a backward sweep recomputes each chunk's blocks and carries the gradient of the
/// memory to the chunk before. The stabilizer m is held constant (h does not depend on it
/// except through the floor e^{−m} of the denominator, which the plain path detaches too).
pub fn mlstm_backward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (ig, logf): (&[f32], &[f32]),
    sh: MlstmShape,
    gy: &[f32],
) -> [Vec<f32>; 5] {
    backward_with(((q, k, v), (ig, logf)), sh, gy, |h, gy| {
        chunk::backward(h, gy, MLSTM_CHUNK)
    })
}
