//! The attention's products of two activations (`super::super::ActMatMul`): in bf16, both
//! operands rounded at every run, the right one packed on the fly into the panels of
//! [`super::PackedWeights`], then the same tiles as the products by weights; in f32, the right
//! one packed as it is into the f32 panels, then the FMA tiles (`fma.rs`).
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use tract_onnx::prelude::tract_ndarray::{ArrayView1, ArrayView2};

use tract_onnx::prelude::{Tensor, TractResult};

use super::{
    bf16_bits, fma, round_row, tiles, written_tensor, Avx512Cpu, Bf16Cpu, Epilogue, OutRows,
    Packing, Panels, Workers, MR,
};

/// Factors the two operands of a product are multiplied by, in f32, before they are rounded
/// (`None`: read as they are): the attention's scalings of its queries and keys, folded in.
pub(in crate::engine::ops) type Scales = [Option<f32>; 2];

/// `batches` products of two activations (see [`activation_product`]), `operands(i)` giving
/// product `i`'s `a` (`m x k`) and `b` (`k x n`), each first multiplied by its factor in
/// `scales`; the results one after the other (`batches x m x n`) as a tensor of `shape`,
/// consecutive products split over the run's workers (`workers.rs`) in a run that has several.
pub(in crate::engine::ops) fn activation_products<'v>(
    cpu: Packing,
    (batches, m, n): (usize, usize, usize),
    operands: impl Fn(usize) -> (ArrayView2<'v, f32>, ArrayView2<'v, f32>) + Sync,
    scales: Scales,
    shape: &[usize],
) -> TractResult<Tensor> {
    assert_eq!(shape.iter().product::<usize>(), batches * m * n);
    // SAFETY: every product writes its `m x n` elements (there are none when `m x n` is 0).
    unsafe {
        written_tensor(shape, |out| {
            write_products(cpu, (batches, m, n), operands, scales, out)
        })
    }
}

/// [`activation_products`] into `out`, `m x n` elements per product; only called with elements
/// to write (`written_tensor` calls no `fill` for an empty tensor), so `m x n` is not 0.
fn write_products<'v>(
    cpu: Packing,
    (batches, m, n): (usize, usize, usize),
    operands: impl Fn(usize) -> (ArrayView2<'v, f32>, ArrayView2<'v, f32>) + Sync,
    scales: Scales,
    out: &mut [MaybeUninit<f32>],
) {
    let run = |scratch: &mut Scratch, (i, y_i): (usize, &mut [MaybeUninit<f32>])| {
        let (a, b) = operands(i);
        match cpu {
            Packing::Bf16(cpu) => activation_product(cpu, (a, b), scales, scratch, y_i),
            Packing::F32(cpu) => f32_activation_product(cpu, (a, b), scales, scratch, y_i),
            // `Packing::unquantized` gives these f32.
            Packing::Int8(_) | Packing::Int16(_) => {
                unreachable!("an integer tower's products of activations are f32")
            }
        }
    };
    let workers = match Workers::current() {
        // One product at a time, taken by whichever thread is free.
        workers if batches >= 2 => workers,
        _ => Workers::One,
    };
    workers.for_each_chunk_init(out, m * n, Scratch::default, |scratch, i, y_i| {
        run(scratch, (i, y_i))
    });
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
    /// In f32: the left operand's rows, and the right operand in panels.
    rows: Vec<f32>,
    f32_panels: Vec<f32>,
}

/// `v` times `scale` as a slice: `v` itself when its elements are contiguous and there is no
/// factor, else gathered into `buf` (each product in f32, as tract's multiply gives it).
fn gathered<'v>(v: ArrayView1<'v, f32>, scale: Option<f32>, buf: &'v mut Vec<f32>) -> &'v [f32] {
    match (v.to_slice(), scale) {
        (Some(s), None) => s,
        (contiguous, scale) => {
            buf.clear();
            match (contiguous, scale) {
                (Some(s), Some(f)) => buf.extend(s.iter().map(|&x| x * f)),
                (None, Some(f)) => buf.extend(v.iter().map(|&x| x * f)),
                (_, None) => buf.extend(v.iter()),
            }
            buf
        }
    }
}

