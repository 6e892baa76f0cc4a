//! A layer norm applied to a product's input rows as they are rounded to bf16, or as the f32
//! tiles take them (`super::super::norms`): the product reads the norm's input, and the norm's
//! output, which only that product read, is never stored as a tensor. The same f32 operations in the same order as
//! tract's ops of the decluttered graph, so the same bits.
#![allow(unsafe_code)]

use super::round_row;
use crate::engine::ops::rowsum::sums_of;

/// tract's layer norm over a row's last axis, as its decluttered graph computes it: the row's
/// sum (`Reduce<Sum>`), times the constant `1 / len` (the mean), subtracted from every value,
/// tract's `RmsNorm` of that, then times `gamma` and plus `beta` (each one value per feature,
/// and each left out where the graph has none: an export whose scales are all 1 has no
/// multiply). Only made on a CPU with AVX-512, where tract's `RmsNorm` is its AVX-512 kernel.
#[derive(Debug)]
pub(in crate::engine::ops) struct LayerNorm {
    /// The constant the graph multiplies the sum by: `1 / len`, rounded as tract rounded it.
    pub recip_len: f32,
    /// The `RmsNorm`'s epsilon.
    pub eps: f32,
    pub gamma: Option<Vec<f32>>,
    pub beta: Option<Vec<f32>>,
}

/// The `norm` of each of `rows`, rounded to bf16 pairs into `xb` (`kp` u32 a row) as
/// [`round_row`] rounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) fn norm_rows<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    xb: &mut [u32],
    kp: usize,
    norm: &LayerNorm,
) {
    let mut out = xb.chunks_exact_mut(kp);
    let mut y = Vec::new();
    with_sums(rows, |row, sum| {
        y.resize(row.len(), 0.0);
        norm_row(norm, row, sum, &mut y);
        round_row(&y, out.next().expect("a rounded row for each row"));
    });
}

/// The `norm` of each of `rows` (`k` values each) into `y`, `k` f32 a row, for the f32 tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn norm_rows_f32<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    y: &mut [f32],
    k: usize,
    norm: &LayerNorm,
) {
    let mut out = y.chunks_exact_mut(k);
    with_sums(rows, |row, sum| {
        norm_row(
            norm,
            row,
            sum,
            out.next().expect("an output row for each row"),
        );
    });
}

/// `each(row, its sum)` for each of `rows`: eight rows' sums at a time, as tract's sum takes
/// them.
fn with_sums<'a>(rows: impl Iterator<Item = &'a [f32]>, mut each: impl FnMut(&'a [f32], f32)) {
    let mut rows = rows.peekable();
    let (mut group, mut sums) = (Vec::with_capacity(8), [0f32; 8]);
    while rows.peek().is_some() {
        group.clear();
        group.extend(rows.by_ref().take(8));
        let sums = &mut sums[..group.len()];
        sums_of(&group, sums);
        for (row, &sum) in group.iter().zip(sums.iter()) {
            each(row, sum);
        }
    }
}

