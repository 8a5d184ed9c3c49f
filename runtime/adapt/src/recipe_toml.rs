//! `fieldtune adapt --print-config`: the settings as commented TOML, every key with its value
//! and a comment, floats as the shortest text of their f32 (`lr = 0.001`, never
//! `0.0010000000474974513`), loadable again with `--config`.

/// The column comments start at (as in `fieldtune run --print-config`).
const COMMENT_COLUMN: usize = 36;

/// One comment per key: `key` of the top level, `table.key` in a table; the augmentation
/// tables (`weak`, `strong`, `teacher_augment`) share `augment.*`.
const DOCS: &[(&str, &str)] = &[
    (
        "recipe",
        "preset the other keys start from: uda-im, uda, tent, fixmatch, cotta, rotation, jigsaw, corruption, inpaint, colorize, feature-consistency",
    ),
    ("steps", "optimizer steps"),
    ("lr", "peak learning rate"),
    (
        "lr_schedule",
        "\"constant\" | \"cosine\" (half a cosine from lr to 0)",
    ),
    ("seed", "seed of sampling and augmentation"),
    (
        "batch_labeled",
        "labeled anchors per step (0: no anchor term)",
    ),
    (
        "batch_unlabeled",
        "unlabeled frames per step, each in a weak and a strong view",
    ),
    (
        "max_labeled_per_class",
        "anchors used per class at most (the first by file name)",
    ),
    (
        "augment_threads",
        "threads building the strong views (views do not depend on it)",
    ),
    (
        "trainable",
        "\"all\" | \"bn\" | \"affine\" | \"head\" | { last = K } | { names = [\"glob\", ...] }",
    ),
    ("trainable.last", "the last K blocks train"),
    ("trainable.names", "parameters matching these globs train"),
    (
        "batchnorm",
        "\"train\" (batch statistics; running ones updated, saved) | \"frozen\"",
    ),
    (
        "target",
        "\"portable\" | \"tuned\" | \"auto\": train-step graph (standard or one-pass ops)",
    ),
    (
        "dropout",
        "Dropout in training form in the gradient pass (masks from seed and step)",
    ),
    ("log_every", "log the loss terms every N steps"),
    (
        "eval_every",
        "score --eval every N steps (0: before and after only)",
    ),
    ("eval_batch", "images per evaluation batch"),
    (
        "weak",
        "weak view (also the anchors'); the identity suits shift-sensitive models",
    ),
    ("strong", "strong view"),
    ("teacher_augment", "CoTTA's augmented teacher views"),
    (
        "augment.kind",
        "\"identity\" | \"weak\" (shift, flip) | \"randaugment\"",
    ),
    ("augment.max_shift", "pixels, uniform in -N..=N"),
    ("augment.flip_horizontal", "mirror half of the images"),
    ("augment.n", "RandAugment ops per image"),
    ("augment.max_magnitude", "largest op magnitude, 0..1"),
    (
        "augment.cutout",
        "side of the cut-out square as a fraction of the image (0: none)",
    ),
    ("loss", "the loss terms (--objective sets them)"),
    ("loss.ce_weight", "cross-entropy on the labeled anchors"),
    (
        "loss.tsa",
        "training-signal annealing of the anchor term: none | linear | log | exp",
    ),
    (
        "loss.tsa_steps",
        "steps over which the TSA threshold rises to 1",
    ),
    (
        "loss.consistency_weight",
        "KL(sharpened weak view || strong view), masked (UDA)",
    ),
    (
        "loss.sharpen_temperature",
        "temperature of the weak-view target (1: no sharpening)",
    ),
    (
        "loss.confidence_threshold",
        "weak-view confidence a frame needs to count in the consistency term",
    ),
    (
        "loss.entropy_weight",
        "mean prediction entropy (TENT; with diversity: information maximisation)",
    ),
    (
        "loss.diversity_weight",
        "minus the entropy of the batch's mean prediction (against collapse)",
    ),
    (
        "loss.pseudo_label_weight",
        "FixMatch: cross-entropy against the weak view's hard label",
    ),
    (
        "loss.pseudo_label_threshold",
        "FixMatch's confidence threshold",
    ),
    (
        "loss.proximal_mu",
        "mu/2 * ||w - w0||^2 towards the starting weights (FedProx; fleet rounds set it)",
    ),
    (
        "optimizer",
        "PyTorch's update rules: kind = \"adamw\" | \"sgd\"",
    ),
    (
        "optimizer.kind",
        "\"adamw\" (beta1, beta2, eps, weight_decay) | \"sgd\" (momentum, weight_decay, nesterov)",
    ),
    ("optimizer.beta1", "first-moment decay"),
    ("optimizer.beta2", "second-moment decay"),
    ("optimizer.eps", "added to the root of the second moment"),
    (
        "optimizer.weight_decay",
        "decoupled (adamw) or L2 (sgd) weight decay",
    ),
    ("optimizer.momentum", "SGD momentum (dampening 0)"),
    ("optimizer.nesterov", "Nesterov momentum"),
    (
        "teacher",
        "mean teacher: targets from an EMA of the model; the teacher is written",
    ),
    (
        "teacher.ema",
        "teacher = ema * teacher + (1 - ema) * model, every step",
    ),
    (
        "cotta",
        "CoTTA: augmentation-averaged teacher targets, stochastic restore",
    ),
    ("cotta.weight", "weight of the soft cross-entropy"),
    ("cotta.views", "augmented teacher views per frame"),
    (
        "cotta.confidence_threshold",
        "below this teacher confidence the view average is the target",
    ),
    (
        "cotta.restore",
        "probability per element and step of returning to the source value",
    ),
    (
        "rotation",
        "test-time training: a 4-way rotation head (not saved)",
    ),
    (
        "rotation.feature",
        "the tensor the head reads (default: the classifier's input)",
    ),
    ("rotation.weight", "weight of the rotation cross-entropy"),
    (
        "jigsaw",
        "test-time training: a head tells which 2x2 tile permutation (not saved)",
    ),
    (
        "jigsaw.feature",
        "the tensor the head reads (default: the classifier's input)",
    ),
    ("jigsaw.weight", "weight of the jigsaw cross-entropy"),
    (
        "jigsaw.permutations",
        "P, tile permutations told apart (2..=24, chosen from the seed)",
    ),
    (
        "corruption",
        "test-time training: a head tells which corruption, or none (not saved)",
    ),
    (
        "corruption.feature",
        "the tensor the head reads (default: the classifier's input)",
    ),
    ("corruption.weight", "weight of the corruption cross-entropy"),
    (
        "corruption.corruptions",
        "K of noise, blur, contrast, quantise, pixelate (in the graph)",
    ),
    (
        "inpaint",
        "test-time training: a decoder head fills masked patches (not saved)",
    ),
    (
        "inpaint.feature",
        "the 4-D map the decoder reads (default: the last that divides the image)",
    ),
    ("inpaint.weight", "weight of the reconstruction loss"),
    ("inpaint.patch", "side of the square patches in pixels (divides the image)"),
    ("inpaint.ratio", "probability that a patch is masked, in (0, 1]"),
    (
        "inpaint.loss",
        "\"l2\" | \"l1\", on the masked pixels only",
    ),
    (
        "colorize",
        "test-time training, RGB: a decoder head predicts chroma from luma (not saved)",
    ),
    (
        "colorize.feature",
        "the 4-D map the decoder reads (default: the last that divides the image)",
    ),
    ("colorize.weight", "weight of the chroma loss"),
    ("colorize.loss", "\"l2\" | \"l1\""),
    (
        "feature_consistency",
        "weak and strong views agree in a feature tensor, not only the logits",
    ),
    (
        "feature_consistency.feature",
        "the tensor compared (default: the classifier's input; 4-D maps pooled)",
    ),
    ("feature_consistency.weight", "weight of the term"),
    (
        "feature_consistency.distance",
        "\"cosine\" (1 - cos) | \"l2\" (squared distance of unit rows)",
    ),
    (
        "collapse",
        "collapse watch, the field gate's definition (fieldtune run ignores it)",
    ),
    (
        "collapse.every",
        "steps between checks on a fixed sample of the unlabeled frames (0: none)",
    ),
    ("collapse.frames", "unlabeled frames per check"),
    (
        "collapse.on_collapse",
        "\"auto\" (stop for entropy-only objectives such as tent) | \"stop\" | \"warn\"",
    ),
];

