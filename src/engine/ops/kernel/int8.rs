//! The int8 tiles, for a CPU with AVX512-VNNI where the check at start-up lets a tower run them
//! (`crate::engine::precision`): each activation row quantized per run to unsigned bytes with a
//! scale and a zero point of its own ([`quantize_row`]), each weight feature to signed bytes
//! with a scale of its own, once ([`super::PackedWeights::pack_int8`]); tiles of 32 output
//! features by [`NR`] rows of `vpdpbusd` (four byte products added into each 32-bit lane), and
//! the integer sums scaled back to f32 before the product's [`Epilogue`].
//!
//! A row `x` becomes `s * (q - z)` with `q` in 0..=255: `s` spans the row's range (0 always
//! inside it) over 255 steps, `z` is where 0 falls. A feature's weights become `t * v` with `v`
//! in -127..=127. So the sum over `k` of `x * w` is `s * t * (sum(q * v) - z * sum(v))`: one
//! integer sum per row and feature from the tiles, the feature's `sum(v)` packed with the
//! weights. Sums reach at most `k * 255 * 127`, inside an i32 for `k` up to 66,000.
//!
//! On an Intel Xeon of family 6 model 207, `vpdpbusd` does 538 G byte operations a second a
//! core against the FMAs' 172 GFLOP/s (bench/RESULTS.md, row 62), and the weights take a
//! quarter of the f32 ones' memory and bandwidth.
#![allow(unsafe_code)]

use super::tiles::{bias_panel, finish, OutRows};
use super::{Epilogue, Panels, MR};

/// Activation rows per tile, as the f32 tiles.
pub(super) const NR: usize = 8;

/// The u32 a quantized row takes for `k` values: `ceil(k / 4)` quads of bytes, then the row's
/// scale (f32 bits) and zero point.
pub(super) fn row_len(k: usize) -> usize {
    k.div_ceil(4) + 2
}

/// One row `src` quantized into `dst` ([`row_len`] of `src.len()` u32): byte `i` of the row is
/// `x[i] / s` rounded to nearest (ties to even), plus `z`, clamped to 0..=255, where `s` is the
/// row's range, taken to include 0, over 255 (1 for a row of zeros) and `z` is `-min / s`
/// rounded alike; the bytes past `src.len()` are `z` (the weights there are 0). Then `s`'s
/// bits and `z`. The definition that [`quantize_rows`], which the products run, is tested
/// against.
#[cfg(test)]
pub(super) fn quantize_row(src: &[f32], dst: &mut [u32]) {
    let kq = dst.len() - 2;
    assert_eq!(kq, src.len().div_ceil(4));
    let (lo, hi) = src
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let finite = src.iter().all(|v| v.is_finite());
    let (scale, inv, zero) = row_scale(lo, hi, finite);
    let byte = |i: usize| src.get(i).map_or(zero as u8, |&v| quantize(v, inv, zero));
    for (q, d) in dst[..kq].iter_mut().enumerate() {
        *d = u32::from_le_bytes(std::array::from_fn(|i| byte(4 * q + i)));
    }
    dst[kq] = scale.to_bits();
    dst[kq + 1] = zero as u32;
}

