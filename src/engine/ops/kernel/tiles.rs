//! The tiles of the bf16 products: activation rows rounded to bf16 pairs, and 32 x 5 tiles of
//! `vdpbf16ps` against the panels of [`super::PackedWeights`], with f32 sums and the product's
//! [`Epilogue`] applied in registers.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use super::{bf16_bits, gelu, Epilogue, Panels, MR, NR};

/// The output of a product, as [`tiles`] writes it: `rows` rows of `n` outputs, either as f32
/// or rounded to bf16 pairs (`ceil(n / 2)` u32 a row, as [`round_row`] gives them, for a next
/// product to read as they are). Threads of the pool each write their own rows, or their own
/// panels' columns of every row, so they share it as a pointer.
#[derive(Clone, Copy)]
pub(super) struct OutRows {
    ptr: OutPtr,
    rows: usize,
    n: usize,
}

#[derive(Clone, Copy)]
enum OutPtr {
    F32(*mut MaybeUninit<f32>),
    Pairs(*mut MaybeUninit<u32>),
}

// SAFETY: an `OutRows` is only written through by `tiles`, each call on its own rows or columns.
unsafe impl Send for OutRows {}
unsafe impl Sync for OutRows {}

impl OutRows {
    /// `out` as rows of `n` f32.
    pub(super) fn f32s(out: &mut [MaybeUninit<f32>], n: usize) -> OutRows {
        assert!(n > 0 && out.len().is_multiple_of(n));
        OutRows {
            ptr: OutPtr::F32(out.as_mut_ptr()),
            rows: out.len() / n,
            n,
        }
    }

    /// `out` as rows of `n` outputs rounded to bf16 pairs, `ceil(n / 2)` u32 each, the bits
    /// [`round_row`] gives.
    pub(super) fn pairs(out: &mut [MaybeUninit<u32>], n: usize) -> OutRows {
        assert!(n > 0 && out.len().is_multiple_of(n.div_ceil(2)));
        OutRows {
            ptr: OutPtr::Pairs(out.as_mut_ptr()),
            rows: out.len() / n.div_ceil(2),
            n,
        }
    }

    /// Stores `v0` then `v1`'s first `width` lanes as f32 outputs `n0..n0 + width` of `row`.
    ///
    /// # Safety
    ///
    /// These are f32 rows, `row < rows` and `n0 + width <= n`, `width <= MR`, no other thread
    /// writes those outputs, and the CPU has AVX512-F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn store_f32(
        self,
        row: usize,
        n0: usize,
        width: usize,
        v0: std::arch::x86_64::__m512,
        v1: std::arch::x86_64::__m512,
    ) {
        use std::arch::x86_64::*;
        let OutPtr::F32(ptr) = self.ptr else {
            unreachable!("f32 outputs")
        };
        // SAFETY: inside `y` (the caller's promise).
        let out = unsafe { std::slice::from_raw_parts_mut(ptr.add(row * self.n + n0), width) };
        if width == MR {
            // SAFETY: `out` holds MR = 2 x 16 floats (uninitialised ones may be written).
            unsafe {
                let o = out.as_mut_ptr().cast::<f32>();
                _mm512_storeu_ps(o, v0);
                _mm512_storeu_ps(o.add(16), v1);
            }
            return;
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

    /// Rows `first..first + count` of these.
    pub(super) fn rows(self, first: usize, count: usize) -> OutRows {
        assert!(first + count <= self.rows);
        // SAFETY: row `first` starts inside the buffer (or at its end, for no rows).
        let ptr = unsafe {
            match self.ptr {
                OutPtr::F32(p) => OutPtr::F32(p.add(first * self.n)),
                OutPtr::Pairs(p) => OutPtr::Pairs(p.add(first * self.n.div_ceil(2))),
            }
        };
        OutRows {
            ptr,
            rows: count,
            n: self.n,
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

/// All tiles of `rows` activation rows (bf16 pairs, `w.depth` per row) against the weight panels
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
    w: Panels<'_, u32>,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    y: OutRows,
) {
    use std::arch::x86_64::*;
    let (n, kp) = (w.n, w.depth);
    assert!(y.n == n && y.rows == rows && panels.end <= w.panels());
    let Epilogue { bias, gelu } = epilogue;
    // Blocks of row tiles small enough to stay in L2 while every weight panel passes by.
    const BLOCK: usize = 16 * NR;
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for p in panels.clone() {
            let panel = w.panel(p);
            let n0 = p * MR;
            let width = (n - n0).min(MR);
            let biases = bias_panel(bias, n0, width);
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
                finish(&mut acc, biases, gelu);
                for (j, pair) in acc.chunks_exact(2).take(live).enumerate() {
                    let (v0, v1) = (pair[0], pair[1]);
                    match y.ptr {
                        OutPtr::F32(_) => {
                            // SAFETY: row t0 + j < rows, columns n0..n0 + width <= n, on this
                            // call's panels, which no other call writes (the caller's promise).
                            unsafe { y.store_f32(t0 + j, n0, width, v0, v1) }
                        }
                        OutPtr::Pairs(ptr) => {
                            // SAFETY: row t0 + j < rows; its pairs from n0 / 2 (n0 is even)
                            // to ceil((n0 + width) / 2) are inside `y`, and on this call's
                            // panels.
                            unsafe {
                                store_pairs(
                                    ptr.add((t0 + j) * n.div_ceil(2) + n0 / 2),
                                    width,
                                    v0,
                                    v1,
                                )
                            };
                        }
                    }
                }
            }
        }
    }
}

/// The epilogue's bias for the panel of features `n0..n0 + width` (`width <= MR`), as two
/// vectors; -0.0 without a bias (or past `width`), the one number whose addition changes no
/// f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn bias_panel(
    bias: Option<&[f32]>,
    n0: usize,
    width: usize,
) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let mut panel = [-0.0f32; MR];
    if let Some(bias) = bias {
        panel[..width].copy_from_slice(&bias[n0..n0 + width]);
    }
    // SAFETY: `panel` holds MR = 2 x 16 floats.
    unsafe {
        (
            _mm512_loadu_ps(panel.as_ptr()),
            _mm512_loadu_ps(panel.as_ptr().add(16)),
        )
    }
}

