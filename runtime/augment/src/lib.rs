//! fieldtune-augment: seeded weak and strong augmentation on [`Image8`] for consistency
//! training (UDA).
//!
//! - [`WeakAugment`]: random integer shift (zero fill) and optional horizontal flip; with
//!   `max_shift = 0` and no flip it is the identity (recommended for shift-sensitive models).
//! - [`RandAugment`]: `n` ops drawn from the [`Op`] table, each with magnitude
//!   `m ~ U(0, max_magnitude)`, then a random [`ops::cutout`]. The table is mirrored by a
//!   PyTorch/PIL reference script; see [`Op`] for the exact parameter mapping.
//! - [`Identity`].
//!
//! All randomness comes from the caller's [`ChaCha8Rng`]: the same seed gives the same bytes.
//! [`augment_batch`] derives one stream per image from `(seed, index)`.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use fieldtune_frames::Image8;

pub mod ops;

/// An augmentation: a new image of the same size and channels, drawn with `rng`.
pub trait Augment: Send + Sync {
    /// Augments one image; all randomness comes from `rng`.
    fn apply(&self, img: &Image8, rng: &mut ChaCha8Rng) -> Image8;
}

/// A bad augmentation setting.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    #[error("augmentation setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The random stream for image `index` of a batch seeded with `seed`: ChaCha8 seeded from
/// `seed`, stream `index`. Streams of different indices are independent.
pub fn image_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Augments every image with its own stream [`image_rng`]`(seed, i)`, so a batch is
/// reproducible and each image's result does not depend on the others (or on the order or
/// thread they are processed in).
pub fn augment_batch(aug: &dyn Augment, imgs: &[&Image8], seed: u64) -> Vec<Image8> {
    imgs.iter()
        .enumerate()
        .map(|(i, img)| aug.apply(img, &mut image_rng(seed, i as u64)))
        .collect()
}

/// [`augment_batch`] split over `threads` scoped threads; the result does not depend on the
/// thread count (each image's generator is seeded by its index).
pub fn augment_batch_par(
    aug: &dyn Augment,
    imgs: &[&Image8],
    seed: u64,
    threads: usize,
) -> Vec<Image8> {
    let threads = threads.clamp(1, imgs.len().max(1));
    if threads == 1 {
        return augment_batch(aug, imgs, seed);
    }
    let chunk = imgs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = imgs
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, img)| {
                            aug.apply(img, &mut image_rng(seed, (c * chunk + i) as u64))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("augmentation thread panicked"))
            .collect()
    })
}

/// No change (a clone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity;

impl Augment for Identity {
    fn apply(&self, img: &Image8, _rng: &mut ChaCha8Rng) -> Image8 {
        img.clone()
    }
}

/// Weak view: integer shift `dx, dy ~ U{-max_shift..=max_shift}` (content moves right/down
/// for positive values, zero fill), then a horizontal flip with probability 0.5 when
/// `flip_horizontal`. Draw order: `dx`, `dy`, flip. The default is the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeakAugment {
    pub max_shift: u32,
    pub flip_horizontal: bool,
}

impl Augment for WeakAugment {
    fn apply(&self, img: &Image8, rng: &mut ChaCha8Rng) -> Image8 {
        if self.max_shift == 0 && !self.flip_horizontal {
            return img.clone();
        }
        let s = self.max_shift as i64;
        let dx = rng.gen_range(-s..=s);
        let dy = rng.gen_range(-s..=s);
        let out = ops::translate(img, dx, dy);
        if self.flip_horizontal && rng.gen_bool(0.5) {
            ops::flip_horizontal(&out)
        } else {
            out
        }
    }
}

