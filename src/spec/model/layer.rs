//! [`Layer`]: one layer or block of a model, as written in YAML.

use super::{Activation, PhaseMode, Rope};
use crate::spec::defaults::{default_one, default_one_f64, default_true};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_ln_eps() -> f64 {
    1e-5
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_d_state() -> u32 {
    16
}

fn default_d_conv() -> u32 {
    4
}

fn default_expand() -> u32 {
    2
}

/// One layer or block of layers. `type` selects which; the other keys configure it.
///
/// Every layer maps a sequence `[batch, seq, width]` to a sequence of the same length; the width
/// may change (`embedding`, `linear`, `lstm`, `head`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// Token embedding: token ids `[batch, seq]` to vectors `[batch, seq, dim]`.
    Embedding {
        /// Width of the embedding vectors (d_model).
        #[schemars(range(min = 1, max = 65536))]
        dim: u32,
        /// Multiply the embeddings by √dim (as in "Attention is all you need").
        #[serde(default)]
        scale: bool,
    },
    /// Add fixed sinusoidal position encodings (Vaswani et al. 2017): sin at even, cos at odd
    /// feature indices, frequency 10000^(−2i/width).
    SinusoidalPositions {},
    /// Add a learned position embedding for positions 0..max_len−1.
    LearnedPositions {
        /// Longest sequence the model can read.
        #[schemars(range(min = 1, max = 1048576))]
        max_len: u32,
    },
    /// Multi-head self-attention, with grouped-query attention when `kv_heads` < `heads`.
    Attention {
        /// Number of query heads.
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
        /// Number of key/value heads (grouped-query attention); must divide `heads`. Query head
        /// h uses key/value head ⌊h / (heads / kv_heads)⌋. Leave it out for ordinary attention.
        #[serde(default)]
        #[schemars(range(min = 1, max = 1024))]
        kv_heads: Option<u32>,
        /// Width of each head; leave it out for width / heads.
        #[serde(default)]
        #[schemars(range(min = 1, max = 4096))]
        head_dim: Option<u32>,
        /// Let position t attend only to positions ≤ t. Required for next-token prediction.
        #[serde(default = "default_true")]
        causal: bool,
        /// Rotary position embedding of queries and keys; leave it out for none.
        #[serde(default)]
        rope: Option<Rope>,
        /// QK-norm: l2-normalize queries and keys per head and scale the logits by a learned
        /// scalar g (initialised to 10) instead of 1/√head_dim.
        #[serde(default)]
        qk_norm: bool,
        /// Add biases to the query, key, value and output projections.
        #[serde(default = "default_true")]
        bias: bool,
        /// Dropout on the attention weights during training.
        #[serde(default)]
        #[schemars(range(min = 0.0, max = 0.99))]
        dropout: f64,
        /// Hard attention: each query reads the value of its highest-scoring key (q·k argmax;
        /// ties share equally) instead of a softmax average. Trained straight-through: the
        /// forward pass is hard, the backward pass uses the softmax gradient, so queries and
        /// keys still learn (x-transformers `attn_hard`). Evaluation reports the model with
        /// hard attention and again with soft attention, since the two differ.
        #[serde(default)]
        hard: bool,
        /// Entropy-adaptive temperature at inference (Veličković et al. 2024, "Softmax is not
        /// enough"): a row whose attention entropy H exceeds 0.5 is sharpened to
        /// softmax(β·logits) with β = max(−0.037H⁴ + 0.481H³ − 2.3H² + 4.917H − 1.791, 1).
        /// Training is unchanged. Not with `hard` (β cannot change an argmax).
        #[serde(default)]
        adaptive_temperature: bool,
    },
    /// Layer normalisation over the feature axis, with learned gain and bias.
    Layernorm {
        /// Added to the variance for numerical stability.
        #[serde(default = "default_ln_eps")]
        #[schemars(range(min = 0.0, max = 1.0))]
        eps: f64,
    },
    /// RMS normalisation: x / sqrt(mean(x²) + eps) · g (Zhang & Sennrich 2019).
    Rmsnorm {
        /// Added to the mean square for numerical stability.
        #[serde(default = "default_rms_eps")]
        #[schemars(range(min = 0.0, max = 1.0))]
        eps: f64,
    },
    /// Position-wise feed-forward network: linear → activation → dropout → linear, back to the
    /// input width.
    Mlp {
        /// Hidden width.
        #[schemars(range(min = 1, max = 1048576))]
        hidden: u32,
        /// Activation between the two linear maps.
        #[serde(default = "default_activation")]
        activation: Activation,
        /// Add biases to both linear maps.
        #[serde(default = "default_true")]
        bias: bool,
        /// Dropout after the activation during training.
        #[serde(default)]
        #[schemars(range(min = 0.0, max = 0.99))]
        dropout: f64,
    },
    /// SwiGLU feed-forward network: (SiLU(x W₁) ⊙ x W₃) W₂ (Shazeer 2020).
    Swiglu {
        /// Hidden width (often 2/3 · 4 · width to match an MLP's parameter count).
        #[schemars(range(min = 1, max = 1048576))]
        hidden: u32,
        /// Add biases to the three linear maps.
        #[serde(default)]
        bias: bool,
    },
    /// A stack of unidirectional LSTM layers (PyTorch `nn.LSTM` gates i, f, g, o, two biases);
    /// the output width is `hidden`.
    Lstm {
        /// Width of the hidden state and of the output.
        #[schemars(range(min = 1, max = 65536))]
        hidden: u32,
        /// Number of stacked LSTM layers.
        #[serde(default = "default_one")]
        #[schemars(range(min = 1, max = 64))]
        layers: u32,
        /// Dropout between stacked layers during training (not after the last one).
        #[serde(default)]
        #[schemars(range(min = 0.0, max = 0.99))]
        dropout: f64,
    },
    /// Mamba block: a selective state-space model (Gu & Dao 2023, structured as mamba.py).
    /// in_proj to 2·expand·width channels (x, z); x ← SiLU(causal depthwise convolution of
    /// `d_conv` taps); Δ = softplus(dt_proj(x_proj(x))), B and C from x_proj(x); the scan
    /// h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t, y_t = C_t · h_t + D ⊙ x_t with A = −exp(A_log);
    /// out_proj(y ⊙ SiLU(z)) back to the input width. Causal; decodes with a recurrent state.
    /// The usual block is `{type: residual, body: [{type: rmsnorm}, {type: mamba}]}`.
    Mamba {
        /// State size n per channel.
        #[serde(default = "default_d_state")]
        #[schemars(range(min = 1, max = 1024))]
        d_state: u32,
        /// Taps of the causal depthwise convolution.
        #[serde(default = "default_d_conv")]
        #[schemars(range(min = 2, max = 64))]
        d_conv: u32,
        /// Inner channels per input feature.
        #[serde(default = "default_expand")]
        #[schemars(range(min = 1, max = 16))]
        expand: u32,
        /// Rank of Δ's projection; leave it out for ⌈width / 16⌉.
        #[serde(default)]
        #[schemars(range(min = 1, max = 65536))]
        dt_rank: Option<u32>,
    },
    /// Cross-attention of an encoder-decoder model's decoder: queries from this layer's input,
    /// keys and values from the encoder's output, softmax(q kᵀ/√d) v per head over every
    /// source position, then an output projection. Needs an `encoder` in the model.
    CrossAttention {
        /// Number of heads (must divide the width).
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
    },
    /// RetNet's multi-scale retention (Sun et al. 2023): q, k, v and a gate g from the input
    /// (no biases), q and k rotated by position as RoPE does (the paper's Θ, base 10000), and
    /// per head i the decay γ_i = 1 − 2^(−5−i): o_t = Σ_{m ≤ t} γ^(t−m) (q_t · k_m / √d) v_m,
    /// computed in parallel for training and from the recurrent state S_t = γ S_(t−1) + k_tᵀ v_t
    /// when decoding. Each head's output is normalized (GroupNorm), gated by swish(g) and mapped
    /// back to the width. Causal.
    Retention {
        /// Number of heads, each with its own decay (must divide the width into even parts).
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
    },
    /// ETSformer's exponential smoothing attention (Woo et al. 2022): v = x W_v + b split
    /// into `heads` heads, each smoothed with its own learned α = σ(a) from a learned initial
    /// state v₀: ES_t = (1 − α)^t v₀ + Σ_{j<t} α (1 − α)^j v_{t−j} (positions 1..T), i.e.
    /// ES_t = (1 − α) ES_{t−1} + α v_t, then a linear map back to the width. Computed as a causal
    /// convolution (by FFT for long sequences); decodes with the last ES value as its state.
    EtsAttention {
        /// Number of heads, each with its own α (must divide the width).
        #[serde(default = "default_one")]
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
    },
    /// xLSTM's mLSTM (Beck et al. 2024): a matrix memory per head. From the input: q, k, v and
    /// an output gate o (each `width`, split into `heads` heads of width/heads), and per head
    /// an exponential input gate ĩ and a sigmoid forget gate f̃. With k scaled by 1/√d:
    /// C_t = f_t C_{t−1} + e^{ĩ_t} v_t k_tᵀ, n_t = f_t n_{t−1} + e^{ĩ_t} k_t,
    /// h_t = σ(o_t) ⊙ C_t q_t / max(|n_tᵀ q_t|, 1), then a linear map back to `width`. Computed
    /// in its stabilized parallel form for whole sequences and chunk by chunk from a recurrent
    /// state when decoding. Causal.
    Mlstm {
        /// Number of heads (must divide the width).
        #[serde(default = "default_one")]
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
    },
    /// xLSTM's sLSTM (Beck et al. 2024): a scalar memory with exponential input gating and a
    /// recurrence that is block-diagonal over `heads`. Pre-activations z̃, ĩ, f̃, õ = W x_t +
    /// R h_{t−1} + b; c_t = f_t c_{t−1} + e^{ĩ_t} tanh(z̃_t), n_t = f_t n_{t−1} + e^{ĩ_t},
    /// h_t = σ(õ_t) ⊙ c_t / n_t with f_t = σ(f̃_t), computed with the paper's stabilizer.
    /// Output width = input width. Causal; decodes with a recurrent state.
    Slstm {
        /// Number of heads (must divide the width).
        #[serde(default = "default_one")]
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
    },
    /// Global spectral filter (GFNet, 1-D): rfft over the sequence, multiply by a learned
    /// complex filter per frequency and feature, irfft back. Its causal form learns a kernel of
    /// `max_len` taps and convolves with zero padding to 2·max_len, so no position sees a later
    /// one.
    SpectralGate {
        /// Longest sequence; the filter is sized for it and shorter inputs are zero-padded.
        #[schemars(range(min = 2, max = 1048576))]
        max_len: u32,
        /// Causal (linear, zero-padded) convolution instead of the circular one.
        #[serde(default = "default_true")]
        causal: bool,
    },
    /// Windowed spectral gate, kiln's definition of the seed notes' "hierarchical windowed
    /// FFT": the sequence is cut into overlapping frames of `window` steps, `hop` apart (the
    /// first starts window − hop zero steps before the sequence, the last is zero-padded).
    /// Each frame is multiplied by a learned window g = softmax(m)·(Hann, Hamming,
    /// rectangular) (periodic forms, m learned, starting equal), transformed by rfft, gated by
    /// a learned complex filter per frequency bin and feature (shared by all frames),
    /// transformed back, multiplied by g again and overlap-added; each position is then divided
    /// by Σ_frames g², so with an identity gate the output equals the input exactly. Works on
    /// sequences of any length. Not causal: a frame mixes all of its steps.
    WindowedSpectralGate {
        /// Frame length w (the gate has w/2 + 1 frequency bins).
        #[schemars(range(min = 2, max = 65536))]
        window: u32,
        /// Steps between frame starts (at most `window`; window − hop steps overlap).
        #[schemars(range(min = 1, max = 65536))]
        hop: u32,
    },
    /// Wave encoding: each position's vector is mapped linearly to H harmonics, each with a
    /// frequency softplus(·), an amplitude softplus(·) and a phase π·tanh(·), laid out
    /// harmonic by harmonic: `[f₁, a₁, φ₁, f₂, a₂, φ₂, …]`, width 3·H. The seed notes'
    /// "wave representation"; `harmonic_select` and `band_pyramid` group features by harmonic.
    WaveEncoding {
        /// Harmonics H (output width 3·H).
        #[schemars(range(min = 1, max = 65536))]
        harmonics: u32,
    },
    /// Adaptive harmonic selection: the width is read as `harmonics` groups of width/harmonics
    /// features (e.g. after `wave_encoding`), a linear scorer gives each harmonic a score per
    /// position, and each position keeps its `k` best-scoring harmonics, zeroing the others.
    /// In training the scores get Gumbel noise (Gumbel top-k sampling without replacement)
    /// and the hard mask passes the gradient of the relaxed top-k at `temperature`
    /// (straight-through), so the scorer learns. At evaluation the selection is the plain
    /// top-k. Pointwise in time. See `train.regularizers.harmonic_sparsity`.
    HarmonicSelect {
        /// Number of harmonic groups H (must divide the width).
        #[schemars(range(min = 1, max = 65536))]
        harmonics: u32,
        /// Harmonics kept per position (at most H).
        #[schemars(range(min = 1, max = 65536))]
        k: u32,
        /// Temperature τ of the relaxed top-k in training.
        #[serde(default = "default_one_f64")]
        #[schemars(range(min = 0.01, max = 100.0))]
        temperature: f64,
    },
    /// Phase-coherent attention, kiln's definition of the seed notes' PCCA: ordinary
    /// multi-head attention whose logits add a phase-coherence score. Per head, each position
    /// gets `phases` learned phases φ = π·tanh(x W_φ) (and in the complex mode amplitudes
    /// a = softplus(x W_a)); logit(i, j) = α·q_i·k_j/√e + β·C(i, j) with a learned blend α, β
    /// (both starting at 1). Cosine mode: C = mean_p cos(φ_ip − φ_jp) ∈ [−1, 1]. Complex mode:
    /// C = |Σ_p a_ip a_jp e^{i(φ_ip − φ_jp)}| / Σ_p a_ip a_jp ∈ [0, 1]. Then softmax, values
    /// and an output projection. Decodes without a KV cache.
    PhaseAttention {
        /// Number of heads (must divide the width).
        #[schemars(range(min = 1, max = 1024))]
        heads: u32,
        /// Phases per head.
        #[schemars(range(min = 1, max = 4096))]
        phases: u32,
        /// How phases are compared.
        #[serde(default)]
        mode: PhaseMode,
        /// Mask later positions.
        #[serde(default = "default_true")]
        causal: bool,
    },
    /// Multi-resolution band pyramid, kiln's definition of the seed notes' MRWP: the width is
    /// read as `harmonics` groups ordered from low to high frequency (e.g. after
    /// `wave_encoding`), cut at the `boundaries` (fractions of H) into bands; band i runs its
    /// own layers `bands[i]` on its features (so each band can have its own depth). With
    /// `cross_band` of width c, every band then attends, at each position, over all bands
    /// (per band: q, k, v linear to c; softmax over bands; a linear back, added to the band).
    /// The bands are put side by side again and a linear map fuses them. Causal when every
    /// band's layers are.
    BandPyramid {
        /// Harmonic groups H (must divide the width).
        #[schemars(range(min = 1, max = 65536))]
        harmonics: u32,
        /// Increasing band edges in (0, 1), as fractions of H: n − 1 edges make n bands.
        #[schemars(length(min = 1, max = 15))]
        boundaries: Vec<f64>,
        /// The layers of each band, low band first (one list per band); each must keep the
        /// band's width.
        #[schemars(length(min = 2, max = 16))]
        bands: Vec<Vec<Layer>>,
        /// Width of the cross-band attention; leave it out for none.
        #[serde(default)]
        #[schemars(range(min = 1, max = 65536))]
        cross_band: Option<u32>,
    },
    /// Dropout during training.
    Dropout {
        /// Probability of zeroing each value.
        #[schemars(range(min = 0.0, max = 0.99))]
        p: f64,
    },
    /// A linear map to a new width.
    Linear {
        /// Output width.
        #[schemars(range(min = 1, max = 1048576))]
        out: u32,
        /// Add a bias.
        #[serde(default = "default_true")]
        bias: bool,
    },
    /// The position-wise linear model of the rule-extrapolation paper (Mészáros et al. 2024):
    /// every output position t is a linear function of the inputs at positions s ≤ t, with its
    /// own weights for every pair (s, t): `y[t] = Σ_{s≤t} x[s] · W[s, t] + b[t]`. Causal; reads
    /// at most `max_len` positions; decodes without a KV cache.
    PositionLinear {
        /// Longest sequence (the weights are sized max_len × width × max_len × out).
        #[schemars(range(min = 1, max = 4096))]
        max_len: u32,
        /// Output width; leave it out for one logit per vocabulary entry (the layer is then
        /// the model's output head, as in the paper).
        #[serde(default)]
        #[schemars(range(min = 1, max = 1048576))]
        out: Option<u32>,
        /// Add a bias per output position.
        #[serde(default = "default_true")]
        bias: bool,
    },
    /// Output projection to one logit per vocabulary entry.
    Head {
        /// Add a bias.
        #[serde(default = "default_true")]
        bias: bool,
    },
    /// RevIN (Kim et al. 2022) around a forecasting model: each input series (per example
    /// and channel) is standardized by its own mean and standard deviation over the lookback
    /// (then scaled by a learned gamma and shifted by a learned beta per channel), `body`
    /// forecasts, and the forecast is mapped back with the same statistics.
    Revin {
        /// The forecasting layers: from `[batch, lookback, channels]` to
        /// `[batch, horizon, channels]`.
        #[schemars(length(min = 1))]
        body: Vec<Layer>,
    },
    /// PatchTST patching (Nie et al. 2023), channel independent: each channel's series is
    /// padded with `stride` copies of its last value and cut into ⌊(L − len)/stride⌋ + 2
    /// patches of `len` steps; channels become separate examples (`[batch·C, patches, len]`).
    /// Follow it with a `linear` to the model width.
    Patch {
        /// Patch length.
        #[schemars(range(min = 1, max = 100000))]
        len: u32,
        /// Steps between patch starts.
        #[schemars(range(min = 1, max = 100000))]
        stride: u32,
    },
    /// Fourier features: the real FFT over the sequence axis of `[batch, n, width]` (n fixed,
    /// e.g. patches after `patch`), real and imaginary parts side by side on the feature axis:
    /// `[batch, n/2 + 1, 2·width]` (Re in the first half, Im in the second). Every output mixes
    /// every position, so it is not causal.
    FourierFeatures {},
    /// PatchTST's flatten head: each channel's patches `[patches, width]` flattened and
    /// mapped linearly to the task's horizon, channels restored: `[batch, horizon, channels]`.
    ForecastHead {},
    /// Memory tokens (Burtsev et al. 2020; "registers"): `count` learned vectors are
    /// prepended to every sequence, `body` runs on the longer sequence (the memory is a prefix,
    /// so under causal attention every position sees it), and the memory positions' outputs
    /// are dropped at the end of `body`. Inside `body`, positions count from the first memory
    /// token. Models with memory tokens decode without a KV cache.
    MemoryTokens {
        /// Number of memory tokens m.
        #[schemars(range(min = 1, max = 4096))]
        count: u32,
        /// The layers that see the memory; they must return the input width.
        #[schemars(length(min = 1))]
        body: Vec<Layer>,
    },
    /// x + body(x): a residual connection around a list of layers. Pre-norm blocks put the
    /// norm first in `body`; post-norm blocks put a norm layer after the residual.
    Residual {
        /// The layers inside the residual branch; they must return the input width.
        #[schemars(length(min = 1))]
        body: Vec<Layer>,
    },
    /// Sum of several branches applied to the same input (e.g. a parallel attention + MLP
    /// block, y = x + attn(norm(x)) + mlp(norm(x)) when wrapped in `residual`).
    Parallel {
        /// Each branch is a list of layers; all must return the same width.
        #[schemars(length(min = 2))]
        branches: Vec<Vec<Layer>>,
    },
    /// Repeat a list of layers `times` times, each copy with its own weights. Inside, `cycle`
    /// and `every` choose layers by the copy's index.
    Repeat {
        /// Number of copies.
        #[schemars(range(min = 1, max = 4096))]
        times: u32,
        /// The layers of one copy.
        #[schemars(length(min = 1))]
        body: Vec<Layer>,
    },
    /// Inside `repeat`: copy i uses `choices[i mod len]` (e.g. two attention kinds on
    /// alternating layers).
    Cycle {
        /// The layers to cycle through.
        #[schemars(length(min = 1))]
        choices: Vec<Layer>,
    },
    /// Inside `repeat`: include `body` only in the copies whose index i satisfies
    /// i mod n = offset (e.g. a spectral layer after every 3rd block).
    Every {
        /// Period.
        #[schemars(range(min = 1, max = 4096))]
        n: u32,
        /// Which index in each period (0-based, less than `n`).
        #[serde(default)]
        #[schemars(range(min = 0, max = 4095))]
        offset: u32,
        /// The layers to include.
        #[schemars(length(min = 1))]
        body: Vec<Layer>,
    },
}

