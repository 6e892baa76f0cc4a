//! A layer norm whose output only a [`WeightMatMul`] reads (the image tower's `ln_1` before the
//! attention's input projection, `ln_2` before the MLP) becomes part of that product: it reads
//! the norm's input and normalizes each row as it rounds it to bf16 (`kernel/norm.rs`). That
//! takes out the norm's five passes over its tensor (the sum, the mean's subtraction,
//! `RmsNorm`'s two, the bias) and the product's own rounding pass, and the f32 tensor between
//! them. The same f32 operations in the same order, so the same bits. A post-norm transformer
//! (the text tower) reads each norm's output twice, for the residual too: it keeps its norms.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::BinMiniOp;
use tract_onnx::tract_core::ops::math::{Add, Mul, Sub};
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use super::fuse::{is_bin, products, read_once};
use super::kernel::LayerNorm;
use super::WeightMatMul;

/// Folds into each [`WeightMatMul`] the layer norm that only it reads, over the axis it sums
/// (tract's decluttered form of ONNX's `LayerNormalization`: `Reduce<Sum>`, a multiply by
/// `1 / len`, a subtraction, `RmsNorm`, then a multiply by the scales and an add of the
/// biases where the export has them). Returns how many it folded.
pub(super) fn layer_norms(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in products(model) {
        let product = model.node(id);
        let op = product.op_as::<WeightMatMul>().expect("listed as one");
        if op.pairs_in
            || op.norm.is_some()
            || op.contracted != 1
            || !read_once(model, product.inputs[0])?
        {
            continue;
        }
        let Some((x, norm)) = layer_norm(model, product.inputs[0], op.weights.k)? else {
            continue;
        };
        let mut fused = op.clone();
        fused.norm = Some(Arc::new(norm));
        let name = format!("{}.norm", product.name);
        let mut patch = TypedModelPatch::new(format!("layer norm into {}", product.name));
        let x = patch.tap_model(model, x)?;
        let y = patch.wire_node(name, fused, &[x])?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), y)?;
        patch.apply(model)?;
        folded += 1;
    }
    if folded > 0 {
        // The norms' ops, read by nothing now.
        model.compact()?;
    }
    Ok(folded)
}

/// The layer norm over the last axis (`k` long) whose output is `y`, and its input, if `y` is
/// one and nothing else reads any of its steps but the last (`y`, which anything may read).
pub(super) fn layer_norm(
    model: &TypedModel,
    y: OutletId,
    k: usize,
) -> TractResult<Option<(OutletId, LayerNorm)>> {
    // Every step's output but `y` is read by the next step alone.
    let inner = |o: OutletId| -> TractResult<bool> { Ok(o == y || read_once(model, o)?) };
    // From the last step up: the biases, then the scales, each optional.
    let mut at = y;
    let beta = match with_const::<Add>(model, at, k)? {
        Some((rest, beta)) => {
            at = rest;
            Some(beta)
        }
        None => None,
    };
    let gamma = match with_const::<Mul>(model, at, k)? {
        Some((rest, gamma)) if inner(at)? => {
            at = rest;
            Some(gamma)
        }
        _ => None,
    };
    let node = model.node(at.node);
    let Some(rms_norm) = node.op_as::<RmsNorm>() else {
        return Ok(None);
    };
    let rank = model.outlet_fact(at)?.rank();
    if rms_norm.axis + 1 != rank || !inner(at)? {
        return Ok(None);
    }
    let eps = rms_norm.eps.cast_to_scalar::<f32>()?;
    // The centred row: x minus the mean.
    let centred = node.inputs[0];
    let sub = model.node(centred.node);
    if !is_bin::<Sub>(sub) || !read_once(model, centred)? {
        return Ok(None);
    }
    let (x, mean) = (sub.inputs[0], sub.inputs[1]);
    // The mean: the sum times a constant.
    let Some((sum, recip)) = with_const::<Mul>(model, mean, 1)? else {
        return Ok(None);
    };
    if !read_once(model, mean)? {
        return Ok(None);
    }
    let reduce = model.node(sum.node);
    let sums_x = reduce
        .op_as::<Reduce>()
        .is_some_and(|r| matches!(r.reducer, Reducer::Sum) && r.axes.as_slice() == [rank - 1])
        && reduce.inputs == [x];
    let x_fact = model.outlet_fact(x)?;
    let fits = sums_x
        && read_once(model, sum)?
        && x_fact.datum_type == f32::datum_type()
        && x_fact.shape == model.outlet_fact(y)?.shape
        && x_fact.shape.last() == Some(&k.to_dim());
    Ok(fits.then(|| {
        let norm = LayerNorm {
            recip_len: recip[0],
            eps,
            gamma,
            beta,
        };
        (x, norm)
    }))
}