/// The norm of `row`, whose sum is `sum`, into `y`: the mean's subtraction and `RmsNorm`'s sum
/// of squares in one pass (`tract_linalg`'s AVX-512 kernel: four 16-lane FMA accumulators over
/// blocks of 64, reduced in its order, the rest added one by one), then the scaling, the
/// scales and the biases in another.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn norm_row(norm: &LayerNorm, row: &[f32], sum: f32, y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    assert_eq!(y.len(), n, "a row of the norm's length");
    let mean = sum * norm.recip_len;
    let blocks = n / 64;
    let mut sum_sq = 0f32;
    if blocks > 0 {
        let vmean = _mm512_set1_ps(mean);
        let mut acc = [_mm512_setzero_ps(); 4];
        for (src, dst) in row.chunks_exact(64).zip(y.chunks_exact_mut(64)) {
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: each block holds 64 floats, four of 16.
                unsafe {
                    let d = _mm512_sub_ps(_mm512_loadu_ps(src.as_ptr().add(16 * i)), vmean);
                    _mm512_storeu_ps(dst.as_mut_ptr().add(16 * i), d);
                    *a = _mm512_fmadd_ps(d, d, *a);
                }
            }
        }
        // tract's reduction: (a0 + a1) + (a2 + a3), then halves of 256, of 128, then lanes
        // (0 + 2) + (1 + 3).
        let [a0, a1, a2, a3] = acc;
        let z = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        let h = _mm256_add_ps(
            _mm512_castps512_ps256(z),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z))),
        );
        let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let q = _mm_add_ps(q, _mm_permute_ps::<0b1110>(q));
        sum_sq = _mm_cvtss_f32(_mm_add_ps(q, _mm_permute_ps::<1>(q)));
    }
    for j in blocks * 64..n {
        let d = row[j] - mean;
        y[j] = d;
        sum_sq += d * d;
    }
    let inv = (sum_sq / n as f32 + norm.eps).sqrt().recip();
    let (gamma, beta) = (norm.gamma.as_deref(), norm.beta.as_deref());
    for (j, v) in y.iter_mut().enumerate() {
        let mut x = *v * inv;
        if let Some(g) = gamma {
            x *= g[j];
        }
        if let Some(b) = beta {
            x += b[j];
        }
        *v = x;
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn norm_rows_f32<'a>(
    _: impl Iterator<Item = &'a [f32]>,
    _: &mut [f32],
    _: usize,
    _: &LayerNorm,
) {
    unreachable!("the f32 tiles are only enabled on x86-64 with AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn norm_rows<'a>(
    _: impl Iterator<Item = &'a [f32]>,
    _: &mut [u32],
    _: usize,
    _: &LayerNorm,
) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::*;

    use super::super::testing::{layer_norm, run, values};
    use super::super::{round_rows, Avx512Cpu, Bf16Cpu};
    use super::*;

    /// [`norm_rows_f32`] gives the bits of tract's ops of a layer norm, and [`norm_rows`] the
    /// bits of those followed by the product's rounding: rows of whole blocks of 64 and a tail,
    /// shorter than a block or than 4, rows that start on 16 bytes or not, groups of 8 and a
    /// rest, with scales, biases, both or none.
    #[test]
    fn rows_are_normalized_as_tracts_ops_normalize_them() -> TractResult<()> {
        let Some(Avx512Cpu(())) = Avx512Cpu::detect() else {
            eprintln!("no AVX-512 on this CPU: the folded norms are never used here");
            return Ok(());
        };
        let bf16 = Bf16Cpu::detect().is_some();
        if !bf16 {
            eprintln!("no AVX512-BF16 on this CPU: only the f32 rows are checked");
        }
        for k in [768, 64, 130, 50, 16, 3] {
            for (rows, scales, biases) in [(11, true, true), (8, false, false), (3, true, false)] {
                let what = format!("{rows} rows of {k}, scales {scales}, biases {biases}");
                let x = values(rows * k, k as u64);
                let gamma = scales.then(|| values(k, 1).iter().map(|g| 1.0 + g).collect());
                let beta = biases.then(|| values(k, 2));
                let shape = [1, rows, k];
                let mut model = TypedModel::default();
                let source = model.add_source("x", f32::fact(shape))?;
                let y = layer_norm(&mut model, source, k, gamma.as_deref(), beta.as_deref())?;
                model.select_output_outlets(&[y])?;
                let normed = run(model, &[(&shape, &x)]);
                let normed = normed.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                // The rows where tract's sum reads them: a tensor's buffer, as `run` gives it.
                let x = Tensor::from_shape(&shape, &x)?;
                let x = x.try_as_plain_ram()?;
                let x = x.as_slice::<f32>()?;
                let norm = LayerNorm {
                    recip_len: 1.0 / k as f32,
                    eps: 1e-5,
                    gamma,
                    beta,
                };
                let mut floats = vec![0f32; rows * k];
                // SAFETY: the CPU has AVX512-F (checked above).
                unsafe { norm_rows_f32(x.chunks_exact(k), &mut floats, k, &norm) };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&floats), bits(&normed), "{what}, f32");
                if !bf16 {
                    continue;
                }
                let kp = k.div_ceil(2);
                let (mut want, mut got) = (vec![0u32; rows * kp], vec![0u32; rows * kp]);
                // SAFETY: the CPU has AVX512-F and AVX512-BF16 (checked above).
                unsafe {
                    round_rows(normed.chunks_exact(k), &mut want, kp);
                    norm_rows(x.chunks_exact(k), &mut got, kp, &norm);
                }
                assert_eq!(got, want, "{what}");
            }
        }
        Ok(())
    }
}
