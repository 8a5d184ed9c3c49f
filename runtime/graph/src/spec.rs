//! What a train step does: batch sizes, loss terms, optimizer, which parameters train.
//! Serde-friendly so the CLI can read it from a config file.

use serde::{Deserialize, Serialize};

pub use crate::lower::BatchNormMode;

/// Training-signal annealing schedule for the labeled cross-entropy (Xie et al. 2019,
/// UDA §3.3): labeled examples whose correct-class probability exceeds a threshold that
/// rises from 1/K to 1 over `tsa_steps` are left out of the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tsa {
    #[default]
    None,
    Linear,
    Log,
    Exp,
}

/// The UDA objective with its optional information-maximisation terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdaLoss {
    /// Weight of the cross-entropy on the labeled batch.
    pub ce_weight: f32,
    /// Training-signal annealing schedule for the labeled term.
    pub tsa: Tsa,
    /// Steps over which the TSA threshold rises to 1.
    pub tsa_steps: usize,
    /// lambda: weight of KL(sharpen(p(x_weak), T) || p(x_strong)).
    pub consistency_weight: f32,
    /// T: sharpening temperature of the weak-view target (1 = no sharpening).
    pub sharpen_temperature: f32,
    /// beta: unlabeled examples whose weak-view max probability is not above this are masked.
    pub confidence_threshold: f32,
    /// Weight of the mean per-example entropy of the weak-view prediction.
    pub entropy_weight: f32,
    /// Weight of minus the entropy of the batch's mean weak-view prediction (class
    /// diversity). With `entropy_weight` this is information maximisation.
    pub diversity_weight: f32,
    /// Weight of FixMatch's term: cross-entropy of the strong view against the weak view's
    /// hard pseudo-label (argmax), on examples whose weak-view confidence exceeds
    /// `pseudo_label_threshold`.
    pub pseudo_label_weight: f32,
    /// FixMatch's confidence threshold (tau).
    pub pseudo_label_threshold: f32,
    /// mu of FedProx's proximal term `mu/2 * ||w - w0||^2` over the trained parameters, `w0`
    /// their values in the model compiled (0: none). Applied as its exact gradient.
    pub proximal_mu: f32,
}

impl Default for UdaLoss {
    fn default() -> Self {
        UdaLoss {
            ce_weight: 1.0,
            tsa: Tsa::None,
            tsa_steps: 300,
            consistency_weight: 1.0,
            sharpen_temperature: 0.4,
            confidence_threshold: 0.8,
            entropy_weight: 1.0,
            diversity_weight: 1.0,
            pseudo_label_weight: 0.0,
            pseudo_label_threshold: 0.95,
            proximal_mu: 0.0,
        }
    }
}

impl UdaLoss {
    /// Whether the weak view needs gradients (the entropy terms read it).
    pub fn weak_view_trains(&self) -> bool {
        self.entropy_weight != 0.0 || self.diversity_weight != 0.0
    }
}

/// The optimizer, with PyTorch's update rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Optimizer {
    /// `torch.optim.AdamW` (decoupled weight decay; with 0 decay it is Adam).
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    /// `torch.optim.SGD` with momentum (dampening 0), L2 weight decay, optional Nesterov.
    Sgd {
        momentum: f32,
        weight_decay: f32,
        nesterov: bool,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Which initializers train. In a config file: `"all"`, `"bn"`, `"affine"`, `"head"`,
/// `{ last = K }` or `{ names = ["glob", ...] }`; on the command line
/// `all|bn|affine|head|last:K|GLOB[,GLOB..]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// Every float initializer with at least one dimension that reaches the loss.
    #[default]
    All,
    /// The scale and bias of every BatchNormalization (TENT-style). On a model without
    /// BatchNormalization (folded into the convolutions at export) it is [`Trainable::Affine`].
    Bn,
    /// A per-channel scale and shift inserted after each Conv that no BatchNormalization
    /// follows, initialised to the identity and folded back into the convolution when the
    /// adapted model is written (see [`crate::affine`]).
    Affine,
    /// The last block (see [`Trainable::Last`]): the classifier.
    Head,
    /// The parameters of the last K blocks. A block is a parameter name up to and including
    /// its first all-digit component (`features.17.conv.0.weight` -> `features.17`,
    /// `layer4.1.conv1.weight` -> `layer4.1`), or up to its last `.` when it has none
    /// (`fc2.weight` -> `fc2`); blocks are ordered by their first use in the graph.
    Last(usize),
    /// Initializers whose names match one of these globs (`*` matches any run of characters).
    Names(Vec<String>),
}

