//! The two passes of the resampling, with the fixed-point taps on AVX2 where the CPU has it
//! (picked at run time: the baseline x86-64 target has no 32-bit vector multiply). The portable
//! sums are kept, and tested against the vector ones, for other CPUs.

use super::{clip8, Coeffs, HALF, PRECISION_BITS};

/// Resamples each line; `lines` start at source column `first_col`.
///
/// Integer sums are exact, so the grouping of the taps does not change the result: on AVX2
/// (16-bit multiply-adds, four taps at a time) as in the portable sums, it stays Pillow's byte
/// for byte.
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

/// [`horizontal_pass`] on AVX2 with 16-bit multiply-adds: `vpmaddwd` multiplies 16 pairs of
/// i16 and adds each pair into an i32, one µop where the 32-bit `vpmulld` takes two. A
/// coefficient has 22 fractional bits, too many for i16, so each is split as
/// `k = hi * 2^11 + lo` with `lo` its low 11 bits (0..2048) and `hi` the rest (|hi| <= about
/// 2^11): the taps are summed once against the `lo`s and once against the `hi`s, and
/// `(sum_hi << 11) + sum_lo` is the exact sum modulo 2^32, which is the sum itself since that
/// fits an i32 (see `clip8`'s headroom note). So the bytes stay Pillow's.
///
/// Four taps at a time: their 12 bytes of pixels are loaded into both halves of a register and
/// one byte shuffle widens them to i16 with neighbouring pixels' channels side by side
/// (`[Ra Rb Ga Gb Ba Bb 0 0]`, pixels 0-1 in the low half, 2-3 in the high one), against
/// coefficients laid out the same way once for all lines, padded with zeros to a multiple of
/// four taps. Each line is copied first into a buffer with room for the last group's reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
fn horizontal_pass_avx2<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    c: &Coeffs,
    first_col: usize,
) -> Vec<u8> {
    use std::arch::x86_64::*;
    let out_w = c.bounds.len();
    let span = c.input_span();
    let (lo, hi) = (span.start - first_col, span.end - first_col);
    // Per output pixel its first tap and how many groups of four taps; per group, the low and
    // the high parts of the coefficients.
    let mut plan: Vec<(usize, usize)> = Vec::with_capacity(out_w);
    let mut weights: Vec<[[i16; 16]; 2]> = Vec::new();
    for i in 0..out_w {
        let (min, k) = c.taps(i);
        let groups = k.len().div_ceil(4);
        for g in 0..groups {
            let mut parts = [[0i16; 16]; 2];
            for t in 0..4 {
                let w = k.get(4 * g + t).copied().unwrap_or(0);
                // An arithmetic shift: a negative weight's sign stays in its high part.
                for (half, part) in parts.iter_mut().zip([(w & 0x7ff) as i16, (w >> 11) as i16]) {
                    for ch in 0..4 {
                        half[(t / 2) * 8 + ch * 2 + t % 2] = part;
                    }
                }
            }
            weights.push(parts);
        }
        plan.push((min - first_col - lo, groups));
    }
    // Byte indices (0x80: a zero) that widen pixels 0-1 (low half) and 2-3 (high half) of the
    // 16 bytes loaded into both halves.
    let widen = _mm256_setr_epi8(
        0, -128, 3, -128, 1, -128, 4, -128, 2, -128, 5, -128, -128, -128, -128, -128, 6, -128, 9,
        -128, 7, -128, 10, -128, 8, -128, 11, -128, -128, -128, -128, -128,
    );
    // A group starts at most 3 pixels before the span's end and reads 16 bytes.
    let mut line_buf = vec![0u8; (hi - lo) * 3 + 16];
    let mut out = Vec::new();
    for line in lines {
        line_buf[..(hi - lo) * 3].copy_from_slice(&line[lo * 3..hi * 3]);
        out.reserve(out_w * 3);
        let mut w = weights.as_slice();
        for &(start, groups) in &plan {
            let (k, rest) = w.split_at(groups);
            w = rest;
            let mut sum_lo = _mm256_setzero_si256();
            let mut sum_hi = _mm256_setzero_si256();
            for (g, k) in k.iter().enumerate() {
                let at = (start + 4 * g) * 3;
                let bytes = &line_buf[at..at + 16];
                // SAFETY: `bytes` is 16 bytes, each half of `k` 16 i16 (32 bytes).
                let (p, k_lo, k_hi) = unsafe {
                    (
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(bytes.as_ptr().cast())),
                        _mm256_loadu_si256(k[0].as_ptr().cast()),
                        _mm256_loadu_si256(k[1].as_ptr().cast()),
                    )
                };
                let p = _mm256_shuffle_epi8(p, widen);
                sum_lo = _mm256_add_epi32(sum_lo, _mm256_madd_epi16(p, k_lo));
                sum_hi = _mm256_add_epi32(sum_hi, _mm256_madd_epi16(p, k_hi));
            }
            let sum = _mm256_add_epi32(_mm256_slli_epi32::<11>(sum_hi), sum_lo);
            let sum = _mm_add_epi32(
                _mm_add_epi32(
                    _mm256_castsi256_si128(sum),
                    _mm256_extracti128_si256::<1>(sum),
                ),
                _mm_set1_epi32(HALF),
            );
            // `clip8` on the four lanes: the shift, then saturating packs to i16 and to u8,
            // which clip to 0..=255 as its clamp does.
            let bytes = _mm_packus_epi16(
                _mm_packs_epi32(_mm_srai_epi32::<{ PRECISION_BITS as i32 }>(sum), sum),
                sum,
            );
            let [r, g, b, _] = _mm_cvtsi128_si32(bytes).to_le_bytes();
            out.extend_from_slice(&[r, g, b]);
        }
    }
    out
}

/// One output pixel's taps, as `(first, len)` into the widened line and the widened weights.
type Taps = (usize, usize);

/// The portable pass: each line widened to one `[i32; 4]` per pixel (R, G, B, 0), so that the
/// taps of an output pixel are a run of 4-lane multiply-adds.
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
