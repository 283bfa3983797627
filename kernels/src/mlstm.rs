//! xLSTM's mLSTM cells in the parallel form, from a zero memory, and their gradients.

use crate::gemm::{matmul, Mat};
use crate::math::{exp, sum};
use crate::slstm::SlstmShape;
use rayon::prelude::*;

/// The sizes of an mLSTM: batch, positions, heads, width per head.
pub type MlstmShape = SlstmShape;

impl SlstmShape {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grad, data, weighted};

    /// Runs the cells: returns h `[batch, len, heads · dh]`.
    fn run(qkv: [&[f32]; 3], gates: [&[f32]; 2], sh: MlstmShape) -> Vec<f32> {
        let [q, k, v] = qkv;
        let (b, nh, w) = (sh.batch, sh.heads, sh.head_dim);
        let mut y = vec![0.0f32; q.len()];
        let (mut c, mut n, mut m) = (
            vec![0.0f32; b * nh * w * w],
            vec![0.0f32; b * nh * w],
            vec![0.0f32; b * nh],
        );
        mlstm(
            (q, k, v),
            (gates[0], gates[1]),
            sh,
            &mut y,
            (&mut c, &mut n, &mut m),
        );
        y
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        let sh = MlstmShape {
            batch: 2,
            len: 5,
            heads: 2,
            head_dim: 3,
        };
        let n = sh.batch * sh.heads * sh.len;
        let (q, k, v) = (
            data(n * 3, 1, 2.0),
            data(n * 3, 2, 1.5),
            data(n * 3, 3, 1.0),
        );
        // ĩ free, ln f < 0.
        let ig = data(n, 4, 3.0);
        let logf: Vec<f32> = data(n, 5, 1.0).iter().map(|x| -0.5 * x.exp()).collect();
        let ins: [&[f32]; 5] = [&q, &k, &v, &ig, &logf];
        // h = num / max(|den|, e^{−m}) has a kink where |den| meets the floor, which finite
        // differences cannot cross: no row is near it.
        for bh in 0..sh.batch * sh.heads {
            let (r, _, _) = mlstm_head((&q, &k, &v), (&ig, &logf), bh, (sh.len, 3));
            for (den, m) in r.den.iter().zip(&r.m) {
                let (den, floor) = (den.abs(), exp(-m));
                assert!(den > 1.2 * floor || den < 0.8 * floor, "{den} near {floor}");
            }
        }
        let loss_of = |ins: [&[f32]; 5], gy: &[f32]| {
            weighted(&run([ins[0], ins[1], ins[2]], [ins[3], ins[4]], sh), gy)
        };
        let gy = data(q.len(), 6, 1.0);
        let grads = mlstm_backward((&q, &k, &v), (&ig, &logf), sh, &gy);
        for (i, (grad, name)) in grads.iter().zip(["q", "k", "v", "ig", "ln f"]).enumerate() {
            check_grad(name, ins[i], grad, |x| {
                let mut ins = ins;
                ins[i] = x;
                loss_of(ins, &gy)
            });
        }
    }
}
