//! The tiles of the bf16 products: activation rows rounded to bf16 pairs, and 32 x 5 tiles of
//! `vdpbf16ps` against the panels of [`super::PackedWeights`], with f32 sums and the product's
//! [`Epilogue`] applied in registers.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use super::{bf16_bits, gelu, Epilogue, Panels, MR, NR};

/// The output of a product, `n` f32 per row, as [`tiles`] writes it: threads of the pool each
/// write their own panels' columns of every row, so they share it as a pointer.
#[derive(Clone, Copy)]
pub(super) struct OutRows {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
    n: usize,
}

// SAFETY: an `OutRows` is only written through by `tiles`, each call on its own columns.
unsafe impl Send for OutRows {}
unsafe impl Sync for OutRows {}

impl OutRows {
    pub(super) fn new(out: &mut [MaybeUninit<f32>], n: usize) -> OutRows {
        OutRows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            n,
        }
    }
}

/// The activations `rows` (`k` floats each) as bf16 pairs: u32 `q` of a row of `xb` (`kp`
/// each) holds the row's `x[2q]` (low half) and `x[2q + 1]` (high half, 0 past the end), which
/// is the row's bf16 numbers in order. Rounded as [`round_row`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) fn round_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, xb: &mut [u32], kp: usize) {
    for (src, dst) in rows.zip(xb.chunks_exact_mut(kp)) {
        round_row(src, dst);
    }
}

/// One row `src` as bf16 pairs into `dst` (`ceil(src.len() / 2)` u32): rounded to nearest
/// even by `vcvtne2ps2bf16`, 32 at a time, which reads denormal inputs as zero; [`bf16_bits`]
/// for the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) fn round_row(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let whole = src.len() / 32;
    for (c, out) in dst.chunks_exact_mut(16).take(whole).enumerate() {
        let lo = &src[c * 32..c * 32 + 16];
        let hi = &src[c * 32 + 16..c * 32 + 32];
        // SAFETY: `lo` and `hi` hold 16 floats each, `out` 16 u32.
        unsafe {
            let pair =
                _mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi.as_ptr()), _mm512_loadu_ps(lo.as_ptr()));
            _mm512_storeu_si512(out.as_mut_ptr().cast(), as_bits(pair));
        }
    }
    for (q, d) in dst.iter_mut().enumerate().skip(whole * 16) {
        let lo = bf16_bits(src[2 * q]);
        let hi = src.get(2 * q + 1).map_or(0, |&v| bf16_bits(v));
        *d = u32::from(lo) | (u32::from(hi) << 16);
    }
}

