use super::*;
use crate::testing::{assert_close, check_grad, data, weighted};

/// Which form runs: the parallel one, or the chunkwise one with chunks of this many positions.
#[derive(Clone, Copy, Debug)]
enum Form {
    Parallel,
    Chunks(usize),
}

/// h `[batch, len, heads · dh]` and the final C, n, m of `form`.
fn run(ins: Inputs, sh: MlstmShape, form: Form) -> [Vec<f32>; 4] {
    let (b, nh, w) = (sh.batch, sh.heads, sh.head_dim);
    let mut y = vec![0.0f32; ins.0 .0.len()];
    let (mut c, mut n, mut m) = (
        vec![0.0f32; b * nh * w * w],
        vec![0.0f32; b * nh * w],
        vec![0.0f32; b * nh],
    );
    let fin = (&mut c[..], &mut n[..], &mut m[..]);
    match form {
        Form::Parallel => forward_with(ins, sh, &mut y, fin, parallel::forward),
        Form::Chunks(l) => forward_with(ins, sh, &mut y, fin, |h| chunk::forward(h, l)),
    }
    [y, c, n, m]
}

/// The gradients of q, k, v, ĩ, ln f from `gy` by `form`.
fn grads(ins: Inputs, sh: MlstmShape, gy: &[f32], form: Form) -> [Vec<f32>; 5] {
    match form {
        Form::Parallel => backward_with(ins, sh, gy, parallel::backward),
        Form::Chunks(l) => backward_with(ins, sh, gy, |h, gy| chunk::backward(h, gy, l)),
    }
}

/// q, k, v, ĩ, ln f for `sh`: ĩ in about [−gate, gate], ln f = −e^x/2 for x in about [−f, f].
fn inputs(sh: MlstmShape, seed: u64, (gate, f): (f32, f32)) -> [Vec<f32>; 5] {
    let n = sh.batch * sh.heads * sh.len;
    let w = sh.head_dim;
    [
        data(n * w, seed, 2.0),
        data(n * w, seed + 1, 1.5),
        data(n * w, seed + 2, 1.0),
        data(n, seed + 3, gate),
        data(n, seed + 4, f)
            .iter()
            .map(|x| -0.5 * x.exp())
            .collect(),
    ]
}

fn as_inputs(x: &[Vec<f32>; 5]) -> Inputs<'_> {
    ((&x[0], &x[1], &x[2]), (&x[3], &x[4]))
}

#[test]
fn the_gradients_match_finite_differences() {
    let sh = MlstmShape {
        batch: 2,
        len: 5,
        heads: 2,
        head_dim: 3,
    };
    let x = inputs(sh, 1, (3.0, 1.0));
    let ins = as_inputs(&x);
    // h = num / max(|den|, e^{−m}) has a kink where |den| meets the floor, which finite
    // differences cannot cross: no row is near it.
    for bh in 0..sh.batch * sh.heads {
        let r = parallel::rows(Head::of(ins, bh, (sh.len, sh.head_dim)));
        for (den, m) in r.den.iter().zip(&r.m) {
            let (den, floor) = (den.abs(), exp(-m));
            assert!(den > 1.2 * floor || den < 0.8 * floor, "{den} near {floor}");
        }
    }
    let gy = data(x[0].len(), 6, 1.0);
    // The public kernels (one chunk here), and chunks of 2 positions (the last one shorter).
    let public = mlstm_backward(ins.0, ins.1, sh, &gy);
    for (form, got) in [
        (Form::Chunks(MLSTM_CHUNK), public),
        (Form::Chunks(2), grads(ins, sh, &gy, Form::Chunks(2))),
    ] {
        let loss_of = |x: &[Vec<f32>; 5]| weighted(&run(as_inputs(x), sh, form)[0], &gy);
        for (i, (grad, name)) in got.iter().zip(["q", "k", "v", "ig", "ln f"]).enumerate() {
            check_grad(&format!("{form:?} {name}"), &x[i], grad, |xi| {
                let mut x = x.clone();
                x[i] = xi.to_vec();
                loss_of(&x)
            });
        }
    }
}

/// The public kernels run the chunkwise form: equal to the parallel form's h, final memory and
/// gradients for every chunk length, lengths that are not multiples of it, one chunk (L = s)
/// and a chunk longer than the sequence, with gates that move the stabilizer far both ways.
#[test]
fn the_chunkwise_form_matches_the_parallel_form() {
    for (b, s, nh, w, seed) in [(2, 7, 2, 3, 10), (1, 11, 3, 4, 20), (1, 40, 1, 9, 30)] {
        let sh = MlstmShape {
            batch: b,
            len: s,
            heads: nh,
            head_dim: w,
        };
        // ĩ in [−12, 12], ln f down to about −200: exponents far from 0 both ways.
        let x = inputs(sh, seed, (12.0, 6.0));
        let ins = as_inputs(&x);
        // Some rows' denominators are under the floor e^{−m}, some above.
        let (mut under, mut over) = (0, 0);
        for bh in 0..b * nh {
            let r = parallel::rows(Head::of(ins, bh, (s, w)));
            for (den, m) in r.den.iter().zip(&r.m) {
                if den.abs() < exp(-m) {
                    under += 1;
                } else {
                    over += 1;
                }
            }
        }
        assert!(
            under > 0 && over > 0,
            "{under} rows under the floor, {over} over"
        );
        let gy = data(x[0].len(), seed + 5, 1.0);
        let want = run(ins, sh, Form::Parallel);
        let want_grads = grads(ins, sh, &gy, Form::Parallel);
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let mut public = want.clone().map(|v| vec![f32::NAN; v.len()]);
        let [y, c, n, m] = &mut public;
        mlstm(ins.0, ins.1, sh, y, (c, n, m));
        let public_grads = mlstm_backward(ins.0, ins.1, sh, &gy);
        let mut forms: Vec<_> = [1, 2, 3, 4, s, s + 5]
            .map(|l| {
                (
                    format!("L = {l}"),
                    run(ins, sh, Form::Chunks(l)),
                    grads(ins, sh, &gy, Form::Chunks(l)),
                )
            })
            .into();
        forms.push(("public".into(), public, public_grads));
        for (form, got, got_grads) in forms {
            for ((g, w), name) in got.iter().zip(&want).zip(["h", "C", "n", "m"]) {
                assert_close(&format!("{s} positions, {form}: {name}"), g, &wide(w), 1e-4);
            }
            let names = ["q", "k", "v", "ig", "ln f"];
            for ((g, w), name) in got_grads.iter().zip(&want_grads).zip(names) {
                assert_close(
                    &format!("{s} positions, {form}: d{name}"),
                    g,
                    &wide(w),
                    1e-4,
                );
            }
        }
    }
}
