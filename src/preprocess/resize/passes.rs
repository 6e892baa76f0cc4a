//! The two passes of the resampling, with the fixed-point taps on AVX2 where the CPU has it
//! (picked at run time: the baseline x86-64 target has no 32-bit vector multiply). The portable
//! sums are kept, and tested against the vector ones, for other CPUs.

use super::{clip8, Coeffs, HALF};

/// Resamples each line; `lines` start at source column `first_col`.
///
/// Each line is first widened to one `[i32; 4]` per pixel (R, G, B, 0), so that the taps of an
/// output pixel are a run of 4-lane multiply-adds, which AVX2 does two taps at a time. Integer
/// sums are exact, so the grouping of the taps does not change the result: it stays Pillow's
/// byte for byte.
pub(super) fn horizontal_pass<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    c: &Coeffs,
    first_col: usize,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), all the function requires.
        #[allow(unsafe_code)]
        return unsafe { horizontal_pass_avx2(lines, c, first_col) };
    }
    horizontal_pass_with(lines, c, first_col, dot_rgb)
}

/// One output pixel's taps, as `(first, len)` into the widened line and the widened weights.
type Taps = (usize, usize);

/// [`horizontal_pass`] with the taps summed by [`dot_rgb_avx2`]: the baseline x86-64 target has
/// no 32-bit vector multiply, and without it the taps run one channel at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn horizontal_pass_avx2<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    c: &Coeffs,
    first_col: usize,
) -> Vec<u8> {
    horizontal_pass_with(lines, c, first_col, |pixels, k| dot_rgb_avx2(pixels, k))
}

#[inline(always)]
pub(super) fn horizontal_pass_with<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    c: &Coeffs,
    first_col: usize,
    dot: impl Fn(&[[i32; 4]], &[[i32; 4]]) -> [i32; 4],
) -> Vec<u8> {
    let out_w = c.bounds.len();
    let span = c.input_span();
    let (lo, hi) = (span.start - first_col, span.end - first_col);
    // Every weight repeated for the 4 lanes of a pixel, once for all lines.
    let mut weights: Vec<[i32; 4]> = Vec::new();
    let taps: Vec<Taps> = (0..out_w)
        .map(|i| {
            let (min, k) = c.taps(i);
            weights.extend(k.iter().map(|&w| [w; 4]));
            (min - first_col - lo, k.len())
        })
        .collect();
    let mut out = Vec::with_capacity(out_w * 3);
    let mut wide: Vec<[i32; 4]> = vec![[0; 4]; hi - lo];
    for line in lines {
        for (dst, px) in wide.iter_mut().zip(line[lo * 3..hi * 3].chunks_exact(3)) {
            *dst = [i32::from(px[0]), i32::from(px[1]), i32::from(px[2]), 0];
        }
        out.reserve(out_w * 3);
        let mut w = weights.as_slice();
        for &(start, n) in &taps {
            let (k, rest) = w.split_at(n);
            w = rest;
            let acc = dot(&wide[start..start + n], k);
            out.extend_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
        }
    }
    out
}

/// `HALF + sum(pixels[t] * k[t])` per channel; `pixels` and `k` have the same length.
pub(super) fn dot_rgb(pixels: &[[i32; 4]], k: &[[i32; 4]]) -> [i32; 4] {
    let mut sum = [HALF; 4];
    for (p, w) in pixels.iter().zip(k) {
        for ch in 0..4 {
            sum[ch] += p[ch] * w[ch];
        }
    }
    sum
}

/// [`dot_rgb`] with AVX2: two taps (8 lanes) per multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
fn dot_rgb_avx2(pixels: &[[i32; 4]], k: &[[i32; 4]]) -> [i32; 4] {
    use std::arch::x86_64::*;
    assert_eq!(pixels.len(), k.len());
    let mut acc = _mm256_setzero_si256();
    let mut pairs = pixels.chunks_exact(2);
    let mut weights = k.chunks_exact(2);
    for (p, w) in (&mut pairs).zip(&mut weights) {
        // SAFETY: `p` and `w` are two [i32; 4] each, the 32 bytes read.
        let (p, w) = unsafe {
            (
                _mm256_loadu_si256(p.as_ptr().cast()),
                _mm256_loadu_si256(w.as_ptr().cast()),
            )
        };
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(p, w));
    }
    let mut sum = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    if let (Some(p), Some(w)) = (pairs.remainder().first(), weights.remainder().first()) {
        // SAFETY: `p` and `w` are one [i32; 4] each, the 16 bytes read.
        let (p, w) = unsafe {
            (
                _mm_loadu_si128(p.as_ptr().cast()),
                _mm_loadu_si128(w.as_ptr().cast()),
            )
        };
        sum = _mm_add_epi32(sum, _mm_mullo_epi32(p, w));
    }
    sum = _mm_add_epi32(sum, _mm_set1_epi32(HALF));
    let mut out = [0i32; 4];
    // SAFETY: `out` is 16 bytes.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), sum) };
    out
}

/// `data` holds rows `first_row..` of an image, `stride` bytes each; only the bytes `cols` of
/// each row are resampled.
pub(super) fn vertical_pass(
    data: &[u8],
    stride: usize,
    cols: std::ops::Range<usize>,
    c: &Coeffs,
    first_row: usize,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), all the function requires.
        #[allow(unsafe_code)]
        return unsafe { vertical_pass_avx2(data, stride, cols, c, first_row) };
    }
    vertical_pass_any(data, stride, cols, c, first_row)
}

/// [`vertical_pass_any`] compiled for AVX2, whose 32-bit vector multiply lets the compiler
/// vectorize the row loop (the baseline x86-64 target has none).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn vertical_pass_avx2(
    data: &[u8],
    stride: usize,
    cols: std::ops::Range<usize>,
    c: &Coeffs,
    first_row: usize,
) -> Vec<u8> {
    vertical_pass_any(data, stride, cols, c, first_row)
}

#[inline(always)]
pub(super) fn vertical_pass_any(
    data: &[u8],
    stride: usize,
    cols: std::ops::Range<usize>,
    c: &Coeffs,
    first_row: usize,
) -> Vec<u8> {
    let width = cols.len();
    let mut out = Vec::with_capacity(c.bounds.len() * width);
    let mut acc = vec![0i32; width];
    for i in 0..c.bounds.len() {
        let (min, k) = c.taps(i);
        acc.fill(HALF);
        // Row by row: integer sums are exact, so the order of taps does not change the result.
        for (t, &w) in k.iter().enumerate() {
            let start = (min - first_row + t) * stride + cols.start;
            for (a, &p) in acc.iter_mut().zip(&data[start..start + width]) {
                *a += i32::from(p) * w;
            }
        }
        out.extend(acc.iter().map(|&a| clip8(a)));
    }
    out
}
