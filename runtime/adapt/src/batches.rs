//! Training batches. Each step's batch (labeled anchors with their weak view, unlabeled
//! frames with a weak and a strong view) is a pure function of the run seed and the step
//! number, given that steps are drawn in order. [`prefetch`] prepares step k+1 on its own
//! thread while step k runs, so augmentation stays off the train step's critical path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc;

use fieldtune_augment::{augment_batch_par, Augment};
use fieldtune_frames::{to_tensor, Image8, ModelConfig};
use fieldtune_graph::inputs;
use fieldtune_tensor::{st, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{AdaptError, Result};
use crate::fsutil::atomic_write;
use crate::recipe::AdaptConfig;

/// The images adaptation learns from, and optionally a labeled set to score progress.
pub struct AdaptData<'a> {
    pub labeled: &'a [Image8],
    pub labels: &'a [usize],
    pub unlabeled: &'a [Image8],
    pub eval: Option<(&'a [Image8], &'a [usize])>,
}

/// One step's input tensors, named as the train step's inputs (`x_labeled`, `y_labeled`,
/// `x_weak`, `x_strong`, and CoTTA's `x_teacher_aug`; the labeled pair only when the recipe
/// has a labeled batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub step: usize,
    pub feeds: Vec<(&'static str, Tensor)>,
}

/// Draws indices epoch by epoch (a fresh permutation when one runs out).
pub struct EpochSampler {
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

impl EpochSampler {
    pub fn new(len: usize, seed: u64) -> EpochSampler {
        let mut s = EpochSampler {
            order: (0..len).collect(),
            pos: len,
            rng: ChaCha8Rng::seed_from_u64(seed),
        };
        s.reshuffle();
        s
    }

    fn reshuffle(&mut self) {
        self.order.shuffle(&mut self.rng);
        self.pos = 0;
    }

    pub fn next(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos == self.order.len() {
                self.reshuffle();
            }
            out.push(self.order[self.pos]);
            self.pos += 1;
        }
        out
    }
}

/// Mixes a run seed, a step and a stream into one augmentation seed.
pub(crate) fn mix(seed: u64, step: u64, stream: u64) -> u64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Keeps the first `max` examples of each class (input order).
pub fn cap_per_class(labels: &[usize], max: usize) -> Vec<usize> {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    (0..labels.len())
        .filter(|&i| {
            let c = seen.entry(labels[i]).or_default();
            *c += 1;
            *c <= max
        })
        .collect()
}

/// Samples and augments the batches of one run, step after step.
pub struct BatchMaker<'a> {
    model: &'a ModelConfig,
    labeled: &'a [Image8],
    labels: &'a [usize],
    unlabeled: &'a [Image8],
    keep: Vec<usize>,
    batch_labeled: usize,
    batch_unlabeled: usize,
    seed: u64,
    threads: usize,
    weak: Box<dyn Augment>,
    strong: Box<dyn Augment>,
    /// CoTTA's teacher views.
    teacher_aug: Option<TeacherViews>,
    lab_sampler: EpochSampler,
    unl_sampler: EpochSampler,
    next_step: usize,
}

/// CoTTA's augmented teacher views (`x_teacher_aug`): the augmentation and views per frame.
pub(crate) struct TeacherViews {
    aug: Box<dyn Augment>,
    views: usize,
}

impl TeacherViews {
    /// The recipe's teacher views, when it has a `[cotta]` section.
    pub(crate) fn from_config(cfg: &AdaptConfig) -> Result<Option<TeacherViews>> {
        Ok(match &cfg.cotta {
            Some(c) => Some(TeacherViews {
                aug: cfg.teacher_augment.build()?,
                views: c.views,
            }),
            None => None,
        })
    }

    /// Step `step`'s views of `imgs`, view-major: row v * B + i is view v of frame i.
    pub(crate) fn make(
        &self,
        imgs: &[&Image8],
        seed: u64,
        step: u64,
        threads: usize,
    ) -> Vec<Image8> {
        let mut all = Vec::with_capacity(self.views * imgs.len());
        for v in 0..self.views as u64 {
            all.extend(augment_batch_par(
                self.aug.as_ref(),
                imgs,
                mix(seed, step, 6 + v),
                threads,
            ));
        }
        all
    }
}

