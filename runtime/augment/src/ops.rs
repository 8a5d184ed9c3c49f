//! The image operations, with explicit parameters. Each takes an [`Image8`] and returns a
//! new one of the same size and channels; none panics (an image that breaks the
//! [`Image8`] invariant is returned unchanged).
//!
//! Geometric ops sample nearest-neighbour (`floor(v + 0.5)`, as PIL's NEAREST affine
//! transform does) about the centre `((w-1)/2, (h-1)/2)` in pixel-index coordinates and fill
//! 0 where the source lies outside. Colour ops follow PIL (`ImageOps`, `ImageEnhance`)
//! semantics so that a PyTorch/PIL reference can mirror them; the few deliberate differences
//! are noted on each function.

use fieldtune_frames::{luma, Image8};

/// Fill value of [`cutout`] in RandAugment.
pub const CUTOUT_FILL: u8 = 127;

fn same_shape(img: &Image8, data: Vec<u8>) -> Image8 {
    Image8 {
        width: img.width,
        height: img.height,
        channels: img.channels,
        data,
    }
}

/// Builds an image whose pixel `(x, y)` is the source pixel `src(x, y)` (pixel-index
/// coordinates, rounded to nearest), or 0 when that lies outside.
fn remap(img: &Image8, src: impl Fn(f64, f64) -> (f64, f64)) -> Image8 {
    if !img.is_valid() {
        return img.clone();
    }
    let (w, h, c) = (
        img.width as usize,
        img.height as usize,
        img.channels as usize,
    );
    let mut out = vec![0u8; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = src(x as f64, y as f64);
            let (sx, sy) = ((sx + 0.5).floor(), (sy + 0.5).floor());
            if sx >= 0.0 && sy >= 0.0 && sx < w as f64 && sy < h as f64 {
                let s = (sy as usize * w + sx as usize) * c;
                let d = (y * w + x) * c;
                out[d..d + c].copy_from_slice(&img.data[s..s + c]);
            }
        }
    }
    same_shape(img, out)
}

fn centre(img: &Image8) -> (f64, f64) {
    (
        (img.width as f64 - 1.0) / 2.0,
        (img.height as f64 - 1.0) / 2.0,
    )
}

/// Rotates by `degrees` counter-clockwise (PIL's `Image.rotate` convention) about the centre.
/// Sine and cosine are rounded to 15 decimals as PIL does, so multiples of 90° are exact.
pub fn rotate(img: &Image8, degrees: f32) -> Image8 {
    let theta = (degrees as f64 % 360.0).to_radians();
    let r15 = |v: f64| (v * 1e15).round() / 1e15;
    let (cos, sin) = (r15(theta.cos()), r15(theta.sin()));
    let (cx, cy) = centre(img);
    remap(img, |x, y| {
        let (dx, dy) = (x - cx, y - cy);
        (cx + cos * dx - sin * dy, cy + sin * dx + cos * dy)
    })
}

/// Horizontal shear: `out(x, y) = in(x + s * (y - cy), y)`.
pub fn shear_x(img: &Image8, s: f32) -> Image8 {
    let (_, cy) = centre(img);
    let s = s as f64;
    remap(img, |x, y| (x + s * (y - cy), y))
}

/// Vertical shear: `out(x, y) = in(x, y + s * (x - cx))`.
pub fn shear_y(img: &Image8, s: f32) -> Image8 {
    let (cx, _) = centre(img);
    let s = s as f64;
    remap(img, |x, y| (x, y + s * (x - cx)))
}

/// Moves the content by `dx` pixels right and `dy` pixels down (negative: left / up):
/// `out(x, y) = in(x - dx, y - dy)`, 0 where uncovered.
pub fn translate(img: &Image8, dx: i64, dy: i64) -> Image8 {
    if !img.is_valid() || (dx == 0 && dy == 0) {
        return img.clone();
    }
    let (w, h, c) = (img.width as i64, img.height as i64, img.channels as usize);
    let mut out = vec![0u8; img.data.len()];
    // Destination columns whose source column x - dx lies inside.
    let x0 = dx.clamp(0, w);
    let x1 = (w + dx).clamp(0, w);
    if x0 < x1 {
        let run = (x1 - x0) as usize * c;
        for y in 0..h {
            let sy = y - dy;
            if sy < 0 || sy >= h {
                continue;
            }
            let d = ((y * w + x0) as usize) * c;
            let s = ((sy * w + x0 - dx) as usize) * c;
            out[d..d + run].copy_from_slice(&img.data[s..s + run]);
        }
    }
    same_shape(img, out)
}