/// The epilogue on a tile's sums (two vectors a row): the bias added, then the GELU applied.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn finish(
    acc: &mut [std::arch::x86_64::__m512],
    (bias0, bias1): (std::arch::x86_64::__m512, std::arch::x86_64::__m512),
    gelu: bool,
) {
    use std::arch::x86_64::*;
    for pair in acc.chunks_exact_mut(2) {
        (pair[0], pair[1]) = (_mm512_add_ps(pair[0], bias0), _mm512_add_ps(pair[1], bias1));
    }
    if gelu {
        // All the tile's vectors at once: independent chains of the GELU's dependent steps,
        // which the CPU overlaps.
        for v in acc {
            *v = gelu::gelu16(*v);
        }
    }
}

/// The `width` sums `v0` then `v1` (the first `width` of their 32 lanes) rounded to bf16 pairs
/// at `out`, `ceil(width / 2)` u32, as [`round_row`] rounds a row: a whole panel is one chunk of
/// 32 (`vcvtne2ps2bf16`), a partial one the row's tail ([`bf16_bits`], the last high half 0 for
/// an odd width).
///
/// # Safety
///
/// `out` is valid for `ceil(width / 2)` u32 writes; the CPU has AVX512-F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn store_pairs(
    out: *mut MaybeUninit<u32>,
    width: usize,
    v0: std::arch::x86_64::__m512,
    v1: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    if width == MR {
        // SAFETY: 16 u32 at `out` (the caller's promise).
        unsafe { _mm512_storeu_si512(out.cast(), as_bits(_mm512_cvtne2ps_pbh(v1, v0))) };
        return;
    }
    let mut tile = [0f32; MR];
    // SAFETY: `tile` holds MR = 2 x 16 floats.
    unsafe {
        _mm512_storeu_ps(tile.as_mut_ptr(), v0);
        _mm512_storeu_ps(tile.as_mut_ptr().add(16), v1);
    }
    for q in 0..width.div_ceil(2) {
        let lo = bf16_bits(tile[2 * q]);
        let hi = if 2 * q + 1 < width {
            bf16_bits(tile[2 * q + 1])
        } else {
            0
        };
        // SAFETY: q < ceil(width / 2) (the caller's promise).
        unsafe { (*out.add(q)).write(u32::from(lo) | (u32::from(hi) << 16)) };
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
    _: Panels<'_, u32>,
    _: std::ops::Range<usize>,
    _: Epilogue<'_>,
    _: OutRows,
) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}
