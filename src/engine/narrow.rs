//! Only the rows a tower's output reads are computed.
//!
//! The image tower pools its output from one token: after the last block, `ln_post`, and then
//! `x[:, 0]` (the class token), exported as a `Gather` of a constant scalar index. Everything
//! the last block does per token after its attention (the output projection, the MLP, the
//! layer norms, the residual sums) is then computed for 50 tokens and 49 of them are thrown
//! away: 6 % of the tower's multiply-adds (4.44 GMAC per image for ViT-B/32, 4.17 narrowed).
//!
//! tract's decluttering already pushes a `Slice` up through the ops that work token by token
//! (`PushSliceUp`), but it rewrites a `Gather` into a `Slice` only for a one-element index
//! *list*, not for the scalar index this export has. [`narrow_scalar_gathers`] makes that
//! rewrite (a `Slice` of one row, then removing the axis), so that the next declutter computes
//! the last block's output projection and MLP for the class token alone. The result is the same
//! arithmetic on the same rows: nothing is approximated.
//!
//! It costs some memory at batch 1: the narrowed products there have a single column, tract
//! runs them with a matrix-vector kernel, and that kernel packs the last block's weights apart
//! from the batch-8 plan's copy (RSS once ready 1352 -> 1373 MB on the full-size model).
//!
//! One pass of that declutter must then stay out: `ChangeAxes`, which moves axes around the
//! graph to cancel the axis ops it meets. Given the new one-row slices, it turns every block's
//! token-major activations (`N, 50, 768`) feature-major (`N, 768, 50`), and the layer norms and
//! matrix products that then work across strides cost more than the narrowing saves (image
//! batch 8 went from 10.7 to 10.4 images/s instead of 11.4). The layout was already settled
//! when the model was first decluttered, so [`declutter_keeping_axes`] runs every pass but that
//! one, here and again when a plan's symbols are bound.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Gather, Slice};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::optim::Optimizer;

/// The name tract's axis-moving declutter pass prints as.
const CHANGE_AXES: &str = "ChangeAxes";

/// tract's declutter passes, but the one that moves axes (see the module's notes).
fn declutter_passes_keeping_axes() -> Optimizer {
    let mut optimizer = Optimizer::declutter();
    optimizer
        .passes
        .retain(|pass| format!("{pass:?}") != CHANGE_AXES);
    optimizer
}

/// Declutters `model` without moving its axes.
pub fn declutter_keeping_axes(model: &mut TypedModel) -> TractResult<()> {
    declutter_passes_keeping_axes().session().optimize(model)
}