/// [`activation_product`] in f32: the same operands, multiplied by the same factors, `a`'s
/// rows gathered in order and `b` packed as it is into the panels of
/// [`super::PackedWeights::pack_f32`], then the FMA tiles.
fn f32_activation_product(
    cpu: Avx512Cpu,
    (a, b): (ArrayView2<'_, f32>, ArrayView2<'_, f32>),
    [a_scale, b_scale]: Scales,
    scratch: &mut Scratch,
    y: &mut [MaybeUninit<f32>],
) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    assert_eq!(b.dim().0, k, "the operands' summed axes differ");
    assert_eq!(y.len(), m * n, "the output holds m x n");
    let Scratch {
        lo,
        rows,
        f32_panels: panels,
        ..
    } = scratch;
    rows.clear();
    for i in 0..m {
        rows.extend_from_slice(gathered(a.row(i), a_scale, lo));
    }
    panels.clear();
    panels.resize(n.div_ceil(MR) * k * MR, 0.0);
    if b.strides()[1] == 1 || b.strides()[0] != 1 {
        // Rows of `b` are contiguous: each row is the panels' `l`-th step, MR values a panel.
        for l in 0..k {
            let row = gathered(b.row(l), b_scale, lo);
            for (p, chunk) in row.chunks(MR).enumerate() {
                panels[(p * k + l) * MR..][..chunk.len()].copy_from_slice(chunk);
            }
        }
    } else {
        // Columns are: each is one output's values along `k`.
        for j in 0..n {
            let column = gathered(b.column(j), b_scale, lo);
            let (p, r) = (j / MR, j % MR);
            for (l, &v) in column.iter().enumerate() {
                panels[(p * k + l) * MR + r] = v;
            }
        }
    }
    let w = Panels {
        n,
        depth: k,
        data: panels,
    };
    let Avx512Cpu(()) = cpu;
    // SAFETY: `cpu` proves AVX512-F, the feature the FMA tiles are compiled for; this call
    // alone writes `y`.
    unsafe {
        fma::tiles(
            rows,
            m,
            w,
            0..w.panels(),
            Epilogue::default(),
            OutRows::f32s(y, n),
        )
    };
}

/// `y[i][j] = sum_l a[i][l] * b[l][j]` for two activations (`a` is `m x k`, `b` is `k x n`, any
/// strides; the attention's scores and their weighting of the values), both multiplied by
/// their factor in `scales` (if any) and rounded to bf16 here, the sums in f32, into `y`
/// (`m x n`, row-major; every element written). `b` is packed into the panels of
/// [`super::PackedWeights`] on the fly, from its rows or its columns, whichever are contiguous.
fn activation_product(
    cpu: Bf16Cpu,
    (a, b): (ArrayView2<'_, f32>, ArrayView2<'_, f32>),
    [a_scale, b_scale]: Scales,
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
        ..
    } = scratch;
    xb.resize(m * kp, 0);
    panels.resize(n.div_ceil(MR) * kp * MR, 0);
    pairs.resize(kp, 0);
    // SAFETY: `cpu` proves that this CPU has AVX512-F and AVX512-BF16, the features
    // `round_row`, `pack_row_pair` and `tiles` are compiled for.
    unsafe {
        for (i, dst) in xb.chunks_exact_mut(kp).enumerate() {
            round_row(gathered(a.row(i), a_scale, lo), dst);
        }
        if b.strides()[1] == 1 || b.strides()[0] != 1 {
            // Rows of `b` are contiguous (the values, `[keys, head size]`): two at a time.
            for q in 0..kp {
                let first = gathered(b.row(2 * q), b_scale, lo);
                let second = (2 * q + 1 < k).then(|| gathered(b.row(2 * q + 1), b_scale, hi));
                pack_row_pair(first, second, panels, q, kp);
            }
        } else {
            // Columns are (the keys, `[head size, keys]` as read): each is one output's pairs.
            for j in 0..n {
                round_row(gathered(b.column(j), b_scale, lo), pairs);
                let (p, r) = (j / MR, j % MR);
                for (q, &pair) in pairs.iter().enumerate() {
                    panels[(p * kp + q) * MR + r] = pair;
                }
            }
        }
        let w = Panels {
            n,
            depth: kp,
            data: panels,
        };
        tiles(
            xb,
            m,
            w,
            0..w.panels(),
            Epilogue::default(),
            OutRows::f32s(y, n),
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_row_pair(_: &[f32], _: Option<&[f32]>, _: &mut [u32], _: usize, _: usize) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}
