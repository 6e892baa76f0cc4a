//! The kernel against exact sums of the products: of the rounded ones in bf16, of the
//! products themselves in f32.

use super::testing::{round, split_two_ways, values};
use super::*;

/// [`matmul`]'s `rows x n` outputs as a vector.
fn product(x: &[f32], rows: usize, w: &PackedWeights, bias: Option<&[f32]>) -> Vec<f32> {
    let epilogue = Epilogue { bias, gelu: false };
    let x = Activations::F32 {
        x,
        sources: None,
        norm: None,
    };
    let y = matmul(x, rows, w, epilogue, Output::F32, &[rows, w.n]).unwrap();
    y.to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// The exact sum of the bf16-rounded products, in f64.
fn reference(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
    exact_sums(x, w, (rows, k, n), round)
}

/// The exact sum of the products of `x` and `w`, each input first mapped by `input`, in f64.
fn exact_sums(
    x: &[f32],
    w: &[f32],
    (rows, k, n): (usize, usize, usize),
    input: impl Fn(f32) -> f32,
) -> Vec<f64> {
    let mut y = vec![0f64; rows * n];
    for r in 0..rows {
        for j in 0..n {
            y[r * n + j] = (0..k)
                .map(|i| f64::from(input(x[r * k + i])) * f64::from(input(w[i * n + j])))
                .sum();
        }
    }
    y
}

/// `got` is the exact sums `want` up to the f32 rounding of sums of `k` terms.
fn assert_sums(got: &[f32], want: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&got, &want)) in got.iter().zip(want).enumerate() {
        let tolerance = 1e-5 * (k as f64).sqrt() * want.abs().max(1.0);
        assert!(
            (f64::from(got) - want).abs() <= tolerance,
            "{what}, element {i}: {got} against {want}"
        );
    }
}

/// Products with edge tiles of every kind for tiles of `nr` rows, `(rows, k, n)`: one row, rows
/// not a multiple of `nr`, features not a multiple of 32, summed lengths not a multiple of 2 or
/// 4, split by panels (few rows) and by rows (many), and two row blocks (over 512 rows).
fn edge_shapes(nr: usize) -> [(usize, usize, usize); 6] {
    [
        (1, 8, 32),
        (7, 33, 45),
        (50, 64, 96),
        (81, 17, 5),
        (2 * 16 * nr + 7, 40, 300),
        (600, 26, 70),
    ]
}

/// [`product`] split over a pool of 2 gives `alone`, the bits it gave on one thread.
fn assert_same_split(
    x: &[f32],
    rows: usize,
    w: &PackedWeights,
    bias: &[f32],
    alone: &[f32],
    what: &str,
) {
    for (split, how) in split_two_ways(|| product(x, rows, w, Some(bias)))
        .iter()
        .zip(["pool", "team"])
    {
        assert_eq!(alone, split, "{what}, split over a {how}");
    }
}

/// The f32 tiles: the sums of the unrounded products up to the f32 rounding of the sums, with
/// a bias added to them as a separate add would, bit for bit, and the same bits split over a
/// pool. Edge tiles of every kind: one row, rows not a multiple of 8, features not a multiple
/// of 32, split by panels (few rows) and by rows (many), and two row blocks (over 512 rows).
#[test]
fn f32_products_are_the_sums_of_the_products() {
    let Some(cpu) = Avx512Cpu::detect() else {
        eprintln!("no AVX-512 on this CPU: the f32 tiles are never used here");
        return;
    };
    for (rows, k, n) in edge_shapes(fma::NR) {
        let what = format!("{rows} x {k} x {n}");
        let x = values(rows * k, 11);
        let w = values(k * n, 12);
        let bias = values(n, 13);
        let packed = PackedWeights::pack_f32(cpu, k, n, |i, j| w[i * n + j]);
        let plain = product(&x, rows, &packed, None);
        let want = exact_sums(&x, &w, (rows, k, n), |v| v);
        assert_sums(&plain, &want, k, &what);
        let biased = product(&x, rows, &packed, Some(&bias));
        for (i, (&p, &b)) in plain.iter().zip(&biased).enumerate() {
            assert_eq!(b.to_bits(), (p + bias[i % n]).to_bits(), "{what}, {i}");
        }
        assert_same_split(&x, rows, &packed, &bias, &biased, &what);
    }
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
    unsafe { round_rows(x.chunks_exact(k), &mut xb, kp) };
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
        let y = product(&x, rows, &packed, None);
        // Products of bf16 numbers are exact in f32; only the f32 sums round.
        let want = reference(&x, &w, rows, k, n);
        assert_sums(&y, &want, k, &format!("{rows}x{k}x{n}"));
    }
}

