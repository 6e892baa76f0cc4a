//! The bf16 matrix product behind [`super::Bf16MatMul`]: weights packed once in the operand
//! layout of AVX512-BF16's `vdpbf16ps`, activations rounded per run, 32 x 5 tiles with f32 sums,
//! rows split over the tower pool.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use tract_onnx::prelude::tract_ndarray::{ArrayView1, ArrayView2};

/// Output features per weight panel: two 16-lane accumulators.
const MR: usize = 32;
/// Activation rows per tile.
const NR: usize = 5;

/// Proof that this CPU runs AVX512-F and AVX512-BF16: only [`Bf16Cpu::detect`] makes one,
/// after asking the CPU, and packed weights cannot exist without one, so [`matmul`] never
/// reaches the vector code on a CPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Bf16Cpu(());

impl Bf16Cpu {
    /// The proof, where the CPU has the instructions.
    pub(super) fn detect() -> Option<Bf16Cpu> {
        #[cfg(target_arch = "x86_64")]
        {
            (std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16"))
            .then_some(Bf16Cpu(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

/// Weights `[K, N]` rounded to bf16, in panels of `MR` output features: for each pair `q` of `k`,
/// one u32 per feature holding `w[2q][n]` (low half) and `w[2q + 1][n]` (high half), which is
/// the operand layout of `vdpbf16ps`.
#[derive(Debug)]
pub(super) struct PackedWeights {
    /// Packing needs the proof, so every product of these weights has it.
    cpu: Bf16Cpu,
    pub(super) k: usize,
    pub(super) n: usize,
    /// `ceil(k / 2)`.
    kp: usize,
    pub(super) data: Vec<u32>,
}

impl PackedWeights {
    /// `w(k, n)` reads the f32 weight of input `k`, output `n`.
    pub(super) fn pack(
        cpu: Bf16Cpu,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(MR);
        let mut data = vec![0u32; panels * kp * MR];
        let get = |k_ix: usize, n_ix: usize| {
            if k_ix < k && n_ix < n {
                u32::from(bf16_bits(w(k_ix, n_ix)))
            } else {
                0
            }
        };
        for p in 0..panels {
            for q in 0..kp {
                for r in 0..MR {
                    let n_ix = p * MR + r;
                    data[(p * kp + q) * MR + r] = get(2 * q, n_ix) | (get(2 * q + 1, n_ix) << 16);
                }
            }
        }
        PackedWeights {
            cpu,
            k,
            n,
            kp,
            data,
        }
    }

    fn view(&self) -> Panels<'_> {
        Panels {
            n: self.n,
            kp: self.kp,
            data: &self.data,
        }
    }
}

/// The right operand of a product in [`PackedWeights`]' layout: panels of `MR` output features,
/// `kp` u32 (bf16 pairs along `k`) per feature and panel. Packed once for weights, per run for
/// the attention's activations (`activation_product`).
#[derive(Clone, Copy)]
struct Panels<'a> {
    n: usize,
    kp: usize,
    data: &'a [u32],
}

impl Panels<'_> {
    fn panel(&self, p: usize) -> &[u32] {
        &self.data[p * self.kp * MR..(p + 1) * self.kp * MR]
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(MR)
    }
}

/// f32 to bf16 with rounding to nearest, ties to even (as `vcvtne2ps2bf16`; no NaN inputs here).
pub(super) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// `y[r][n] = sum_k x[r][k] * w[k][n]` for `rows` rows of `x` (`k` floats each).
pub(super) fn matmul(x: &[f32], rows: usize, w: &PackedWeights) -> Vec<f32> {
    let (k, n, kp) = (w.k, w.n, w.kp);
    let Bf16Cpu(()) = w.cpu;
    // Not zeroed first: the tiles write every element (a memset of every product's output was
    // 2-3 % of a run).
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    let out = &mut y.spare_capacity_mut()[..rows * n];
    // Each thread rounds its own rows of activations to bf16, then runs their tiles.
    let run = |first_row: usize, y: &mut [MaybeUninit<f32>]| {
        let chunk_rows = y.len() / n;
        let x = &x[first_row * k..(first_row + chunk_rows) * k];
        let mut xb = vec![0u32; chunk_rows * kp];
        // SAFETY: `w` holds a `Bf16Cpu` (packing takes one), which only exists where the CPU
        // has AVX512-F and AVX512-BF16, the features `round_rows` and `tiles` are compiled for.
        unsafe {
            round_rows(x, k, &mut xb, kp);
            tiles(&xb, chunk_rows, w.view(), y)
        }
    };
    let threads = match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) => Some(pool),
        _ => None,
    };
    match threads {
        Some(pool) if rows >= 2 * NR => {
            // Row ranges, a multiple of NR each, one per thread.
            let per = rows.div_ceil(pool.current_num_threads()).div_ceil(NR) * NR;
            pool.install(|| {
                use rayon::prelude::*;
                out.par_chunks_mut(per * n)
                    .enumerate()
                    .for_each(|(i, chunk)| run(i * per, chunk));
            });
        }
        _ => run(0, out),
    }
    // SAFETY: `tiles` wrote all `rows x n` elements: every row of every chunk, against every
    // panel, and the panels cover the `n` columns.
    unsafe { y.set_len(rows * n) };
    y
}

/// The activations `x` (rows of `k` floats) as bf16 pairs: u32 `q` of a row of `xb` (`kp`
/// each) holds the row's `x[2q]` (low half) and `x[2q + 1]` (high half, 0 past the end), which
/// is the row's bf16 numbers in order. Rounded as [`round_row`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn round_rows(x: &[f32], k: usize, xb: &mut [u32], kp: usize) {
    for (src, dst) in x.chunks_exact(k).zip(xb.chunks_exact_mut(kp)) {
        round_row(src, dst);
    }
}