impl<'a> BatchMaker<'a> {
    /// Checks the data against the recipe and the model's class count.
    pub fn new(
        model: &'a ModelConfig,
        cfg: &AdaptConfig,
        data: &AdaptData<'a>,
    ) -> Result<BatchMaker<'a>> {
        let k = model.classes.len();
        if let Some(&bad) = data.labels.iter().find(|&&l| l >= k) {
            return Err(AdaptError::Mismatch {
                what: "labels".into(),
                reason: format!("label {bad} but the model has {k} classes"),
            });
        }
        let keep = cap_per_class(data.labels, cfg.max_labeled_per_class);
        if cfg.batch_labeled > 0 && keep.is_empty() {
            return Err(AdaptError::Mismatch {
                what: "labeled anchors".into(),
                reason: "the recipe needs labeled anchors and none were given".into(),
            });
        }
        if data.unlabeled.is_empty() {
            return Err(AdaptError::Mismatch {
                what: "unlabeled frames".into(),
                reason: "none were given".into(),
            });
        }
        Ok(BatchMaker {
            model,
            labeled: data.labeled,
            labels: data.labels,
            unlabeled: data.unlabeled,
            lab_sampler: EpochSampler::new(keep.len(), mix(cfg.seed, 0, 1)),
            unl_sampler: EpochSampler::new(data.unlabeled.len(), mix(cfg.seed, 0, 2)),
            keep,
            batch_labeled: cfg.batch_labeled,
            batch_unlabeled: cfg.batch_unlabeled,
            seed: cfg.seed,
            threads: cfg.augment_threads.max(1),
            weak: cfg.weak.build()?,
            strong: cfg.strong.build()?,
            teacher_aug: TeacherViews::from_config(cfg)?,
            next_step: 1,
        })
    }

    /// The batch of the next step (1-based, in order).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let k = self.next_step;
        self.next_step += 1;
        let s = k as u64;
        let mut feeds = Vec::with_capacity(4);
        if self.batch_labeled > 0 {
            let idx: Vec<usize> = self
                .lab_sampler
                .next(self.batch_labeled)
                .into_iter()
                .map(|i| self.keep[i])
                .collect();
            let imgs: Vec<&Image8> = idx.iter().map(|&i| &self.labeled[i]).collect();
            let views = augment_batch_par(self.weak.as_ref(), &imgs, mix(self.seed, s, 3), 1);
            feeds.push((inputs::X_LABELED, self.tensor(&views)?));
            let y = idx.iter().map(|&i| self.labels[i] as i64).collect();
            feeds.push((
                inputs::Y_LABELED,
                Tensor::i64(vec![idx.len()], y).expect("sized"),
            ));
        }
        let idx = self.unl_sampler.next(self.batch_unlabeled);
        let imgs: Vec<&Image8> = idx.iter().map(|&i| &self.unlabeled[i]).collect();
        let wv = augment_batch_par(self.weak.as_ref(), &imgs, mix(self.seed, s, 4), 1);
        let sv = augment_batch_par(
            self.strong.as_ref(),
            &imgs,
            mix(self.seed, s, 5),
            self.threads,
        );
        feeds.push((inputs::X_WEAK, self.tensor(&wv)?));
        feeds.push((inputs::X_STRONG, self.tensor(&sv)?));
        if let Some(t) = &self.teacher_aug {
            let all = t.make(&imgs, self.seed, s, self.threads);
            feeds.push((inputs::X_TEACHER_AUG, self.tensor(&all)?));
        }
        Ok(Batch { step: k, feeds })
    }

    fn tensor(&self, views: &[Image8]) -> Result<Tensor> {
        Ok(to_tensor(&views.iter().collect::<Vec<_>>(), self.model)?)
    }
}

/// Writes the batches of steps `1..=steps` to `dir/step-NNNNN.safetensors` (tensors named as
/// the train step's inputs), so that another trainer can be fed the very same batches.
pub fn dump(mut maker: BatchMaker<'_>, steps: usize, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| AdaptError::Io {
        path: dir.into(),
        source,
    })?;
    for _ in 0..steps {
        let b = maker.next_batch()?;
        let tensors: BTreeMap<String, Tensor> = b
            .feeds
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let meta = HashMap::from([
            ("step".to_string(), b.step.to_string()),
            ("seed".to_string(), maker.seed.to_string()),
        ]);
        let path = dir.join(format!("step-{:05}.safetensors", b.step));
        atomic_write(&path, &st::to_bytes(&tensors, &meta))?;
    }
    Ok(())
}

