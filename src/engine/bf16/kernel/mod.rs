//! The matrix products behind [`super::Bf16MatMul`]. In bf16: weights packed once in the operand
//! layout of AVX512-BF16's `vdpbf16ps`, activations rounded per run (or already rounded by the
//! product before), 32 x 5 tiles with f32 sums (`tiles.rs`), written as f32 or rounded to bf16.
//! In f32, on a CPU where bf16 is not faster: weights packed once in panels of 32 features,
//! 32 x 8 tiles of AVX-512 FMAs (`fma.rs`). Either is split over the tower pool by rows or by
//! weight panels. `activations.rs` runs the bf16 tiles on products of two activations.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use tract_onnx::prelude::{Datum, Tensor, TractResult};

mod activations;
mod fma;
mod gelu;
mod norm;
mod softmax;
mod tiles;

pub(in crate::engine::bf16) use activations::activation_products;
pub(in crate::engine::bf16) use norm::LayerNorm;
pub(in crate::engine::bf16) use softmax::softmax_rows;
use tiles::{round_row, round_rows, tiles, OutRows};

/// The tower pool of the run in progress, if it has one of several threads
/// (`crate::engine::threads::TowerPool`): products split their work over it.
fn tower_pool() -> Option<std::sync::Arc<rayon::ThreadPool>> {
    match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) => Some(pool),
        _ => None,
    }
}

/// Output features per weight panel, in either arithmetic: two 16-lane accumulators.
const MR: usize = 32;
/// Activation rows per tile.
const NR: usize = 5;

/// What a product by weights does to its f32 sums before it stores them: the layer's bias
/// added, then a GELU applied, each instead of a pass of its own over the output after.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Epilogue<'a> {
    /// One value per output feature.
    pub bias: Option<&'a [f32]>,
    /// tract's `GeluExact`, bit for bit ([`gelu::gelu16`]).
    pub gelu: bool,
}

/// Proof that this CPU runs AVX512-F: only [`Avx512Cpu::detect`] (or a [`Bf16Cpu`]) makes one,
/// after asking the CPU, and f32 packed weights cannot exist without one, so [`matmul`] never
/// reaches the vector code on a CPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Avx512Cpu(());

impl Avx512Cpu {
    /// The proof, where the CPU has the instructions.
    pub(super) fn detect() -> Option<Avx512Cpu> {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f").then_some(Avx512Cpu(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

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

    /// The CPU has AVX512-F too.
    pub(super) fn avx512(self) -> Avx512Cpu {
        Avx512Cpu(())
    }
}

/// The arithmetic a product's weights are packed for, with the proof that this CPU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Packing {
    Bf16(Bf16Cpu),
    F32(Avx512Cpu),
}

impl Packing {
    /// `w(k, n)`, the f32 weight of input `k`, output `n`, of `k x n` weights, packed.
    pub(super) fn pack(self, k: usize, n: usize, w: impl Fn(usize, usize) -> f32) -> PackedWeights {
        match self {
            Packing::Bf16(cpu) => PackedWeights::pack(cpu, k, n, w),
            Packing::F32(cpu) => PackedWeights::pack_f32(cpu, k, n, w),
        }
    }

    /// Either needs AVX512-F.
    pub(super) fn avx512(self) -> Avx512Cpu {
        match self {
            Packing::Bf16(cpu) => cpu.avx512(),
            Packing::F32(cpu) => cpu,
        }
    }
}

/// Weights `[K, N]` packed for one arithmetic's tiles.
#[derive(Debug)]
pub(super) struct PackedWeights {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) panels: Packed,
}

