//! `$variables` of a model: defined under `vars`, substituted into its layers.

use super::yaml::{Node, Value};
use crate::diag::{did_you_mean, one_of, Code, Diagnostic, Span};
use std::collections::BTreeMap;

/// Replace every `$name` string in a model (outside `vars`) by the value of variable `name`.
pub(super) fn substitute_vars(model: &mut Node, diags: &mut Vec<Diagnostic>) {
    let vars: BTreeMap<String, (Node, Span)> = model
        .get("vars")
        .and_then(Node::as_map)
        .map(|m| {
            m.iter()
                .map(|e| (e.key.clone(), (e.value.clone(), e.key_span)))
                .collect()
        })
        .unwrap_or_default();
    let Value::Map(entries) = &mut model.value else {
        return;
    };
    for e in entries.iter_mut().filter(|e| e.key != "vars") {
        substitute(&mut e.value, &vars, diags);
    }
}

fn substitute(node: &mut Node, vars: &BTreeMap<String, (Node, Span)>, diags: &mut Vec<Diagnostic>) {
    match &mut node.value {
        Value::Str(s) if is_var_ref(s) => {
            let name = s[1..].to_string();
            match vars.get(&name) {
                Some((value, def_span)) => {
                    node.value = value.value.clone();
                    node.via = Some(Box::new((name, *def_span)));
                }
                None => {
                    let guess = did_you_mean(&name, vars.keys().map(String::as_str));
                    diags.push(
                        Diagnostic::error(
                            Code::UndefinedVariable,
                            Some(node.span),
                            format!("undefined variable `${name}`"),
                        )
                        .label("not defined in `vars`")
                        .help(match guess {
                            Some(g) => format!("did you mean `${g}`?"),
                            None if vars.is_empty() => {
                                format!("define it in the model: `vars: {{{name}: ...}}`")
                            }
                            None => format!(
                                "define it under `vars:` (defined: {})",
                                one_of(&vars.keys().map(|k| format!("${k}")).collect::<Vec<_>>())
                            ),
                        }),
                    );
                }
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| substitute(n, vars, diags)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|e| substitute(&mut e.value, vars, diags)),
        _ => {}
    }
}

fn is_var_ref(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next() == Some('$')
        && chars
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && s[2..]
            .chars()
            .all(|c| c == '_' || c.is_ascii_alphanumeric())
}
