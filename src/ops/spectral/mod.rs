//! Spectral ops: the real FFT and its inverse, the complex product and complex features
//! ([`fft`]), the fused spectral filter ([`filter`]), the frequency-curriculum mask of a
//! spectral parameter ([`mask`]) and the windowed spectral gate ([`window`]).
//!
//! Each op is a type of its own implementing [`OpDef`]; [`Spectral`], the family's one
//! variant of [`crate::ir::Op`], holds one of them and passes every question on to it.

pub mod fft;
pub mod filter;
pub mod mask;
pub mod window;

pub use fft::{ComplexFeatures, ComplexMul, Irfft, Rfft};
pub use filter::{FilterHistory, SpectralAlgo, SpectralFilter};
pub use mask::{dct_basis, FreqCutoff, FreqMask};
pub use window::{frames, window_basis, WindowedGate};

op_family! {
    /// A spectral op.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Spectral in Spectral {
        /// Real FFT along the second-to-last axis.
        Rfft(Rfft),
        /// Its inverse.
        Irfft(Irfft),
        /// A spectrum times a complex gate.
        ComplexMul(ComplexMul),
        /// Complex values to real features.
        ComplexFeatures(ComplexFeatures),
        /// The fused spectral filter (circular or causal).
        Filter(SpectralFilter),
        /// The frequency-curriculum mask of a gate or kernel.
        FreqMask(FreqMask),
        /// The windowed spectral gate.
        WindowedGate(WindowedGate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim, Op, TensorType};
    use crate::ops::OpDef;

    #[test]
    fn the_family_passes_every_question_to_its_op() {
        let ops: [Spectral; 7] = [
            Rfft { n: 8 }.into(),
            Irfft { n: 8 }.into(),
            ComplexMul.into(),
            ComplexFeatures.into(),
            SpectralFilter {
                n: 32,
                causal: true,
                algo: SpectralAlgo::Dense,
            }
            .into(),
            FreqMask { dct: false }.into(),
            WindowedGate { window: 8, hop: 3 }.into(),
        ];
        for s in ops {
            let o = s.op();
            assert_eq!(
                (s.name(), s.attrs(), s.ports(), s.is_pure()),
                (o.name(), o.attrs(), o.ports(), o.is_pure())
            );
            assert_eq!(s.mixing(), o.mixing());
            assert_eq!(s.incremental(), o.incremental());
            let op: Op = Op::Spectral(s);
            assert_eq!(op.def().name(), s.name());
        }
        let x = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(4)],
        };
        let k = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Fixed(16), Dim::Fixed(4)],
        };
        let f: Spectral = SpectralFilter {
            n: 32,
            causal: true,
            algo: SpectralAlgo::Dense,
        }
        .into();
        assert_eq!(f.infer(&[x.clone(), k.clone()]).unwrap(), x);
        assert_eq!(f.position_limit(&[&x, &k]), Some(16));
        assert_eq!(f.matmul_flops(&[&x, &k], 2, 5), 2 * (2 * 5 * 4) * 32);
    }
}
