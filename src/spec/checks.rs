//! Cross-field checks of a recipe that the schema cannot express (lengths against the task,
//! decoding settings against each other), located at the offending keys.

use super::recipe::{RecipeSpec, Task};
use super::yaml::Node;
use crate::diag::{Code, Diagnostic, Span};

/// The span of the value at `path` (keys of nested mappings), or the deepest one that exists.
pub fn span_at(tree: &Node, path: &[&str]) -> Span {
    let mut cur = tree;
    let mut span = tree.span;
    for key in path {
        match cur.entry(key) {
            Some(e) => {
                span = e.value.span;
                cur = &e.value;
            }
            None => break,
        }
    }
    span
}

/// Key span of the entry at `path`, falling back to [`span_at`].
pub fn key_span_at(tree: &Node, path: &[&str]) -> Span {
    let (last, parent) = path.split_last().expect("non-empty path");
    let mut cur = tree;
    for key in parent {
        match cur.get(key) {
            Some(n) => cur = n,
            None => return span_at(tree, path),
        }
    }
    cur.entry(last)
        .map_or_else(|| span_at(tree, path), |e| e.key_span)
}

/// Checks across fields of a recipe (K200).
pub(super) fn check_recipe(spec: &RecipeSpec, tree: &Node, diags: &mut Vec<Diagnostic>) {
    let t = &spec.train;
    match (t.steps, t.epochs) {
        (Some(_), Some(_)) => diags.push(
            Diagnostic::error(
                Code::Conflict,
                Some(key_span_at(tree, &["train", "epochs"])),
                "`train` gives both `steps` and `epochs`",
            )
            .label("remove this or `steps`")
            .note(key_span_at(tree, &["train", "steps"]), "steps given here")
            .help("the run's length is either a number of optimizer steps or of epochs"),
        ),
        (None, None) => diags.push(
            Diagnostic::error(
                Code::Conflict,
                Some(key_span_at(tree, &["train"])),
                "`train` needs `steps` or `epochs`",
            )
            .label("how long to train is not given")
            .help("add e.g. `steps: 2000` (optimizer steps) or `epochs: 50`"),
        ),
        _ => {}
    }
    if let (
        Some(steps),
        super::recipe::Schedule::WarmupCosine { warmup_steps, .. }
        | super::recipe::Schedule::InverseSqrt { warmup_steps, .. },
    ) = (t.steps, &t.schedule)
    {
        if *warmup_steps > steps {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(span_at(tree, &["train", "schedule", "warmup_steps"])),
                    format!(
                        "warm-up of {warmup_steps} steps is longer than the run ({steps} steps)"
                    ),
                )
                .label("longer than `train.steps`")
                .help("shorten the warm-up or train for more steps"),
            );
        }
    }
    check_decode(spec, tree, diags);
    if let Task::Forecast(f) = &spec.task {
        let mut conflict = |path: &[&str], msg: String, label: &str, help: &str| {
            diags.push(
                Diagnostic::error(Code::Conflict, Some(key_span_at(tree, path)), msg)
                    .label(label)
                    .help(help),
            );
        };
        if f.season > f.lookback {
            conflict(
                &["task", "season"],
                format!(
                    "the seasonal-naive baseline needs a season ({}) within the lookback ({})",
                    f.season, f.lookback
                ),
                "longer than the lookback",
                "make `lookback` at least `season`",
            );
        }
        if spec.train.curriculum.is_some() {
            conflict(
                &["train", "curriculum"],
                "a sequence-length curriculum cuts token sequences; a forecasting task reads fixed windows".into(),
                "not for forecasts",
                "remove `train.curriculum`",
            );
        }
        if spec.train.regularizers.distribution.is_some() {
            conflict(
                &["train", "regularizers", "distribution"],
                "the multi-scale distribution loss compares class histograms; a forecast has no classes".into(),
                "not for forecasts",
                "remove `distribution`",
            );
        }
    } else if let (Some(d), Some(vocab)) = (
        &spec.train.regularizers.distribution,
        spec.task.known_vocab(),
    ) {
        for &s in &d.scales {
            if s < 2 || u64::from(s) > vocab {
                diags.push(
                    Diagnostic::error(
                        Code::Conflict,
                        Some(span_at(
                            tree,
                            &["train", "regularizers", "distribution", "scales"],
                        )),
                        format!("a scale of {s} bins does not fit the task's {vocab} classes"),
                    )
                    .label("number of bins")
                    .help(format!("each scale is a number of bins from 2 to {vocab}")),
                );
            }
        }
    }
    if let Some(c) = &spec.train.curriculum {
        if c.steps.is_some() == c.epochs.is_some() {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["train", "curriculum"])),
                    "a sequence-length curriculum needs `steps` or `epochs` (exactly one)",
                )
                .label("how long it grows")
                .help("give e.g. `steps: 200` or `epochs: 2`"),
            );
        }
    }
    if let Some(f) = &spec.train.frequency_curriculum {
        if f.end < f.start {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["train", "frequency_curriculum", "end"])),
                    format!(
                        "the frequency curriculum ends at cutoff {} below its start {}",
                        f.end, f.start
                    ),
                )
                .label("below `start`")
                .help("the cutoff grows: make `end` at least `start` (1 is the whole band)"),
            );
        }
    }
    if let Some(e) = &spec.ensemble {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = e.seeds.iter().find(|s| !seen.insert(**s)) {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["ensemble", "seeds"])),
                    format!("seed {dup} appears twice in `ensemble.seeds`: the two members would be the same model"),
                )
                .label("repeated seed")
                .help("give every member its own seed"),
            );
        }
    }
    let fractions = match &spec.task {
        Task::Uint16 {
            val_fraction,
            test_fraction,
            ..
        } => Some((val_fraction, test_fraction)),
        Task::Text(t) => Some((&t.val_fraction, &t.test_fraction)),
        _ => None,
    };
    if let Some((val_fraction, test_fraction)) = fractions {
        if val_fraction + test_fraction >= 1.0 {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["task", "val_fraction"])),
                    "validation and test fractions leave no training data",
                )
                .label("val_fraction + test_fraction ≥ 1")
                .help("keep val_fraction + test_fraction below 1, e.g. 0.1 each"),
            );
        }
    }
}

