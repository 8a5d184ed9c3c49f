//! Frame to model input, without allocating: crop (optional), resize (box filter when
//! shrinking, bilinear when enlarging, a plain copy when the size already fits) and channel
//! conversion (RGB to gray with PIL's luma, gray to RGB by repetition) into a preallocated
//! [`Image8`] of the model's size; normalisation to NCHW floats is
//! [`fieldtune_frames::write_normalized`] into a preallocated tensor.

use fieldtune_frames::{luma, Image8, ModelConfig};

use crate::config::Resize;
use crate::source::RawFrame;

/// Turns frames of any size into the model's size and channels.
#[derive(Clone, Debug)]
pub struct Preprocessor {
    width: u32,
    height: u32,
    channels: u8,
    resize: Resize,
}

impl Preprocessor {
    pub fn new(model: &ModelConfig, resize: Resize) -> Preprocessor {
        Preprocessor {
            width: model.width,
            height: model.height,
            channels: model.channels,
            resize,
        }
    }

    /// An image of the model's shape to reuse as [`Preprocessor::apply`]'s output.
    pub fn blank(&self) -> Image8 {
        Image8::filled(self.width, self.height, self.channels, 0)
    }

    /// The region of the frame that is scaled: all of it, or the largest centred one with
    /// the model's aspect ratio.
    fn roi(&self, w: u32, h: u32) -> (u32, u32, u32, u32) {
        match self.resize {
            Resize::Stretch => (0, 0, w, h),
            Resize::CenterCrop => {
                // Compare w/h with W/H in integers.
                let (mw, mh) = (self.width as u64, self.height as u64);
                if (w as u64) * mh > (h as u64) * mw {
                    let cw = ((h as u64 * mw) / mh).max(1) as u32;
                    ((w - cw) / 2, 0, cw, h)
                } else {
                    let ch = ((w as u64 * mh) / mw).max(1) as u32;
                    (0, (h - ch) / 2, w, ch)
                }
            }
        }
    }

