//! Plain scalars resolved by the YAML 1.2 core schema, and tags kiln does not accept.

use super::*;
use crate::diag::{Code, Diagnostic, Span};

pub(super) fn unsupported_tag(t: &saphyr_parser::Tag, span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::YamlSyntax,
        Some(span),
        format!("unsupported YAML tag `{}{}`", t.handle, t.suffix),
    )
    .label("custom tags are not part of kiln's format")
    .help("remove the tag; kiln reads plain YAML values")
}

/// Resolve a plain scalar with the YAML 1.2 core schema. `None` means "a string".
pub(super) fn resolve_plain(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Some(Value::Float(f64::INFINITY))
        }
        "-.inf" | "-.Inf" | "-.INF" => return Some(Value::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Some(Value::Float(f64::NAN)),
        _ => {}
    }
    let bytes = text.as_bytes();
    let (sign, digits) = match bytes[0] {
        b'+' | b'-' => (&text[..1], &text[1..]),
        _ => ("", text),
    };
    if let Some(hex) = text.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(
                i64::from_str_radix(hex, 16)
                    .map_or_else(|_| Value::Float(f64::INFINITY), Value::Int),
            );
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Some(
                i64::from_str_radix(oct, 8)
                    .map_or_else(|_| Value::Float(f64::INFINITY), Value::Int),
            );
        }
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match text.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(
                format!("{sign}{digits}")
                    .parse::<f64>()
                    .unwrap_or(f64::INFINITY),
            ),
        });
    }
    if is_float_syntax(digits) {
        return text.parse::<f64>().ok().map(Value::Float);
    }
    None
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` without the sign.
pub(super) fn is_float_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}