/// Rewrites each `Gather` of a constant scalar index from a plain numeric tensor into a
/// one-row `Slice` and the removal of that axis. Returns how many it rewrote; the caller
/// declutters again to let the slices travel up.
pub fn narrow_scalar_gathers(model: &mut TypedModel) -> TractResult<usize> {
    let candidates: Vec<(usize, usize, i64)> = model
        .nodes
        .iter()
        .filter_map(|node| {
            let gather = node.op_as::<Gather>()?;
            let data = model.outlet_fact(node.inputs[0]).ok()?;
            let indices = model.outlet_fact(node.inputs[1]).ok()?;
            let index = indices.konst.as_ref()?;
            let plain = data.is_plain() && data.datum_type.is_number();
            // A tensor other ops read is computed whole anyway (the q, k, v split of an
            // attention is three scalar gathers of one tensor): only a sole reader narrows.
            let only_reader = model.outlet_successors(node.inputs[0]).len() == 1;
            let scalar = index.rank() == 0 && gather.output_type.is_none();
            let index = index.cast_to_scalar::<i64>().ok()?;
            (plain && scalar && only_reader).then_some((node.id, gather.axis, index))
        })
        .collect();
    for &(id, axis, index) in &candidates {
        let node = model.node(id);
        let len = model.outlet_fact(node.inputs[0])?.shape[axis].clone();
        let start = if index < 0 {
            len + index.to_dim()
        } else {
            index.to_dim()
        };
        let mut patch = TypedModelPatch::new(format!("narrow {}", node.name));
        let data = patch.tap_model(model, node.inputs[0])?;
        let row = patch.wire_node(
            format!("{}.row", node.name),
            Slice {
                axis,
                start: start.clone(),
                end: start + 1,
            },
            &[data],
        )?[0];
        let squeezed =
            patch.wire_node(format!("{}.squeeze", node.name), AxisOp::Rm(axis), &[row])?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), squeezed)?;
        patch.apply(model)?;
    }
    Ok(candidates.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::math::add;

    #[test]
    fn keeping_axes_drops_exactly_the_axis_pass() {
        let all = Optimizer::declutter().passes.len();
        let kept = declutter_passes_keeping_axes();
        assert_eq!(
            kept.passes.len(),
            all - 1,
            "tract renamed or split its {CHANGE_AXES} pass"
        );
        assert!(kept.passes.iter().all(|p| format!("{p:?}") != CHANGE_AXES));
    }

    /// x: [2, 5, 4] -> x + x -> matmul by a [4, 3] weight -> row 0 of axis 1: [2, 3].
    fn pooled_model() -> TractResult<(TypedModel, Tensor)> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 5, 4]))?;
        let doubled = model.wire_node("double", add(), &[x, x])?[0];
        let weight = Tensor::from_shape(
            &[4, 3],
            &(0..12).map(|i| i as f32 * 0.5 - 2.0).collect::<Vec<_>>(),
        )?;
        let w = model.add_const("w", weight)?;
        let projected = model.wire_node(
            "project",
            EinSum::new("bti,io->bto".parse()?, f32::datum_type()),
            &[doubled, w],
        )?[0];
        let index = model.add_const("index", tensor0(0i64))?;
        let pooled = model.wire_node("pool", Gather::new(1), &[projected, index])?[0];
        model.select_output_outlets(&[pooled])?;
        let input = Tensor::from_shape(
            &[2, 5, 4],
            &(0..40).map(|i| (i as f32).sin()).collect::<Vec<_>>(),
        )?;
        Ok((model, input))
    }

    fn run(model: TypedModel, input: &Tensor) -> TractResult<Tensor> {
        let out = model
            .into_optimized()?
            .into_runnable()?
            .run(tvec!(input.clone().into()))?;
        Ok(out[0].clone().into_tensor())
    }

    #[test]
    fn a_scalar_gather_becomes_a_slice_that_narrows_the_product_above_it() -> TractResult<()> {
        let (model, input) = pooled_model()?;
        let whole = run(model.clone(), &input)?;

        let mut narrowed = model.into_decluttered()?;
        assert_eq!(narrow_scalar_gathers(&mut narrowed)?, 1);
        declutter_keeping_axes(&mut narrowed)?;
        assert!(!narrowed.nodes.iter().any(|n| n.op_is::<Gather>()));
        // The product now runs on the one row the output reads, not on all 5.
        let product = narrowed
            .nodes
            .iter()
            .find(|n| n.op_is::<EinSum>())
            .expect("the product is still there");
        let rows: TVec<usize> = product.outputs[0].fact.shape.as_concrete().unwrap().into();
        assert_eq!(
            rows.iter().product::<usize>(),
            2 * 3,
            "product output {rows:?}"
        );

        let narrow = run(narrowed, &input)?;
        assert_eq!(narrow.shape(), &[2, 3]);
        assert_eq!(whole, narrow);
        Ok(())
    }

    #[test]
    fn gathers_of_tensors_read_elsewhere_or_by_data_indices_are_left_alone() -> TractResult<()> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([3, 4]))?;
        let ids = model.add_source("ids", i64::fact([2]))?;
        let by_ids = model.wire_node("by_ids", Gather::new(0), &[x, ids])?[0];
        // Two scalar gathers of one tensor (the q, k, v split of an attention): each keeps
        // the whole tensor alive, so slicing one narrows nothing.
        let zero = model.add_const("zero", tensor0(0i64))?;
        let one = model.add_const("one", tensor0(1i64))?;
        let row0 = model.wire_node("row0", Gather::new(0), &[x, zero])?[0];
        let row1 = model.wire_node("row1", Gather::new(0), &[x, one])?[0];
        model.select_output_outlets(&[by_ids, row0, row1])?;
        assert_eq!(narrow_scalar_gathers(&mut model)?, 0);
        assert_eq!(
            model.nodes.iter().filter(|n| n.op_is::<Gather>()).count(),
            3
        );
        Ok(())
    }
}
