use std::collections::HashMap;

use tract_onnx::tract_core::ops::einsum::EinSum;

use super::super::kernel::testing::{
    assert_same_bits, run_alone_and_split, split_two_ways, values,
};
use super::*;
use crate::engine::graph::{Axis, Graph};
use crate::engine::narrow::declutter_keeping_axes;
use crate::engine::precision::Arithmetic;

/// Both towers of the committed tiny model (the real architecture, small widths), rewritten
/// and bound to a batch as a plan is: every query, key and value is read in place, and the
/// embeddings keep their bits, on one thread and split over a pool.
#[test]
fn the_towers_queries_keys_and_values_are_read_in_place_with_the_same_bits() -> TractResult<()> {
    if !super::super::bf16_supported() {
        eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
        return Ok(());
    }
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
    let blocks = 2;
    for (file, rank) in [("visual/model.onnx", 4), ("textual/model.onnx", 2)] {
        let prepared = Graph::prepare(&tiny.join(file), rank).unwrap();
        let mut typed = prepared.typed().clone();
        assert_eq!(
            super::super::rewrite(&mut typed, Arithmetic::Bf16)?.of_activations,
            2 * blocks
        );
        // Batch 3, 7 tokens; the image's own size.
        let mut subs = HashMap::new();
        let mut shape = vec![];
        for (i, axis) in prepared.input_shape().iter().enumerate() {
            let size = match axis {
                Axis::Fixed(n) => *n,
                Axis::Symbolic(sym) => {
                    let size = if i == 0 { 3 } else { 7 };
                    subs.insert(sym.clone(), TDim::Val(size as i64));
                    size
                }
            };
            shape.push(size);
        }
        let mut copied = typed.set_symbols(&subs)?;
        declutter_keeping_axes(&mut copied)?;
        let mut in_place = copied.clone();
        assert_eq!(fold(&mut in_place)?, 3 * blocks, "{file}");
        let len: usize = shape.iter().product();
        let input: Vec<f32> = if rank == 2 {
            // Token ids: a start, words, an end, then padding.
            (0..len)
                .map(|i| match i % 7 {
                    0 => 0.0,
                    5 => 2.0,
                    6 => 1.0,
                    p => (5 + (i * 31 + p) % 200) as f32,
                })
                .collect()
        } else {
            values(len, 21)
        };
        let run = |mut model: TypedModel| -> Tensor {
            model.optimize().unwrap();
            let dt = prepared.input_type();
            let x = Tensor::from_shape(&shape, &input)
                .unwrap()
                .cast_to_dt(dt)
                .unwrap()
                .into_owned();
            let plan = model.into_runnable().unwrap();
            plan.run(tvec![x.into_tvalue()])
                .unwrap()
                .remove(0)
                .into_tensor()
        };
        let want = run(copied);
        let got = run(in_place.clone());
        assert_same_bits(&got, &want, file);
        for split in split_two_ways(|| run(in_place.clone())) {
            assert_same_bits(&split, &want, file);
        }
    }
    Ok(())
}

/// A product of `x` (`[2, 3, 4]`, its axes 0 and 1 swapped, then merged) by `y` (`[5, 4]`).
fn swapped_then_merged() -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([2, 3, 4]))?;
    let y = model.add_source("y", f32::fact([5, 4]))?;
    let moved = model.wire_node("move", AxisOp::Move(0, 1), &[x])?;
    let merged = model.wire_node(
        "merge",
        AxisOp::Reshape(0, tvec![3.into(), 2.into()], tvec![6.into()]),
        &moved,
    )?;
    let op = EinSum::new("mk,nk->mn".parse()?, f32::datum_type());
    let out = model.wire_node("product", op, &[merged[0], y])?;
    model.select_output_outlets(&out)?;
    Ok(model)
}

/// Swapping two axes and then merging them is no single strided view of `x`: only the merge is
/// folded (a view of the swapped copy), and the product keeps its bits.
#[test]
fn a_chain_that_is_no_strided_view_is_folded_only_as_far_as_one_is() -> TractResult<()> {
    if !super::super::bf16_supported() {
        eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
        return Ok(());
    }
    let mut copied = swapped_then_merged()?;
    assert_eq!(
        super::super::rewrite(&mut copied, Arithmetic::Bf16)?.of_activations,
        1
    );
    let mut in_place = copied.clone();
    assert_eq!(fold(&mut in_place)?, 1);
    let product = in_place
        .nodes()
        .iter()
        .find(|n| n.op_is::<ActMatMul>())
        .unwrap();
    assert!(in_place.node(product.inputs[0].node).op_is::<AxisOp>());
    let (x, y) = (values(24, 3), values(20, 4));
    let inputs: [(&[usize], &[f32]); 2] = [(&[2, 3, 4], &x), (&[5, 4], &y)];
    let want = run_alone_and_split(copied, &inputs);
    assert_same_bits(
        &run_alone_and_split(in_place, &inputs),
        &want,
        "swapped then merged",
    );
    Ok(())
}

/// The positions a chain gives are a view only if one offset and one stride per axis give them
/// all.
#[test]
fn only_affine_positions_are_a_view() {
    use tract_onnx::prelude::tract_ndarray::{arr1, arr2};
    // Rows 12 apart, columns 2 apart, from 5.
    let rows = arr2(&[[5.0f32, 7.0, 9.0], [17.0, 19.0, 21.0]]);
    assert_eq!(affine(&rows.view().into_dyn()), Some((5, tvec![12, 2])));
    // An axis of one: stride 0.
    let one = arr2(&[[3.0f32, 4.0]]);
    assert_eq!(affine(&one.view().into_dyn()), Some((3, tvec![0, 1])));
    // Swapped then merged, as above; and a stride that goes backwards.
    assert_eq!(
        affine(&arr1(&[0.0f32, 12.0, 4.0, 16.0]).view().into_dyn()),
        None
    );
    assert_eq!(affine(&arr1(&[3.0f32, 2.0, 1.0]).view().into_dyn()), None);
}
