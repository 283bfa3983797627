//! The tests of [`SelfAttention`]: every check on every branch, decoding, dropout, the fused
//! against the composed form, the decoding state and the errors of shape inference.

use super::*;
use crate::ops::testing::{ctx, host, value, Arg, Case};
use crate::runtime::{AuxWants, DeviceKind};
use crate::util::Rng;

/// How the weights are computed.
#[derive(Clone, Copy)]
enum Weights {
    Softmax,
    Hard,
    Adaptive,
}

fn attention(causal: bool, kv_groups: u64, learned: bool, w: Weights, mask: bool) -> SelfAttention {
    SelfAttention {
        causal,
        kv_groups,
        scale: if learned {
            AttnScale::Learned
        } else {
            AttnScale::InvSqrtDim
        },
        dropout: Real(0.0),
        hard: matches!(w, Weights::Hard),
        adaptive: matches!(w, Weights::Adaptive),
        key_mask: mask,
    }
}

/// Every branch: causal or not, 1/√d or a learned scale, one or two query heads per KV
/// head, softmax, hard or adaptive weights, with and without a key mask.
fn every_branch() -> Vec<SelfAttention> {
    let mut ops = Vec::new();
    for causal in [true, false] {
        for learned in [false, true] {
            for groups in [1, 2] {
                for w in [Weights::Softmax, Weights::Hard, Weights::Adaptive] {
                    for mask in [false, true] {
                        ops.push(attention(causal, groups, learned, w, mask));
                    }
                }
            }
        }
    }
    ops
}

/// Inputs for `op`: q `[b, hkv·g, s, d]`, k and v `[b, hkv, s, d]`, the learned scale
/// `[1]`, a key mask `[b, s]`.
fn args(
    op: &SelfAttention,
    (b, hk, s, d): (usize, usize, usize, usize),
    rng: &mut Rng,
) -> Vec<Arg> {
    let hq = hk * op.kv_groups as usize;
    let mut args = vec![
        Arg::seq(&[b, hq, s, d], 2, rng),
        Arg::seq(&[b, hk, s, d], 2, rng),
        Arg::seq(&[b, hk, s, d], 2, rng),
    ];
    if op.scale == AttnScale::Learned {
        args.push(Arg::fixed(&[1], rng));
    }
    if op.key_mask {
        args.push(Arg::seq(&[b, s], 1, rng));
    }
    args
}

const SHAPES: [(usize, usize, usize, usize); 3] = [(1, 1, 1, 3), (2, 2, 5, 4), (3, 1, 7, 5)];

