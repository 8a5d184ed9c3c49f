//! What a train step does: batch sizes, loss terms, optimizer, which parameters train.
//! Serde-friendly so the CLI can read it from a config file.

use serde::{Deserialize, Serialize};

pub use crate::lower::BatchNormMode;
pub use crate::pretext::*;

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
    /// The masked-inpainting pretext task. Default off.
    pub inpaint: Option<Inpaint>,
    /// The colorization pretext task (RGB models). Default off.
    pub colorize: Option<Colorize>,
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
            inpaint: None,
            colorize: None,
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
}
