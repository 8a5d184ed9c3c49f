//! The pixel heads of the reconstruction tasks (inpaint, colorize): the feature map a decoder
//! reads, the decoder (a seeded 1x1 convolution, then depth-to-space as PyTorch's
//! `pixel_shuffle`), and the L1/L2 loss on the pixels a mask keeps.

use fieldtune_tensor::Tensor;

use super::blocks::{mean_all, seeded_uniform, sum_all};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::{attr, Elem};
use crate::spec::PixelLoss;

/// The upsampling factor s from a `[N, D, fh, fw]` map to an `h` x `w` image: `h / fh` when
/// both sides divide by the same factor (sides above 1 unless the image's are 1).
fn factor(map: &[usize], [h, w]: [usize; 2]) -> Option<usize> {
    let [_, _, fh, fw] = map else {
        return None;
    };
    let (fh, fw) = (*fh, *fw);
    let fits = fh > 0 && fw > 0 && h % fh == 0 && w % fw == 0 && h / fh == w / fw;
    (fits && (fh > 1 || h == 1) && (fw > 1 || w == 1)).then(|| h / fh)
}

/// The model's last 4-D tensor in the pass `prefix` whose sides divide the image's by one
/// factor (the default feature map of a decoder); `key` names the setting in errors.
pub(super) fn last_map(
    b: &Builder,
    fwd: &Forward<'_>,
    prefix: &str,
    key: &str,
    image: [usize; 2],
) -> Result<String> {
    for n in fwd.g.nodes.iter().rev() {
        for o in &n.outputs {
            let t = format!("{prefix}/{o}");
            if b.shape(&t).is_ok_and(|s| factor(&s, image).is_some()) {
                return Ok(t);
            }
        }
    }
    let [h, w] = image;
    Err(GraphError::Spec(format!(
        "{key} is not set and the model computes no 4-D tensor whose sides divide the image's \
         {h}x{w} by one factor; name one"
    )))
}

/// The decoder over the map `feat` `[N, D, fh, fw]` (an error naming `key` when it does not
/// fit the image): a 1x1 convolution with weight
/// `names.0` `[channels * s * s, D, 1, 1]` and bias `names.1` (graph inputs, initialised like
/// PyTorch's `nn.Conv2d`, uniform in +-1/sqrt(D), from `seed`), then depth-to-space by s
/// (channel `c * s * s + i * s + j` goes to row offset i, column offset j of channel c).
/// Returns the `[N, channels, h, w]` prediction and the head's parameters with their values.
pub(super) fn decoder_head(
    b: &mut Builder,
    feat: &str,
    key: &str,
    names: (&'static str, &'static str),
    channels: usize,
    image: [usize; 2],
    seed: u64,
) -> Result<(String, Vec<(String, Tensor)>)> {
    let shape = b.shape(feat)?;
    let [h, w] = image;
    let s = factor(&shape, image).ok_or_else(|| {
        GraphError::Spec(format!(
            "{key}: '{feat}' is {shape:?}; the decoder needs a 4-D map whose sides divide the \
             image's {h}x{w} by one factor"
        ))
    })?;
    let (n, d, fh, fw) = (shape[0], shape[1], shape[2], shape[3]);
    let k = channels * s * s;
    let bound = 1.0 / (d as f32).sqrt();
    let wt = Tensor::f32(
        vec![k, d, 1, 1],
        seeded_uniform(seed, names.0, k * d, bound),
    )
    .expect("sized");
    let bt = Tensor::f32(vec![k], seeded_uniform(seed, names.1, k, bound)).expect("sized");
    let wn = b.input(names.0, Elem::F32, &[k, d, 1, 1])?;
    let bn = b.input(names.1, Elem::F32, &[k])?;
    let y = b.op(
        "Conv",
        &[feat, &wn, &bn],
        vec![attr::ints("kernel_shape", &[1, 1])],
    )?;
    let pred = if s == 1 {
        y
    } else {
        let y = b.reshape(&y, &[n, channels, s, s, fh, fw])?;
        let y = b.op(
            "Transpose",
            &[&y],
            vec![attr::ints("perm", &[0, 1, 4, 2, 5, 3])],
        )?;
        b.reshape(&y, &[n, channels, fh * s, fw * s])?
    };
    Ok((pred, vec![(wn, wt), (bn, bt)]))
}

/// The L1 or L2 error of `pred` against `target` (`[N, C, H, W]`): the mean over every
/// element, or with `mask` (`[N, 1, H, W]`, 0/1) the sum over the kept elements divided by
/// their count (`C` times the mask's sum, at least 1).
pub(super) fn pixel_loss(
    b: &mut Builder,
    pred: &str,
    target: &str,
    mask: Option<&str>,
    kind: PixelLoss,
) -> Result<String> {
    let d = b.op("Sub", &[pred, target], vec![])?;
    let e = match kind {
        PixelLoss::L2 => b.op("Mul", &[&d, &d], vec![])?,
        PixelLoss::L1 => b.op("Abs", &[&d], vec![])?,
    };
    let Some(m) = mask else {
        return mean_all(b, &e);
    };
    let c = b.shape(target)?[1];
    let em = b.op("Mul", &[&e, m], vec![])?;
    let num = sum_all(b, &em)?;
    let cnt = sum_all(b, m)?;
    let cs = b.scalar(c as f32);
    let cnt = b.op("Mul", &[&cnt, &cs], vec![])?;
    let one = b.scalar(1.0);
    let den = b.op("Max", &[&cnt, &one], vec![])?;
    b.op("Div", &[&num, &den], vec![])
}

#[cfg(test)]
mod tests {
    use super::factor;

    #[test]
    fn a_map_fits_when_both_sides_divide_by_one_factor_above_a_single_pixel() {
        assert_eq!(factor(&[2, 8, 7, 7], [28, 28]), Some(4));
        assert_eq!(factor(&[2, 8, 28, 28], [28, 28]), Some(1));
        assert_eq!(factor(&[2, 8, 7, 14], [28, 28]), None);
        assert_eq!(
            factor(&[2, 8, 1, 1], [32, 32]),
            None,
            "pooled maps do not fit"
        );
        assert_eq!(factor(&[2, 8, 5, 5], [28, 28]), None);
        assert_eq!(factor(&[2, 64], [28, 28]), None);
    }
}
