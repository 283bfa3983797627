//! Scalar and row functions the ops' float64 references share, written by their definitions
//! (and shared with no runtime code).

/// 1 / (1 + e^(−x)).
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// ln(1 + eˣ), without overflow for large x.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// x · sigmoid(x) (swish).
pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// softmax of a row: e^(x_i − max) / Σ_j e^(x_j − max).
pub fn softmax(row: &[f64]) -> Vec<f64> {
    let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|x| (x - top).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((softplus(0.0) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(softplus(1000.0), 1000.0);
        assert!(softplus(-1000.0) >= 0.0);
        assert!((silu(1.0) - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-15);
        let p = softmax(&[0.0, 2f64.ln(), 1000.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p[2] > 0.999);
        let q = softmax(&[0.0, 2f64.ln()]);
        assert!((q[0] - 1.0 / 3.0).abs() < 1e-12 && (q[1] - 2.0 / 3.0).abs() < 1e-12);
    }
}
