//! Helpers of the kernel's tests and of the rewrite's.

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
        Arithmetic::Int8 | Arithmetic::Int16 => {
            unreachable!("integers are quantized by rows and features, not by values")
        }
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

/// `f` run split over two threads both ways a run can be: over a shared rayon pool
/// (`model.intra_op_threads`), then over a lone run's team (`crate::engine::team`).
pub fn split_two_ways<R>(f: impl Fn() -> R) -> [R; 2] {
    let pool = tract_linalg::multithread::Executor::multithread(2);
    let over_pool = tract_linalg::multithread::multithread_tract_scope(pool, &f);
    let team = crate::engine::team::Team::new(2, "test-team").expect("a thread starts");
    let over_team = crate::engine::team::with(Some(std::sync::Arc::new(team)), &f);
    [over_pool, over_team]
}

/// [`run`] on the calling thread, after checking that a run split over two threads
/// ([`split_two_ways`]) gives the same bits.
pub fn run_alone_and_split(model: TypedModel, inputs: &[(&[usize], &[f32])]) -> Tensor {
    let alone = run(model.clone(), inputs);
    let [over_pool, over_team] = split_two_ways(|| run(model.clone(), inputs));
    assert_eq!(alone, over_pool, "split over a pool");
    assert_eq!(alone, over_team, "split over a team");
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