/// Mirrors left-right.
pub fn flip_horizontal(img: &Image8) -> Image8 {
    if !img.is_valid() {
        return img.clone();
    }
    let (w, c) = (img.width as usize, img.channels as usize);
    let mut out = Vec::with_capacity(img.data.len());
    if w > 0 {
        for row in img.data.chunks_exact(w * c) {
            for px in row.chunks_exact(c).rev() {
                out.extend_from_slice(px);
            }
        }
    }
    same_shape(img, out)
}

/// Applies a 256-entry lookup table per channel.
fn apply_luts(img: &Image8, luts: &[[u8; 256]]) -> Image8 {
    let c = img.channels as usize;
    let data = img
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| luts.get(i % c).map_or(v, |lut| lut[v as usize]))
        .collect();
    same_shape(img, data)
}

fn histograms(img: &Image8) -> Vec<[u64; 256]> {
    let c = img.channels.max(1) as usize;
    let mut h = vec![[0u64; 256]; c];
    for (i, &v) in img.data.iter().enumerate() {
        h[i % c][v as usize] += 1;
    }
    h
}

fn identity_lut() -> [u8; 256] {
    std::array::from_fn(|i| i as u8)
}

/// Per channel, stretches `[min, max]` linearly to `[0, 255]` exactly as PIL's
/// `ImageOps.autocontrast` (`cutoff=0`) computes it, in f64: `scale = 255 / (max - min)`,
/// `offset = -min * scale`, `out = int(px * scale + offset)` clipped. PIL's rounding noise is
/// kept for byte parity, so `max` can land on 254. A channel with `max == min` is unchanged.
pub fn autocontrast(img: &Image8) -> Image8 {
    let luts: Vec<[u8; 256]> = histograms(img)
        .iter()
        .map(|h| {
            let lo = h.iter().position(|&n| n > 0);
            let hi = h.iter().rposition(|&n| n > 0);
            match (lo, hi) {
                (Some(lo), Some(hi)) if hi > lo => {
                    let scale = 255.0 / (hi - lo) as f64;
                    let offset = -(lo as f64) * scale;
                    std::array::from_fn(|i| (i as f64 * scale + offset).clamp(0.0, 255.0) as u8)
                }
                _ => identity_lut(),
            }
        })
        .collect();
    apply_luts(img, &luts)
}

/// Per channel histogram equalisation with PIL's `ImageOps.equalize` semantics: with `h` the
/// histogram and `step = (n - h[last non-empty bin]) // 255`, `lut[i] = (step // 2 +
/// sum(h[..i])) // step` (clipped to 255); identity when `step == 0` or only one bin is used.
pub fn equalize(img: &Image8) -> Image8 {
    let luts: Vec<[u8; 256]> = histograms(img)
        .iter()
        .map(|h| {
            let used: Vec<u64> = h.iter().copied().filter(|&n| n > 0).collect();
            let Some(&last) = used.last() else {
                return identity_lut();
            };
            if used.len() <= 1 {
                return identity_lut();
            }
            let step = (used.iter().sum::<u64>() - last) / 255;
            if step == 0 {
                return identity_lut();
            }
            let mut n = step / 2;
            std::array::from_fn(|i| {
                let v = (n / step).min(255) as u8;
                n += h[i];
                v
            })
        })
        .collect();
    apply_luts(img, &luts)
}

/// PIL's `Image.blend(degenerate, img, f)`: `degenerate + f * (img - degenerate)` in f32,
/// clipped to 0..255 and truncated toward zero (as PIL's C code does).
fn blend(degenerate: impl Fn(usize) -> u8, img: &Image8, f: f32) -> Image8 {
    if f == 1.0 {
        return img.clone();
    }
    let data = img
        .data
        .iter()
        .enumerate()
        .map(|(i, &px)| {
            let d = degenerate(i) as f32;
            let v = d + f * (px as f32 - d);
            v.clamp(0.0, 255.0) as u8
        })
        .collect();
    same_shape(img, data)
}