impl Trainable {
    /// Parses the command-line form `all|bn|affine|head|last:K|GLOB[,GLOB..]`.
    pub fn parse(s: &str) -> std::result::Result<Trainable, String> {
        Ok(match s {
            "all" => Trainable::All,
            "bn" => Trainable::Bn,
            "affine" => Trainable::Affine,
            "head" => Trainable::Head,
            _ => match s.strip_prefix("last:") {
                Some(k) => match k.parse::<usize>() {
                    Ok(k) if k > 0 => Trainable::Last(k),
                    _ => return Err(format!("'{s}': K in last:K must be a positive integer")),
                },
                None if s.trim().is_empty() => return Err("empty trainable selection".into()),
                None => Trainable::Names(s.split(',').map(|g| g.trim().to_string()).collect()),
            },
        })
    }

    /// The block a parameter name belongs to (see [`Trainable::Last`]).
    pub fn block_of(name: &str) -> &str {
        let mut end = 0;
        for part in name.split('.') {
            end += part.len();
            if !part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()) {
                return &name[..end];
            }
            end += 1;
        }
        name.rfind('.').map(|i| &name[..i]).unwrap_or(name)
    }

    /// The selected names among `candidates`, given the BatchNormalization affine
    /// parameters and the candidates in order of first use. `bn` on a model without
    /// BatchNormalization, and `affine`, select the inserted per-channel affine parameters.
    pub fn select(&self, ordered: &[String], bn_affine: &[String]) -> Vec<String> {
        match self {
            Trainable::All => ordered.to_vec(),
            Trainable::Bn if !bn_affine.is_empty() => ordered
                .iter()
                .filter(|n| bn_affine.contains(n))
                .cloned()
                .collect(),
            Trainable::Bn | Trainable::Affine => ordered
                .iter()
                .filter(|n| crate::affine::is_affine_param(n))
                .cloned()
                .collect(),
            Trainable::Names(globs) => ordered
                .iter()
                .filter(|n| globs.iter().any(|g| glob_match(g, n)))
                .cloned()
                .collect(),
            Trainable::Head | Trainable::Last(_) => {
                let k = if let Trainable::Last(k) = self { *k } else { 1 };
                let mut blocks: Vec<&str> = Vec::new();
                for n in ordered {
                    let blk = Self::block_of(n);
                    if !blocks.contains(&blk) {
                        blocks.push(blk);
                    }
                }
                let keep = &blocks[blocks.len().saturating_sub(k)..];
                ordered
                    .iter()
                    .filter(|n| keep.contains(&Self::block_of(n)))
                    .cloned()
                    .collect()
            }
        }
    }
}

/// `*`-only glob matching.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(k) => rest = &rest[k + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// A mean teacher (Tarvainen & Valpola 2017; CoTTA's teacher): a second copy of the
/// trainable parameters, `teacher.<name>`, gives the weak-view targets and follows the
/// student after every step inside the train-step graph:
/// `teacher = ema * teacher + (1 - ema) * student_after_step`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanTeacher {
    pub ema: f32,
}

