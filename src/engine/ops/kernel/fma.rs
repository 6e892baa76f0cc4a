//! The f32 tiles, for a CPU where bf16 is not faster (`super::super::speed`): tiles of 32
//! output features by [`NR`] rows, each step along `k` two 16-lane loads of the weights'
//! panel and, per row, one activation broadcast and two FMAs into f32 sums, with the
//! product's [`Epilogue`] applied in registers as the bf16 tiles apply it.
//!
//! Why not tract's f32 products: on an Intel Xeon of family 6 model 207 (2 FMA units of
//! 512 bits, 176 GFLOP/s a core by bench/fma_peak.c) they ran at about half that peak, these
//! tiles at 85 % (bench/RESULTS.md, row 58); and these share one packing of the weights
//! between a tower's plans, where tract packed them once per kernel it picked.
#![allow(unsafe_code)]

use super::tiles::{bias_panel, finish, OutRows};
use super::{Epilogue, Panels, MR};

/// Activation rows per tile: 16 accumulators of the 32, and a tile of a 16-token query's rows
/// fits twice with none wasted.
pub(super) const NR: usize = 8;

/// How many steps along `k` ahead the tiles prefetch the weight panel.
const PREFETCH: usize = 16;

/// All tiles of `rows` activation rows (`w.depth` f32 each, the summed length) against the weight panels `panels`,
/// then the `epilogue`, into those panels' columns of `y` (`rows x w.n` f32), every element of
/// which it writes.
///
/// # Safety
///
/// The CPU has AVX512-F, and no other thread touches those columns of `y` while it runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tiles(
    x: &[f32],
    rows: usize,
    w: Panels<'_, f32>,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    y: OutRows,
) {
    use std::arch::x86_64::*;
    let (n, k) = (w.n, w.depth);
    assert!(x.len() == rows * k && panels.end <= w.panels());
    // Blocks of up to 512 rows (a batch of 8 images, or of 32 queries of 16 tokens, split over
    // two threads makes two of 200 or 256): each weight panel is read from memory once per
    // block and stays in L2 (96 KiB at k = 768) while the block's tiles pass it, and the rows
    // stream from L3, which the FMAs hide. Blocks of 64 rows, each of which reads every panel
    // again, made the image tower's products 12 % slower (bench/RESULTS.md, row 58).
    const BLOCK: usize = 64 * NR;
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for p in panels.clone() {
            let panel = w.panel(p).as_ptr();
            let n0 = p * MR;
            let width = (n - n0).min(MR);
            let biases = bias_panel(epilogue.bias, n0, width);
            for t0 in (r0..r1).step_by(NR) {
                let live = (r1 - t0).min(NR);
                // Missing rows of the last tile read row t0 again; their sums are dropped.
                let src: [*const f32; NR] =
                    std::array::from_fn(|j| x[(t0 + j.min(live - 1)) * k..].as_ptr());
                let mut acc = [_mm512_setzero_ps(); 2 * NR];
                for q in 0..k {
                    // SAFETY: the panel holds k x MR floats, so 2 x 16 from q * MR are in it;
                    // each row of `src` holds k floats.
                    unsafe {
                        // The panel a little ahead, into L1 (the next panel's start near the
                        // end: panels lie one after another); prefetches do not fault.
                        let ahead = panel.wrapping_add((q + PREFETCH) * MR).cast::<i8>();
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                        let a0 = _mm512_loadu_ps(panel.add(q * MR));
                        let a1 = _mm512_loadu_ps(panel.add(q * MR + 16));
                        for (j, row) in src.iter().enumerate() {
                            let b = _mm512_set1_ps(*row.add(q));
                            acc[2 * j] = _mm512_fmadd_ps(a0, b, acc[2 * j]);
                            acc[2 * j + 1] = _mm512_fmadd_ps(a1, b, acc[2 * j + 1]);
                        }
                    }
                }
                finish(&mut acc, biases, epilogue.gelu);
                for (j, pair) in acc.chunks_exact(2).take(live).enumerate() {
                    // SAFETY: row t0 + j < rows, columns n0..n0 + width <= n, on this call's
                    // panels, which no other call writes (the caller's promise).
                    unsafe { y.store_f32(t0 + j, n0, width, pair[0], pair[1]) };
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn tiles(
    _: &[f32],
    _: usize,
    _: Panels<'_, f32>,
    _: std::ops::Range<usize>,
    _: Epilogue<'_>,
    _: OutRows,
) {
    unreachable!("the f32 tiles are only enabled on x86-64 with AVX-512")
}