/// One row `src` as bf16 pairs into `dst` (`ceil(src.len() / 2)` u32): rounded to nearest
/// even by `vcvtne2ps2bf16`, 32 at a time, which reads denormal inputs as zero; [`bf16_bits`]
/// for the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn round_row(src: &[f32], dst: &mut [u32]) {
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

/// `batches` products of two activations (see [`activation_product`]), `operands(i)` giving
/// product `i`'s `a` (`m x k`) and `b` (`k x n`); the results one after the other
/// (`batches x m x n`), consecutive products split over the tower pool in a run that has one.
pub(super) fn activation_products<'v>(
    cpu: Bf16Cpu,
    batches: usize,
    m: usize,
    n: usize,
    operands: impl Fn(usize) -> (ArrayView2<'v, f32>, ArrayView2<'v, f32>) + Sync,
) -> Vec<f32> {
    let len = batches * m * n;
    // Not zeroed first: each product writes every element of its `m x n`.
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = &mut y.spare_capacity_mut()[..len];
    let run = |first: usize, out: &mut [MaybeUninit<f32>]| {
        let mut scratch = Scratch::default();
        for (i, y_i) in out.chunks_exact_mut(m * n).enumerate() {
            let (a, b) = operands(first + i);
            activation_product(cpu, a, b, &mut scratch, y_i);
        }
    };
    let pool = match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) => Some(pool),
        _ => None,
    };
    match pool {
        Some(pool) if batches >= 2 && m * n > 0 => {
            let per = batches.div_ceil(pool.current_num_threads());
            pool.install(|| {
                use rayon::prelude::*;
                out.par_chunks_mut(per * m * n)
                    .enumerate()
                    .for_each(|(i, chunk)| run(i * per, chunk));
            });
        }
        _ if m * n > 0 => run(0, out),
        _ => {}
    }
    // SAFETY: every product wrote its `m x n` elements (there are none when `m x n` is 0).
    unsafe { y.set_len(len) };
    y
}

/// Buffers a thread reuses from one [`activation_product`] to the next.
#[derive(Default)]
struct Scratch {
    /// The left operand's rows as bf16 pairs.
    xb: Vec<u32>,
    /// The right operand in panels.
    panels: Vec<u32>,
    /// One column of the right operand as bf16 pairs.
    pairs: Vec<u32>,
    /// A strided row or column gathered into order.
    lo: Vec<f32>,
    hi: Vec<f32>,
}

