//! The matrix products behind [`super::WeightMatMul`]. In bf16: weights packed once in the operand
//! layout of AVX512-BF16's `vdpbf16ps`, activations rounded per run (or already rounded by the
//! product before), 32 x 5 tiles with f32 sums (`tiles.rs`), written as f32 or rounded to bf16.
//! In f32, on a CPU where bf16 is not faster: weights packed once in panels of 32 features,
//! 32 x 8 tiles of AVX-512 FMAs (`fma.rs`). In int8, on a CPU with AVX512-VNNI: weights
//! quantized once per output feature, activation rows per run, 32 x 8 tiles of `vpdpbusd`
//! with integer sums scaled back to f32 (`int8.rs`); in 16-bit integers alike, of 10-bit levels,
//! with `vpdpwssd` (`int16.rs`). Each is split over the run's workers (`workers.rs`) by rows
//! or by weight panels. `activations.rs` runs the bf16 or f32 tiles on products of two
//! activations.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use tract_onnx::prelude::{Datum, Tensor, TractResult};

mod activations;
mod fma;
mod gelu;
#[macro_use]
mod integer_tiles;
mod int16;
mod int8;
mod norm;
mod softmax;
#[cfg(test)]
pub(super) mod testing;
mod tiles;
mod weights;
mod workers;

pub(in crate::engine::ops) use activations::activation_products;
pub(in crate::engine::ops) use norm::LayerNorm;
pub(in crate::engine::ops) use softmax::softmax_rows;
use tiles::{round_row, round_rows, tiles, OutRows};
use weights::Panels;
pub(in crate::engine::ops) use weights::{
    Avx512Cpu, Bf16Cpu, Packed, PackedWeights, Packing, VnniCpu,
};
use workers::Workers;

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

    /// Rows `first..first + count` (`k` values each) quantized for the integer tiles of
    /// `ints` into `buf`; a `norm` is applied first, in f32, as the f32 tiles apply it.
    fn quantized(
        self,
        (first, count): (usize, usize),
        k: usize,
        ints: Ints,
        buf: &mut Vec<u32>,
    ) -> Option<&'a [u32]> {
        let Activations::F32 { x, sources, norm } = self else {
            unreachable!("only bf16 products hand rounded rows on (`fuse::handoffs`)")
        };
        let source = |r: usize| sources.map_or(r, |s| s[r]);
        let x_rows = (first..first + count).map(|r| &x[source(r) * k..][..k]);
        buf.resize(count * ints.row_len(k), 0);
        match norm {
            None => ints.quantize_rows(x_rows, buf),
            Some(norm) => {
                let mut normed = vec![0f32; count * k];
                let (Ints::Int8(cpu) | Ints::Int16(cpu)) = ints;
                let VnniCpu(()) = cpu;
                // SAFETY: a `VnniCpu` only exists where the CPU has AVX512-F, all
                // `norm_rows_f32` needs.
                unsafe { norm::norm_rows_f32(x_rows, &mut normed, k, norm) };
                ints.quantize_rows(normed.chunks_exact(k), buf);
            }
        }
        None
    }
}

/// The integer tiles a product runs, with the proof that the CPU has their instructions.
#[derive(Clone, Copy)]
enum Ints {
    /// Unsigned bytes by signed bytes (`int8.rs`).
    Int8(VnniCpu),
    /// 16-bit integers (`int16.rs`).
    Int16(VnniCpu),
}

impl Ints {
    /// The u32 one quantized row of `k` values takes.
    fn row_len(self, k: usize) -> usize {
        match self {
            Ints::Int8(_) => int8::row_len(k),
            Ints::Int16(_) => int16::row_len(k),
        }
    }

    /// Each of `rows` quantized for these tiles into `xq`, [`Ints::row_len`] u32 a row.
    fn quantize_rows<'r>(self, rows: impl Iterator<Item = &'r [f32]>, xq: &mut [u32]) {
        // SAFETY: a `VnniCpu` only exists where the CPU has AVX512-F and AVX512-BW.
        unsafe {
            match self {
                Ints::Int8(VnniCpu(())) => int8::quantize_rows(rows, xq),
                Ints::Int16(VnniCpu(())) => int16::quantize_rows(rows, xq),
            }
        }
    }
}

/// The `norm` of each row of `x` (`k` values each) into `y`, as tract's ops of that norm give
/// it on `x`'s buffer ([`LayerNorm`]).
pub(in crate::engine::ops) fn layer_norm_rows(
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
        "f32 and integer products write f32"
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
            let view = Panels {
                n: w.n,
                depth: kp,
                data,
            };
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
            let view = Panels {
                n: w.n,
                depth: k,
                data,
            };
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
        Packed::Int8 {
            cpu,
            kq,
            data,
            scales,
            sums,
        } => {
            let cpu = *cpu;
            let view = Panels {
                n: w.n,
                depth: *kq,
                data,
            };
            let features = int8::Features { scales, sums };
            split(
                (rows, panels, int8::NR),
                |first, count, buf| x.quantized((first, count), k, Ints::Int8(cpu), buf),
                |xq, rows, range, y| {
                    let VnniCpu(()) = cpu;
                    // SAFETY: `cpu` proves AVX512-F, AVX512-BW and AVX512-VNNI; the calls
                    // write apart, as above.
                    unsafe { int8::tiles(xq, rows, view, features, range, epilogue, y) }
                },
                y,
            );
        }
        Packed::Int16 {
            cpu,
            kp,
            data,
            scales,
        } => {
            let cpu = *cpu;
            let view = Panels {
                n: w.n,
                depth: *kp,
                data,
            };
            split(
                (rows, panels, int16::NR),
                |first, count, buf| x.quantized((first, count), k, Ints::Int16(cpu), buf),
                |xq, rows, range, y| {
                    let VnniCpu(()) = cpu;
                    // SAFETY: `cpu` proves AVX512-F, AVX512-BW and AVX512-VNNI; the weights
                    // were packed for sums that fit (`pack_int16`); the calls write apart, as
                    // above.
                    unsafe { int16::tiles(xq, rows, view, scales, range, epilogue, y) }
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
/// Over several workers (`workers.rs`), a product of many rows (a batch of images) is split in
/// row ranges, one per thread, each thread preparing its own rows: each keeps its rows'
/// activations in its own L2 while the weights pass by. A product of few rows (a lone image or
/// query, whose products are as much a stream of weights as arithmetic) is split by weight
/// panels instead: the activations are prepared first, on the calling thread, then the panels
/// are shared out in small runs that the threads take as they come free, so each thread reads only its
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
    let workers = Workers::current();
    if workers.threads() > 1 && rows >= 2 * row_split {
        // Row ranges, a multiple of `nr` each, one per thread.
        let per = rows.div_ceil(workers.threads()).div_ceil(nr) * nr;
        workers.for_each_init(rows.div_ceil(per), Vec::new, |buf, i| {
            let (first, count) = (i * per, per.min(rows - i * per));
            buf.clear();
            let xs = prepare(first, count, buf);
            products(
                xs.unwrap_or(&buf[..]),
                count,
                0..panels,
                y.rows(first, count),
            );
        });
        return;
    }
    let mut buf = vec![];
    let xs = prepare(0, rows, &mut buf);
    let xs = xs.unwrap_or(&buf);
    if workers.threads() == 1 {
        return products(xs, rows, 0..panels, y);
    }
    let per = (panels / 8).clamp(1, 4);
    workers.for_each_init(
        panels.div_ceil(per),
        || (),
        |_, c| {
            products(xs, rows, c * per..((c + 1) * per).min(panels), y);
        },
    );
}

#[cfg(test)]
mod tests;
