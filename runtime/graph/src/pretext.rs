//! The settings of the pretext tasks (rotation, jigsaw, corruption, inpaint, colorize) and of
//! feature consistency, the names of the heads' parameters, and the jigsaw's permutations.
//! Re-exported by [`crate::spec`].

use serde::{Deserialize, Serialize};

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

/// How a pixel head's prediction is compared with its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PixelLoss {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    #[default]
    L2,
}

/// Masked inpainting as a pretext task (test-time training with masked autoencoders, Gandelsman
/// et al. 2022, sized for small CNNs): square patches of `patch` pixels of each unlabeled weak
/// frame are masked (set to 0, the input's mean after normalisation) with probability `ratio`,
/// drawn in the graph per step ([`crate::random`], stream `inpaint/mask`); the masked frames pass
/// through the model up to `feature`, a 4-D map whose sides divide the image's by one factor s,
/// and a decoder head (a 1x1 convolution `inpaint.weight` `[C * s * s, D, 1, 1]`,
/// `inpaint.bias`, then depth-to-space by s, as PyTorch's `pixel_shuffle`) predicts the frame;
/// the loss is the L1 or L2 error on the masked pixels only (their mean over the masked
/// elements). The head is initialised like PyTorch's `nn.Conv2d` from `TrainSpec::seed` and is
/// dropped from the adapted model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Inpaint {
    /// The feature map the decoder reads. Default (`None`): the model's last 4-D tensor whose
    /// sides (above 1) divide the image's by one factor.
    pub feature: Option<String>,
    /// Weight of the reconstruction loss (default 1).
    pub weight: f32,
    /// Side of the square patches, in pixels; it divides the image's sides (default 4).
    pub patch: usize,
    /// Probability that a patch is masked (default 0.5).
    pub ratio: f32,
    pub loss: PixelLoss,
}

impl Default for Inpaint {
    fn default() -> Self {
        Inpaint {
            feature: None,
            weight: 1.0,
            patch: 4,
            ratio: 0.5,
            loss: PixelLoss::L2,
        }
    }
}

/// Colorization as a pretext task (RGB models only): each unlabeled weak frame's luma
/// `Y = 0.299 R + 0.587 G + 0.114 B`, computed in model-input units (after normalisation),
/// replicated to the three channels, passes through the model up to `feature` (as
/// [`Inpaint::feature`]), and a decoder head (`colorize.weight` `[2 * s * s, D, 1, 1]`,
/// `colorize.bias`, depth-to-space by s) predicts the chroma `(R - Y, B - Y)`; the loss is the
/// L1 or L2 error over every pixel. Head initialised and dropped as inpaint's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Colorize {
    /// The feature map the decoder reads (as [`Inpaint::feature`]).
    pub feature: Option<String>,
    /// Weight of the chroma loss (default 1).
    pub weight: f32,
    pub loss: PixelLoss,
}

impl Default for Colorize {
    fn default() -> Self {
        Colorize {
            feature: None,
            weight: 1.0,
            loss: PixelLoss::L2,
        }
    }
}

/// Luma weights of the R, G and B channels (ITU-R BT.601).
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Names of the inpaint head's parameters.
pub const INPAINT_WEIGHT: &str = "inpaint.weight";
pub const INPAINT_BIAS: &str = "inpaint.bias";

/// Names of the colorize head's parameters.
pub const COLORIZE_WEIGHT: &str = "colorize.weight";
pub const COLORIZE_BIAS: &str = "colorize.bias";

/// Whether a train-step parameter belongs to a pretext head rather than to the model: heads
/// are never part of the adapted model.
pub fn is_head_param(name: &str) -> bool {
    [
        ROTATION_WEIGHT,
        ROTATION_BIAS,
        JIGSAW_WEIGHT,
        JIGSAW_BIAS,
        CORRUPTION_WEIGHT,
        CORRUPTION_BIAS,
        INPAINT_WEIGHT,
        INPAINT_BIAS,
        COLORIZE_WEIGHT,
        COLORIZE_BIAS,
    ]
    .contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
