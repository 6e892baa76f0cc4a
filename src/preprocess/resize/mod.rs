//! PIL-exact antialiased resampling of 8-bit RGB images.
//!
//! This is a port of the uint8 path of Pillow 13's `libImaging/Resample.c` (what
//! `Image.resize(size, BICUBIC | BILINEAR)` runs, and so what torchvision's `Resize` runs on a PIL
//! image): a separable convolution with the filter support widened by the downscale factor
//! (antialiasing), coefficients normalised to sum 1, turned into fixed point with 22 fractional
//! bits, and each pass rounded and clipped to uint8. Every step that affects the result follows
//! the C code: coefficient bounds, which source rows or columns a pass covers, rounding of
//! coefficients, clipping, and the order of the passes (horizontal first, except that Pillow 13
//! goes vertical first when the height shrinks by more than twice as many pixels as the width;
//! Pillow 12 and earlier always went horizontal first). For the same RGB input the output is
//! identical byte for byte.
//!
//! One addition: [`resize_window`] computes only a window of the resized image. Each output pixel
//! depends only on its own coefficients, so the window is exactly the crop of a full resize, while
//! an image resized to a huge intermediate (a 1 x 20,000 strip whose short side goes to 224) costs
//! only the window.

use image::RgbImage;

mod passes;