/// CoTTA (Wang et al. 2022, "Continual Test-Time Domain Adaptation") on top of the train
/// step: augmentation-averaged teacher targets for a soft cross-entropy on the student's
/// strong-view prediction, and stochastic restore of the trained parameters.
///
/// The target of unlabeled example i is the teacher's weak-view softmax when its confidence
/// (max probability) is at least `confidence_threshold`, else the mean of the teacher's
/// softmax over the `views` augmented views in the `x_teacher_aug` input ([views * B, C, H,
/// W], view-major: row `v * B + i` is view v of example i). Unlike CoTTA's code, which
/// decides per batch from the source model's mean confidence, the choice is per example from
/// the teacher's confidence. The teacher is the mean teacher when `TrainSpec::teacher` is set,
/// else the student without gradients. In the augmented-view pass BatchNormalization (in
/// `train` mode) uses the statistics of all `views * B` images at once.
///
/// Restore: after the optimizer update (and after the teacher's EMA, which sees the updated
/// student, as in CoTTA), each element of each trained parameter is reset to its value in
/// the source model (kept in the graph as a constant) with probability `restore`, from the
/// in-graph generator ([`crate::random`], stream `restore/<name>`). Known limit: tract 0.23.9
/// fails to load the restore streams of parameters with a few hundred thousand elements
/// (ONNX Runtime runs them); `restore = 0` avoids them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cotta {
    /// Weight of the soft cross-entropy -sum(target * log p_student(x_strong)) (default 1).
    pub weight: f32,
    /// N, augmented teacher views per unlabeled example (default 4; CoTTA uses 32).
    pub views: usize,
    /// p_th: below this weak-view confidence the augmentation average is the target
    /// (default 0.9).
    pub confidence_threshold: f32,
    /// Probability with which each parameter element returns to its source value after a
    /// step (default 0.01; 0 turns restore off).
    pub restore: f32,
}

impl Default for Cotta {
    fn default() -> Self {
        Cotta {
            weight: 1.0,
            views: 4,
            confidence_threshold: 0.9,
            restore: 0.01,
        }
    }
}

/// Rotation prediction as a self-supervised pretext task (test-time training, Sun et al.
/// 2020): the unlabeled weak view is rotated by 0, 90, 180 and 270 degrees inside the graph
/// (square images only), passed through the model up to `feature`, and a linear head
/// `rotation.weight` `[4, D]`, `rotation.bias` `[4]` predicts the rotation; the loss is the
/// cross-entropy over the 4 rotation classes. The head always trains (the trainable selection
/// applies to the model's parameters); it is initialised like PyTorch's `nn.Linear` from
/// `TrainSpec::seed` and is not part of the adapted inference model (dropped on export).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rotation {
    /// The model tensor the head reads (a 4-D feature map is globally average-pooled, other
    /// ranks flattened). Default (`None`): the input of the model's last Gemm or MatMul.
    pub feature: Option<String>,
    /// Weight of the rotation cross-entropy (default 1).
    pub weight: f32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            feature: None,
            weight: 1.0,
        }
    }
}

/// Names of the rotation head's parameters.
pub const ROTATION_WEIGHT: &str = "rotation.weight";
pub const ROTATION_BIAS: &str = "rotation.bias";

/// How [`FeatureConsistency`] compares the two views' feature rows (each row L2-normalised
/// first, `x / sqrt(sum x^2 + 1e-8)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDistance {
    /// `1 - cos(weak, strong)` per example.
    #[default]
    Cosine,
    /// Squared L2 distance of the normalised rows (`2 - 2 cos` up to the epsilon).
    L2,
}

/// Feature consistency: the strong view's `feature` rows (with gradients) are pulled towards
/// the weak view's (no gradient: the student's weak view, or the mean teacher's when there is
/// one), as UDA pulls the logits; a 4-D feature map is globally average-pooled (the views may
/// be shifted), other ranks flattened. The term `loss_feature_consistency` (mean over the
/// unlabeled batch) is added with `weight`; it adds no parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConsistency {
    /// The model tensor compared. Default (`None`): the input of the model's last Gemm or
    /// MatMul (the classifier's input).
    pub feature: Option<String>,
    /// Weight of the term (default 1).
    pub weight: f32,
    pub distance: FeatureDistance,
}

impl Default for FeatureConsistency {
    fn default() -> Self {
        FeatureConsistency {
            feature: None,
            weight: 1.0,
            distance: FeatureDistance::Cosine,
        }
    }
}