/// The weights' panels of `MR` output features, in one arithmetic.
#[derive(Debug)]
pub(super) enum Packed {
    /// Rounded to bf16: for each pair `q` of `k`, one u32 per feature holding `w[2q][n]` (low
    /// half) and `w[2q + 1][n]` (high half), which is the operand layout of `vdpbf16ps`.
    /// Packing needs the proof, so every product of these weights has it.
    Bf16 {
        cpu: Bf16Cpu,
        /// `ceil(k / 2)`.
        kp: usize,
        data: Vec<u32>,
    },
    /// As they are: for each `k`, one f32 per feature, the operand of an FMA by one
    /// activation broadcast (`fma.rs`).
    F32 { cpu: Avx512Cpu, data: Vec<f32> },
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
        let get = |k_ix: usize, n_ix: usize| {
            if k_ix < k && n_ix < n {
                u32::from(bf16_bits(w(k_ix, n_ix)))
            } else {
                0
            }
        };
        let data = in_panels(n, kp, |q, n_ix| {
            get(2 * q, n_ix) | (get(2 * q + 1, n_ix) << 16)
        });
        PackedWeights {
            k,
            n,
            panels: Packed::Bf16 { cpu, kp, data },
        }
    }

    /// The same weights for the f32 tiles, unrounded.
    pub(super) fn pack_f32(
        cpu: Avx512Cpu,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        let data = in_panels(
            n,
            k,
            |k_ix, n_ix| if n_ix < n { w(k_ix, n_ix) } else { 0.0 },
        );
        PackedWeights {
            k,
            n,
            panels: Packed::F32 { cpu, data },
        }
    }

    /// Bytes the packed weights hold.
    pub(super) fn bytes(&self) -> usize {
        match &self.panels {
            Packed::Bf16 { data, .. } => std::mem::size_of_val(data.as_slice()),
            Packed::F32 { data, .. } => std::mem::size_of_val(data.as_slice()),
        }
    }

    /// Whether these are bf16 weights (else f32).
    pub(super) fn is_bf16(&self) -> bool {
        matches!(self.panels, Packed::Bf16 { .. })
    }
}

/// Panels of `MR` features for `n` features, `depth` elements (`at(depth index, feature)`)
/// per feature and panel: element `(p * depth + d) * MR + r` is feature `p * MR + r`'s `d`-th.
fn in_panels<T: Default + Clone>(n: usize, depth: usize, at: impl Fn(usize, usize) -> T) -> Vec<T> {
    let panels = n.div_ceil(MR);
    let mut data = vec![T::default(); panels * depth * MR];
    for p in 0..panels {
        for d in 0..depth {
            for r in 0..MR {
                data[(p * depth + d) * MR + r] = at(d, p * MR + r);
            }
        }
    }
    data
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

/// The left operand of a product by weights, `rows` rows of `k` values.
#[derive(Clone, Copy)]
pub(super) enum Activations<'a> {
    /// f32 rows, rounded to bf16 pairs as the product reads them: output row `r` reads row
    /// `sources[r]` of `x`, or row `r` without `sources`. A product whose output lays out `x`'s
    /// rows in another order (the image tower's attention input projection) reads them in that
    /// order, instead of moving its output after. With a `norm`, each row is that layer norm
    /// of the row of `x`.
    F32 {
        x: &'a [f32],
        sources: Option<&'a [usize]>,
        norm: Option<&'a LayerNorm>,
    },
    /// Rows already rounded to bf16 pairs, `ceil(k / 2)` u32 each: the output of a product
    /// that rounded its own ([`Output::Pairs`]), read as it is.
    Pairs(&'a [u32]),
}

impl<'a> Activations<'a> {
    /// Rows `first..first + count` (`k` values each) as bf16 pairs, `kp` u32 a row: rounded
    /// into `buf` (and `None`), or, already rounded, as they are.
    fn pairs(
        self,
        (first, count): (usize, usize),
        (k, kp): (usize, usize),
        cpu: Bf16Cpu,
        buf: &mut Vec<u32>,
    ) -> Option<&'a [u32]> {
        match self {
            Activations::F32 { x, sources, norm } => {
                let source = |r: usize| sources.map_or(r, |s| s[r]);
                let x_rows = (first..first + count).map(|r| &x[source(r) * k..][..k]);
                buf.resize(count * kp, 0);
                let Bf16Cpu(()) = cpu;
                // SAFETY: a `Bf16Cpu` only exists where the CPU has AVX512-F and AVX512-BF16,
                // the features `round_rows` and `norm_rows` are compiled for.
                unsafe {
                    match norm {
                        None => round_rows(x_rows, buf, kp),
                        Some(norm) => norm::norm_rows(x_rows, buf, kp, norm),
                    }
                }
                None
            }
            Activations::Pairs(xb) => Some(&xb[first * kp..(first + count) * kp]),
        }
    }

    /// Rows `first..first + count` (`k` values each) as f32 for the FMA tiles: in place where
    /// they are the input's own rows in order, else (reordered, or normalized) into `buf` (and
    /// `None`).
    fn floats(
        self,
        (first, count): (usize, usize),
        k: usize,
        cpu: Avx512Cpu,
        buf: &mut Vec<f32>,
    ) -> Option<&'a [f32]> {
        let Activations::F32 { x, sources, norm } = self else {
            unreachable!("only bf16 products hand rounded rows on (`fuse::handoffs`)")
        };
        let source = |r: usize| sources.map_or(r, |s| s[r]);
        let mut x_rows = (first..first + count).map(|r| &x[source(r) * k..][..k]);
        match norm {
            None if sources.is_none() => return Some(&x[first * k..(first + count) * k]),
            None => {
                buf.clear();
                x_rows.for_each(|row| buf.extend_from_slice(row));
            }
            Some(norm) => {
                buf.resize(count * k, 0.0);
                let Avx512Cpu(()) = cpu;
                // SAFETY: an `Avx512Cpu` only exists where the CPU has AVX512-F, the feature
                // `norm_rows_f32` is compiled for.
                unsafe { norm::norm_rows_f32(&mut x_rows, buf, k, norm) };
            }
        }
        None
    }
}