use passes::{horizontal_pass, vertical_pass};

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
    let horizontal =
        (width != src_width).then(|| Coeffs::new(src_width, width, filter, columns.clone()));
    let vertical =
        (height != src_height).then(|| Coeffs::new(src_height, height, filter, rows.clone()));
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    // pixels as the width does (`horizontal_first` in ImagingResampleInner); earlier versions
    // always went horizontal first. The uint8 rounding between passes makes the order visible.
    let shrink_h = i64::from(src_height) - i64::from(height);
    let shrink_w = i64::from(src_width) - i64::from(width);
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;

    let raw = src.as_raw().as_slice();
    let stride = src_width as usize * 3;
    let rows_of =
        |r: std::ops::Range<usize>| raw[r.start * stride..r.end * stride].chunks_exact(stride);
    let bytes = |r: std::ops::Range<u32>| r.start as usize * 3..r.end as usize * 3;
    let pixels = match (&horizontal, &vertical) {
        (None, None) => rows_of(rows.start as usize..rows.end as usize)
            .flat_map(|line| &line[bytes(columns.clone())])
            .copied()
            .collect(),
        (Some(hc), None) => horizontal_pass(rows_of(rows.start as usize..rows.end as usize), hc, 0),
        (None, Some(vc)) => vertical_pass(raw, stride, bytes(columns), vc, 0),
        (Some(hc), Some(vc)) if vertical_first => {
            // Only the source columns the horizontal window reads.
            let cols = hc.input_span();
            let band = vertical_pass(raw, stride, cols.start * 3..cols.end * 3, vc, 0);
            horizontal_pass(band.chunks_exact(cols.len() * 3), hc, cols.start)
        }
        (Some(hc), Some(vc)) => {
            // Only the source rows the vertical window reads (Pillow's ybox_first..ybox_last).
            let source_rows = vc.input_span();
            let band = horizontal_pass(rows_of(source_rows.clone()), hc, 0);
            let band_stride = w as usize * 3;
            vertical_pass(&band, band_stride, 0..band_stride, vc, source_rows.start)
        }
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

#[cfg(test)]
mod tests {
    use super::passes::{dot_rgb, horizontal_pass_with, vertical_pass_any};
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
    fn a_much_shorter_target_resamples_vertically_first_like_pillow_13() {
        // 13 -> 4 rows shrinks by 9, more than twice the 2 columns: Pillow 13 goes vertical
        // first (horizontal first would give different bytes here).
        let down = resize(&gradient(7, 13), 5, 4, Filter::Bicubic).expect("valid sizes");
        assert_eq!(down.as_raw()[..], PILLOW_7X13_TO_5X4_BICUBIC[..]);
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
        // (30, 5) and (40, 6) resample vertically first, (31, 5) only vertically.
        for (w, h) in [
            (50, 40),
            (9, 5),
            (31, 40),
            (50, 17),
            (30, 5),
            (40, 6),
            (31, 5),
        ] {
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

    /// The passes run on AVX2 where the CPU has it (the Pillow tests above then cover that
    /// path); the portable sums must give the same bytes, on tap counts odd and even, from a
    /// few taps (upscaling, where one coefficient nears 2^22) to hundreds (613 -> 2), on lines
    /// that start past the image's first column (a window's band), and on columns alternating
    /// between 0 and 255, whose sums overshoot most through the filters' negative lobes.
    #[test]
    fn the_vector_and_portable_passes_agree() {
        let gradient = gradient(613, 37);
        let stripes = RgbImage::from_fn(613, 37, |x, y| {
            let v = if (x + y / 3) % 2 == 0 { 255 } else { 0 };
            image::Rgb([v, 255 - v, if x % 3 == 0 { 255 } else { 0 }])
        });
        let stride = 613 * 3;
        for src in [&gradient, &stripes] {
            let raw = src.as_raw();
            for out in [224, 300, 1000, 17, 612, 2] {
                for f in [Filter::Bicubic, Filter::Bilinear] {
                    let c = Coeffs::new(613, out, f, 0..out);
                    let lines = || raw.chunks_exact(stride);
                    assert_eq!(
                        horizontal_pass(lines(), &c, 0),
                        horizontal_pass_with(lines(), &c, 0, dot_rgb),
                        "horizontal 613 -> {out}, {f:?}"
                    );
                    // Only the outputs 10..20 of the row, from lines cut to the columns they read.
                    let part = Coeffs::new(613, out, f, 10.min(out)..20.min(out));
                    let cols = part.input_span();
                    let band = || {
                        raw.chunks_exact(stride)
                            .map(|l| &l[cols.start * 3..cols.end * 3])
                    };
                    assert_eq!(
                        horizontal_pass(band(), &part, cols.start),
                        horizontal_pass_with(band(), &part, cols.start, dot_rgb),
                        "horizontal 613 -> {out} from column {}, {f:?}",
                        cols.start
                    );
                }
            }
        }
        let raw = gradient.as_raw();
        for out in [5, 11, 36, 80] {
            for f in [Filter::Bicubic, Filter::Bilinear] {
                let v = Coeffs::new(37, out, f, 0..out);
                let cols = 100..stride - 50;
                assert_eq!(
                    vertical_pass(raw, stride, cols.clone(), &v, 0),
                    vertical_pass_any(raw, stride, cols, &v, 0),
                    "vertical 37 -> {out}, {f:?}"
                );
            }
        }
    }

    const PILLOW_7X5_TO_3X2_BICUBIC: [u8; 18] = [
        36, 49, 28, 120, 60, 80, 207, 71, 163, 62, 171, 87, 148, 182, 91, 196, 193, 123,
    ];
    const PILLOW_7X13_TO_5X4_BICUBIC: [u8; 60] = [
        22, 76, 35, 71, 83, 39, 124, 90, 63, 177, 97, 158, 230, 104, 164, 56, 115, 131, 105, 122,
        134, 158, 129, 127, 219, 136, 67, 124, 143, 69, 94, 129, 154, 143, 136, 117, 204, 143, 85,
        153, 150, 89, 39, 157, 93, 128, 95, 61, 182, 102, 99, 200, 109, 134, 39, 116, 153, 72, 123,
        105,
    ];
    const PILLOW_7X5_TO_3X2_BILINEAR: [u8; 18] = [
        43, 57, 36, 122, 68, 81, 201, 79, 155, 65, 163, 85, 144, 174, 91, 194, 185, 125,
    ];
    const PILLOW_7X5_TO_10X8_BICUBIC_FIRST4: [u8; 12] = [0, 0, 0, 16, 0, 14, 45, 2, 37, 71, 6, 55];
}