/// Rounded mean of the grayscale image, RGB converted by [`luma`]. PIL:
/// `int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)`.
pub fn gray_mean(img: &Image8) -> u8 {
    let (sum, n): (u64, u64) = if img.channels == 3 {
        let n = (img.data.len() / 3) as u64;
        (
            img.data
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]) as u64)
                .sum(),
            n,
        )
    } else {
        (
            img.data.iter().map(|&v| v as u64).sum(),
            img.data.len() as u64,
        )
    };
    if n == 0 {
        return 0;
    }
    (sum as f64 / n as f64 + 0.5).floor().clamp(0.0, 255.0) as u8
}

/// Contrast with PIL's `ImageEnhance.Contrast(img).enhance(f)` semantics: blend toward the
/// rounded mean of the grayscale image ([`gray_mean`]), `mean + f * (px - mean)`, clipped and
/// truncated like PIL's blend. `f = 1` is the identity, `f = 0` a flat gray image.
pub fn contrast(img: &Image8, f: f32) -> Image8 {
    let mean = gray_mean(img);
    blend(|_| mean, img, f)
}

/// Brightness with PIL's `ImageEnhance.Brightness` semantics: `f * px`, clipped and truncated.
pub fn brightness(img: &Image8, f: f32) -> Image8 {
    blend(|_| 0, img, f)
}

/// PIL's `ImageFilter.SMOOTH` (3x3 kernel `[[1,1,1],[1,5,1],[1,1,1]] / 13`, rounded), per
/// channel; the one-pixel border is copied unchanged.
pub fn smooth(img: &Image8) -> Image8 {
    if !img.is_valid() {
        return img.clone();
    }
    let (w, h, c) = (
        img.width as usize,
        img.height as usize,
        img.channels as usize,
    );
    let mut out = img.data.clone();
    let at = |x: usize, y: usize, ch: usize| img.data[(y * w + x) * c + ch] as u32;
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            for ch in 0..c {
                let mut s = 4 * at(x, y, ch);
                for yy in y - 1..=y + 1 {
                    for xx in x - 1..=x + 1 {
                        s += at(xx, yy, ch);
                    }
                }
                // round(s / 13) without float error: s / 13 is never exactly k + 0.5.
                out[(y * w + x) * c + ch] = ((2 * s + 13) / 26).min(255) as u8;
            }
        }
    }
    same_shape(img, out)
}

/// Sharpness with PIL's `ImageEnhance.Sharpness` semantics: blend with the [`smooth`]ed
/// image, `smooth + f * (px - smooth)`, clipped and truncated. `f > 1` sharpens.
pub fn sharpness(img: &Image8, f: f32) -> Image8 {
    if f == 1.0 {
        return img.clone();
    }
    let s = smooth(img);
    blend(|i| s.data[i], img, f)
}

/// Keeps the top `bits` bits of every value (`bits >= 8`: unchanged, `0`: black).
pub fn posterize(img: &Image8, bits: u8) -> Image8 {
    if bits >= 8 {
        return img.clone();
    }
    let mask = !(0xffu8 >> bits);
    same_shape(img, img.data.iter().map(|&v| v & mask).collect())
}

/// Inverts every value `>= threshold` (`255 - px`); `threshold >= 256` is the identity.
pub fn solarize(img: &Image8, threshold: u16) -> Image8 {
    same_shape(
        img,
        img.data
            .iter()
            .map(|&v| if v as u16 >= threshold { 255 - v } else { v })
            .collect(),
    )
}

/// Fills the `side x side` square whose top-left corner is `(cx - side/2, cy - side/2)`
/// (integer division) with `fill` on all channels, clipped at the borders.
pub fn cutout(img: &Image8, cx: i64, cy: i64, side: u32, fill: u8) -> Image8 {
    let mut out = img.clone();
    if !img.is_valid() || side == 0 {
        return out;
    }
    let (w, h, c) = (img.width as i64, img.height as i64, img.channels as usize);
    let (x0, y0) = (cx - side as i64 / 2, cy - side as i64 / 2);
    let (x1, y1) = ((x0 + side as i64).min(w), (y0 + side as i64).min(h));
    let (x0, y0) = (x0.max(0), y0.max(0));
    if x0 >= x1 {
        return out;
    }
    for y in y0..y1 {
        let a = (y * w + x0) as usize * c;
        let b = (y * w + x1) as usize * c;
        out.data[a..b].fill(fill);
    }
    out
}
