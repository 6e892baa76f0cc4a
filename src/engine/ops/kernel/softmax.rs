//! Softmax over the rows of a buffer, bit for bit what tract 0.23.9's `Softmax` op computes on
//! x86-64 with AVX-512, without its three kernel calls and two copies through a scratch buffer
//! per row (rows of 50, the image tower's attention, fill no 64-lane block of its kernels).
//!
//! tract, per row: the maximum; then its `softmax2` map-reduce, which takes the row in the
//! pieces its alignment gives (the elements before the first 64-byte boundary, whole blocks of
//! 64, the rest), pads a short piece with -inf, writes `exp(x - max)` with one polynomial and
//! sums each piece in four 16-lane accumulators reduced as `(a0 + a1) + (a2 + a3)`, then adds
//! the pieces' sums in order; last, every element times `1 / sum`. The same steps here, on the
//! same addresses, give the same bits.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{Avx512Cpu, Workers};

/// The row softmax of every `row_len` floats of `data`, in place; rows split over the run's
/// workers (`workers.rs`) in a run that has several.
pub(in crate::engine::ops) fn softmax_rows(cpu: Avx512Cpu, data: &mut [f32], row_len: usize) {
    let Avx512Cpu(()) = cpu;
    if row_len == 0 {
        return;
    }
    // SAFETY: an `Avx512Cpu` only exists where the CPU has AVX512-F.
    let run = |rows: &mut [f32]| unsafe { rows_avx512(rows, row_len) };
    let rows = data.len() / row_len;
    let workers = Workers::current();
    match workers.threads() {
        threads if threads > 1 && rows >= 2 => {
            let per = rows.div_ceil(threads) * row_len;
            workers.for_each_chunk_init(data, per, || (), |_, _, rows| run(rows));
        }
        _ => run(data),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rows_avx512(data: &mut [f32], row_len: usize) {
    for row in data.chunks_exact_mut(row_len) {
        // The maximum is the same whatever the order it is taken in.
        let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
        for chunk in row.chunks(16) {
            // SAFETY: the mask covers the chunk's `chunk.len()` floats only.
            let x = unsafe { _mm512_mask_loadu_ps(top, lanes(chunk.len()), chunk.as_ptr()) };
            top = _mm512_max_ps(top, x);
        }
        let max = _mm512_reduce_max_ps(top);
        // tract's pieces: up to the first 64-byte boundary, whole blocks of 64, the rest.
        let prefix = row.as_ptr().align_offset(64).min(row.len());
        let whole = (row.len() - prefix) / 64 * 64;
        let (head, rest) = row.split_at_mut(prefix);
        let (middle, tail) = rest.split_at_mut(whole);
        let mut sum = 0f32;
        for piece in [head, middle, tail] {
            if !piece.is_empty() {
                sum += exp_sum(piece, max);
            }
        }
        let scale = _mm512_set1_ps(sum.recip());
        for chunk in row.chunks_mut(16) {
            let mask = lanes(chunk.len());
            // SAFETY: the mask covers the chunk's `chunk.len()` floats only.
            unsafe {
                let x = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, _mm512_mul_ps(x, scale));
            }
        }
    }
}

/// `exp(x - max)` in place over `piece`, and its sum as tract's kernel adds it: 64 lanes at a
/// time in four accumulators, a last partial block padded with -inf (whose exp is 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_sum(piece: &mut [f32], max: f32) -> f32 {
    let vm = _mm512_set1_ps(max);
    let mut acc = [_mm512_setzero_ps(); 4];
    for block in piece.chunks_mut(64) {
        for (a, chunk) in acc.iter_mut().zip(block.chunks_mut(16)) {
            let mask = lanes(chunk.len());
            // SAFETY: the mask covers the chunk's `chunk.len()` floats only.
            unsafe {
                let x =
                    _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask, chunk.as_ptr());
                let y = exp16(_mm512_sub_ps(x, vm));
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, y);
                *a = _mm512_add_ps(*a, y);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)))
}

/// The mask of the first `len` of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(len: usize) -> __mmask16 {
    if len >= 16 {
        0xffff
    } else {
        (1u16 << len) - 1
    }
}

/// tract's `exp` of `softmax2` (Cody-Waite reduction, a degree-5 fit) for `x <= 0`, with its
/// constants as its source writes them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::excessive_precision, clippy::approx_constant)]
fn exp16(x: __m512) -> __m512 {
    let k = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(1.442_695_04)));
    let kf = _mm512_cvtepi32_ps(k);
    let mut rr = _mm512_fnmadd_ps(kf, _mm512_set1_ps(0.693_145_75), x);
    rr = _mm512_fnmadd_ps(kf, _mm512_set1_ps(1.428_606_8e-6), rr);
    let mut q = _mm512_set1_ps(8.297653546e-03);
    for c in [
        4.191538191e-02,
        1.666757475e-01,
        4.999889485e-01,
        9.999996920e-01,
        1.000000072e+00,
    ] {
        q = _mm512_fmadd_ps(q, rr, _mm512_set1_ps(c));
    }
    let biased = _mm512_max_epi32(
        _mm512_min_epi32(
            _mm512_add_epi32(k, _mm512_set1_epi32(127)),
            _mm512_set1_epi32(254),
        ),
        _mm512_set1_epi32(1),
    );
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
    let out = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-103.0))
        | _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(0.0));
    _mm512_mask_blend_ps(out, _mm512_mul_ps(q, scale), _mm512_setzero_ps())
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn rows_avx512(_: &mut [f32], _: usize) {
    unreachable!("row softmaxes are only enabled on x86-64 with AVX-512")
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::internal::EvalContext;
    use tract_onnx::tract_core::ops::nn::Softmax;
    use tract_onnx::tract_core::ops::EvalOp;

    use super::super::testing::{assert_same_bits, values};
    use super::*;

    /// Rows of many lengths, starting at every alignment, with spreads from flat to peaked:
    /// the bits of tract's `Softmax` op on the same buffer.
    #[test]
    fn rows_get_the_bits_of_tracts_softmax() {
        let Some(cpu) = Avx512Cpu::detect() else {
            eprintln!("no AVX-512 on this CPU: the row softmax is never used here");
            return;
        };
        for (rows, row_len) in [(7, 50), (5, 16), (3, 77), (4, 64), (3, 130), (9, 1), (6, 3)] {
            for spread in [0.01f32, 1.0, 30.0] {
                let x: Vec<f32> = values(rows * row_len, row_len as u64)
                    .iter()
                    .map(|v| v * spread)
                    .collect();
                let tensor = Tensor::from_shape(&[rows, row_len], &x).unwrap();
                let op = Softmax {
                    axes: tvec![1],
                    ..Softmax::default()
                };
                let want = op
                    .eval(
                        &EvalContext::out_of_plan(),
                        tvec![tensor.clone().into_tvalue()],
                    )
                    .unwrap();
                let mut got = tensor;
                let mut plain = got.try_as_plain_ram_mut().unwrap();
                softmax_rows(cpu, plain.as_slice_mut::<f32>().unwrap(), row_len);
                assert_same_bits(&got, &want[0], &format!("{rows} x {row_len} x {spread}"));
            }
        }
    }
}