/// The `norm` of each row of `x` (`k` values each) into `y`, as tract's ops of that norm give
/// it on `x`'s buffer ([`LayerNorm`]).
pub(in crate::engine::bf16) fn layer_norm_rows(
    cpu: Avx512Cpu,
    x: &[f32],
    k: usize,
    norm: &LayerNorm,
    y: &mut [f32],
) {
    assert!(k > 0 && x.len() == y.len() && x.len().is_multiple_of(k));
    let Avx512Cpu(()) = cpu;
    // SAFETY: an `Avx512Cpu` only exists where the CPU has AVX512-F, the feature
    // `norm_rows_f32` is compiled for.
    unsafe { norm::norm_rows_f32(x.chunks_exact(k), y, k, norm) };
}

/// What a product by weights writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Output {
    /// f32, `n` a row.
    F32,
    /// The outputs rounded to bf16 pairs, `ceil(n / 2)` u32 a row, as the product that reads
    /// them would round them ([`Activations::Pairs`]).
    Pairs,
}

impl Output {
    /// The elements a row of `n` outputs takes: `n` f32, or `ceil(n / 2)` u32 pairs.
    pub(super) fn row_len(self, n: usize) -> usize {
        match self {
            Output::F32 => n,
            Output::Pairs => n.div_ceil(2),
        }
    }
}

