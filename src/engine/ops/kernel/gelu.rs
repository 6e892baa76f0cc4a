//! GELU on 16 lanes, as tract's `GeluExact` computes it on x86-64 with AVX-512, bit for bit:
//! `(x * 0.5) * (erf(x / sqrt(2)) + 1)`, with tract_linalg's erf (Abramowitz and Stegun 7.1.28,
//! `1 - 1 / (1 + a1 |x| + ... + a6 |x|^6)^16` with the sign of `x`, the coefficients and the
//! order of operations of its `x86_64_avx512_erf_f32_64n` kernel). The products that a GELU
//! follows apply it to their sums in registers ([`super::tiles`]) instead of a pass of its own.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `GeluExact` of the 16 floats of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn gelu16(x: __m512) -> __m512 {
    // tract scales by 1 / sqrt(2) computed this way, not by the rounded constant.
    let scaled = _mm512_mul_ps(x, _mm512_set1_ps(2f32.sqrt().recip()));
    let erf = erf16(scaled);
    let one = _mm512_set1_ps(1.0);
    _mm512_mul_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(0.5)),
        _mm512_add_ps(erf, one),
    )
}

/// tract_linalg's AVX-512 erf, as intrinsics: the same instructions in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn erf16(x: __m512) -> __m512 {
    // tract's coefficients, as its source writes them.
    #[allow(clippy::excessive_precision)]
    const A: [f32; 6] = [
        0.0705230784,
        0.0422820123,
        0.0092705272,
        0.0001520143,
        0.0002765672,
        0.0000430638,
    ];
    let one = _mm512_set1_ps(1.0);
    // The bit masks as integer ops (the float ones need AVX512-DQ): the same bits.
    let bits = _mm512_castps_si512(x);
    let sign = _mm512_and_si512(bits, _mm512_set1_epi32(i32::MIN));
    let a = _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(i32::MAX)));
    let mut p = _mm512_set1_ps(A[5]);
    for &c in A[..5].iter().rev() {
        p = _mm512_fmadd_ps(p, a, _mm512_set1_ps(c));
    }
    p = _mm512_add_ps(_mm512_mul_ps(p, a), one);
    for _ in 0..4 {
        p = _mm512_mul_ps(p, p);
    }
    let erf = _mm512_castps_si512(_mm512_sub_ps(one, _mm512_div_ps(one, p)));
    _mm512_castsi512_ps(_mm512_or_si512(erf, sign))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::ops::nn::gelu_exact::gelu_exact;

    use super::*;

    /// Every float of a wide sweep (tiny to huge, both signs, zeros, the erf's saturation) gets
    /// the bits tract's `GeluExact` op gives it.
    #[test]
    fn gelu_gives_the_bits_of_tracts_gelu_op() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 on this CPU: the bf16 products are never used here");
            return;
        }
        let mut xs: Vec<f32> = vec![0.0, -0.0, 1e-30, -1e-30, 3.9, -3.9, 4.0, 10.0, -10.0, 1e30];
        let mut v = 1e-6f32;
        while v < 20.0 {
            xs.extend([v, -v, v * 1.000_123, -v * 0.999_87]);
            v *= 1.0137;
        }
        xs.resize(xs.len().next_multiple_of(16), 0.5);
        let mut want = Tensor::from_shape(&[xs.len()], &xs).unwrap();
        gelu_exact().0.eval_in_place(&mut want, None).unwrap();
        let want = want.to_plain_array_view::<f32>().unwrap();
        let mut got = vec![0f32; xs.len()];
        for (src, dst) in xs.chunks_exact(16).zip(got.chunks_exact_mut(16)) {
            // SAFETY: the CPU has AVX-512 (checked above); 16 floats each.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), gelu16(_mm512_loadu_ps(src.as_ptr()))) };
        }
        for ((x, g), w) in xs.iter().zip(&got).zip(want.iter()) {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "gelu({x}): {g} against tract's {w}"
            );
        }
    }
}