#[test]
fn every_check_passes_on_every_branch() {
    let mut rng = Rng::new(21);
    for op in every_branch() {
        for shape in SHAPES {
            let case = Case {
                op: &op,
                args: args(&op, shape, &mut rng),
                out_seq: Some(2),
                tol: 1e-4,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.later_positions_change_no_earlier_output();
            if op.incremental() {
                case.decodes_like_the_whole_sequence(3);
            }
            // With one position each query sees one key: its weight is 1 whatever q, k,
            // the scale and the mask, so only v gets a gradient.
            if shape.2 > 1 {
                // At inference hard attention is an argmax of the scores: no gradient
                // reaches q, k, the scale or the mask (training's straight-through does,
                // checked next).
                let skip: &[&str] = if op.hard {
                    &["q", "k", "scale", "key_mask"]
                } else {
                    &[]
                };
                case.gradients_reach_every_input(skip);
                case.gradients_reach_every_input_in_training(&[]);
            }
        }
    }
}

#[test]
fn only_causal_attention_without_a_key_mask_decodes() {
    for op in every_branch() {
        assert_eq!(op.incremental(), op.causal && !op.key_mask, "{op:?}");
        let want = if op.causal {
            Mixing::Causal
        } else {
            Mixing::Full
        };
        assert_eq!(op.mixing(), want);
    }
}

#[test]
fn dropout_in_training_keeps_the_expected_weights_and_gradients() {
    let mut rng = Rng::new(4);
    let op = SelfAttention {
        dropout: Real(0.25),
        ..attention(false, 2, true, Weights::Softmax, false)
    };
    assert!(!op.is_pure());
    // Gradients through the dropped weights, causal and not, with the learned scale.
    for causal in [false, true] {
        let op = SelfAttention { causal, ..op };
        let case = Case {
            op: &op,
            args: args(&op, (2, 2, 6, 3), &mut rng),
            out_seq: Some(2),
            tol: 1e-4,
        };
        // Training stays on the fused attention kernel, forward and backward (the dropout is
        // inside it). The counts are process-wide, so this shows that it ran, not alone.
        let before = fused::calls(fused::Kernel::Attention);
        case.gradients_reach_every_input_in_training(&[]);
        let after = fused::calls(fused::Kernel::Attention);
        assert!(after.forward > before.forward && after.backward > before.backward);
        // At inference dropout is the identity.
        case.matches_the_reference();
    }
    // Values of 1: each output is Σ_j keep_j·p_j / (1 − p), 1 on average, not always 1.
    let device = DeviceKind::Cpu.device(false);
    let (b, hk, s, d) = (4, 2, 32, 2);
    let mut ins = args(&op, (b, hk, s, d), &mut rng);
    ins[2].t.data.iter_mut().for_each(|x| *x = 1.0);
    let vs: Vec<V> = ins.iter().map(|a| value(&a.t, &device)).collect();
    let refs: Vec<&V> = vs.iter().collect();
    let c = Ctx {
        train: true,
        ..ctx(&device, b, s)
    };
    // One draw's mean has a standard deviation of about 0.012 here (the weights are peaked):
    // the mean over 8 seeded draws.
    let draws: Vec<Vec<f32>> = (0..8)
        .map(|seed| {
            device.seed(seed);
            host(op.forward(&refs, &c))
        })
        .collect();
    let mean = draws
        .iter()
        .map(|g| g.iter().map(|&x| f64::from(x)).sum::<f64>() / g.len() as f64)
        .sum::<f64>()
        / 8.0;
    let got = &draws[7];
    assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
    assert!(
        got.iter().any(|&x| (x - 1.0).abs() > 0.05),
        "nothing dropped"
    );
    let eval = host(op.forward(&refs, &ctx(&device, b, s)));
    assert!(eval.iter().all(|&x| (x - 1.0).abs() < 1e-5));
}

/// The plain op runs the fused kernel; asking for the entropies (or a variant) builds it
/// from tensor ops: the two agree, and the entropy is recorded.
#[test]
fn the_fused_and_the_composed_forms_agree() {
    let device = DeviceKind::Cpu.device(false);
    let mut rng = Rng::new(9);
    for (causal, groups, learned) in [(true, 1, false), (false, 2, true), (true, 2, true)] {
        let op = attention(causal, groups, learned, Weights::Softmax, false);
        let ins = args(&op, (2, 2, 5, 4), &mut rng);
        let vs: Vec<V> = ins.iter().map(|a| value(&a.t, &device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let fused = host(op.forward(&refs, &ctx(&device, 2, 5)));
        let aux = std::cell::RefCell::new(crate::runtime::Aux::default());
        let c = Ctx {
            aux: Some(&aux),
            ..ctx(&device, 2, 5)
        };
        let composed = host(op.forward(&refs, &c));
        for (a, b) in fused.iter().zip(&composed) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert_eq!(aux.borrow().attention_entropy.len(), 1);
        // Other statistics wanted, not the entropies: the fused kernel, to the bit.
        let aux = std::cell::RefCell::new(crate::runtime::Aux::wanting(AuxWants {
            attention_entropy: false,
            harmonic_sparsity: true,
        }));
        let c = Ctx {
            aux: Some(&aux),
            ..ctx(&device, 2, 5)
        };
        assert_eq!(host(op.forward(&refs, &c)), fused);
        assert!(aux.borrow().attention_entropy.is_empty());
        // Hard attention evaluated softly is ordinary attention.
        let hard = SelfAttention { hard: true, ..op };
        let c = Ctx {
            soft_attention: true,
            ..ctx(&device, 2, 5)
        };
        let soft = host(hard.forward(&refs, &c));
        for (a, b) in fused.iter().zip(&soft) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn the_state_holds_every_key_and_follows_the_beams() {
    let device = DeviceKind::Cpu.device(false);
    let mut rng = Rng::new(13);
    let op = attention(true, 2, false, Weights::Softmax, false);
    let ins = args(&op, (3, 2, 4, 3), &mut rng);
    let vs: Vec<V> = ins.iter().map(|a| value(&a.t, &device)).collect();
    let refs: Vec<&V> = vs.iter().collect();
    let mut state = None;
    op.decode(&refs, &ctx(&device, 3, 4), &mut state);
    let mut st = take_state::<KvState>(&mut state).expect("a state");
    assert_eq!(st.key_shape(), Some([3, 2, 4, 3]));
    let rows = Tensor::<1, Int>::from_ints([2, 2, 0], &device);
    st.select_rows(&rows);
    let k = host(V::F4(st.k.clone()));
    let want = &ins[1].t.data;
    let per = 2 * 4 * 3;
    assert_eq!(k[..per], k[per..2 * per]);
    for (a, b) in k[..per].iter().zip(&want[2 * per..]) {
        assert_eq!(f64::from(*a), f64::from(*b as f32));
    }
}

#[test]
fn infer_errors_say_what_does_not_fit() {
    let t = |shape: &[Dim]| TensorType {
        dtype: DType::F32,
        shape: shape.to_vec(),
    };
    let (b, s, f) = (Dim::Batch, Dim::Seq, Dim::Fixed);
    let op = attention(true, 2, false, Weights::Softmax, true);
    let q = t(&[b, f(4), s, f(8)]);
    let kv = t(&[b, f(2), s, f(8)]);
    let mask = t(&[b, s]);
    let good = [q.clone(), kv.clone(), kv.clone(), mask.clone()];
    assert_eq!(op.infer(&good).unwrap(), q);
    assert_eq!(
        op.matmul_flops(&[&q, &kv, &kv, &mask], 3, 10),
        4 * 3 * 4 * 10 * 8 * 10
    );
    let with = |i: usize, ty: TensorType| {
        let mut ins = good.to_vec();
        ins[i] = ty;
        op.infer(&ins).unwrap_err()
    };
    let ids = TensorType {
        dtype: DType::I64,
        shape: vec![b, s],
    };
    assert_eq!(with(0, ids.clone()), InferError::TokenIds);
    assert_eq!(with(3, ids), InferError::TokenIds);
    let k3 = t(&[b, f(3), s, f(8)]);
    assert_eq!(
        with(1, k3.clone()),
        shapes("4 query heads cannot share 3 key/value heads in groups of 2")
    );
    let e = with(2, t(&[b, f(2), s, f(4)]));
    assert!(
        matches!(&e, InferError::Shapes(m) if m.contains("do not fit")),
        "{e}"
    );
    let m7 = t(&[b, f(7)]);
    assert_eq!(
        with(3, m7.clone()),
        shapes(format!("key mask {m7} does not fit keys {kv}"))
    );
    let e = with(0, t(&[b, s, f(8)]));
    assert!(
        matches!(&e, InferError::Shapes(m) if m.contains("expects [batch, heads")),
        "{e}"
    );
    let zero = SelfAttention { kv_groups: 0, ..op };
    assert!(matches!(zero.infer(&good), Err(InferError::Attribute(_))));
    let all = SelfAttention {
        dropout: Real(1.0),
        ..op
    };
    assert!(matches!(all.infer(&good), Err(InferError::Attribute(_))));
}
