//! The 16-bit integer tiles, for a CPU with AVX512-VNNI where the check at start-up lets a
//! tower run them (`crate::engine::precision`): each activation row quantized per run to
//! integers in -511..=511 with a scale of its own ([`quantize_row`]), each weight feature alike,
//! once ([`super::PackedWeights::pack_int16`]); tiles of 32 output features by [`NR`] rows of
//! `vpdpwssd` (two 16-bit products added into each 32-bit lane), and the integer sums scaled
//! back to f32 before the product's [`Epilogue`].
//!
//! A row `x` becomes `s * q` and a feature's weights `t * v`, `s` and `t` their largest
//! magnitude over [`LEVELS`], so the sum over `k` of `x * w` is `s * t * sum(q * v)`. Ten bits
//! of levels rather than sixteen: a pair of products is at most `2 * 511^2`, so sums over `k`
//! up to [`MAX_K`] fit an i32 and the tiles need no wider sums; and they keep the text tower
//! where int8 cannot (a PyTorch emulation on the full-size random-weight export: lowest text
//! cosine to f32 0.99998 at 10 bits against 0.99975 in int8, bench/RESULTS.md, row 63).
//!
//! `vpdpwssd` does 315 G 16-bit operations a second a core on an Intel Xeon of family 6 model
//! 207, 1.8 times its FMAs' 172 GFLOP/s, with the weights at half the f32 ones' bytes.
#![allow(unsafe_code)]

use super::tiles::{bias_panel, finish, OutRows};
use super::{Epilogue, Panels, MR};

/// Activation rows per tile, as the f32 and int8 tiles.
pub(super) const NR: usize = 8;

/// The largest integer an activation or a weight is quantized to (and its negative the least).
pub(super) const LEVELS: f32 = 511.0;

/// The longest summed length whose sums cannot overflow an i32: `MAX_K / 2` pairs of at most
/// `2 * 511^2` each. A product by weights of a longer one is packed in f32 instead
/// ([`super::Packing::pack`]).
pub(super) const MAX_K: usize = 2 * (i32::MAX as usize / (2 * 511 * 511));

/// The u32 a quantized row takes for `k` values: `ceil(k / 2)` pairs of i16, then the row's
/// scale (f32 bits).
pub(super) fn row_len(k: usize) -> usize {
    k.div_ceil(2) + 1
}

/// One row `src` quantized into `dst` ([`row_len`] of `src.len()` u32): i16 `i` of the row
/// (the low half of u32 `i / 2` for even `i`, the high half for odd) is `x[i] / s` rounded to
/// nearest (ties to even), where `s` is the row's largest magnitude over [`LEVELS`] (1 for a
/// row of zeros); 0 past `src.len()`. Then `s`'s bits. A row with a NaN or an infinity is all
/// zeros with a NaN scale, so every output of its row is NaN, as an f32 product's would be.
/// The definition that [`quantize_rows`], which the products run, is tested against.
#[cfg(test)]
pub(super) fn quantize_row(src: &[f32], dst: &mut [u32]) {
    let kp = dst.len() - 1;
    assert_eq!(kp, src.len().div_ceil(2));
    let top = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let finite = src.iter().all(|v| v.is_finite());
    let (scale, inv) = row_scale(top, finite);
    let int = |i: usize| match src.get(i) {
        Some(&v) if finite => quantize(v, inv) as u16,
        _ => 0,
    };
    for (q, d) in dst[..kp].iter_mut().enumerate() {
        *d = u32::from(int(2 * q)) | (u32::from(int(2 * q + 1)) << 16);
    }
    dst[kp] = scale.to_bits();
}

/// A row's scale and its inverse, from its largest magnitude; NaN for a row with a NaN or an
/// infinity (see [`quantize_row`]).
fn row_scale(top: f32, finite: bool) -> (f32, f32) {
    if !finite {
        return (f32::NAN, 0.0);
    }
    let scale = if top > 0.0 { top / LEVELS } else { 1.0 };
    (scale, 1.0 / scale)
}

/// One value's integer.
#[cfg(test)]
fn quantize(v: f32, inv: f32) -> i16 {
    (v * inv).round_ties_even().clamp(-LEVELS, LEVELS) as i16
}

