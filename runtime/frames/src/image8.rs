//! [`Image8`]: the 8-bit image type shared by frames, augment and adapt.

use std::fmt;
use std::path::Path;

use image::{GrayImage, RgbImage};

use crate::FramesError;

/// Channels, height and width of an image or of a model input; displayed as `CxHxW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageShape {
    pub channels: u8,
    pub height: u32,
    pub width: u32,
}

impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// An 8-bit image with 1 (gray) or 3 (RGB) channels, stored HWC, row-major:
/// the value of channel `c` at `(x, y)` is `data[(y * width + x) * channels + c]`.
///
/// Invariant (checked by [`Image8::new`] and [`Image8::is_valid`]): `channels` is 1 or 3
/// and `data.len() == width * height * channels`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Image8 {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl fmt::Debug for Image8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image8")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("channels", &self.channels)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Gray value of an RGB pixel with PIL's `convert("L")` integer formula (ITU-R 601-2 luma:
/// `L = R*299/1000 + G*587/1000 + B*114/1000`, rounded), so results match a Python reference.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

impl Image8 {
    /// An image from its parts; fails unless `channels` is 1 or 3 and the buffer length is
    /// `width * height * channels`.
    pub fn new(width: u32, height: u32, channels: u8, data: Vec<u8>) -> Result<Self, FramesError> {
        if channels != 1 && channels != 3 {
            return Err(FramesError::InvalidImage {
                reason: format!("channels must be 1 or 3, got {channels}"),
            });
        }
        let expected = width as usize * height as usize * channels as usize;
        if data.len() != expected {
            return Err(FramesError::InvalidImage {
                reason: format!(
                    "{width}x{height}x{channels} image needs {expected} bytes, got {}",
                    data.len()
                ),
            });
        }
        Ok(Image8 {
            width,
            height,
            channels,
            data,
        })
    }

    /// An image with every byte set to `value`. `channels` other than 1 or 3 is clamped to
    /// the nearest of the two.
    pub fn filled(width: u32, height: u32, channels: u8, value: u8) -> Self {
        let channels = if channels <= 1 { 1 } else { 3 };
        let n = width as usize * height as usize * channels as usize;
        Image8 {
            width,
            height,
            channels,
            data: vec![value; n],
        }
    }