/// All tiles of `rows` activation rows (bf16 pairs, `w.kp` per row) against the weight panels
/// `panels`, then the `epilogue`, into those panels' columns of `y` (`rows x w.n`), every
/// element of which it writes.
///
/// # Safety
///
/// The CPU has AVX512-F and AVX512-BF16, and no other thread touches those columns of `y`
/// while it runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tiles(
    xb: &[u32],
    rows: usize,
    w: Panels<'_>,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    y: OutRows,
) {
    use std::arch::x86_64::*;
    let (n, kp) = (w.n, w.kp);
    assert!(y.n == n && y.len == rows * n && panels.end <= w.panels());
    let Epilogue { bias, gelu } = epilogue;
    // Without a bias, -0.0 is added: the one number whose addition changes no f32.
    let mut bias_panel = [-0.0f32; MR];
    // Blocks of row tiles small enough to stay in L2 while every weight panel passes by.
    const BLOCK: usize = 16 * NR;
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for p in panels.clone() {
            let panel = w.panel(p);
            let n0 = p * MR;
            let width = (n - n0).min(MR);
            if let Some(bias) = bias {
                bias_panel[..width].copy_from_slice(&bias[n0..n0 + width]);
            }
            // SAFETY: `bias_panel` holds MR = 2 x 16 floats.
            let (bias0, bias1) = unsafe {
                (
                    _mm512_loadu_ps(bias_panel.as_ptr()),
                    _mm512_loadu_ps(bias_panel.as_ptr().add(16)),
                )
            };
            for t0 in (r0..r1).step_by(NR) {
                let live = (r1 - t0).min(NR);
                // Missing rows of the last tile read row t0 again; their sums are dropped.
                let row =
                    |j: usize| &xb[(t0 + j.min(live - 1)) * kp..(t0 + j.min(live - 1) + 1) * kp];
                let (b0, b1, b2, b3, b4) = (row(0), row(1), row(2), row(3), row(4));
                let mut acc = [_mm512_setzero_ps(); 2 * NR];
                for q in 0..kp {
                    // SAFETY: the panel holds kp x MR u32, so 2 x 16 from q * MR are in it.
                    let (a0, a1) = unsafe {
                        (
                            _mm512_loadu_si512(panel.as_ptr().add(q * MR).cast()),
                            _mm512_loadu_si512(panel.as_ptr().add(q * MR + 16).cast()),
                        )
                    };
                    let (a0, a1) = (as_bf16(a0), as_bf16(a1));
                    for (j, b) in [b0[q], b1[q], b2[q], b3[q], b4[q]].into_iter().enumerate() {
                        let b = as_bf16(_mm512_set1_epi32(b as i32));
                        acc[2 * j] = _mm512_dpbf16_ps(acc[2 * j], a0, b);
                        acc[2 * j + 1] = _mm512_dpbf16_ps(acc[2 * j + 1], a1, b);
                    }
                }
                for pair in acc.chunks_exact_mut(2) {
                    (pair[0], pair[1]) =
                        (_mm512_add_ps(pair[0], bias0), _mm512_add_ps(pair[1], bias1));
                }
                if gelu {
                    // All the tile's vectors at once: ten independent chains of the GELU's
                    // dependent steps, which the CPU overlaps.
                    for v in &mut acc {
                        *v = gelu::gelu16(*v);
                    }
                }
                for (j, pair) in acc.chunks_exact(2).take(live).enumerate() {
                    // SAFETY: row t0 + j < rows, columns n0..n0 + width <= n: inside `y`, and
                    // on this call's panels, which no other call writes (the caller's promise).
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(y.ptr.add((t0 + j) * n + n0), width)
                    };
                    let (v0, v1) = (pair[0], pair[1]);
                    if width == MR {
                        // SAFETY: `out` holds MR = 2 x 16 floats (uninitialised ones may be
                        // written).
                        unsafe {
                            let o = out.as_mut_ptr().cast::<f32>();
                            _mm512_storeu_ps(o, v0);
                            _mm512_storeu_ps(o.add(16), v1);
                        }
                        continue;
                    }
                    let mut tile = [0f32; MR];
                    // SAFETY: `tile` holds MR = 2 x 16 floats.
                    unsafe {
                        _mm512_storeu_ps(tile.as_mut_ptr(), v0);
                        _mm512_storeu_ps(tile.as_mut_ptr().add(16), v1);
                    }
                    for (o, &v) in out.iter_mut().zip(&tile[..width]) {
                        o.write(v);
                    }
                }
            }
        }
    }
}

/// The bits of the 32 bf16 numbers `v`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bits(v: std::arch::x86_64::__m512bh) -> std::arch::x86_64::__m512i {
    // SAFETY: both are 64 bytes of plain bits, valid for any bit pattern.
    unsafe { std::mem::transmute::<std::arch::x86_64::__m512bh, std::arch::x86_64::__m512i>(v) }
}

/// The 32 bf16 numbers whose bits `v` holds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bf16(v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are 64 bytes of plain bits, valid for any bit pattern.
    unsafe { std::mem::transmute::<std::arch::x86_64::__m512i, std::arch::x86_64::__m512bh>(v) }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn round_row(_: &[f32], _: &mut [u32]) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn round_rows<'a>(_: impl Iterator<Item = &'a [f32]>, _: &mut [u32], _: usize) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn tiles(
    _: &[u32],
    _: usize,
    _: Panels<'_>,
    _: std::ops::Range<usize>,
    _: Epilogue<'_>,
    _: OutRows,
) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}