/// `y[r][n] = sum_k x[r][k] * w[k][n] + bias[n]` for `rows` rows of output. The bias (`n`
/// floats) is added to the f32 sums in registers, and the GELU applied to them there, as the
/// separate ops they replace did ([`Epilogue`]). The result is a tensor of `shape`, whose
/// elements are the `rows x n` outputs in order: f32, or u32 bf16 pairs for [`Output::Pairs`]
/// (`rows x ceil(n / 2)` of them).
pub(super) fn matmul(
    x: Activations<'_>,
    rows: usize,
    w: &PackedWeights,
    epilogue: Epilogue<'_>,
    output: Output,
    shape: &[usize],
) -> TractResult<Tensor> {
    let n = w.n;
    assert!(
        epilogue.bias.is_none_or(|b| b.len() == n),
        "a bias of {n} values"
    );
    match x {
        Activations::F32 { x, sources, norm } => {
            assert_eq!(x.len(), rows * w.k, "{rows} rows of {}", w.k);
            assert!(norm.is_none_or(|n| [&n.gamma, &n.beta]
                .iter()
                .all(|v| v.as_ref().is_none_or(|v| v.len() == w.k))));
            assert!(sources.is_none_or(|s| s.len() == rows && s.iter().all(|&r| r < rows)));
        }
        Activations::Pairs(xb) => {
            assert_eq!(xb.len(), rows * w.k.div_ceil(2), "{rows} rounded rows")
        }
    }
    assert_eq!(
        shape.iter().product::<usize>(),
        rows * output.row_len(n),
        "an output of {rows} x {n}"
    );
    assert!(
        w.is_bf16() || output == Output::F32,
        "f32 products write f32"
    );
    // SAFETY: `write_products` writes all `rows x n` outputs: every row of every chunk, against
    // every panel, and the panels cover the `n` columns.
    unsafe {
        match output {
            Output::F32 => written_tensor::<f32>(shape, |out| {
                write_products(x, rows, w, epilogue, OutRows::f32s(out, n))
            }),
            Output::Pairs => written_tensor::<u32>(shape, |out| {
                write_products(x, rows, w, epilogue, OutRows::pairs(out, n))
            }),
        }
    }
}