    /// Channels, height and width.
    pub fn shape(&self) -> ImageShape {
        ImageShape {
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// Whether the invariant holds (channels 1 or 3, buffer length matches).
    pub fn is_valid(&self) -> bool {
        (self.channels == 1 || self.channels == 3)
            && self.data.len()
                == self.width as usize * self.height as usize * self.channels as usize
    }

    /// Number of pixels (`width * height`).
    pub fn pixel_count(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// Value of channel `c` at `(x, y)`; `None` outside the image.
    pub fn get(&self, x: u32, y: u32, c: u8) -> Option<u8> {
        if x >= self.width || y >= self.height || c >= self.channels {
            return None;
        }
        let i =
            (y as usize * self.width as usize + x as usize) * self.channels as usize + c as usize;
        self.data.get(i).copied()
    }

    /// The pixel at `(x, y)` (1 or 3 bytes); `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<&[u8]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let c = self.channels as usize;
        let i = (y as usize * self.width as usize + x as usize) * c;
        self.data.get(i..i + c)
    }

    /// A 1-channel copy: unchanged when already gray, else PIL's luma of each pixel ([`luma`]).
    pub fn to_gray(&self) -> Image8 {
        if self.channels != 3 {
            return self.clone();
        }
        let data = self
            .data
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect();
        Image8 {
            width: self.width,
            height: self.height,
            channels: 1,
            data,
        }
    }

    /// A 3-channel copy: unchanged when already RGB, else the gray value repeated.
    pub fn to_rgb(&self) -> Image8 {
        if self.channels == 3 {
            return self.clone();
        }
        let data = self.data.iter().flat_map(|&v| [v, v, v]).collect();
        Image8 {
            width: self.width,
            height: self.height,
            channels: 3,
            data,
        }
    }

    /// A copy with `channels` (1 or 3) channels, via [`Image8::to_gray`] or [`Image8::to_rgb`].
    pub fn with_channels(&self, channels: u8) -> Image8 {
        if channels == 1 {
            self.to_gray()
        } else {
            self.to_rgb()
        }
    }

    /// Resizes to `width x height` with a triangle (bilinear) filter; a clone when the size
    /// already matches.
    pub fn resized(&self, width: u32, height: u32) -> Image8 {
        use image::imageops::{resize, FilterType};
        if (self.width, self.height) == (width, height) || !self.is_valid() {
            return Image8 {
                width,
                height,
                ..self.clone()
            }
            .fixed_len();
        }
        if self.channels == 1 {
            resize(&self.to_gray_image(), width, height, FilterType::Triangle).into()
        } else {
            resize(&self.to_rgb_image(), width, height, FilterType::Triangle).into()
        }
    }

    /// Pads or truncates the buffer to the length the header asks for (used only on the
    /// degenerate paths of [`Image8::resized`], never on valid images of the right size).
    fn fixed_len(mut self) -> Image8 {
        let n = self.pixel_count() * self.channels as usize;
        self.data.resize(n, 0);
        self
    }

    /// The image as an [`image::GrayImage`] (RGB is converted with [`luma`]).
    pub fn to_gray_image(&self) -> GrayImage {
        let g = self.to_gray().fixed_len();
        GrayImage::from_raw(g.width, g.height, g.data)
            .unwrap_or_else(|| GrayImage::new(self.width, self.height))
    }

    /// The image as an [`image::RgbImage`] (gray is replicated to three channels).
    pub fn to_rgb_image(&self) -> RgbImage {
        let g = self.to_rgb().fixed_len();
        RgbImage::from_raw(g.width, g.height, g.data)
            .unwrap_or_else(|| RgbImage::new(self.width, self.height))
    }

    /// Writes the image as PNG (gray or RGB); the format follows from the file name.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FramesError> {
        let path = path.as_ref();
        let res = if self.channels == 1 {
            self.to_gray_image().save(path)
        } else {
            self.to_rgb_image().save(path)
        };
        res.map_err(|e| FramesError::Encode {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

impl From<GrayImage> for Image8 {
    fn from(img: GrayImage) -> Self {
        let (width, height) = img.dimensions();
        Image8 {
            width,
            height,
            channels: 1,
            data: img.into_raw(),
        }
    }
}

impl From<RgbImage> for Image8 {
    fn from(img: RgbImage) -> Self {
        let (width, height) = img.dimensions();
        Image8 {
            width,
            height,
            channels: 3,
            data: img.into_raw(),
        }
    }
}

impl From<&Image8> for GrayImage {
    fn from(img: &Image8) -> Self {
        img.to_gray_image()
    }
}

impl From<&Image8> for RgbImage {
    fn from(img: &Image8) -> Self {
        img.to_rgb_image()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_channels_and_length() {
        assert!(Image8::new(2, 2, 1, vec![0; 4]).is_ok());
        assert!(Image8::new(2, 2, 3, vec![0; 12]).is_ok());
        assert!(matches!(
            Image8::new(2, 2, 2, vec![0; 8]),
            Err(FramesError::InvalidImage { .. })
        ));
        assert!(matches!(
            Image8::new(2, 2, 1, vec![0; 5]),
            Err(FramesError::InvalidImage { .. })
        ));
    }

    #[test]
    fn gray_uses_pil_luma() {
        let img = Image8::new(3, 1, 3, vec![255, 0, 0, 0, 255, 0, 10, 20, 30]).unwrap();
        let g = img.to_gray();
        // PIL: L = R*299/1000 + G*587/1000 + B*114/1000, rounded.
        assert_eq!(g.data, vec![76, 150, 18]);
        assert_eq!(g.to_rgb().data, vec![76, 76, 76, 150, 150, 150, 18, 18, 18]);
    }

    #[test]
    fn image_crate_round_trip() {
        let img = Image8::new(2, 3, 3, (0..18).collect()).unwrap();
        let rgb: RgbImage = (&img).into();
        assert_eq!(rgb.get_pixel(1, 2).0, [15, 16, 17]);
        assert_eq!(Image8::from(rgb), img);
        let gray = Image8::new(2, 1, 1, vec![7, 9]).unwrap();
        assert_eq!(Image8::from(gray.to_gray_image()), gray);
        assert_eq!(gray.get(1, 0, 0), Some(9));
        assert_eq!(gray.get(2, 0, 0), None);
        assert_eq!(img.pixel(1, 0), Some(&[3u8, 4, 5][..]));
    }

    #[test]
    fn resize_keeps_constant_images_constant() {
        let img = Image8::filled(8, 6, 3, 200);
        let r = img.resized(4, 3);
        assert_eq!(
            r.shape(),
            ImageShape {
                channels: 3,
                height: 3,
                width: 4
            }
        );
        assert!(r.data.iter().all(|&v| v == 200));
        assert_eq!(img.resized(8, 6), img);
    }
}