/// A conflict at `decode.<key>`.
fn decode_conflict(tree: &Node, key: &str, msg: String, label: &str, help: &str) -> Diagnostic {
    Diagnostic::error(
        Code::Conflict,
        Some(key_span_at(tree, &["decode", key])),
        msg,
    )
    .label(label)
    .help(help)
}

/// Contradictions inside `decode` (the schema checks each value on its own).
fn check_decode(spec: &super::recipe::RecipeSpec, tree: &Node, diags: &mut Vec<Diagnostic>) {
    use super::recipe::Strategy;
    let d = &spec.decode;
    let mut err = |key: &str, msg: String, label: &str, help: &str| {
        diags.push(decode_conflict(tree, key, msg, label, help));
    };
    let beams = matches!(
        d.strategy,
        Strategy::Beam | Strategy::GroupBeam | Strategy::BeamSample
    );
    if beams && d.num_beams < 2 {
        err(
            "strategy",
            "beam strategies need `num_beams` of at least 2".into(),
            "needs several beams",
            "set e.g. `num_beams: 4`, or use `strategy: greedy`",
        );
    }
    if !beams && d.num_beams > 1 {
        err(
            "num_beams",
            format!(
                "`num_beams: {}` has no effect with this strategy",
                d.num_beams
            ),
            "only beam strategies use beams",
            "use `strategy: beam` (or group_beam, beam_sample), or remove `num_beams`",
        );
    }
    if d.strategy == Strategy::GroupBeam && d.num_beam_groups < 2 {
        err(
            "strategy",
            "`group_beam` decoding needs `num_beam_groups` of at least 2".into(),
            "needs several groups",
            "set e.g. `num_beam_groups: 2` with `num_beams: 4`",
        );
    }
    if d.num_beam_groups > 1 && !d.num_beams.is_multiple_of(d.num_beam_groups) {
        err(
            "num_beam_groups",
            format!(
                "`num_beams` ({}) is not divisible by `num_beam_groups` ({})",
                d.num_beams, d.num_beam_groups
            ),
            "must divide num_beams",
            "every group gets num_beams / num_beam_groups beams: choose a divisor",
        );
    }
    if d.num_beam_groups > 1 && d.strategy != Strategy::GroupBeam {
        err(
            "num_beam_groups",
            "`num_beam_groups` is only used by `strategy: group_beam`".into(),
            "no effect here",
            "use `strategy: group_beam`, or remove `num_beam_groups`",
        );
    }
    if beams && d.num_return_sequences > d.num_beams {
        err(
            "num_return_sequences",
            format!(
                "`num_return_sequences` ({}) exceeds `num_beams` ({})",
                d.num_return_sequences, d.num_beams
            ),
            "more than the beams",
            "beam search returns at most one sequence per beam",
        );
    }
    if d.strategy == Strategy::Greedy && d.num_return_sequences > 1 {
        err(
            "num_return_sequences",
            "greedy decoding returns one sequence per prompt".into(),
            "all copies would be identical",
            "use `strategy: sample` or a beam strategy for several sequences",
        );
    }
    if let Some(max) = d.max_length {
        if d.min_length > max {
            err(
                "min_length",
                format!(
                    "`min_length` ({}) exceeds `max_length` ({max})",
                    d.min_length
                ),
                "longer than max_length",
                "make min_length at most max_length",
            );
        }
    }
    if let Some(max) = d.max_new_tokens {
        if d.min_new_tokens > max {
            err(
                "min_new_tokens",
                format!(
                    "`min_new_tokens` ({}) exceeds `max_new_tokens` ({max})",
                    d.min_new_tokens
                ),
                "longer than max_new_tokens",
                "make min_new_tokens at most max_new_tokens",
            );
        }
    }
    if let Some(bad) = d.bad_words_ids.iter().position(Vec::is_empty) {
        err(
            "bad_words_ids",
            format!("`bad_words_ids` entry {bad} is empty"),
            "an empty sequence",
            "each entry is a non-empty list of token ids",
        );
    }
    check_token_ids(spec, tree, diags);
}