/// `y[i][j] = sum_l a[i][l] * b[l][j]` for two activations (`a` is `m x k`, `b` is `k x n`, any
/// strides; the attention's scores and their weighting of the values), both rounded to bf16
/// here, the sums in f32, into `y` (`m x n`, row-major; every element written). `b` is packed into the panels of
/// [`PackedWeights`] on the fly, from its rows or its columns, whichever are contiguous.
fn activation_product(
    cpu: Bf16Cpu,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    scratch: &mut Scratch,
    y: &mut [MaybeUninit<f32>],
) {
    let Bf16Cpu(()) = cpu;
    let (m, k) = a.dim();
    let n = b.dim().1;
    assert_eq!(b.dim().0, k, "the operands' summed axes differ");
    assert_eq!(y.len(), m * n, "the output holds m x n");
    let kp = k.div_ceil(2);
    let Scratch {
        xb,
        panels,
        pairs,
        lo,
        hi,
    } = scratch;
    xb.resize(m * kp, 0);
    panels.resize(n.div_ceil(MR) * kp * MR, 0);
    pairs.resize(kp, 0);
    /// `v` as a slice, gathered into `buf` when its elements are not contiguous.
    fn contiguous<'v>(v: ArrayView1<'v, f32>, buf: &'v mut Vec<f32>) -> &'v [f32] {
        match v.to_slice() {
            Some(s) => s,
            None => {
                buf.clear();
                buf.extend(v.iter());
                buf
            }
        }
    }
    // SAFETY: `cpu` proves that this CPU has AVX512-F and AVX512-BF16, the features
    // `round_row`, `pack_row_pair` and `tiles` are compiled for.
    unsafe {
        for (i, dst) in xb.chunks_exact_mut(kp).enumerate() {
            round_row(contiguous(a.row(i), lo), dst);
        }
        if b.strides()[1] == 1 || b.strides()[0] != 1 {
            // Rows of `b` are contiguous (the values, `[keys, head size]`): two at a time.
            for q in 0..kp {
                let first = contiguous(b.row(2 * q), lo);
                let second = (2 * q + 1 < k).then(|| contiguous(b.row(2 * q + 1), hi));
                pack_row_pair(first, second, panels, q, kp);
            }
        } else {
            // Columns are (the keys, `[head size, keys]` as read): each is one output's pairs.
            for j in 0..n {
                round_row(contiguous(b.column(j), lo), pairs);
                let (p, r) = (j / MR, j % MR);
                for (q, &pair) in pairs.iter().enumerate() {
                    panels[(p * kp + q) * MR + r] = pair;
                }
            }
        }
        tiles(
            xb,
            m,
            Panels {
                n,
                kp,
                data: panels,
            },
            y,
        );
    }
}

/// Rows `2q` (`lo`) and `2q + 1` (`hi`, zeros past the end of `k`) of a product's right
/// operand into pair `q` of every panel: u32 `j` holds `lo[j]` (low half) and `hi[j]` (high
/// half) as bf16, rounded by `vcvtneps2bf16` 16 at a time (denormals read as zero), [`bf16_bits`]
/// for the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn pack_row_pair(lo: &[f32], hi: Option<&[f32]>, panels: &mut [u32], q: usize, kp: usize) {
    use std::arch::x86_64::*;
    let n = lo.len();
    assert!(hi.is_none_or(|h| h.len() == n), "rows of one operand");
    let whole = n / 16;
    let widen = |v: &[f32], j: usize| -> __m512i {
        // SAFETY: the caller's `j + 16 <= v.len()`.
        unsafe {
            let bf = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr().add(j)));
            _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(bf))
        }
    };
    for j in (0..whole).map(|c| c * 16) {
        let at = (j / MR * kp + q) * MR + j % MR;
        let out = &mut panels[at..at + 16];
        let low = widen(lo, j);
        let high = match hi {
            Some(h) => _mm512_slli_epi32::<16>(widen(h, j)),
            None => _mm512_setzero_si512(),
        };
        // SAFETY: `out` holds 16 u32.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_or_si512(low, high)) };
    }
    for j in whole * 16..n {
        let low = u32::from(bf16_bits(lo[j]));
        let high = hi.map_or(0, |h| u32::from(bf16_bits(h[j])));
        panels[(j / MR * kp + q) * MR + j % MR] = low | (high << 16);
    }
}