/// A row's scale, its inverse and its zero point, from its least and greatest values (0
/// included). A row with a NaN or an infinity gets a NaN scale (and bytes and zero point 0),
/// so that every output of its row is NaN, as an f32 product's would be: a bad input stays
/// visible as one (the encoders refuse a non-finite embedding) instead of being clamped into
/// a plausible one.
fn row_scale(lo: f32, hi: f32, finite: bool) -> (f32, f32, f32) {
    if !finite {
        return (f32::NAN, f32::NAN, 0.0);
    }
    let range = hi - lo;
    let scale = if range > 0.0 && range.is_finite() {
        range / 255.0
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    (scale, inv, (-lo * inv).round_ties_even().clamp(0.0, 255.0))
}

/// One value's byte.
fn quantize(v: f32, inv: f32, zero: f32) -> u8 {
    ((v * inv).round_ties_even() + zero).clamp(0.0, 255.0) as u8
}

/// [`quantize_row`] on each of `rows` into `xq` ([`row_len`] u32 each), 16 values at a time:
/// the same bytes, scale and zero point.
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
    let whole = k / 16;
    for (src, dst) in rows.zip(xq.chunks_exact_mut(len)) {
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        // Zero times every value: NaN in some lane if any is NaN or infinite.
        let mut nan = _mm512_setzero_ps();
        for c in 0..whole {
            // SAFETY: 16 floats from c * 16 < k.
            let v = unsafe { _mm512_loadu_ps(src.as_ptr().add(c * 16)) };
            (lo, hi) = (_mm512_min_ps(lo, v), _mm512_max_ps(hi, v));
            nan = _mm512_add_ps(nan, _mm512_mul_ps(v, _mm512_setzero_ps()));
        }
        let (mut lo, mut hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let mut finite = _mm512_reduce_add_ps(nan) == 0.0;
        for &v in &src[whole * 16..] {
            (lo, hi) = (lo.min(v), hi.max(v));
            finite &= v.is_finite();
        }
        let (scale, inv, zero) = row_scale(lo, hi, finite);
        let bytes = dst.as_mut_ptr().cast::<u8>();
        let (vinv, vzero) = (_mm512_set1_ps(inv), _mm512_set1_epi32(zero as i32));
        let (floor, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        for c in 0..whole {
            // SAFETY: 16 floats from c * 16 < k; 16 bytes from c * 16 inside the row's quads
            // (4 * ceil(k / 4) bytes).
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(c * 16));
                // Rounded to nearest even, as MXCSR has it.
                let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vzero);
                let q = _mm512_min_epi32(_mm512_max_epi32(q, floor), top);
                _mm_storeu_si128(bytes.add(c * 16).cast(), _mm512_cvtepi32_epi8(q));
            }
        }
        let kq = len - 2;
        for i in whole * 16..4 * kq {
            let b = src.get(i).map_or(zero as u8, |&v| quantize(v, inv, zero));
            // SAFETY: i < 4 * kq, inside the row's quads.
            unsafe { bytes.add(i).write(b) };
        }
        dst[kq] = scale.to_bits();
        dst[kq + 1] = zero as u32;
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn quantize_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, xq: &mut [u32]) {
    let _ = (rows, xq);
    unreachable!("int8 products are only enabled on x86-64 with AVX512-VNNI")
}

/// The weights' per-feature numbers the tiles scale their sums by: `scales` and `sums` of
/// [`super::Packed::Int8`], `MR` per panel.
#[derive(Clone, Copy)]
pub(super) struct Features<'a> {
    pub(super) scales: &'a [f32],
    pub(super) sums: &'a [i32],
}

integer_tiles! {
    /// The int8 tiles ([`integer_tiles!`]): rows of [`row_len`] u32 (`w.depth` quads, then the
    /// scale and the zero point), `vpdpbusd`, `sum(q * v) - z * sum(v)` times `s * t` as f32.
    /// Sums reach at most `k * 255 * 127`, inside an i32 for `k` up to 66,000. Each weight
    /// panel (a quarter of the f32 tiles') is read once per block of rows, as theirs.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512-F, AVX512-BW and AVX512-VNNI, and no other thread touches those
    /// columns of `y` while it runs.
    fn tiles(features: Features<'_>) {
        nr: NR,
        block: 64 * NR,
        extra: 2,
        dot: _mm512_dpbusd_epi32,
        scaled: |sums, row, n0| {
            let kq = row.len() - 2;
            let (s, z) = (f32::from_bits(row[kq]), row[kq + 1] as i32);
            let (s, z) = (_mm512_set1_ps(s), _mm512_set1_epi32(z));
            let (t, v) = (&features.scales[n0..][..MR], &features.sums[n0..][..MR]);
            // SAFETY: `t` and `v` hold MR = 2 x 16 each.
            let (t0, t1, v0, v1) = unsafe {
                (
                    _mm512_loadu_ps(t.as_ptr()),
                    _mm512_loadu_ps(t.as_ptr().add(16)),
                    _mm512_loadu_si512(v.as_ptr().cast()),
                    _mm512_loadu_si512(v.as_ptr().add(16).cast()),
                )
            };
            let exact0 = _mm512_sub_epi32(sums[0], _mm512_mullo_epi32(z, v0));
            let exact1 = _mm512_sub_epi32(sums[1], _mm512_mullo_epi32(z, v1));
            [
                _mm512_mul_ps(_mm512_cvtepi32_ps(exact0), _mm512_mul_ps(s, t0)),
                _mm512_mul_ps(_mm512_cvtepi32_ps(exact1), _mm512_mul_ps(s, t1)),
            ]
        }
    }
}
