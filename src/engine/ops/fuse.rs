//! What a [`WeightMatMul`] absorbs of the ops that follow it: the constant add of a layer's bias,
//! then a GELU. The product's tiles apply both to their f32 sums while those are still in
//! registers (`kernel::Epilogue`), instead of a pass of their own over the output each. The same
//! f32 operations in the same order, so the same bits.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::GeluExact;

use super::kernel::Output;
use super::matmul::OutAxis;
use super::WeightMatMul;

/// Folds into each [`WeightMatMul`] the add of a constant that follows it, when that constant is
/// one value per output feature (a layer's bias). Returns how many it folded.
pub(super) fn biases(model: &mut TypedModel) -> TractResult<usize> {
    absorb(model, "bias", |model, product, next, output| {
        if !is_bin::<Add>(next) {
            return Ok(None);
        }
        let slot = usize::from(next.inputs[0] == output);
        let Some(bias) = model.outlet_fact(next.inputs[slot])?.konst.clone() else {
            return Ok(None);
        };
        // The add must not broadcast the product's output to a larger shape.
        if model.outlet_fact(next.id.into())?.shape != model.outlet_fact(output)?.shape {
            return Ok(None);
        }
        Ok(product.with_bias(&bias))
    })
}

/// Folds into each [`WeightMatMul`] the exact GELU that follows it (the MLP's first layer, in
/// both towers), after its bias if it has one. Returns how many it folded.
pub(super) fn gelus(model: &mut TypedModel) -> TractResult<usize> {
    absorb(model, "gelu", |_, product, next, _| {
        let is_gelu = next
            .op_as::<ElementWiseOp>()
            .is_some_and(|e| e.0.is::<GeluExact>() && e.1.is_none());
        Ok(if is_gelu { product.with_gelu() } else { None })
    })
}

/// Where a [`WeightMatMul`]'s output goes to one other only, which sums it (the MLP's first
/// layer, GELU included, and its second), the first writes its outputs rounded to bf16 pairs
/// and the second reads them as they are: the same rounding as the second would make, in the
/// first's registers instead of a pass over the f32 outputs, and half the bytes between the
/// two. The same bits. Returns how many pairs of products it joined.
pub(super) fn handoffs(model: &mut TypedModel) -> TractResult<usize> {
    let mut joined = 0;
    for id in products(model) {
        let Some(next) = sole_reader(model, id)? else {
            continue;
        };
        let node = model.node(id);
        let first = node.op_as::<WeightMatMul>().expect("listed as one");
        let Some(second) = next.op_as::<WeightMatMul>() else {
            continue;
        };
        let Some((first, second)) = first.handing_off_to(second) else {
            continue;
        };
        let ops = [
            (format!("{}.pairs", node.name), first),
            (format!("{}.from_pairs", next.name), second),
        ];
        replace_pair(model, id, next.id, "handoff", ops)?;
        joined += 1;
    }
    Ok(joined)
}

/// For each [`WeightMatMul`] whose output goes to one node only: `fold(model, product, that node,
/// the product's output)` says what product computes both, if one does, and that product
/// replaces the pair. Returns how many pairs it replaced.
fn absorb(
    model: &mut TypedModel,
    what: &str,
    fold: impl Fn(&TypedModel, &WeightMatMul, &TypedNode, OutletId) -> TractResult<Option<WeightMatMul>>,
) -> TractResult<usize> {
    let mut folded = 0;
    for id in products(model) {
        let Some(next) = sole_reader(model, id)? else {
            continue;
        };
        let (node, output) = (model.node(id), OutletId::new(id, 0));
        let product = node.op_as::<WeightMatMul>().expect("listed as one");
        let Some(op) = fold(model, product, next, output)? else {
            continue;
        };
        let ops = [(format!("{}.bf16", next.name), op)];
        replace_pair(model, id, next.id, what, ops)?;
        folded += 1;
    }
    Ok(folded)
}

/// Replaces product `id` and the node `next` that reads it by `ops`, wired one after the other
/// from the product's input.
fn replace_pair(
    model: &mut TypedModel,
    id: usize,
    next: usize,
    what: &str,
    ops: impl IntoIterator<Item = (String, WeightMatMul)>,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::new(format!("{what} {}", model.node(next).name));
    let mut y = patch.tap_model(model, model.node(id).inputs[0])?;
    for (name, op) in ops {
        y = patch.wire_node(name, op, &[y])?[0];
    }
    patch.shunt_outside(model, OutletId::new(next, 0), y)?;
    patch.apply(model)
}