    /// Writes `frame` into `out` (which must come from [`Preprocessor::blank`]). Returns
    /// false (and leaves `out` alone) for an empty or inconsistent frame.
    pub fn apply(&self, frame: &RawFrame<'_>, out: &mut Image8) -> bool {
        let (fw, fh, fc) = (frame.width, frame.height, frame.channels as usize);
        if fw == 0
            || fh == 0
            || !(fc == 1 || fc == 3)
            || frame.stride < fw as usize * fc
            || frame.data.len() < frame.stride * (fh as usize - 1) + fw as usize * fc
        {
            return false;
        }
        debug_assert_eq!(
            out.data.len(),
            self.width as usize * self.height as usize * self.channels as usize
        );
        let (x0, y0, rw, rh) = self.roi(fw, fh);
        let oc = self.channels as usize;
        let px = |x: u32, y: u32| -> [f32; 3] {
            let i = (y0 + y) as usize * frame.stride + (x0 + x) as usize * fc;
            if fc == 1 {
                let v = frame.data[i] as f32;
                [v, v, v]
            } else {
                [
                    frame.data[i] as f32,
                    frame.data[i + 1] as f32,
                    frame.data[i + 2] as f32,
                ]
            }
        };
        let put = |out: &mut [u8], o: usize, rgb: [f32; 3], exact: Option<&[u8]>| {
            let q = |v: f32| v.round().clamp(0.0, 255.0) as u8;
            match (oc, fc) {
                (1, 1) => out[o] = q(rgb[0]),
                (1, _) => {
                    out[o] = match exact {
                        Some(p) => luma(p[0], p[1], p[2]),
                        None => luma(q(rgb[0]), q(rgb[1]), q(rgb[2])),
                    }
                }
                _ => {
                    out[o] = q(rgb[0]);
                    out[o + 1] = q(rgb[1]);
                    out[o + 2] = q(rgb[2]);
                }
            }
        };
        let (ow, oh) = (self.width, self.height);
        let data = &mut out.data;
        if (rw, rh) == (ow, oh) {
            for y in 0..oh {
                for x in 0..ow {
                    let i = (y0 + y) as usize * frame.stride + (x0 + x) as usize * fc;
                    let o = (y as usize * ow as usize + x as usize) * oc;
                    put(data, o, px(x, y), Some(&frame.data[i..i + fc]));
                }
            }
            return true;
        }
        for y in 0..oh {
            for x in 0..ow {
                let o = (y as usize * ow as usize + x as usize) * oc;
                let v = if rw >= ow && rh >= oh {
                    // Shrinking: average the source pixels the output pixel covers.
                    let xa = (x as u64 * rw as u64 / ow as u64) as u32;
                    let xb = (((x + 1) as u64 * rw as u64).div_ceil(ow as u64) as u32).max(xa + 1);
                    let ya = (y as u64 * rh as u64 / oh as u64) as u32;
                    let yb = (((y + 1) as u64 * rh as u64).div_ceil(oh as u64) as u32).max(ya + 1);
                    let mut s = [0f32; 3];
                    for sy in ya..yb.min(rh) {
                        for sx in xa..xb.min(rw) {
                            let p = px(sx, sy);
                            s[0] += p[0];
                            s[1] += p[1];
                            s[2] += p[2];
                        }
                    }
                    let n = ((yb.min(rh) - ya) * (xb.min(rw) - xa)) as f32;
                    [s[0] / n, s[1] / n, s[2] / n]
                } else {
                    // Enlarging (or mixed): bilinear, pixel centres aligned.
                    let fx = ((x as f32 + 0.5) * rw as f32 / ow as f32 - 0.5)
                        .clamp(0.0, (rw - 1) as f32);
                    let fy = ((y as f32 + 0.5) * rh as f32 / oh as f32 - 0.5)
                        .clamp(0.0, (rh - 1) as f32);
                    let (xi, yi) = (fx.floor() as u32, fy.floor() as u32);
                    let (x1, y1) = ((xi + 1).min(rw - 1), (yi + 1).min(rh - 1));
                    let (ax, ay) = (fx - xi as f32, fy - yi as f32);
                    let (a, b, c, d) = (px(xi, yi), px(x1, yi), px(xi, y1), px(x1, y1));
                    let mut v = [0f32; 3];
                    for k in 0..3 {
                        let top = a[k] + (b[k] - a[k]) * ax;
                        let bot = c[k] + (d[k] - c[k]) * ax;
                        v[k] = top + (bot - top) * ay;
                    }
                    v
                };
                put(data, o, v, None);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(c: u8, h: u32, w: u32) -> ModelConfig {
        ModelConfig {
            input: "x".into(),
            output: "y".into(),
            channels: c,
            height: h,
            width: w,
            mean: vec![0.0; c as usize],
            std: vec![1.0; c as usize],
            classes: vec!["a".into()],
        }
    }

    #[test]
    fn same_size_is_an_exact_copy_and_rgb_to_gray_is_pil_luma() {
        let img = Image8::new(2, 2, 3, vec![255, 0, 0, 0, 255, 0, 10, 20, 30, 1, 2, 3]).unwrap();
        let p = Preprocessor::new(&model(1, 2, 2), Resize::Stretch);
        let mut out = p.blank();
        assert!(p.apply(&RawFrame::of(&img, None), &mut out));
        assert_eq!(out, img.to_gray());
        let g = Image8::new(2, 2, 1, vec![1, 2, 3, 4]).unwrap();
        let p3 = Preprocessor::new(&model(3, 2, 2), Resize::Stretch);
        let mut out3 = p3.blank();
        assert!(p3.apply(&RawFrame::of(&g, None), &mut out3));
        assert_eq!(out3, g.to_rgb());
    }

    #[test]
    fn shrink_averages_and_stride_padding_is_skipped() {
        // 4x2 gray with 2 bytes of row padding; halves to 2x1.
        let data = [10u8, 20, 30, 40, 99, 99, 30, 40, 50, 60, 99, 99];
        let f = RawFrame {
            width: 4,
            height: 2,
            channels: 1,
            stride: 6,
            data: &data,
            label: None,
        };
        let p = Preprocessor::new(&model(1, 1, 2), Resize::Stretch);
        let mut out = p.blank();
        assert!(p.apply(&f, &mut out));
        assert_eq!(out.data, vec![25, 45]);
    }

    #[test]
    fn center_crop_takes_the_middle() {
        // A 4x2 frame for a 2x2 model: the centred 2x2 region (columns 1 and 2).
        let data = [0u8, 1, 2, 3, 4, 5, 6, 7];
        let f = RawFrame {
            width: 4,
            height: 2,
            channels: 1,
            stride: 4,
            data: &data,
            label: None,
        };
        let p = Preprocessor::new(&model(1, 2, 2), Resize::CenterCrop);
        let mut out = p.blank();
        assert!(p.apply(&f, &mut out));
        assert_eq!(out.data, vec![1, 2, 5, 6]);
    }

    #[test]
    fn enlarge_keeps_constant_images_constant_and_bad_frames_are_refused() {
        let img = Image8::filled(3, 3, 3, 77);
        let p = Preprocessor::new(&model(3, 7, 5), Resize::Stretch);
        let mut out = p.blank();
        assert!(p.apply(&RawFrame::of(&img, None), &mut out));
        assert!(out.data.iter().all(|&v| v == 77));
        let short = RawFrame {
            width: 3,
            height: 3,
            channels: 3,
            stride: 9,
            data: &[0; 10],
            label: None,
        };
        assert!(!p.apply(&short, &mut out));
    }
}
