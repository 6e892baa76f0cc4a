//! PIL-exact antialiased resampling of 8-bit RGB images.
//!
//! This is a port of the uint8 path of Pillow's `libImaging/Resample.c` (what
//! `Image.resize(size, BICUBIC | BILINEAR)` runs, and so what torchvision's `Resize` runs on a PIL
//! image): a separable convolution, horizontal pass first, with the filter support widened by the
//! downscale factor (antialiasing), coefficients normalised to sum 1, turned into fixed point with
//! 22 fractional bits, and each pass rounded and clipped to uint8. Every step that affects the
//! result (coefficient bounds, the source rows the horizontal pass covers, rounding of
//! coefficients, clipping) follows the C code, so for the same RGB input the output is identical
//! byte for byte.
//!
//! One addition: [`resize_window`] computes only a window of the resized image. Each output pixel
//! depends only on its own coefficients, so the window is exactly the crop of a full resize, while
//! an image resized to a huge intermediate (a 1 x 20,000 strip whose short side goes to 224) costs
//! only the window.

use image::RgbImage;

/// Fractional bits of the fixed-point coefficients (Pillow's `PRECISION_BITS`, 32 - 8 - 2).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The resampling filters an OpenCLIP preprocess config can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow's `BILINEAR` (triangle filter, support 1).
    Bilinear,
    /// Pillow's `BICUBIC` (Keys cubic with a = -0.5, support 2), OpenCLIP's default.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// A rectangle of the resized image, in resized-image coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First column of the window.
    pub left: u32,
    /// First row of the window.
    pub top: u32,
    /// Number of columns.
    pub width: u32,
    /// Number of rows.
    pub height: u32,
}

/// Why a resize could not run; the preprocessing never builds such a request from a decoded image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// The source or target has a zero side.
    #[error("cannot resize {src_width}x{src_height} to {width}x{height}: zero-sized image")]
    Empty {
        /// Source width.
        src_width: u32,
        /// Source height.
        src_height: u32,
        /// Target width.
        width: u32,
        /// Target height.
        height: u32,
    },
    /// The window is empty or reaches outside the resized image.
    #[error("window {window:?} is empty or outside the {width}x{height} resized image")]
    BadWindow {
        /// The window asked for.
        window: Window,
        /// Target width.
        width: u32,
        /// Target height.
        height: u32,
    },
}

/// Resizes `src` to `width` x `height` exactly as Pillow's `Image.resize` does for an RGB image.
pub fn resize(
    src: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
) -> Result<RgbImage, ResizeError> {
    let all = Window {
        left: 0,
        top: 0,
        width,
        height,
    };
    resize_window(src, width, height, filter, all)
}

/// Returns `window` of what [`resize`] would return for `width` x `height`, computing only it.
pub fn resize_window(
    src: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    window: Window,
) -> Result<RgbImage, ResizeError> {
    let (src_width, src_height) = src.dimensions();
    if src_width == 0 || src_height == 0 || width == 0 || height == 0 {
        return Err(ResizeError::Empty {
            src_width,
            src_height,
            width,
            height,
        });
    }
    let inside = |start: u32, len: u32, size: u32| len > 0 && start.checked_add(len) <= Some(size);
    if !inside(window.left, window.width, width) || !inside(window.top, window.height, height) {
        return Err(ResizeError::BadWindow {
            window,
            width,
            height,
        });
    }
    let columns = window.left..window.left + window.width;
    let rows = window.top..window.top + window.height;
    let (w, h) = (window.width, window.height);

    // Pillow skips a pass whose size does not change; the pass would be the identity anyway.
    let horizontal = (width != src_width).then(|| Coeffs::new(src_width, width, filter, columns));
    let vertical = (height != src_height).then(|| Coeffs::new(src_height, height, filter, rows));

    // Source rows the horizontal pass must produce (Pillow's ybox_first..ybox_last).
    let source_rows = match &vertical {
        Some(v) => v.input_span(),
        None => window.top as usize..(window.top + window.height) as usize,
    };
    let src_stride = src_width as usize * 3;
    let (band, band_width) = match &horizontal {
        Some(hc) => {
            let lines = src.as_raw()[source_rows.start * src_stride..source_rows.end * src_stride]
                .chunks_exact(src_stride);
            (horizontal_pass(lines, hc), w)
        }
        None => {
            // Only slice out the window's columns (and the needed rows).
            let left = window.left as usize * 3;
            let right = left + w as usize * 3;
            let mut band = Vec::with_capacity(source_rows.len() * w as usize * 3);
            for line in src.as_raw()[source_rows.start * src_stride..source_rows.end * src_stride]
                .chunks_exact(src_stride)
            {
                band.extend_from_slice(&line[left..right]);
            }
            (band, w)
        }
    };
    let pixels = match &vertical {
        Some(vc) => vertical_pass(&band, band_width as usize * 3, vc, source_rows.start),
        None => band,
    };
    Ok(RgbImage::from_raw(w, h, pixels)
        .expect("passes produce exactly window.width x window.height RGB pixels"))
}