/// Jigsaw puzzles as a pretext task (Noroozi & Favaro 2016, 2x2 grid): the unlabeled weak
/// view is cut into 2x2 tiles (even sides only) and example i gets permutation `i mod P` of
/// the `permutations` P chosen from the seed ([`jigsaw_permutations`]); the tiles are
/// rearranged inside the graph (Slice/Concat), the puzzles pass through the model up to
/// `feature` and a linear head `jigsaw.weight` `[P, D]`, `jigsaw.bias` `[P]` predicts the
/// permutation (cross-entropy over P). The head is initialised like rotation's and dropped
/// from the adapted model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Jigsaw {
    /// The model tensor the head reads (as [`Rotation::feature`]).
    pub feature: Option<String>,
    /// Weight of the jigsaw cross-entropy (default 1).
    pub weight: f32,
    /// P, permutations of the 4 tiles told apart (2..=24, default 4).
    pub permutations: usize,
}

impl Default for Jigsaw {
    fn default() -> Self {
        Jigsaw {
            feature: None,
            weight: 1.0,
            permutations: 4,
        }
    }
}

/// A corruption of [`CorruptionTask`], applied in the graph to whole images in model-input
/// units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptionKind {
    /// Uniform noise in +-0.3 times the image's range (max - min), drawn per step in the
    /// graph ([`crate::random`], stream `corruption/noise`).
    Noise,
    /// A 3x3 box blur per channel (zero padding).
    Blur,
    /// Contrast cut to 0.3 around the image's mean.
    Contrast,
    /// JPEG-like quantisation: 4 levels between the image's min and max
    /// (`lo + floor(4 t) / 4 * (hi - lo)`, `t = (x - lo) / (hi - lo + 1e-6)`).
    Quantise,
    /// 2x2 pixelation (average of each 2x2 block, even sides only).
    Pixelate,
}

impl CorruptionKind {
    pub const ALL: [CorruptionKind; 5] = [
        CorruptionKind::Noise,
        CorruptionKind::Blur,
        CorruptionKind::Contrast,
        CorruptionKind::Quantise,
        CorruptionKind::Pixelate,
    ];
}

/// Corrupted-image classification as a pretext task: example i of the unlabeled weak view
/// gets class `i mod (K + 1)`: 0 leaves it as it is, k applies `corruptions[k - 1]` (in the
/// graph); the images pass through the model up to `feature` and a linear head
/// `corruption.weight` `[K + 1, D]`, `corruption.bias` `[K + 1]` predicts the class. The head
/// is initialised like rotation's and dropped from the adapted model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorruptionTask {
    /// The model tensor the head reads (as [`Rotation::feature`]).
    pub feature: Option<String>,
    /// Weight of the cross-entropy (default 1).
    pub weight: f32,
    /// The K corruptions told apart from each other and from none (default all five).
    pub corruptions: Vec<CorruptionKind>,
}

impl Default for CorruptionTask {
    fn default() -> Self {
        CorruptionTask {
            feature: None,
            weight: 1.0,
            corruptions: CorruptionKind::ALL.to_vec(),
        }
    }
}

/// Names of the corruption head's parameters.
pub const CORRUPTION_WEIGHT: &str = "corruption.weight";
pub const CORRUPTION_BIAS: &str = "corruption.bias";

/// Names of the jigsaw head's parameters.
pub const JIGSAW_WEIGHT: &str = "jigsaw.weight";
pub const JIGSAW_BIAS: &str = "jigsaw.bias";

/// Whether a train-step parameter belongs to a pretext head (rotation, jigsaw, corruption) rather than
/// to the model: heads are never part of the adapted model.
pub fn is_head_param(name: &str) -> bool {
    [
        ROTATION_WEIGHT,
        ROTATION_BIAS,
        JIGSAW_WEIGHT,
        JIGSAW_BIAS,
        CORRUPTION_WEIGHT,
        CORRUPTION_BIAS,
    ]
    .contains(&name)
}