/// Runs `consume` over the batches of steps 1..=steps while a second thread prepares each
/// next batch (one ahead). The batches are the ones [`BatchMaker::next_batch`] gives in order.
/// When `consume` returns early, the producer stops at its next send.
pub fn prefetch<R>(
    mut maker: BatchMaker<'_>,
    steps: usize,
    consume: impl FnOnce(&mut dyn Iterator<Item = Result<Batch>>) -> R,
) -> R {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(1);
        scope.spawn(move || {
            for _ in 0..steps {
                let b = maker.next_batch();
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        consume(&mut rx.into_iter())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldtune_augment::{AugmentConfig, RandAugment, WeakAugment};

    fn digits(n: usize) -> (Vec<Image8>, Vec<usize>) {
        let imgs = (0..n)
            .map(|i| {
                let px = (0..28 * 28)
                    .map(|p| ((p * 7 + i * 31) % 256) as u8)
                    .collect();
                Image8::new(28, 28, 1, px).expect("sized")
            })
            .collect();
        (imgs, (0..n).map(|i| i % 10).collect())
    }

    fn model() -> ModelConfig {
        toml::from_str(
            r#"
            input = "input"
            output = "logits"
            height = 28
            width = 28
            channels = 1
            mean = [0.1307]
            std = [0.3081]
            classes = ["0","1","2","3","4","5","6","7","8","9"]
            "#,
        )
        .expect("model.toml")
    }

    fn cfg(threads: usize) -> AdaptConfig {
        let mut c = AdaptConfig::preset("uda").expect("preset");
        c.batch_labeled = 4;
        c.batch_unlabeled = 6;
        c.weak = AugmentConfig::Weak(WeakAugment {
            max_shift: 2,
            flip_horizontal: false,
        });
        c.strong = AugmentConfig::RandAugment(RandAugment::default());
        c.augment_threads = threads;
        c
    }

    #[test]
    fn sampler_covers_each_epoch_once() {
        let mut s = EpochSampler::new(10, 3);
        let mut a = s.next(10);
        a.sort();
        assert_eq!(a, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn cap_keeps_first_per_class() {
        assert_eq!(cap_per_class(&[0, 1, 0, 0, 1], 2), vec![0, 1, 2, 4]);
    }

    #[test]
    fn batches_are_deterministic_threaded_and_prefetched() {
        let (imgs, labels) = digits(30);
        let m = model();
        let data = AdaptData {
            labeled: &imgs,
            labels: &labels,
            unlabeled: &imgs,
            eval: None,
        };
        let seq: Vec<Batch> = {
            let mut mk = BatchMaker::new(&m, &cfg(1), &data).expect("maker");
            (0..5).map(|_| mk.next_batch().expect("batch")).collect()
        };
        assert_eq!(seq[0].feeds.len(), 4);
        assert_eq!(seq[0].feeds[3].1.shape(), &[6, 1, 28, 28]);
        assert_ne!(
            seq[0].feeds[2].1, seq[0].feeds[3].1,
            "weak and strong differ"
        );
        assert_ne!(seq[0].feeds[3].1, seq[1].feeds[3].1, "steps differ");
        let mk = BatchMaker::new(&m, &cfg(3), &data).expect("maker");
        let pre: Vec<Batch> = prefetch(mk, 5, |it| it.map(|b| b.expect("batch")).collect());
        assert_eq!(seq, pre);
        let mut other = cfg(1);
        other.seed += 1;
        let mut mk = BatchMaker::new(&m, &other, &data).expect("maker");
        assert_ne!(mk.next_batch().expect("batch"), seq[0]);
    }

    #[test]
    fn cotta_teacher_views_are_view_major_deterministic_and_distinct() {
        let (imgs, labels) = digits(30);
        let m = model();
        let data = AdaptData {
            labeled: &imgs,
            labels: &labels,
            unlabeled: &imgs,
            eval: None,
        };
        let mut c = AdaptConfig::preset("cotta").expect("preset");
        c.batch_unlabeled = 6;
        let views = c.cotta.expect("cotta").views;
        let mut mk = BatchMaker::new(&m, &c, &data).expect("maker");
        let b = mk.next_batch().expect("batch");
        let names: Vec<&str> = b.feeds.iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            [inputs::X_WEAK, inputs::X_STRONG, inputs::X_TEACHER_AUG]
        );
        let aug = &b.feeds[2].1;
        assert_eq!(aug.shape(), &[views * 6, 1, 28, 28]);
        let px = 28 * 28 * 6;
        let a = aug.as_f32().expect("f32");
        assert_ne!(a[..px], a[px..2 * px], "views differ");
        let mut again = BatchMaker::new(&m, &c, &data).expect("maker");
        assert_eq!(again.next_batch().expect("batch"), b);
    }

    #[test]
    fn out_of_range_label_is_refused() {
        let (imgs, mut labels) = digits(5);
        labels[2] = 12;
        let m = model();
        let data = AdaptData {
            labeled: &imgs,
            labels: &labels,
            unlabeled: &imgs,
            eval: None,
        };
        let err = BatchMaker::new(&m, &cfg(1), &data).err().expect("refused");
        assert!(err.to_string().contains("label 12"), "{err}");
    }
}