/// Strong view: RandAugment with an always-on cutout. Per image: `n` times, pick an [`Op`]
/// uniformly (with replacement) and a magnitude `m ~ U(0, max_magnitude)` and apply
/// [`Op::apply`]; then [`random_cutout`] with `cutout` as the maximum side fraction.
/// Out-of-range settings are clamped when applied; [`RandAugment::validate`] reports them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandAugment {
    /// Ops per image (default 2).
    pub n: usize,
    /// Largest magnitude, in 0..=1 (default 1.0).
    pub max_magnitude: f32,
    /// Largest cutout side as a fraction of `min(width, height)`, in 0..=1 (default 0.5).
    pub cutout: f32,
}

impl Default for RandAugment {
    fn default() -> Self {
        RandAugment {
            n: 2,
            max_magnitude: 1.0,
            cutout: 0.5,
        }
    }
}

/// Most ops per image [`RandAugment::validate`] accepts.
pub const MAX_OPS_PER_IMAGE: usize = 16;

fn unit(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

impl RandAugment {
    /// Checks `n <= 16` and `max_magnitude`, `cutout` in 0..=1.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if self.n > MAX_OPS_PER_IMAGE {
            return Err(AugmentError::Invalid {
                field: "n",
                reason: format!("at most {MAX_OPS_PER_IMAGE} ops per image, got {}", self.n),
            });
        }
        for (field, v) in [
            ("max_magnitude", self.max_magnitude),
            ("cutout", self.cutout),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(AugmentError::Invalid {
                    field,
                    reason: format!("must be in 0..=1, got {v}"),
                });
            }
        }
        Ok(())
    }
}

impl Augment for RandAugment {
    fn apply(&self, img: &Image8, rng: &mut ChaCha8Rng) -> Image8 {
        let max_m = unit(self.max_magnitude);
        let mut out: Option<Image8> = None;
        for _ in 0..self.n.min(MAX_OPS_PER_IMAGE) {
            let op = Op::ALL[rng.gen_range(0..Op::ALL.len())];
            let m = rng.gen::<f32>() * max_m;
            out = Some(op.apply(out.as_ref().unwrap_or(img), m, rng));
        }
        random_cutout(out.as_ref().unwrap_or(img), self.cutout, rng)
    }
}

/// Cutout with a random square: `side = round(u * max_fraction * min(w, h))`, `u ~ U(0, 1)`,
/// centre `(cx, cy)` uniform over the pixels, fill [`ops::CUTOUT_FILL`] (127), clipped at the
/// borders (see [`ops::cutout`]). Draw order: `u`, `cx`, `cy`.
pub fn random_cutout(img: &Image8, max_fraction: f32, rng: &mut ChaCha8Rng) -> Image8 {
    if img.width == 0 || img.height == 0 {
        return img.clone();
    }
    let u: f32 = rng.gen();
    let side = (u * unit(max_fraction) * img.width.min(img.height) as f32).round() as u32;
    let cx = rng.gen_range(0..img.width) as i64;
    let cy = rng.gen_range(0..img.height) as i64;
    ops::cutout(img, cx, cy, side, ops::CUTOUT_FILL)
}

/// The RandAugment op table. With magnitude `m` in 0..=1 and, for signed ops, a random sign
/// `±` (`-` with probability 0.5):
///
/// | op | parameter |
/// |---|---|
/// | `AutoContrast` | none ([`ops::autocontrast`]) |
/// | `Equalize` | none ([`ops::equalize`]) |
/// | `Rotate` | `±30° * m` counter-clockwise ([`ops::rotate`]) |
/// | `ShearX`, `ShearY` | `s = ±0.3 * m` ([`ops::shear_x`], [`ops::shear_y`]) |
/// | `TranslateX`, `TranslateY` | `±round(0.3 * m * width / height)` px ([`ops::translate`]) |
/// | `Contrast`, `Brightness`, `Sharpness` | factor `1 ± 0.9 * m` ([`ops::contrast`], ...) |
/// | `Posterize` | `bits = 8 - round(4 * m)` ([`ops::posterize`]) |
/// | `Solarize` | `threshold = 256 - round(256 * m)` ([`ops::solarize`]) |
///
/// `round` is half away from zero. At `m = 0` every op except `AutoContrast` and `Equalize`
/// (which have no magnitude) is the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    AutoContrast,
    Equalize,
    Rotate,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Contrast,
    Brightness,
    Sharpness,
    Posterize,
    Solarize,
}