/// P permutations of the 4 tiles of a 2x2 grid (tile t at row t / 2, column t % 2; entry j
/// of a permutation is the source tile placed at position j) with a maximal minimum Hamming
/// distance, chosen greedily as Noroozi & Favaro do: the first uniformly from the seed, each
/// next one among those farthest (in minimum Hamming distance) from the chosen ones, ties
/// broken from the seed (stream `jigsaw/permutations`). The identity is one candidate like
/// any other. `p` is clamped to 1..=24.
pub fn jigsaw_permutations(seed: u64, p: usize) -> Vec<[usize; 4]> {
    let mut all = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let q = [a, b, c, d];
                    if (0..4).all(|i| (0..i).all(|j| q[i] != q[j])) {
                        all.push(q);
                    }
                }
            }
        }
    }
    let p = p.clamp(1, all.len());
    let u = crate::random::reference(seed, "jigsaw/permutations", 0, p);
    let pick = |n: usize, k: usize| ((u[k] * n as f32) as usize).min(n - 1);
    let mut chosen = vec![all.remove(pick(all.len(), 0))];
    for k in 1..p {
        let dist = |q: &[usize; 4]| {
            chosen
                .iter()
                .map(|c| (0..4).filter(|&i| c[i] != q[i]).count())
                .min()
                .unwrap_or(4)
        };
        let best = all.iter().map(dist).max().unwrap_or(0);
        let ties: Vec<usize> = (0..all.len()).filter(|&i| dist(&all[i]) == best).collect();
        chosen.push(all.remove(ties[pick(ties.len(), k)]));
    }
    chosen
}

/// Name of the teacher copy of a parameter.
pub fn teacher_name(param: &str) -> String {
    format!("teacher.{param}")
}

/// Names of the train step's batch and hyper-parameter inputs.
pub mod inputs {
    pub const X_LABELED: &str = "x_labeled";
    pub const Y_LABELED: &str = "y_labeled";
    pub const X_WEAK: &str = "x_weak";
    pub const X_STRONG: &str = "x_strong";
    /// CoTTA's augmented views of the unlabeled batch for the teacher, [N * Bu, C, H, W]
    /// (view-major).
    pub const X_TEACHER_AUG: &str = "x_teacher_aug";
    pub const LR: &str = "lr";
    pub const STEP: &str = "step";
}

/// Output name of a looped tensor's next value.
pub fn next_name(name: &str) -> String {
    format!("new.{name}")
}

