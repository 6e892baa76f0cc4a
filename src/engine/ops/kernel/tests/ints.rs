//! The integer tiles (int8 and 16-bit) against the integer sums of the quantized rows and
//! weights, and their vector quantization against the scalar definition.

use super::super::testing::values;
use super::super::*;
use super::{assert_same_split, edge_shapes, product};

/// A row quantized for the int8 tiles comes back within half a step of itself, 0 exactly, the
/// padding at the zero point; a row of zeros gets scale 1 and zero point 0.
#[test]
fn int8_rows_are_within_half_a_step() {
    for (k, seed) in [(2, 1), (7, 2), (64, 3), (771, 4)] {
        let mut x = values(k, seed);
        x[k / 2] = 0.0;
        let mut q = vec![0u32; int8::row_len(k)];
        int8::quantize_row(&x, &mut q);
        let kq = k.div_ceil(4);
        let (s, z) = (f32::from_bits(q[kq]), q[kq + 1]);
        let bytes: Vec<u8> = q[..kq].iter().flat_map(|d| d.to_le_bytes()).collect();
        let range = x.iter().fold(0f32, |m, &v| m.max(v)) - x.iter().fold(0f32, |m, &v| m.min(v));
        assert!((s - range / 255.0).abs() <= f32::EPSILON * s, "k {k}");
        for (i, &v) in x.iter().enumerate() {
            let back = s * (f32::from(bytes[i]) - z as f32);
            assert!(
                (back - v).abs() <= 0.5001 * s,
                "k {k}, {i}: {v} came back {back}"
            );
        }
        assert_eq!(u32::from(bytes[k / 2]), z, "k {k}: 0 is the zero point");
        assert!(bytes[k..].iter().all(|&b| u32::from(b) == z), "k {k}");
    }
    let mut q = vec![0u32; int8::row_len(5)];
    int8::quantize_row(&[0.0; 5], &mut q);
    assert_eq!((f32::from_bits(q[2]), q[3]), (1.0, 0));
}

/// The vector quantization gives the scalar one's bytes, scale and zero point: whole chunks of
/// 16, tails, exact ties between two steps, values at the clamp.
#[test]
fn int8_rows_quantize_as_the_scalar_definition() {
    let Some(VnniCpu(())) = VnniCpu::detect() else {
        eprintln!("no AVX512-VNNI on this CPU: the int8 tiles are never used here");
        return;
    };
    for k in [1, 5, 16, 17, 64, 771] {
        let rows = 3;
        let mut x = values(rows * k, k as u64);
        // A row whose range is 255 steps of 1/4 from -0.25 * 100: ties at every half step.
        for (i, v) in x[..k].iter_mut().enumerate() {
            *v = ((i % 256) as f32 - 100.0) * 0.25 + if i % 3 == 0 { 0.125 } else { 0.0 };
        }
        // A NaN, and an infinity, each in a row of its own (past the first chunk of 16 where
        // there is one).
        x[k + (k - 1).min(20)] = f32::NAN;
        x[2 * k + k / 2] = f32::INFINITY;
        let len = int8::row_len(k);
        let mut vector = vec![0u32; rows * len];
        // SAFETY: the CPU has AVX512-F and AVX512-BW (a `VnniCpu`).
        unsafe { int8::quantize_rows(x.chunks_exact(k), &mut vector) };
        for r in 0..rows {
            let mut scalar = vec![0u32; len];
            int8::quantize_row(&x[r * k..][..k], &mut scalar);
            assert_eq!(&vector[r * len..][..len], &scalar[..], "k {k}, row {r}");
            let scale = f32::from_bits(scalar[len - 2]);
            assert_eq!(
                scale.is_nan(),
                r > 0,
                "k {k}, row {r}: a non-finite value, a NaN scale"
            );
        }
    }
}

/// The int8 tiles ([`assert_integer_products`]), with the zero point taken out of the sums.
/// Summed lengths not a multiple of 4 among the edge shapes.
#[test]
fn int8_products_are_the_integer_sums_scaled_back() {
    let Some(cpu) = VnniCpu::detect() else {
        eprintln!("no AVX512-VNNI on this CPU: the int8 tiles are never used here");
        return;
    };
    assert_integer_products(
        int8::NR,
        |k, n, w| PackedWeights::pack_int8(cpu, k, n, |i, j| w[i * n + j]),
        127.0,
        |x| {
            let mut q = vec![0u32; int8::row_len(x.len())];
            int8::quantize_row(x, &mut q);
            let kq = x.len().div_ceil(4);
            let (s, z) = (f32::from_bits(q[kq]), i64::from(q[kq + 1]));
            let bytes = q[..kq].iter().flat_map(|d| d.to_le_bytes());
            (bytes.map(|b| i64::from(b) - z).collect(), s)
        },
        // The row's range, at most 3 here, over 255.
        3.0 / 255.0,
    );
}