/// Fixed-point filter coefficients for a run of consecutive output positions along one axis.
struct Coeffs {
    /// For each output position: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` coefficients per output position (only the first `taps` are used).
    weights: Vec<i32>,
    ksize: usize,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `0..in_size`, restricted
    /// to the output positions in `outputs`.
    fn new(in_size: u32, out_size: u32, filter: Filter, outputs: std::ops::Range<u32>) -> Self {
        // Pillow keeps the box in f32 and the scale in f64; sizes below 2^24 are exact either way.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let count = outputs.len();
        let mut bounds = Vec::with_capacity(count);
        let mut weights = vec![0i32; count * ksize];
        let mut taps_f = vec![0f64; ksize];
        for (xx, k) in outputs.zip(weights.chunks_exact_mut(ksize)) {
            let center = (f64::from(xx) + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let taps = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, t) in taps_f[..taps].iter_mut().enumerate() {
                let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * inv_filterscale);
                *t = w;
                ww += w;
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            for (dst, &w) in k.iter_mut().zip(&taps_f[..taps]) {
                let w = if ww != 0.0 { w / ww } else { w };
                *dst = if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                };
            }
            bounds.push((xmin as usize, taps));
        }
        Coeffs {
            bounds,
            weights,
            ksize,
        }
    }

    /// The input indices any of these outputs reads (first of the first to last of the last).
    fn input_span(&self) -> std::ops::Range<usize> {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1);
        first..last.max(first)
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (min, n) = self.bounds[i];
        (min, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// Rounds a fixed-point accumulator to uint8 the way Pillow's `clip8` does (floor, then clip).
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

// Overflow: coefficients sum to 2^22 and their absolute values to at most ~1.3 x 2^22 for these
// filters, so 255 x that plus HALF stays far below i32::MAX, as in Pillow.

fn horizontal_pass<'a>(lines: impl Iterator<Item = &'a [u8]>, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = Vec::new();
    for line in lines {
        for i in 0..out_w {
            let (min, k) = c.taps(i);
            let pixels = &line[min * 3..(min + k.len()) * 3];
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (px, &w) in pixels.chunks_exact(3).zip(k) {
                r += i32::from(px[0]) * w;
                g += i32::from(px[1]) * w;
                b += i32::from(px[2]) * w;
            }
            out.extend_from_slice(&[clip8(r), clip8(g), clip8(b)]);
        }
    }
    out
}