/// All tiles of `rows` activation rows (bf16 pairs, `w.kp` per row) against every weight panel,
/// into `y` (`rows x w.n`), every element of which it writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn tiles(xb: &[u32], rows: usize, w: Panels<'_>, y: &mut [MaybeUninit<f32>]) {
    use std::arch::x86_64::*;
    let (n, kp) = (w.n, w.kp);
    // Blocks of row tiles small enough to stay in L2 while every weight panel passes by.
    const BLOCK: usize = 16 * NR;
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for p in 0..w.panels() {
            let panel = w.panel(p);
            let n0 = p * MR;
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
                let width = (n - n0).min(MR);
                for (j, pair) in acc.chunks_exact(2).take(live).enumerate() {
                    let out = &mut y[(t0 + j) * n + n0..(t0 + j) * n + n0 + width];
                    let mut tile = [0f32; MR];
                    // SAFETY: `tile` holds MR = 2 x 16 floats.
                    unsafe {
                        _mm512_storeu_ps(tile.as_mut_ptr(), pair[0]);
                        _mm512_storeu_ps(tile.as_mut_ptr().add(16), pair[1]);
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
unsafe fn round_row(_: &[f32], _: &mut [u32]) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_row_pair(_: &[f32], _: Option<&[f32]>, _: &mut [u32], _: usize, _: usize) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_rows(_: &[f32], _: usize, _: &mut [u32], _: usize) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tiles(_: &[u32], _: usize, _: Panels<'_>, _: &mut [MaybeUninit<f32>]) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(test)]
pub(super) mod testing {
    use super::bf16_bits;

    /// A deterministic spread of values, some of them needing rounding in bf16.
    pub fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let h = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ seed);
                ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect()
    }

    pub fn round(x: f32) -> f32 {
        f32::from_bits(u32::from(bf16_bits(x)) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{round, values};
    use super::*;

    /// The exact sum of the bf16-rounded products, in f64.
    fn reference(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|i| f64::from(round(x[r * k + i])) * f64::from(round(w[i * n + j])))
                    .sum();
            }
        }
        y
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to even.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.5), 0xc020);
    }

    /// The vector rounding of activations gives the bits of the scalar one, ties included,
    /// on whole chunks of 32 and on a row's tail.
    #[test]
    fn activations_round_as_the_scalar_rounding_does() {
        let Some(Bf16Cpu(())) = Bf16Cpu::detect() else {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return;
        };
        let (rows, k) = (3, 71);
        let mut x = values(rows * k, 7);
        // Exact ties between two bf16 numbers, either way of even.
        x[0] = 1.0 + 1.0 / 256.0;
        x[1] = 1.0 + 3.0 / 256.0;
        x[40] = -(1.0 + 1.0 / 256.0);
        x[70] = 1.0 + 3.0 / 256.0;
        let kp = k.div_ceil(2);
        let mut xb = vec![0u32; rows * kp];
        // SAFETY: the CPU has AVX512-F and AVX512-BF16 (checked above).
        unsafe { round_rows(&x, k, &mut xb, kp) };
        for r in 0..rows {
            for q in 0..kp {
                let at = |i: usize| if i < k { bf16_bits(x[r * k + i]) } else { 0 };
                let want = u32::from(at(2 * q)) | (u32::from(at(2 * q + 1)) << 16);
                assert_eq!(xb[r * kp + q], want, "row {r}, pair {q}");
            }
        }
    }

    /// Edge tiles of every kind: rows not a multiple of 5, features not a multiple of 32, an
    /// odd number of summed values, and the row blocks of the tile loop.
    #[test]
    fn products_are_the_sums_of_rounded_products() {
        let Some(cpu) = Bf16Cpu::detect() else {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return;
        };
        for (rows, k, n) in [
            (1, 8, 32),
            (7, 33, 45),
            (50, 64, 96),
            (81, 17, 5),
            (400, 96, 70),
        ] {
            let x = values(rows * k, 1);
            let w = values(k * n, 2);
            let packed = PackedWeights::pack(cpu, k, n, |i, j| w[i * n + j]);
            let y = matmul(&x, rows, &packed);
            let want = reference(&x, &w, rows, k, n);
            for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                // Products of bf16 numbers are exact in f32; only the f32 sums round.
                let tolerance = 1e-5 * (k as f64).sqrt() * want.abs().max(1.0);
                assert!(
                    (f64::from(got) - want).abs() <= tolerance,
                    "{rows}x{k}x{n}, element {i}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn products_split_over_a_pool_equal_the_single_thread_ones() {
        let Some(cpu) = Bf16Cpu::detect() else {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return;
        };
        let (rows, k, n) = (53, 40, 64);
        let x = values(rows * k, 3);
        let w = values(k * n, 4);
        let packed = PackedWeights::pack(cpu, k, n, |i, j| w[i * n + j]);
        let alone = matmul(&x, rows, &packed);
        let pool = tract_linalg::multithread::Executor::multithread(2);
        let split =
            tract_linalg::multithread::multithread_tract_scope(pool, || matmul(&x, rows, &packed));
        assert_eq!(alone, split);
    }
}
