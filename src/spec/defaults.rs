//! serde defaults shared by the model and recipe types (each named where it is used:
//! `#[serde(default = "default_one")]`).

/// `true`.
pub(super) fn default_true() -> bool {
    true
}

/// 1 (a count).
pub(super) fn default_one() -> u32 {
    1
}

/// 1.0 (a factor).
pub(super) fn default_one_f64() -> f64 {
    1.0
}