/// `band` holds rows `first_row..` of the horizontally resampled image, `stride` bytes each.
fn vertical_pass(band: &[u8], stride: usize, c: &Coeffs, first_row: usize) -> Vec<u8> {
    let out_h = c.bounds.len();
    let mut out = Vec::with_capacity(out_h * stride);
    let mut acc = vec![0i32; stride];
    for i in 0..out_h {
        let (min, k) = c.taps(i);
        acc.fill(HALF);
        // Row by row: integer sums are exact, so the order of taps does not change the result.
        for (t, &w) in k.iter().enumerate() {
            let row = &band[(min - first_row + t) * stride..][..stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        out.extend(acc.iter().map(|&a| clip8(a)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 37 + y * 11) as u8,
                (x * 5 + y * 53) as u8,
                ((x ^ y) * 29) as u8,
            ])
        })
    }

    #[test]
    fn bicubic_matches_pillow_on_a_small_gradient() {
        // Expected bytes from Pillow 13: Image.frombytes("RGB", (7, 5), gradient).resize(...).
        let src = gradient(7, 5);
        let down = resize(&src, 3, 2, Filter::Bicubic).expect("valid sizes");
        let up = resize(&src, 10, 8, Filter::Bicubic).expect("valid sizes");
        assert_eq!(down.as_raw()[..], PILLOW_7X5_TO_3X2_BICUBIC[..]);
        assert_eq!(up.as_raw()[..12], PILLOW_7X5_TO_10X8_BICUBIC_FIRST4[..]);
    }

    #[test]
    fn bilinear_matches_pillow_on_a_small_gradient() {
        let src = gradient(7, 5);
        let down = resize(&src, 3, 2, Filter::Bilinear).expect("valid sizes");
        assert_eq!(down.as_raw()[..], PILLOW_7X5_TO_3X2_BILINEAR[..]);
    }

    #[test]
    fn a_window_equals_the_same_crop_of_a_full_resize() {
        let src = gradient(31, 17);
        for (w, h) in [(50, 40), (9, 5), (31, 40), (50, 17)] {
            let full = resize(&src, w, h, Filter::Bicubic).expect("valid sizes");
            let win = Window {
                left: 3,
                top: 2,
                width: w - 5,
                height: h - 3,
            };
            let part = resize_window(&src, w, h, Filter::Bicubic, win).expect("valid window");
            let crop = image::imageops::crop_imm(&full, 3, 2, w - 5, h - 3).to_image();
            assert_eq!(part, crop, "{w}x{h}");
        }
    }

    #[test]
    fn resizing_to_the_same_size_is_the_identity() {
        let src = gradient(13, 9);
        assert_eq!(resize(&src, 13, 9, Filter::Bicubic).expect("valid"), src);
    }

    #[test]
    fn a_one_pixel_image_scales_to_a_flat_image() {
        let src = RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 77]));
        let out = resize(&src, 224, 224, Filter::Bicubic).expect("valid");
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
    }

    #[test]
    fn zero_sizes_and_outside_windows_are_errors() {
        let src = gradient(4, 4);
        assert!(matches!(
            resize(&src, 0, 4, Filter::Bicubic),
            Err(ResizeError::Empty { .. })
        ));
        let win = Window {
            left: 3,
            top: 0,
            width: 3,
            height: 1,
        };
        assert!(matches!(
            resize_window(&src, 5, 5, Filter::Bicubic, win),
            Err(ResizeError::BadWindow { .. })
        ));
    }

    #[test]
    fn coefficient_magnitudes_leave_headroom_in_i32() {
        for (inp, out) in [(2, 224), (3, 224), (7, 3), (4000, 224), (225, 224), (1, 5)] {
            for f in [Filter::Bicubic, Filter::Bilinear] {
                let c = Coeffs::new(inp, out, f, 0..out);
                for i in 0..out as usize {
                    let sum: i64 = c.taps(i).1.iter().map(|&w| i64::from(w).abs()).sum();
                    assert!(sum * 255 + i64::from(HALF) < i64::from(i32::MAX) / 4 * 3);
                }
            }
        }
    }

    const PILLOW_7X5_TO_3X2_BICUBIC: [u8; 18] = [
        36, 49, 28, 120, 60, 80, 207, 71, 163, 62, 171, 87, 148, 182, 91, 196, 193, 123,
    ];
    const PILLOW_7X5_TO_3X2_BILINEAR: [u8; 18] = [
        43, 57, 36, 122, 68, 81, 201, 79, 155, 65, 163, 85, 144, 174, 91, 194, 185, 125,
    ];
    const PILLOW_7X5_TO_10X8_BICUBIC_FIRST4: [u8; 12] = [0, 0, 0, 16, 0, 14, 45, 2, 37, 71, 6, 55];
}