/// Tiles whose weights `pack(k, n, w)` makes (each feature's integers its weights over its
/// largest magnitude over `levels`, rounded to nearest even) give, bit for bit, the integer
/// sums of those and of each row's integers (`quantized(row)`: its integers, zero point taken
/// out, and its scale), scaled back in f32 and the bias added; the same bits split over a
/// pool; and within the quantization's error of the exact products (a row's step at most
/// `row_step` for values in -1.5..1.5). Edge tiles of every kind for tiles of `nr` rows, and
/// two row blocks. A row with a NaN makes every output of its row NaN, as in f32, and no other.
fn assert_integer_products(
    nr: usize,
    pack: impl Fn(usize, usize, &[f32]) -> PackedWeights,
    levels: f32,
    quantized: impl Fn(&[f32]) -> (Vec<i64>, f32),
    row_step: f64,
) {
    for (rows, k, n) in edge_shapes(nr) {
        let what = format!("{rows} x {k} x {n}");
        let x = values(rows * k, 21);
        let w = values(k * n, 22);
        let bias = values(n, 23);
        let packed = pack(k, n, &w);
        let got = product(&x, rows, &packed, Some(&bias));
        // The weights' scales and integers, as the packing is documented to make them.
        let t: Vec<f32> = (0..n)
            .map(|j| (0..k).map(|i| w[i * n + j].abs()).fold(0f32, f32::max) / levels)
            .collect();
        let v = |i: usize, j: usize| (w[i * n + j] / t[j]).round_ties_even() as i64;
        for r in 0..rows {
            let (ints, s) = quantized(&x[r * k..][..k]);
            for j in 0..n {
                let sum: i64 = (0..k).map(|i| ints[i] * v(i, j)).sum();
                let want = (sum as f32) * (s * t[j]) + bias[j];
                assert_eq!(got[r * n + j].to_bits(), want.to_bits(), "{what}, {r} {j}");
            }
        }
        let exact = super::exact_sums(&x, &w, (rows, k, n), |v| v);
        // Each term is off by at most half a step of either input, times the other (1.5).
        let tolerance = k as f64 * 1.5 * (row_step / 2.0 + 1.5 / f64::from(levels) / 2.0);
        for (i, (&g, &e)) in got.iter().zip(&exact).enumerate() {
            let e = e + f64::from(bias[i % n]);
            assert!(
                (f64::from(g) - e).abs() <= tolerance,
                "{what}, {i}: {g} against {e}"
            );
        }
        assert_same_split(&x, rows, &packed, &bias, &got, &what);
    }
    let (rows, k, n) = (20, 40, 70);
    let mut x = values(rows * k, 31);
    let packed = pack(k, n, &values(k * n, 32));
    let clean = product(&x, rows, &packed, None);
    x[7 * k + 3] = f32::NAN;
    let dirty = product(&x, rows, &packed, None);
    for (i, (c, d)) in clean.iter().zip(&dirty).enumerate() {
        if i / n == 7 {
            assert!(d.is_nan(), "output {i}: {d}");
        } else {
            assert_eq!(c.to_bits(), d.to_bits(), "output {i}");
        }
    }
}

/// A row quantized for the 16-bit tiles comes back within half a step of itself (its largest
/// magnitude over 511), 0 exactly, the padding 0; a row of zeros gets scale 1.
#[test]
fn int16_rows_are_within_half_a_step() {
    for (k, seed) in [(2, 1), (7, 2), (64, 3), (771, 4)] {
        let mut x = values(k, seed);
        x[k / 2] = 0.0;
        let mut q = vec![0u32; int16::row_len(k)];
        int16::quantize_row(&x, &mut q);
        let kp = k.div_ceil(2);
        let s = f32::from_bits(q[kp]);
        let ints = pair_ints(&q[..kp]);
        let top = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(s, top / 511.0, "k {k}");
        for (i, &v) in x.iter().enumerate() {
            let back = s * f32::from(ints[i]);
            assert!(
                (back - v).abs() <= 0.5001 * s,
                "k {k}, {i}: {v} came back {back}"
            );
        }
        assert_eq!(ints[k / 2], 0, "k {k}");
        assert!(ints[k..].iter().all(|&i| i == 0), "k {k}: the padding");
    }
    let mut q = vec![0u32; int16::row_len(5)];
    int16::quantize_row(&[0.0; 5], &mut q);
    assert_eq!(
        (pair_ints(&q[..3]), f32::from_bits(q[3])),
        (vec![0; 6], 1.0)
    );
}