impl Op {
    /// The table, in the order RandAugment indexes it.
    pub const ALL: [Op; 12] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Rotate,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Contrast,
        Op::Brightness,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
    ];

    /// Snake-case name (`"shear_x"`, ...), as the reference script names it.
    pub fn name(self) -> &'static str {
        match self {
            Op::AutoContrast => "autocontrast",
            Op::Equalize => "equalize",
            Op::Rotate => "rotate",
            Op::ShearX => "shear_x",
            Op::ShearY => "shear_y",
            Op::TranslateX => "translate_x",
            Op::TranslateY => "translate_y",
            Op::Contrast => "contrast",
            Op::Brightness => "brightness",
            Op::Sharpness => "sharpness",
            Op::Posterize => "posterize",
            Op::Solarize => "solarize",
        }
    }

    /// The op called `name` (see [`Op::name`]).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Whether the op draws a random sign.
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            Op::Rotate
                | Op::ShearX
                | Op::ShearY
                | Op::TranslateX
                | Op::TranslateY
                | Op::Contrast
                | Op::Brightness
                | Op::Sharpness
        )
    }

    /// Applies the op at magnitude `m` (clamped to 0..=1); signed ops draw their sign with one
    /// `rng.gen_bool(0.5)` (`true` = negative), the others draw nothing.
    pub fn apply(self, img: &Image8, m: f32, rng: &mut impl Rng) -> Image8 {
        let negative = self.is_signed() && rng.gen_bool(0.5);
        self.apply_signed(img, m, negative)
    }

    /// Applies the op at magnitude `m` (clamped to 0..=1) with a given sign; deterministic.
    pub fn apply_signed(self, img: &Image8, m: f32, negative: bool) -> Image8 {
        let m = unit(m);
        let sign = if negative { -1.0 } else { 1.0 };
        let factor = 1.0 + sign * 0.9 * m;
        let shift = |len: u32| (sign * (0.3 * m * len as f32).round()) as i64;
        match self {
            Op::AutoContrast => ops::autocontrast(img),
            Op::Equalize => ops::equalize(img),
            Op::Rotate => ops::rotate(img, sign * 30.0 * m),
            Op::ShearX => ops::shear_x(img, sign * 0.3 * m),
            Op::ShearY => ops::shear_y(img, sign * 0.3 * m),
            Op::TranslateX => ops::translate(img, shift(img.width), 0),
            Op::TranslateY => ops::translate(img, 0, shift(img.height)),
            Op::Contrast => ops::contrast(img, factor),
            Op::Brightness => ops::brightness(img, factor),
            Op::Sharpness => ops::sharpness(img, factor),
            Op::Posterize => ops::posterize(img, 8 - (4.0 * m).round() as u8),
            Op::Solarize => ops::solarize(img, 256 - (256.0 * m).round() as u16),
        }
    }
}

/// An augmentation chosen in a config file: `kind = "identity" | "weak" | "randaugment"`
/// plus that kind's fields, e.g. `{ kind = "weak", max_shift = 2 }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AugmentConfig {
    Identity,
    Weak(WeakAugment),
    RandAugment(RandAugment),
}

impl AugmentConfig {
    /// The configured augmentation, after validating its settings.
    pub fn build(&self) -> Result<Box<dyn Augment>, AugmentError> {
        Ok(match *self {
            AugmentConfig::Identity => Box::new(Identity),
            AugmentConfig::Weak(w) => Box::new(w),
            AugmentConfig::RandAugment(r) => {
                r.validate()?;
                Box::new(r)
            }
        })
    }
}

#[cfg(test)]
mod tests;