#[test]
fn products_split_over_a_pool_equal_the_single_thread_ones() {
    let Some(cpu) = Bf16Cpu::detect() else {
        eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
        return;
    };
    // Few rows split by panels (one row; several runs of panels, the last one partial), many
    // by rows.
    for (rows, k, n) in [
        (1, 40, 300),
        (53, 40, 64),
        (53, 24, 1000),
        (2 * 16 * NR + 7, 40, 300),
    ] {
        let x = values(rows * k, 3);
        let w = values(k * n, 4);
        let bias = values(n, 5);
        let packed = PackedWeights::pack(cpu, k, n, |i, j| w[i * n + j]);
        let alone = product(&x, rows, &packed, Some(&bias));
        let splits = split_two_ways(|| product(&x, rows, &packed, Some(&bias)));
        for (split, how) in splits.iter().zip(["pool", "team"]) {
            assert_eq!(&alone, split, "{rows} x {k} x {n}, split over a {how}");
        }
    }
}

/// A bias is the f32 sum of the product's output and the bias, bit for bit (what the separate
/// add it replaces computed), on full and partial panels.
#[test]
fn a_bias_is_added_to_the_sums_as_a_separate_add_would() {
    let Some(cpu) = Bf16Cpu::detect() else {
        eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
        return;
    };
    for (rows, k, n) in [(7, 33, 45), (50, 64, 96), (3, 8, 5)] {
        let x = values(rows * k, 8);
        let w = values(k * n, 9);
        let bias = values(n, 10);
        let packed = PackedWeights::pack(cpu, k, n, |i, j| w[i * n + j]);
        let plain = product(&x, rows, &packed, None);
        let biased = product(&x, rows, &packed, Some(&bias));
        for (i, (&p, &b)) in plain.iter().zip(&biased).enumerate() {
            assert_eq!(
                b.to_bits(),
                (p + bias[i % n]).to_bits(),
                "{rows}x{k}x{n}, {i}"
            );
        }
    }
}

/// A product that writes its outputs as bf16 pairs writes the bits that rounding its f32
/// outputs gives (GELU included), and a next product reading those pairs as they are gives
/// the bits it gives on the f32 outputs it would round itself: alone and split over a pool,
/// by panels (few rows) and by rows (many).
#[test]
fn outputs_written_as_pairs_are_the_rounded_outputs() {
    let Some(cpu) = Bf16Cpu::detect() else {
        eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
        return;
    };
    // Whole panels, and a partial one of an odd width (the last pair's high half 0).
    for (rows, n) in [
        (1, 96),
        (7, 96),
        (2 * 16 * NR + 7, 96),
        (7, 45),
        (2 * 16 * NR + 7, 45),
    ] {
        let (k, m) = (40, 50);
        let x = values(rows * k, 31);
        let w1 = values(k * n, 32);
        let w2 = values(n * m, 33);
        let bias = values(n, 34);
        let first = PackedWeights::pack(cpu, k, n, |i, j| w1[i * n + j]);
        let second = PackedWeights::pack(cpu, n, m, |i, j| w2[i * m + j]);
        let epilogue = Epilogue {
            bias: Some(&bias),
            gelu: true,
        };
        let x = Activations::F32 {
            x: &x,
            sources: None,
            norm: None,
        };
        let run = || {
            let f32s = matmul(x, rows, &first, epilogue, Output::F32, &[rows, n]).unwrap();
            let pairs = matmul(
                x,
                rows,
                &first,
                epilogue,
                Output::Pairs,
                &[rows, n.div_ceil(2)],
            )
            .unwrap();
            let (f32s, pairs) = (elements::<f32>(&f32s), elements::<u32>(&pairs));
            let from_f32s = Activations::F32 {
                x: &f32s,
                sources: None,
                norm: None,
            };
            let next = |x| {
                matmul(
                    x,
                    rows,
                    &second,
                    Epilogue::default(),
                    Output::F32,
                    &[rows, m],
                )
            };
            let (a, b) = (
                next(from_f32s).unwrap(),
                next(Activations::Pairs(&pairs)).unwrap(),
            );
            (f32s, pairs, a, b)
        };
        let (f32s, pairs, a, b) = run();
        let mut want = vec![0u32; rows * n.div_ceil(2)];
        // SAFETY: the CPU has AVX512-F and AVX512-BF16 (checked above).
        unsafe { round_rows(f32s.chunks_exact(n), &mut want, n.div_ceil(2)) };
        assert_eq!(pairs, want, "{rows} x {n}: the pairs");
        assert_eq!(a, b, "{rows} x {n}: the next product");
        for (split, how) in split_two_ways(run).into_iter().zip(["pool", "team"]) {
            assert_eq!(
                (&split.1, &split.3),
                (&pairs, &b),
                "{rows} x {n}, split over a {how}"
            );
        }
    }
}

/// The elements of `t`, in order.
fn elements<T: Datum + Copy>(t: &Tensor) -> Vec<T> {
    t.try_as_plain_ram()
        .unwrap()
        .as_slice::<T>()
        .unwrap()
        .to_vec()
}

mod ints;
