//! AdamW over grouped buffers: what a GPU runtime runs, so that a step's update is a constant
//! number of device kernels rather than about ten per parameter.

use burn::prelude::*;

use crate::runtime::fused::{adamw_plain, AdamW};

/// AdamW of every parameter at once. The parameters are grouped by their weight-decay factor
/// (`decays[i]`: 1 where parameter i is not decayed): per group the flat parameters,
/// gradients and moments are concatenated into one buffer each, updated by the plain AdamW
/// ops once ([`adamw_plain`], the same ops per element as a per-parameter update, so the same
/// values to the bit), and each parameter and moment is a slice of the results again.
/// Returns the new parameters and moments, in the order given.
pub fn adamw_grouped(
    ps: Vec<Tensor<1>>,
    gs: Vec<Tensor<1>>,
    (ms, vs): (Vec<Tensor<1>>, Vec<Tensor<1>>),
    decays: &[f32],
    h: &AdamW,
) -> [Vec<Tensor<1>>; 3] {
    let n = ps.len();
    assert!(gs.len() == n && ms.len() == n && vs.len() == n && decays.len() == n);
    let mut out: [Vec<Option<Tensor<1>>>; 3] = std::array::from_fn(|_| vec![None; n]);
    // The groups, by decay factor, in order of first appearance.
    let mut groups: Vec<(f32, Vec<usize>)> = Vec::new();
    for (i, &d) in decays.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| g.to_bits() == d.to_bits()) {
            Some((_, members)) => members.push(i),
            None => groups.push((d, vec![i])),
        }
    }
    let (mut ps, mut gs, mut ms, mut vs) = (wrap(ps), wrap(gs), wrap(ms), wrap(vs));
    for (decay, members) in groups {
        let sizes: Vec<usize> = members
            .iter()
            .map(|&i| ps[i].as_ref().expect("each once").dims()[0])
            .collect();
        let gather = |xs: &mut [Option<Tensor<1>>]| {
            let parts = members
                .iter()
                .map(|&i| xs[i].take().expect("each parameter is in one group"))
                .collect();
            Tensor::cat(parts, 0)
        };
        let (p, g, m, v) = (
            gather(&mut ps),
            gather(&mut gs),
            gather(&mut ms),
            gather(&mut vs),
        );
        let new = adamw_plain(p, g, m, v, &AdamW { decay, ..*h });
        for (flat, out) in new.into_iter().zip(out.iter_mut()) {
            let mut at = 0;
            for (&i, &len) in members.iter().zip(&sizes) {
                out[i] = Some(flat.clone().narrow(0, at, len));
                at += len;
            }
        }
    }
    out.map(|xs| {
        xs.into_iter()
            .map(|x| x.expect("every parameter updated"))
            .collect()
    })
}

fn wrap(xs: Vec<Tensor<1>>) -> Vec<Option<Tensor<1>>> {
    xs.into_iter().map(Some).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fused::adamw;

    fn t(n: usize, seed: u64, device: &Device) -> Tensor<1> {
        let mut rng = crate::util::Rng::new(seed);
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(data, [n]), device)
    }

    fn host(x: Tensor<1>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().expect("f32")
    }

    /// Against the per-parameter update, plain (to the bit) and fused (the CPU's kernel):
    /// parameters of several sizes, decayed or not, interleaved, with a binding clip.
    #[test]
    fn the_grouped_update_is_the_per_parameter_one() {
        let device = Device::flex();
        let sizes = [7, 1, 300, 12, 5];
        let decays = [0.99f32, 1.0, 0.99, 1.0, 0.97];
        let h = AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            bc1: 0.1,
            bc2: 0.05,
            decay: 1.0,
            clip: 0.5,
        };
        let make = |seed: u64| -> Vec<Tensor<1>> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| t(n, seed * 10 + i as u64, &device))
                .collect()
        };
        let (ps, gs) = (make(1), make(2));
        let ms = make(3);
        let vs: Vec<Tensor<1>> = make(4).into_iter().map(|v| v.abs()).collect();
        let [p, m, v] = adamw_grouped(
            ps.clone(),
            gs.clone(),
            (ms.clone(), vs.clone()),
            &decays,
            &h,
        );
        for i in 0..sizes.len() {
            let hi = AdamW {
                decay: decays[i],
                ..h
            };
            let args = || (ps[i].clone(), gs[i].clone(), ms[i].clone(), vs[i].clone());
            let (pi, gi, mi, vi) = args();
            let plain = adamw_plain(pi, gi, mi, vi, &hi);
            let (pi, gi, mi, vi) = args();
            let fused = adamw(pi, gi, mi, vi, &hi);
            let got = [p[i].clone(), m[i].clone(), v[i].clone()];
            for ((g, a), b) in got.into_iter().zip(plain).zip(fused) {
                let (g, a, b) = (host(g), host(a), host(b));
                assert_eq!(g.len(), sizes[i]);
                assert_eq!(g, a, "parameter {i}: grouped vs plain");
                for (x, y) in g.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                        "{i}: {x} vs fused {y}"
                    );
                }
            }
            assert!(
                host(p[i].clone()) != host(ps[i].clone()),
                "{i}: the update moved it"
            );
        }
    }
}