/// Optional sections that are off, shown as comments so a reader sees they exist.
const OFF: &[(&str, &str)] = &[
    ("teacher", "ema = 0.999"),
    (
        "cotta",
        "weight = 1.0, views = 4, confidence_threshold = 0.9, restore = 0.01",
    ),
    ("rotation", "weight = 1.0"),
    ("jigsaw", "weight = 1.0, permutations = 4"),
    (
        "corruption",
        "weight = 1.0, corruptions = [\"noise\", \"blur\", \"contrast\", \"quantise\", \"pixelate\"]",
    ),
    (
        "inpaint",
        "weight = 1.0, patch = 4, ratio = 0.5, loss = \"l2\"",
    ),
    ("colorize", "weight = 1.0, loss = \"l2\""),
    ("feature_consistency", "weight = 1.0, distance = \"cosine\""),
];

/// The comment of `key` in `table` ("" at the top level).
pub(crate) fn doc(table: &str, key: &str) -> Option<&'static str> {
    let table = match table {
        "weak" | "strong" | "teacher_augment" => "augment",
        t => t,
    };
    let path = if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    };
    DOCS.iter().find(|(k, _)| *k == path).map(|(_, d)| *d)
}

/// A TOML float as the shortest text that reads back the same: of the f32 when the value is
/// one (every float setting is), else of the f64; always with a `.` or an exponent.
fn float_text(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let f = x as f32;
    let s = if f as f64 == x {
        format!("{f}")
    } else {
        format!("{x}")
    };
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A TOML value as text, floats rounded by [`float_text`].
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(x) => float_text(*x),
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", value_text(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `text` padded to the comment column, then `# comment`.
fn with_comment(text: &str, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("{text:<w$} # {c}\n", w = COMMENT_COLUMN - 1),
        None => format!("{text}\n"),
    }
}