/// Everything `compile_train_step` needs besides the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// Name of the model's image input (NCHW float).
    pub input: String,
    /// Name of the model's logits output.
    pub output: String,
    /// Labeled examples per step (0: no labeled term).
    pub batch_labeled: usize,
    /// Unlabeled examples per step (each seen in a weak and a strong view).
    pub batch_unlabeled: usize,
    pub loss: UdaLoss,
    pub optimizer: Optimizer,
    pub trainable: Trainable,
    /// BatchNormalization in the train step: batch statistics (`train`) or running ones
    /// (`frozen`).
    pub batchnorm: BatchNormMode,
    /// Also output each parameter's gradient as `grad.<name>` (for checks and debugging).
    pub emit_gradients: bool,
    /// Weak-view targets from a mean teacher instead of the student itself.
    pub teacher: Option<MeanTeacher>,
    /// Dropout in training form in the gradient pass (a mask drawn in the graph from `seed`
    /// and the `step` input, see [`crate::random`]); the no-gradient passes (weak view,
    /// teacher) keep the inference form. Default false: Dropout is the identity.
    pub dropout: bool,
    /// Seed of the in-graph randomness (Dropout masks, CoTTA's restore, the rotation head's
    /// initial values). Default 0.
    pub seed: u64,
    /// CoTTA's augmentation-averaged targets and stochastic restore (needs the
    /// `x_teacher_aug` input). Default off.
    pub cotta: Option<Cotta>,
    /// The rotation-prediction pretext task. Default off.
    pub rotation: Option<Rotation>,
    /// Weak/strong agreement in an intermediate feature tensor. Default off.
    pub feature_consistency: Option<FeatureConsistency>,
    /// The jigsaw pretext task. Default off.
    pub jigsaw: Option<Jigsaw>,
    /// The corrupted-image classification pretext task. Default off.
    pub corruption: Option<CorruptionTask>,
    /// The engine the step is tuned for (`portable`: standard ops only, the default).
    pub target: crate::target::Target,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            input: "input".into(),
            output: "logits".into(),
            batch_labeled: 32,
            batch_unlabeled: 64,
            loss: UdaLoss::default(),
            optimizer: Optimizer::default(),
            trainable: Trainable::All,
            batchnorm: BatchNormMode::Train,
            emit_gradients: false,
            teacher: None,
            dropout: false,
            seed: 0,
            cotta: None,
            rotation: None,
            feature_consistency: None,
            jigsaw: None,
            corruption: None,
            target: crate::target::Target::Portable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("fc*", "fc1.weight"));
        assert!(glob_match("*.bias", "conv1.bias"));
        assert!(glob_match("conv*weight", "conv2.weight"));
        assert!(!glob_match("conv*weight", "conv2.bias"));
        assert!(glob_match("fc2.weight", "fc2.weight"));
        assert!(!glob_match("fc2", "fc2.weight"));
    }

    #[test]
    fn blocks_and_selections() {
        assert_eq!(
            Trainable::block_of("features.17.conv.0.weight"),
            "features.17"
        );
        assert_eq!(Trainable::block_of("layer4.1.conv1.weight"), "layer4.1");
        assert_eq!(Trainable::block_of("fc2.weight"), "fc2");
        assert_eq!(Trainable::block_of("bias"), "bias");
        let ordered: Vec<String> = [
            "features.0.0.weight",
            "features.0.1.weight",
            "features.1.conv.weight",
            "classifier.1.weight",
            "classifier.1.bias",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let bn = vec!["features.0.1.weight".to_string()];
        assert_eq!(Trainable::Head.select(&ordered, &bn), ordered[3..].to_vec());
        assert_eq!(
            Trainable::Last(2).select(&ordered, &bn),
            ordered[2..].to_vec()
        );
        assert_eq!(Trainable::Last(9).select(&ordered, &bn), ordered);
        assert_eq!(Trainable::Bn.select(&ordered, &bn), bn);
        assert_eq!(Trainable::parse("last:2"), Ok(Trainable::Last(2)));
        assert_eq!(Trainable::parse("bn"), Ok(Trainable::Bn));
        assert_eq!(Trainable::parse("affine"), Ok(Trainable::Affine));
        let folded = vec![
            "c1.weight".to_string(),
            "c1.weight.affine_scale".to_string(),
            "c1.weight.affine_shift".to_string(),
        ];
        assert_eq!(Trainable::Bn.select(&folded, &[]), folded[1..].to_vec());
        assert_eq!(Trainable::Affine.select(&folded, &[]), folded[1..].to_vec());
        assert_eq!(
            Trainable::parse("fc*,*.bias"),
            Ok(Trainable::Names(vec!["fc*".into(), "*.bias".into()]))
        );
        assert!(Trainable::parse("last:0").is_err());
        assert!(Trainable::parse("last:x").is_err());
    }

    #[test]
    fn jigsaw_permutations_are_distinct_far_apart_and_seeded() {
        for p in [2, 4, 8, 24] {
            let ps = jigsaw_permutations(7, p);
            assert_eq!(ps.len(), p);
            for (i, a) in ps.iter().enumerate() {
                let mut s = *a;
                s.sort();
                assert_eq!(s, [0, 1, 2, 3], "{a:?} is not a permutation");
                for b in &ps[..i] {
                    let d = (0..4).filter(|&k| a[k] != b[k]).count();
                    // Up to P = 4 the greedy set is a Latin square: every two differ in
                    // all 4 places (a Latin rectangle always extends); beyond, at least 2.
                    assert!(d >= if p <= 4 { 4 } else { 2 }, "{a:?} vs {b:?} (P {p})");
                }
            }
        }
        assert_eq!(jigsaw_permutations(7, 4), jigsaw_permutations(7, 4));
        assert_ne!(jigsaw_permutations(7, 4), jigsaw_permutations(8, 4));
    }
}