/// The i16 halves of pairs, in order.
fn pair_ints(pairs: &[u32]) -> Vec<i16> {
    pairs
        .iter()
        .flat_map(|&p| [p as u16 as i16, (p >> 16) as u16 as i16])
        .collect()
}

/// The vector quantization gives the scalar one's integers and scale: whole chunks of 16,
/// tails, odd lengths, exact ties between two steps, values at the clamp, and rows with a NaN
/// or an infinity (all zeros, a NaN scale).
#[test]
fn int16_rows_quantize_as_the_scalar_definition() {
    let Some(VnniCpu(())) = VnniCpu::detect() else {
        eprintln!("no AVX512-VNNI on this CPU: the 16-bit tiles are never used here");
        return;
    };
    for k in [1, 5, 16, 17, 33, 64, 771] {
        let rows = 3;
        let mut x = values(rows * k, k as u64);
        // A row of steps of 1/4 up to 511 of them: ties at every odd eighth.
        for (i, v) in x[..k].iter_mut().enumerate() {
            let step = (i * 37 % 1023) as f32 - 511.0;
            *v = step * 0.25 + if i % 3 == 0 { 0.125 } else { 0.0 };
        }
        x[0] = 511.0 * 0.25;
        x[k + (k - 1).min(20)] = f32::NAN;
        x[2 * k + k / 2] = f32::NEG_INFINITY;
        let len = int16::row_len(k);
        // Stale values where the vector code writes, to see that it writes every u32.
        let mut vector = vec![0xdead_beef_u32; rows * len];
        // SAFETY: the CPU has AVX512-F and AVX512-BW (a `VnniCpu`).
        unsafe { int16::quantize_rows(x.chunks_exact(k), &mut vector) };
        for r in 0..rows {
            let mut scalar = vec![0u32; len];
            int16::quantize_row(&x[r * k..][..k], &mut scalar);
            let scale = f32::from_bits(scalar[len - 1]);
            assert_eq!(scale.is_nan(), r > 0, "k {k}, row {r}");
            let vector = &vector[r * len..][..len];
            // The same NaN's bits too: both come from one `row_scale`.
            assert_eq!(vector, &scalar[..], "k {k}, row {r}");
        }
    }
}

/// The 16-bit tiles ([`assert_integer_products`]); odd summed lengths among the edge shapes.
#[test]
fn int16_products_are_the_integer_sums_scaled_back() {
    let Some(cpu) = VnniCpu::detect() else {
        eprintln!("no AVX512-VNNI on this CPU: the 16-bit tiles are never used here");
        return;
    };
    assert_integer_products(
        int16::NR,
        |k, n, w| {
            let packed = PackedWeights::pack_int16(cpu, k, n, |i, j| w[i * n + j]);
            assert_eq!(packed.kind(), "Int16");
            packed
        },
        511.0,
        |x| {
            let mut q = vec![0u32; int16::row_len(x.len())];
            int16::quantize_row(x, &mut q);
            let kp = x.len().div_ceil(2);
            let ints = pair_ints(&q[..kp]).into_iter().map(i64::from).collect();
            (ints, f32::from_bits(q[kp]))
        },
        // The row's largest magnitude, at most 1.5 here, over 511.
        1.5 / 511.0,
    );
}

/// The longest summed length the 16-bit tiles take sums every term at its largest magnitude
/// without overflowing; one longer is packed in f32.
#[test]
fn int16_sums_at_the_longest_length_do_not_overflow() {
    let Some(cpu) = VnniCpu::detect() else {
        eprintln!("no AVX512-VNNI on this CPU: the 16-bit tiles are never used here");
        return;
    };
    let k = int16::MAX_K;
    // Every term 511 * 511 (or -511 * 511 in the second feature): the largest sums there are.
    let packed = Packing::Int16(cpu).pack(k, 2, |_, j| if j == 0 { 1.0 } else { -1.0 });
    assert_eq!(packed.kind(), "Int16");
    let got = product(&vec![1.0; k], 1, &packed, None);
    assert_eq!(got, [k as f32, -(k as f32)]);
    let longer = Packing::Int16(cpu).pack(k + 1, 2, |_, _| 1.0);
    assert_eq!(longer.kind(), "F32");
}