fn default_activation() -> Activation {
    Activation::Relu
}

impl Layer {
    /// The `type` tag of the layer, as written in YAML.
    pub fn type_name(&self) -> &'static str {
        match self {
            Layer::Embedding { .. } => "embedding",
            Layer::SinusoidalPositions {} => "sinusoidal_positions",
            Layer::LearnedPositions { .. } => "learned_positions",
            Layer::Attention { .. } => "attention",
            Layer::PositionLinear { .. } => "position_linear",
            Layer::Mamba { .. } => "mamba",
            Layer::Mlstm { .. } => "mlstm",
            Layer::CrossAttention { .. } => "cross_attention",
            Layer::EtsAttention { .. } => "ets_attention",
            Layer::Retention { .. } => "retention",
            Layer::Slstm { .. } => "slstm",
            Layer::Layernorm { .. } => "layernorm",
            Layer::Rmsnorm { .. } => "rmsnorm",
            Layer::Mlp { .. } => "mlp",
            Layer::Swiglu { .. } => "swiglu",
            Layer::Lstm { .. } => "lstm",
            Layer::SpectralGate { .. } => "spectral_gate",
            Layer::Dropout { .. } => "dropout",
            Layer::Linear { .. } => "linear",
            Layer::Head { .. } => "head",
            Layer::Residual { .. } => "residual",
            Layer::MemoryTokens { .. } => "memory_tokens",
            Layer::Revin { .. } => "revin",
            Layer::Patch { .. } => "patch",
            Layer::ForecastHead {} => "forecast_head",
            Layer::WindowedSpectralGate { .. } => "windowed_spectral_gate",
            Layer::WaveEncoding { .. } => "wave_encoding",
            Layer::HarmonicSelect { .. } => "harmonic_select",
            Layer::PhaseAttention { .. } => "phase_attention",
            Layer::BandPyramid { .. } => "band_pyramid",
            Layer::FourierFeatures {} => "fourier_features",
            Layer::Parallel { .. } => "parallel",
            Layer::Repeat { .. } => "repeat",
            Layer::Cycle { .. } => "cycle",
            Layer::Every { .. } => "every",
        }
    }
}