/// [`quantize_row`] on each of `rows` into `xq` ([`row_len`] u32 each), 16 values at a time:
/// the same integers and scale.
///
/// # Safety
///
/// The CPU has AVX512-F and AVX512-BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, xq: &mut [u32]) {
    use std::arch::x86_64::*;
    let mut rows = rows.peekable();
    let Some(first) = rows.peek() else {
        return;
    };
    let (k, len) = (first.len(), row_len(first.len()));
    let chunks = k.div_ceil(16);
    let (floor, top) = (
        _mm512_set1_epi32(-(LEVELS as i32)),
        _mm512_set1_epi32(LEVELS as i32),
    );
    for (src, dst) in rows.zip(xq.chunks_exact_mut(len)) {
        // Each chunk of 16 values, the last one's lanes past `k` masked (read and stored as 0).
        let mask = |c: usize| -> __mmask16 {
            let live = (k - c * 16).min(16);
            ((1u32 << live) - 1) as __mmask16
        };
        let mut most = _mm512_setzero_ps();
        // Zero times every value: NaN in some lane if any is NaN or infinite.
        let mut nan = _mm512_setzero_ps();
        for c in 0..chunks {
            // SAFETY: the masked lanes are inside `src`.
            let v = unsafe { _mm512_maskz_loadu_ps(mask(c), src.as_ptr().add(c * 16)) };
            most = _mm512_max_ps(most, _mm512_abs_ps(v));
            nan = _mm512_add_ps(nan, _mm512_mul_ps(v, _mm512_setzero_ps()));
        }
        let finite = _mm512_reduce_add_ps(nan) == 0.0;
        let (scale, inv) = row_scale(_mm512_reduce_max_ps(most), finite);
        let ints = dst.as_mut_ptr().cast::<i16>();
        let vinv = _mm512_set1_ps(inv);
        for c in 0..chunks {
            // SAFETY: the masked lanes are inside `src`; 16 i16 from c * 16 are inside the
            // row's pairs (2 * ceil(k / 2) i16) for every chunk but a last one of fewer, whose
            // store is masked to its lanes (and a last odd lane's pair is written below).
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask(c), src.as_ptr().add(c * 16));
                // Rounded to nearest even, as MXCSR has it; 0 times anything for a row that is
                // not finite.
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
                let q = _mm512_min_epi32(_mm512_max_epi32(q, floor), top);
                let q = if finite { q } else { _mm512_setzero_si512() };
                _mm512_mask_cvtepi32_storeu_epi16(ints.add(c * 16).cast(), mask(c), q);
            }
        }
        if k % 2 == 1 {
            // The high half of the last pair.
            // SAFETY: i16 k is inside the row's pairs.
            unsafe { ints.add(k).write(0) };
        }
        dst[len - 1] = scale.to_bits();
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn quantize_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, xq: &mut [u32]) {
    let _ = (rows, xq);
    unreachable!("16-bit integer products are only enabled on x86-64 with AVX512-VNNI")
}

integer_tiles! {
    /// The 16-bit tiles ([`integer_tiles!`]): rows of [`row_len`] u32 (`w.depth` pairs, then the
    /// scale), `vpdpwssd`, `sum(q * v)` times `s * t` as f32, each feature's scale `t` in
    /// `scales` (`MR` per panel). Each weight panel is read once per block of rows whose bytes
    /// are the int8 tiles' block's.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512-F, AVX512-BW and AVX512-VNNI, `w.depth * 2 <= MAX_K`, and no other
    /// thread touches those columns of `y` while it runs.
    fn tiles(scales: &[f32]) {
        nr: NR,
        block: 32 * NR,
        extra: 1,
        dot: _mm512_dpwssd_epi32,
        scaled: |sums, row, n0| {
            let s = _mm512_set1_ps(f32::from_bits(row[row.len() - 1]));
            let t = &scales[n0..][..MR];
            // SAFETY: `t` holds MR = 2 x 16.
            let (t0, t1) = unsafe { (_mm512_loadu_ps(t.as_ptr()), _mm512_loadu_ps(t.as_ptr().add(16))) };
            [
                _mm512_mul_ps(_mm512_cvtepi32_ps(sums[0]), _mm512_mul_ps(s, t0)),
                _mm512_mul_ps(_mm512_cvtepi32_ps(sums[1]), _mm512_mul_ps(s, t1)),
            ]
        }
    }
}