/// If `y` is the output of a binary op `Op` of a constant of `len` values (one per feature,
/// every other axis 1) and another input: that input and the values.
fn with_const<Op: BinMiniOp>(
    model: &TypedModel,
    y: OutletId,
    len: usize,
) -> TractResult<Option<(OutletId, Vec<f32>)>> {
    let node = model.node(y.node);
    if !is_bin::<Op>(node) {
        return Ok(None);
    }
    for (slot, other) in [(0, 1), (1, 0)] {
        let Some(c) = model.outlet_fact(node.inputs[slot])?.konst.clone() else {
            continue;
        };
        let ones = c.shape().iter().rev().skip(1).all(|&d| d == 1);
        let last = c.shape().last().copied().unwrap_or(1);
        if c.datum_type() != f32::datum_type() || c.len() != len || !ones || last != len {
            continue;
        }
        // The other input keeps its shape: the constant only broadcasts into it.
        if model.outlet_fact(node.inputs[other])?.shape != model.outlet_fact(y)?.shape {
            continue;
        }
        let values = c.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        return Ok(Some((node.inputs[other], values)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::einsum::EinSum;

    use super::super::kernel::testing::{
        arithmetics, assert_same_bits, layer_norm, product, run, run_alone_and_split, values,
    };
    use super::super::rewrite;
    use super::*;
    use crate::engine::precision::Arithmetic;

    /// A layer norm before a product becomes part of it and gives the bits of the norm run by
    /// tract's ops then the product on its output, with and without scales and biases; a norm
    /// whose output is also read elsewhere stays a norm of its own (`rownorm.rs`).
    #[test]
    fn a_layer_norm_read_by_a_product_alone_is_applied_inside_it_bit_for_bit() -> TractResult<()> {
        for arithmetic in arithmetics() {
            norm_folds_in(arithmetic)?;
        }
        Ok(())
    }

    fn norm_folds_in(arithmetic: Arithmetic) -> TractResult<()> {
        let (k, n) = (80, 40);
        let x_shape = [2usize, 7, k];
        let x = values(x_shape.iter().product(), 51);
        let w = values(k * n, 52);
        let gamma: Vec<f32> = values(k, 53).iter().map(|g| 1.0 + g).collect();
        let beta = values(k, 54);
        for (scales, biases, shared) in [
            (true, true, false),
            (false, false, false),
            (false, true, false),
            (true, true, true),
        ] {
            let what = format!(
                "{}: scales {scales}, biases {biases}, shared {shared}",
                arithmetic.as_str()
            );
            let (gamma, beta) = (scales.then_some(&gamma[..]), biases.then_some(&beta[..]));
            // The norm by tract's ops, then the product alone on its output.
            let mut norm = TypedModel::default();
            let source = norm.add_source("x", f32::fact(x_shape))?;
            let y = layer_norm(&mut norm, source, k, gamma, beta)?;
            norm.select_output_outlets(&[y])?;
            let normed = run(norm, &[(&x_shape, &x)]);
            let (mut alone, z) = product("amk,kn->amn", &x_shape, &[k, n], &w)?;
            alone.select_output_outlets(&[z])?;
            rewrite(&mut alone, arithmetic)?;
            let want = run(
                alone,
                &[(&x_shape, normed.try_as_plain_ram()?.as_slice::<f32>()?)],
            );
            // Both in one graph.
            let mut model = TypedModel::default();
            let source = model.add_source("x", f32::fact(x_shape))?;
            let y = layer_norm(&mut model, source, k, gamma, beta)?;
            let w = model.add_const("w", Tensor::from_shape(&[k, n], &w)?)?;
            let op = EinSum::new("amk,kn->amn".parse()?, f32::datum_type());
            let z = model.wire_node("product", op, &[y, w])?[0];
            let outputs = if shared { vec![z, y] } else { vec![z] };
            model.select_output_outlets(&outputs)?;
            let counts = rewrite(&mut model, arithmetic)?;
            // A norm read elsewhere too stays a norm of its own: one `RowLayerNorm`.
            assert_eq!(counts.norms, usize::from(!shared), "{what}");
            assert_eq!(counts.layer_norms, usize::from(shared), "{what}");
            let tracts = model
                .nodes()
                .iter()
                .filter(|n| n.op_is::<RmsNorm>())
                .count();
            assert_eq!(tracts, 0, "{what}");
            let got = run_alone_and_split(model, &[(&x_shape, &x)]);
            assert_same_bits(&got, &want, &what);
        }
        Ok(())
    }
}
