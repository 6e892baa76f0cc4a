//! The tile loop the integer products share ([`integer_tiles!`]): `int8.rs` and `int16.rs` each
//! make theirs from it with their instruction and their scaling of the integer sums.

/// How many steps along `k` (u32 of quads or pairs) ahead the tiles prefetch the weight panel.
pub(super) const PREFETCH: usize = 16;

/// Defines `pub(super) unsafe fn $name(xq, rows, w, $features, panels, epilogue, y)`: all tiles
/// of `rows` quantized activation rows (`w.depth` u32 of integers each, then `$extra` u32 of the
/// row's own numbers) against the weight panels `panels`, then the `epilogue`, into those
/// panels' columns of `y` (`rows x w.n` f32), every element of which it writes. Tiles of 32
/// output features by `$nr` rows, blocks of `$block` rows, each weight panel read once per
/// block and prefetched [`PREFETCH`] steps ahead; `$dot` adds a broadcast u32 of a row
/// times each of the panel's u32 into each i32 lane. `$scaled` gives a tile row's two vectors
/// of f32 sums from its two vectors of integer sums `$sums` (`[__m512i; 2]`), the row `$row`
/// (its `w.depth + $extra` u32), the panel's first feature `$n0` and `$features`.
///
/// The caller's `# Safety`: the CPU has AVX512-F, AVX512-BW and AVX512-VNNI, the integers'
/// sums fit an i32, and no other thread touches those columns of `y` while it runs.
macro_rules! integer_tiles {
    (
        $(#[$attr:meta])*
        fn $name:ident($features:ident: $features_ty:ty) {
            nr: $nr:expr,
            block: $block:expr,
            extra: $extra:expr,
            dot: $dot:ident,
            scaled: |$sums:ident, $row:ident, $n0:ident| $scaled:block
        }
    ) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        pub(super) unsafe fn $name(
            xq: &[u32],
            rows: usize,
            w: Panels<'_, u32>,
            $features: $features_ty,
            panels: std::ops::Range<usize>,
            epilogue: Epilogue<'_>,
            y: OutRows,
        ) {
            use std::arch::x86_64::*;
            let (n, depth) = (w.n, w.depth);
            let len = depth + $extra;
            assert!(xq.len() == rows * len && panels.end <= w.panels());
            for r0 in (0..rows).step_by($block) {
                let r1 = (r0 + $block).min(rows);
                for p in panels.clone() {
                    let panel = w.panel(p).as_ptr();
                    let $n0 = p * MR;
                    let width = (n - $n0).min(MR);
                    let biases = bias_panel(epilogue.bias, $n0, width);
                    for tile in (r0..r1).step_by($nr) {
                        let live = (r1 - tile).min($nr);
                        // Missing rows of the last tile read row `tile` again; their sums are
                        // dropped.
                        let src: [&[u32]; $nr] =
                            std::array::from_fn(|j| &xq[(tile + j.min(live - 1)) * len..][..len]);
                        let ptrs: [*const u32; $nr] = std::array::from_fn(|j| src[j].as_ptr());
                        let mut acc = [_mm512_setzero_si512(); 2 * $nr];
                        for q in 0..depth {
                            // SAFETY: the panel holds depth x MR u32, so 2 x 16 from q * MR
                            // are in it; each row holds `depth` u32 of integers first.
                            unsafe {
                                let ahead = panel
                                    .wrapping_add((q + super::integer_tiles::PREFETCH) * MR)
                                    .cast::<i8>();
                                _mm_prefetch::<_MM_HINT_T0>(ahead);
                                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                                let a0 = _mm512_loadu_si512(panel.add(q * MR).cast());
                                let a1 = _mm512_loadu_si512(panel.add(q * MR + 16).cast());
                                for (j, row) in ptrs.iter().enumerate() {
                                    let b = _mm512_set1_epi32(*row.add(q) as i32);
                                    acc[2 * j] = $dot(acc[2 * j], b, a0);
                                    acc[2 * j + 1] = $dot(acc[2 * j + 1], b, a1);
                                }
                            }
                        }
                        let mut out = [_mm512_setzero_ps(); 2 * $nr];
                        for (j, $row) in src.iter().enumerate() {
                            let $sums = [acc[2 * j], acc[2 * j + 1]];
                            [out[2 * j], out[2 * j + 1]] = $scaled;
                        }
                        finish(&mut out, biases, epilogue.gelu);
                        for (j, pair) in out.chunks_exact(2).take(live).enumerate() {
                            // SAFETY: row tile + j < rows, columns n0..n0 + width <= n, on this
                            // call's panels, which no other call writes (the caller's promise).
                            unsafe { y.store_f32(tile + j, $n0, width, pair[0], pair[1]) };
                        }
                    }
                }
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        pub(super) unsafe fn $name(
            _: &[u32],
            _: usize,
            _: Panels<'_, u32>,
            _: $features_ty,
            _: std::ops::Range<usize>,
            _: Epilogue<'_>,
            _: OutRows,
        ) {
            unreachable!("integer products are only enabled on x86-64 with AVX512-VNNI")
        }
    };
}