/// The ids of `model`'s [`WeightMatMul`]s.
pub(super) fn products(model: &TypedModel) -> Vec<usize> {
    model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<WeightMatMul>())
        .map(|n| n.id)
        .collect()
}

/// The node that alone reads node `id`'s output, if one does: nothing else, the model's outputs
/// included.
pub(super) fn sole_reader(model: &TypedModel, id: usize) -> TractResult<Option<&TypedNode>> {
    let output = OutletId::new(id, 0);
    let read = read_once(model, output)?;
    Ok(read.then(|| model.node(model.outlet_successors(output)[0].node)))
}

/// Whether one node alone reads `outlet`, and it is not an output of the model.
pub(super) fn read_once(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    Ok(model.outlet_successors(outlet).len() == 1 && !model.output_outlets()?.contains(&outlet))
}

/// Whether `node` is a plain (not quantized) binary op `Op` of two inputs.
pub(super) fn is_bin<Op: BinMiniOp>(node: &TypedNode) -> bool {
    node.inputs.len() == 2
        && node
            .op_as::<TypedBinOp>()
            .is_some_and(|b| b.0.is::<Op>() && b.1.is_none())
}

impl WeightMatMul {
    /// This product with `b` added to its output, if that adds one value per output feature:
    /// `b` (f32, its axes right-aligned with the output's) is 1 long on every axis but the
    /// features', which it spans whole and in the order of `w`'s. None for a product that
    /// already has a bias or a GELU (which the bias would have to come before).
    fn with_bias(&self, b: &Tensor) -> Option<WeightMatMul> {
        let rank = self.out_axes.len();
        let taken = self.bias.is_some() || self.gelu;
        if taken || b.datum_type() != f32::datum_type() || b.rank() > rank {
            return None;
        }
        let canonical = self
            .out_axes
            .iter()
            .filter(|a| **a != OutAxis::Unit)
            .count();
        let x_kept = canonical - self.w_kept.len();
        let pad = rank - b.rank();
        let mut features = vec![];
        for (pos, axis) in self.out_axes.iter().enumerate() {
            let len = if pos < pad { 1 } else { b.shape()[pos - pad] };
            match axis {
                OutAxis::Canonical(i) if *i >= x_kept => {
                    if len != self.w_kept[i - x_kept] {
                        return None;
                    }
                    features.push(*i);
                }
                _ if len != 1 => return None,
                _ => {}
            }
        }
        if !features.is_sorted() {
            return None;
        }
        let view = b.to_plain_array_view::<f32>().ok()?;
        let values: Vec<f32> = view.iter().copied().collect();
        (values.len() == self.weights.n).then(|| {
            let mut product = self.clone();
            product.bias = Some(Arc::new(values));
            product
        })
    }

    /// This product writing bf16 pairs and `next` reading them, if both are bf16 products and
    /// `next` sums this one's output rows whole: both with one feature axis, this one's output laid out as its input's
    /// rows then the features (which `next` reads as its rows), `next`'s one summed axis this
    /// one's features, and `next`'s output laid out as its input's rows then its features
    /// (`WeightMatMul::eval_pairs`).
    fn handing_off_to(&self, next: &WeightMatMul) -> Option<(WeightMatMul, WeightMatMul)> {
        let in_order = |p: &WeightMatMul| {
            p.out_axes
                .iter()
                .enumerate()
                .all(|(i, a)| *a == OutAxis::Canonical(i))
        };
        // Pairs are bf16 operands: f32 products read and write f32.
        let fits = self.weights.is_bf16()
            && next.weights.is_bf16()
            && self.output == Output::F32
            && !self.pairs_in
            && !next.pairs_in
            && self.w_kept.len() == 1
            && next.w_kept.len() == 1
            && next.contracted == 1
            && next.weights.k == self.weights.n
            && in_order(self)
            && in_order(next);
        fits.then(|| {
            let (mut first, mut second) = (self.clone(), next.clone());
            first.output = Output::Pairs;
            second.pairs_in = true;
            (first, second)
        })
    }