/// A new tensor of `shape` whose elements `fill` writes. The products write straight into the
/// tensor's buffer: an ndarray array made into a tensor is copied, which was 3 % of an image
/// run. Not zeroed first either (a memset of every product's output was 2-3 % of a run).
///
/// # Safety
///
/// `fill` writes every element of the slice it is given.
unsafe fn written_tensor<T: Datum + Copy>(
    shape: &[usize],
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> TractResult<Tensor> {
    // SAFETY: the plain numbers written here (f32, u32) have no invalid bit patterns, and
    // nothing reads an element before `fill` has written it (the caller's promise).
    let mut t = unsafe { Tensor::uninitialized::<T>(shape)? };
    let len = t.len();
    if len > 0 {
        // SAFETY: the tensor's storage holds `len` elements of T, seen as not yet initialised.
        let out =
            unsafe { std::slice::from_raw_parts_mut(t.as_ptr_mut_unchecked::<T>().cast(), len) };
        fill(out);
    }
    Ok(t)
}

/// [`matmul`]'s products of `x` into `y` (`rows x n` outputs), every element of it, in the
/// arithmetic of `w`.
fn write_products(
    x: Activations<'_>,
    rows: usize,
    w: &PackedWeights,
    epilogue: Epilogue<'_>,
    y: OutRows,
) {
    let k = w.k;
    let panels = w.n.div_ceil(MR);
    match &w.panels {
        Packed::Bf16 { cpu, kp, data } => {
            let (cpu, kp) = (*cpu, *kp);
            let view = Panels { n: w.n, kp, data };
            split(
                (rows, panels, NR),
                |first, count, buf| x.pairs((first, count), (k, kp), cpu, buf),
                |xb, rows, range, y| {
                    // SAFETY: `cpu` proves AVX512-F and AVX512-BF16; each call `split` makes
                    // writes its own rows of `y`, or its own panels' columns, and together
                    // they cover every element.
                    unsafe { tiles(xb, rows, view, range, epilogue, y) }
                },
                y,
            );
        }
        Packed::F32 { cpu, data } => {
            let cpu = *cpu;
            let view = fma::F32Panels { n: w.n, k, data };
            split(
                (rows, panels, fma::NR),
                |first, count, buf| x.floats((first, count), k, cpu, buf),
                |xs, rows, range, y| {
                    let Avx512Cpu(()) = cpu;
                    // SAFETY: `cpu` proves AVX512-F; the calls write apart, as above.
                    unsafe { fma::tiles(xs, rows, view, range, epilogue, y) }
                },
                y,
            );
        }
    }
}

/// Runs `products(rows' operand, rows, weight panels, their output)` over all `rows` and
/// `panels`, with the rows' operand from `prepare(first row, rows, buffer)` (`None` when it
/// wrote the buffer), tiles of `nr` rows.
///
/// On a tower pool, a product of many rows (a batch of images) is split in row ranges, one per
/// thread, each thread preparing its own rows: each keeps its rows' activations in its own L2
/// while the weights pass by. A product of few rows (a lone image or query, whose products are
/// as much a stream of weights as arithmetic) is split by weight panels instead: the
/// activations are prepared first, on the calling thread, then the panels are shared out in
/// small runs that the pool's threads take as they come free, so each thread reads only its
/// share of the weights, a one-row product splits too, and a thread the machine holds up
/// leaves its untaken panels to the other. Rows already in the operand's form are read as they
/// are.
fn split<'x, T: Send + Sync + 'x>(
    (rows, panels, nr): (usize, usize, usize),
    prepare: impl Fn(usize, usize, &mut Vec<T>) -> Option<&'x [T]> + Sync,
    products: impl Fn(&[T], usize, std::ops::Range<usize>, OutRows) + Sync,
    y: OutRows,
) {
    // The fewest rows per thread for which a product is split by rows rather than by panels.
    let row_split = 16 * nr;
    match tower_pool() {
        Some(pool) if rows >= 2 * row_split => {
            // Row ranges, a multiple of `nr` each, one per thread.
            let per = rows.div_ceil(pool.current_num_threads()).div_ceil(nr) * nr;
            pool.install(|| {
                use rayon::prelude::*;
                (0..rows.div_ceil(per)).into_par_iter().for_each(|i| {
                    let (first, count) = (i * per, per.min(rows - i * per));
                    let mut buf = vec![];
                    let xs = prepare(first, count, &mut buf);
                    products(xs.unwrap_or(&buf), count, 0..panels, y.rows(first, count));
                });
            });
        }
        pool => {
            let mut buf = vec![];
            let xs = prepare(0, rows, &mut buf);
            let xs = xs.unwrap_or(&buf);
            match pool {
                Some(pool) => pool.install(|| {
                    use rayon::prelude::*;
                    let per = (panels / 8).clamp(1, 4);
                    (0..panels.div_ceil(per)).into_par_iter().for_each(|c| {
                        products(xs, rows, c * per..((c + 1) * per).min(panels), y);
                    });
                }),
                None => products(xs, rows, 0..panels, y),
            }
        }
    }
}

#[cfg(test)]
pub(super) mod testing {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::ops::einsum::EinSum;

    use super::{bf16_bits, Avx512Cpu, Bf16Cpu};
    use crate::engine::precision::Arithmetic;

    /// The arithmetics whose products this CPU runs: bf16 where it has AVX512-BF16, f32 where it
    /// has AVX-512 (said on stderr when it lacks either, so a test that checks none says so).
    pub fn arithmetics() -> Vec<Arithmetic> {
        let mut found = vec![];
        match Bf16Cpu::detect() {
            Some(_) => found.push(Arithmetic::Bf16),
            None => eprintln!("no AVX512-BF16 on this CPU: the bf16 products are not checked"),
        }
        match Avx512Cpu::detect() {
            Some(_) => found.push(Arithmetic::F32),
            None => eprintln!("no AVX-512 on this CPU: the f32 products are not checked"),
        }
        found
    }

    /// `v` as a product in `arithmetic` reads it: rounded to bf16, or as it is.
    pub fn as_read(arithmetic: Arithmetic, v: &[f32]) -> Vec<f32> {
        match arithmetic {
            Arithmetic::Bf16 => rounded(v),
            Arithmetic::F32 => v.to_vec(),
        }
    }

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

    /// Every value of `v` rounded to bf16.
    pub fn rounded(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&a| round(a)).collect()
    }

    /// A model of one f32 einsum `expr` of a source `x` by the constant `w`, and its output.
    pub fn product(
        expr: &str,
        x_shape: &[usize],
        w_shape: &[usize],
        w: &[f32],
    ) -> TractResult<(TypedModel, OutletId)> {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact(x_shape))?;
        let weights = model.add_const("w", Tensor::from_shape(w_shape, w)?)?;
        let op = EinSum::new(expr.parse()?, f32::datum_type());
        let y = model.wire_node("product", op, &[source, weights])?[0];
        Ok((model, y))
    }

    /// tract's decluttered form of ONNX's `LayerNormalization` over the last axis (`k` long)
    /// of `x`, epsilon 1e-5: the sum, times `1 / k`, subtracted from `x`, `RmsNorm`, then the
    /// scales and the biases where given. Its output.
    pub fn layer_norm(
        model: &mut TypedModel,
        x: OutletId,
        k: usize,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
    ) -> TractResult<OutletId> {
        use tract_onnx::tract_core::ops::math::{add, mul, sub};
        use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm};
        let last = model.outlet_fact(x)?.rank() - 1;
        let per_feature = |len: usize, v: &[f32]| {
            let mut shape = vec![1; last + 1];
            shape[last] = len;
            Tensor::from_shape(&shape, v)
        };
        let sum = Reduce {
            axes: tvec![last],
            reducer: Reducer::Sum,
        };
        let sum = model.wire_node("ln.sum", sum, &[x])?[0];
        let recip = model.add_const("ln.recip", per_feature(1, &[1.0 / k as f32])?)?;
        let mean = model.wire_node("ln.mean", mul(), &[sum, recip])?[0];
        let centred = model.wire_node("ln.centred", sub(), &[x, mean])?[0];
        let rms = RmsNorm {
            axis: last,
            eps: tensor0(1e-5f32).into_arc_tensor(),
        };
        let mut y = model.wire_node("ln.rms", rms, &[centred])?[0];
        if let Some(gamma) = gamma {
            let gamma = model.add_const("ln.gamma", per_feature(k, gamma)?)?;
            y = model.wire_node("ln.scale", mul(), &[y, gamma])?[0];
        }
        if let Some(beta) = beta {
            let beta = model.add_const("ln.beta", per_feature(k, beta)?)?;
            y = model.wire_node("ln.shift", add(), &[y, beta])?[0];
        }
        Ok(y)
    }

    /// The first output of `model` on `inputs` (shape, values).
    pub fn run(model: TypedModel, inputs: &[(&[usize], &[f32])]) -> Tensor {
        let inputs: TVec<TValue> = inputs
            .iter()
            .map(|(shape, v)| Tensor::from_shape(shape, v).unwrap().into_tvalue())
            .collect();
        let mut out = model.into_runnable().unwrap().run(inputs).unwrap();
        out.remove(0).into_tensor()
    }

    /// [`run`] on the calling thread, after checking that a run split over a pool of 2 gives
    /// the same bits.
    pub fn run_alone_and_split(model: TypedModel, inputs: &[(&[usize], &[f32])]) -> Tensor {
        let alone = run(model.clone(), inputs);
        let pool = tract_linalg::multithread::Executor::multithread(2);
        let split = tract_linalg::multithread::multithread_tract_scope(pool, || run(model, inputs));
        assert_eq!(alone, split, "split over a pool");
        alone
    }

    /// `got` is `want` up to the f32 rounding of sums of `k` products: products of bf16
    /// numbers are exact in f32, only the sums round.
    pub fn assert_sums_close(got: &Tensor, want: &Tensor, k: usize, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}");
        let got = got.to_plain_array_view::<f32>().unwrap();
        let want = want.to_plain_array_view::<f32>().unwrap();
        for (g, w) in got.iter().zip(want.iter()) {
            let tolerance = 1e-5 * (k as f32).sqrt() * w.abs().max(1.0);
            assert!((g - w).abs() <= tolerance, "{what}: {g} against {w}");
        }
    }

    /// `got` has `want`'s shape and, element by element, its bits.
    pub fn assert_same_bits(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}");
        let got = got.to_plain_array_view::<f32>().unwrap();
        let want = want.to_plain_array_view::<f32>().unwrap();
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}, element {i}: {g} against {w}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
