//! What a train step does: batch sizes, loss terms, optimizer, which parameters train.
//! Serde-friendly so the CLI can read it from a config file.

use serde::{Deserialize, Serialize};

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

/// Which initializers train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// Every float initializer with at least one dimension that reaches the loss.
    #[default]
    All,
    /// Initializers whose names match one of these globs (`*` matches any run of characters).
    Names(Vec<String>),
}

impl Trainable {
    pub fn selects(&self, name: &str) -> bool {
        match self {
            Trainable::All => true,
            Trainable::Names(globs) => globs.iter().any(|g| glob_match(g, name)),
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
}