    /// This product with tract's exact GELU applied to its output, or None if it already has one.
    fn with_gelu(&self) -> Option<WeightMatMul> {
        (!self.gelu).then(|| {
            let mut product = self.clone();
            product.gelu = true;
            product
        })
    }
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::nn::gelu_exact::gelu_exact;

    use tract_onnx::tract_core::ops::einsum::EinSum;

    use super::super::kernel::testing::{
        arithmetics, as_read, assert_same_bits, assert_sums_close, product, run,
        run_alone_and_split, values,
    };
    use super::super::rewrite;
    use super::*;
    use crate::engine::precision::Arithmetic;

    /// An add of one value per output feature after a product becomes part of the product,
    /// whichever side of the add it is on and however the output's axes are laid out; an add
    /// of anything else stays an add. The results are the einsum's on rounded inputs, plus the
    /// added constant, either way.
    #[test]
    fn a_bias_added_after_a_product_is_added_inside_it() -> TractResult<()> {
        for arithmetic in arithmetics() {
            biases_fold_in(arithmetic)?;
        }
        Ok(())
    }

    fn biases_fold_in(arithmetic: Arithmetic) -> TractResult<()> {
        let (x3, w2) = ([3usize, 7, 16].as_slice(), [16usize, 40].as_slice());
        for (expr, x_shape, w_shape, bias_shape, bias_first, fused) in [
            (
                "amk,kn->amn",
                x3,
                w2,
                [1usize, 1, 40].as_slice(),
                false,
                true,
            ),
            ("amk,kn->amn", x3, w2, &[1, 1, 40], true, true),
            ("mak,kn->bamn", x3, w2, &[1, 1, 1, 40], false, true),
            // The attention's output projection: two summed axes, a weight stored [n, a, k].
            (
                "bmak,nak->mbn",
                &[5, 3, 2, 8],
                &[33, 2, 8],
                &[1, 1, 33],
                false,
                true,
            ),
            // One value per row, or per row and feature: not a bias of the product's features.
            ("amk,kn->amn", x3, w2, &[3, 1, 1], false, false),
            ("amk,kn->amn", x3, w2, &[3, 7, 40], false, false),
        ] {
            let what = format!("{}: {expr} + {bias_shape:?}", arithmetic.as_str());
            let x = values(x_shape.iter().product(), 11);
            let w = values(w_shape.iter().product(), 12);
            let bias = values(bias_shape.iter().product(), 13);
            let model = |w: &[f32]| -> TractResult<TypedModel> {
                let (mut model, y) = product(expr, x_shape, w_shape, w)?;
                let b = model.add_const("bias", Tensor::from_shape(bias_shape, &bias)?)?;
                let inputs = if bias_first { [b, y] } else { [y, b] };
                let y =
                    model.wire_node("add", tract_onnx::tract_core::ops::math::add(), &inputs)?;
                model.select_output_outlets(&y)?;
                Ok(model)
            };
            let read = |v: &[f32]| as_read(arithmetic, v);
            let want = run(model(&read(&w))?, &[(x_shape, &read(&x))]);
            let mut rewritten = model(&w)?;
            let counts = rewrite(&mut rewritten, arithmetic)?;
            assert_eq!(
                (counts.by_weights, counts.biases),
                (1, usize::from(fused)),
                "{what}"
            );
            let last = rewritten.node(rewritten.output_outlets()?[0].node);
            assert_eq!(
                last.op_is::<WeightMatMul>(),
                fused,
                "{what}: {}",
                last.op.name()
            );
            let got = run(rewritten, &[(x_shape, &x)]);
            assert_sums_close(&got, &want, 16, &what);
        }
        Ok(())
    }

    /// A GELU after a product (and its bias) becomes part of the product, and gives the bits of
    /// tract's GELU op on the product's output; a GELU after a product whose output also goes
    /// elsewhere stays an op of its own.
    #[test]
    fn a_gelu_after_a_product_is_applied_inside_it_bit_for_bit() -> TractResult<()> {
        for arithmetic in arithmetics() {
            gelus_fold_in(arithmetic)?;
        }
        Ok(())
    }