/// Decoding's token ids (`eos_token_id`, `pad_token_id`, `bad_words_ids`) against the task's
/// vocabulary. A text task's vocabulary is known only once its corpus or tokenizer is read:
/// `compile::recipe` runs this again then.
pub(crate) fn check_token_ids(
    spec: &super::recipe::RecipeSpec,
    tree: &Node,
    diags: &mut Vec<Diagnostic>,
) {
    let d = &spec.decode;
    let mut err = |key: &str, msg: String, label: &str, help: &str| {
        diags.push(decode_conflict(tree, key, msg, label, help));
    };
    let vocab = spec.task.known_vocab().unwrap_or(u64::MAX);
    for (key, id) in [
        ("eos_token_id", d.eos_token_id),
        ("pad_token_id", d.pad_token_id),
    ] {
        if let Some(id) = id.filter(|&i| u64::from(i) >= vocab) {
            err(
                key,
                format!("token id {id} is outside the task's vocabulary of {vocab}"),
                "no such token",
                "token ids run from 0 to vocab − 1",
            );
        }
    }
    if d.bad_words_ids
        .iter()
        .flatten()
        .any(|&i| u64::from(i) >= vocab)
    {
        err(
            "bad_words_ids",
            format!("`bad_words_ids` names a token outside the task's vocabulary of {vocab}"),
            "no such token",
            "token ids run from 0 to vocab − 1",
        );
    }
}