/// Settings written by `toml::to_string` (`plain`) as commented TOML (see the module doc):
/// the keys in their order, each value re-read and written again rounded.
pub(crate) fn commented(plain: &str) -> String {
    let mut out = String::from(
        "# fieldtune adapt settings: every key with its value. Load with --config FILE (flags win\n\
         # over the file); a file may hold only some keys, the others come from its `recipe`.\n",
    );
    let mut table = String::new();
    for line in plain.lines() {
        let t = line.trim();
        if t.is_empty() {
            out.push('\n');
        } else if let Some(name) = t.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            table = name.to_string();
            let top = name.split('.').next().unwrap_or(name);
            out += &with_comment(t, doc("", top));
        } else if let Some((key, value)) = t.split_once(" = ") {
            let parsed: Option<toml::Value> =
                toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|mut m| m.remove("v"));
            let text = parsed.as_ref().map_or(value.to_string(), value_text);
            out += &with_comment(&format!("{key} = {text}"), doc(&table, key));
        } else {
            out += &format!("{t}\n");
        }
    }
    let absent: Vec<&(&str, &str)> = OFF
        .iter()
        .filter(|(name, _)| !plain.contains(&format!("[{name}]")))
        .collect();
    if !absent.is_empty() {
        out += "\n# Off in these settings (a section turns one on):\n";
        for (name, example) in absent {
            out += &with_comment(&format!("# [{name}] {example}"), doc("", name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_the_shortest_text_of_their_f32() {
        assert_eq!(float_text(1e-3f32 as f64), "0.001");
        assert_eq!(float_text(0.9f32 as f64), "0.9");
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(1e-8f32 as f64), "0.00000001");
        assert_eq!(float_text(0.1), "0.1");
        assert_eq!(float_text(f64::INFINITY), "inf");
    }
}