    fn gelus_fold_in(arithmetic: Arithmetic) -> TractResult<()> {
        let (x_shape, w_shape) = ([3usize, 7, 16].as_slice(), [16usize, 40].as_slice());
        let x = values(x_shape.iter().product(), 21);
        let w = values(w_shape.iter().product(), 22);
        let bias = values(40, 23);
        for (with_bias, shared) in [(true, false), (false, false), (true, true)] {
            let what = format!(
                "{}: bias {with_bias}, output shared {shared}",
                arithmetic.as_str()
            );
            let (mut model, mut y) = product("amk,kn->amn", x_shape, w_shape, &w)?;
            if with_bias {
                let b = model.add_const("bias", Tensor::from_shape(&[1, 1, 40], &bias)?)?;
                y = model.wire_node("add", tract_onnx::tract_core::ops::math::add(), &[y, b])?[0];
            }
            // The product alone, in the same arithmetic, and tract's GELU op on its output.
            let mut alone = model.clone();
            alone.select_output_outlets(&[y])?;
            rewrite(&mut alone, arithmetic)?;
            let mut want = run(alone, &[(x_shape, &x)]);
            gelu_exact().0.eval_in_place(&mut want, None)?;
            let g = model.wire_node("gelu", gelu_exact(), &[y])?[0];
            let outputs = if shared { vec![g, y] } else { vec![g] };
            model.select_output_outlets(&outputs)?;
            let counts = rewrite(&mut model, arithmetic)?;
            assert_eq!(counts.gelus, usize::from(!shared), "{what}");
            let last = model.node(model.output_outlets()?[0].node);
            assert_eq!(last.op_is::<WeightMatMul>(), !shared, "{what}");
            assert_same_bits(&run(model, &[(x_shape, &x)]), &want, &what);
        }
        Ok(())
    }

    /// The MLP's two layers (product, bias, GELU, product): in bf16 the first hands its output
    /// to the second as bf16 pairs, which gives the bits of the two run apart (the second
    /// rounding the first's f32 output itself), an odd width of it too. Not where the hidden
    /// layer is also an output, nor in f32 (whose products read f32).
    #[test]
    fn the_mlp_hands_its_hidden_layer_over_in_bf16_bit_for_bit() -> TractResult<()> {
        for arithmetic in arithmetics() {
            mlp_hands_over(arithmetic)?;
        }
        Ok(())
    }

    fn mlp_hands_over(arithmetic: Arithmetic) -> TractResult<()> {
        let x_shape = [3usize, 7, 16];
        let x = values(x_shape.iter().product(), 41);
        for (hidden, shared, joined) in [(64, false, true), (64, true, false), (45, false, true)] {
            let what = format!("{}: hidden {hidden}, shared {shared}", arithmetic.as_str());
            let joined = joined && arithmetic == Arithmetic::Bf16;
            let w1 = values(16 * hidden, 42);
            let w2 = values(hidden * 24, 43);
            let bias = values(hidden, 44);
            // The first layer alone, then the second alone on its output.
            let (mut first, y) = product("amk,kn->amn", &x_shape, &[16, hidden], &w1)?;
            let b = first.add_const("bias", Tensor::from_shape(&[1, 1, hidden], &bias)?)?;
            let y = first.wire_node("add", tract_onnx::tract_core::ops::math::add(), &[y, b])?[0];
            let g = first.wire_node("gelu", gelu_exact(), &[y])?[0];
            let mut alone = first.clone();
            alone.select_output_outlets(&[g])?;
            rewrite(&mut alone, arithmetic)?;
            let h = run(alone, &[(&x_shape, &x)]);
            let h: Vec<f32> = h.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
            let (mut second, z) = product("amk,kn->amn", &[3, 7, hidden], &[hidden, 24], &w2)?;
            second.select_output_outlets(&[z])?;
            rewrite(&mut second, arithmetic)?;
            let want = run(second, &[(&[3, 7, hidden], &h)]);
            // Both in one graph.
            let w2 = first.add_const("w2", Tensor::from_shape(&[hidden, 24], &w2)?)?;
            let op = EinSum::new("amk,kn->amn".parse()?, f32::datum_type());
            let z = first.wire_node("second", op, &[g, w2])?[0];
            let outputs = if shared { vec![z, g] } else { vec![z] };
            first.select_output_outlets(&outputs)?;
            let counts = rewrite(&mut first, arithmetic)?;
            assert_eq!(counts.handoffs, usize::from(joined), "{what}");
            let got = run_alone_and_split(first, &[(&x_shape, &x)]);
            assert_same_bits(&got, &want, &what);
        }
        Ok(())
    }
}
