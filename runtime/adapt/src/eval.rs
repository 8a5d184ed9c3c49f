//! Accuracy and confusion matrix of a model session over labeled images.

use fieldtune_engine::Session;
use fieldtune_frames::{to_tensor, Image8, ModelConfig};

use crate::error::{AdaptError, Result};

/// Evaluation of a classifier on labeled images.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub count: usize,
    pub correct: usize,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub classes: Vec<String>,
    /// Mean max-softmax confidence.
    pub mean_confidence: f64,
}

impl EvalReport {
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.correct as f64 / self.count as f64
        }
    }

    /// Per-class recall, in class order.
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: usize = row.iter().sum();
                if n == 0 {
                    0.0
                } else {
                    row[i] as f64 / n as f64
                }
            })
            .collect()
    }

    /// A text table of the confusion matrix.
    pub fn confusion_table(&self) -> String {
        let w = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(1)
            .max(5);
        let h = w.max("true\\pred".len());
        let mut s = format!("{:>h$} |", "true\\pred");
        for c in &self.classes {
            s += &format!(" {c:>w$}");
        }
        s += "  recall\n";
        for (i, row) in self.confusion.iter().enumerate() {
            s += &format!("{:>h$} |", self.classes[i]);
            for v in row {
                s += &format!(" {v:>w$}");
            }
            s += &format!("  {:.4}\n", self.per_class()[i]);
        }
        s
    }
}

/// Runs `session` on `images` in batches of `batch` and hands `row` each image's logits, in
/// order; an output that is not `[batch, classes]` float logits is an error naming it.
pub fn for_each_logits(
    session: &mut dyn Session,
    cfg: &ModelConfig,
    images: &[Image8],
    batch: usize,
    mut row: impl FnMut(&[f32]),
) -> Result<()> {
    let k = cfg.classes.len();
    for chunk in images.chunks(batch.max(1)) {
        let refs: Vec<&Image8> = chunk.iter().collect();
        let x = to_tensor(&refs, cfg)?;
        let y = session
            .run_fetch(&[(cfg.input.as_str(), &x)], &[cfg.output.as_str()])?
            .remove(0);
        if y.shape() != [chunk.len(), k] {
            return Err(AdaptError::Mismatch {
                what: format!("output '{}'", cfg.output),
                reason: format!(
                    "shape {:?}, expected [{}, {k}] for {k} classes in model.toml",
                    y.shape(),
                    chunk.len()
                ),
            });
        }
        let v = y.as_f32().ok_or_else(|| AdaptError::Mismatch {
            what: cfg.output.clone(),
            reason: "not float".into(),
        })?;
        v.chunks(k).for_each(&mut row);
    }
    Ok(())
}

/// Class and max-softmax probability per image, in batches of `batch`.
pub fn predict(
    session: &mut dyn Session,
    cfg: &ModelConfig,
    images: &[Image8],
    batch: usize,
) -> Result<Vec<(usize, f32)>> {
    let mut out = Vec::with_capacity(images.len());
    for_each_logits(session, cfg, images, batch, |row| {
        let (arg, max) =
            row.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |a, (i, &x)| if x > a.1 { (i, x) } else { a },
            );
        let z: f32 = row.iter().map(|x| (x - max).exp()).sum();
        out.push((arg, 1.0 / z));
    })?;
    Ok(out)
}

/// Accuracy, confusion matrix and mean confidence over `images` with `labels`.
pub fn evaluate(
    session: &mut dyn Session,
    cfg: &ModelConfig,
    images: &[Image8],
    labels: &[usize],
    batch: usize,
) -> Result<EvalReport> {
    let k = cfg.classes.len();
    let preds = predict(session, cfg, images, batch)?;
    let mut confusion = vec![vec![0usize; k]; k];
    let mut correct = 0;
    let mut conf = 0.0;
    for ((p, c), &y) in preds.iter().zip(labels) {
        confusion[y][*p] += 1;
        correct += (*p == y) as usize;
        conf += *c as f64;
    }
    Ok(EvalReport {
        count: preds.len(),
        correct,
        confusion,
        classes: cfg.classes.clone(),
        mean_confidence: if preds.is_empty() {
            0.0
        } else {
            conf / preds.len() as f64
        },
    })
}
