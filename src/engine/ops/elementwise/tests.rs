use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};

use super::super::kernel::testing::assert_same_bits;

use super::*;

/// `x op y` as tract computes it, and as an [`Elementwise`] does once [`ops`] has rewritten
/// the same model (with `replaced` of its one op replaced), for sources of the shapes given
/// (symbolic ones as written, as in the text tower's plan) and run at `sizes`; the floats must
/// have the same bits.
fn check(
    mini: Box<dyn BinMiniOp>,
    x: &[&str],
    y: &[&str],
    sizes: &[(&str, i64)],
    replaced: usize,
) -> TractResult<()> {
    let mut model = TypedModel::default();
    let shape = |axes: &[&str]| -> TractResult<ShapeFact> {
        let dims: TVec<TDim> = axes
            .iter()
            .map(|a| match a.parse::<i64>() {
                Ok(n) => Ok(TDim::Val(n)),
                Err(_) => model.symbols.parse_tdim(a),
            })
            .collect::<TractResult<_>>()?;
        Ok(ShapeFact::from_dims(dims))
    };
    let (x_shape, y_shape) = (shape(x)?, shape(y)?);
    let a = model.add_source("x", f32::fact(x_shape.clone()))?;
    let b = model.add_source("y", f32::fact(y_shape.clone()))?;
    let name = format!("{mini:?}");
    let out = model.wire_node("op", TypedBinOp(mini, None), &[a, b])?[0];
    model.select_output_outlets(&[out])?;
    let values = |shape: &ShapeFact, salt: u32| -> TractResult<Tensor> {
        let dims: Vec<usize> = shape
            .iter()
            .map(|d| {
                let d = sizes.iter().fold(d.clone(), |d, (s, v)| {
                    d.substitute(&model.symbols.sym(s), &TDim::Val(*v)).unwrap()
                });
                Ok(d.to_usize()?)
            })
            .collect::<TractResult<_>>()?;
        let n: usize = dims.iter().product();
        // Values of every magnitude and both signs, so that rounding would show.
        let v: Vec<f32> = (0..n as u32)
            .map(|i| {
                let h = (i ^ salt).wrapping_mul(2_654_435_761);
                ((h >> 8) as f32 / (1 << 20) as f32 - 8.0) * 1.37e-3f32.powi((h & 3) as i32)
            })
            .collect();
        Tensor::from_shape(&dims, &v)
    };
    let inputs = tvec![
        values(&x_shape, 1)?.into_tvalue(),
        values(&y_shape, 7)?.into_tvalue()
    ];
    let want = model
        .clone()
        .into_runnable()?
        .run(inputs.clone())?
        .remove(0);
    assert_eq!(ops(&mut model)?, replaced, "{name} {x:?} {y:?}");
    let left = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<TypedBinOp>())
        .count();
    assert_eq!(left, 1 - replaced, "{name} {x:?} {y:?}");
    let got = model.into_runnable()?.run(inputs)?.remove(0);
    let what = format!("{name} {x:?} {y:?}");
    assert_same_bits(&got.into_tensor(), &want.into_tensor(), &what);
    Ok(())
}

/// The text tower's three kinds: a residual add of two activations of one shape, the attention
/// mask added to every head's and query's scores, the queries scaled by one constant; with the
/// batch and sequence symbolic, at several sizes, and with the broadcast input first.
#[test]
fn the_text_towers_adds_and_multiplies_keep_tracts_bits() -> TractResult<()> {
    let residual = ["B", "S", "24"];
    let (scores, mask) = (["B", "4", "S", "S"], ["B", "1", "1", "S"]);
    let scale = ["1", "1", "1"];
    for sizes in [
        [("B", 1), ("S", 77)],
        [("B", 3), ("S", 5)],
        [("B", 2), ("S", 1)],
    ] {
        check(Box::new(Add), &residual, &residual, &sizes, 1)?;
        check(Box::new(Add), &scores, &mask, &sizes, 1)?;
        check(Box::new(Add), &mask, &scores, &sizes, 1)?;
        check(Box::new(Mul), &residual, &scale, &sizes, 1)?;
        check(Box::new(Mul), &scale, &residual, &sizes, 1)?;
    }
    Ok(())
}

/// Broadcasts over inner and outer axes alike: `b` constant over the last axes, or repeating
/// with holes in the middle; `N` symbolic, run at 2 (and at 0 for an empty tensor).
#[test]
fn any_broadcast_onto_the_first_input_keeps_tracts_bits() -> TractResult<()> {
    for (x, y, n) in [
        (&["N", "3", "4"][..], &["N", "1", "4"][..], 2),
        (&["2", "3", "N"], &["1", "3", "1"], 2),
        (&["N", "3", "4"], &["N", "3", "1"], 2),
        (&["5", "1", "3", "N"], &["1", "1", "3", "N"], 2),
        (&["N"], &["1"], 2),
        (&["2", "N", "4"], &["1", "1", "4"], 0),
    ] {
        check(Box::new(Add), x, y, &[("N", n)], 1)?;
        check(Box::new(Mul), x, y, &[("N", n)], 1)?;
    }
    Ok(())
}

/// What it leaves to tract: shapes all known (tract's codegen has kernels of its own for
/// those), inputs both broadcast (an outer product), other arithmetic, other types.
#[test]
fn other_binary_ops_stay_tracts() -> TractResult<()> {
    let none: [(&str, i64); 0] = [];
    check(Box::new(Add), &["2", "3", "4"], &["2", "1", "4"], &none, 0)?;
    check(Box::new(Mul), &["2", "3", "4"], &["1"; 3], &none, 0)?;
    check(Box::new(Add), &["N", "1"], &["1", "3"], &[("N", 2)], 0)?;
    let sub = Box::new(tract_onnx::tract_core::ops::math::Sub);
    check(sub, &["N", "3"], &["N", "3"], &[("N", 2)], 0)?;
    let mut model = TypedModel::default();
    let n = model.symbols.sym("N");
    let a = model.add_source("x", i32::fact([n.to_dim(), 3.to_dim()]))?;
    let b = model.add_source("y", i32::fact([n.to_dim(), 3.to_dim()]))?;
    let out = model.wire_node("op", TypedBinOp(Box::new(Add), None), &[a, b])?[0];
    model.select_output_outlets(&[out])?;
    assert_eq!(ops(&mut model)?, 0);
    Ok(())
}

/// The committed tiny model's text tower (the real architecture, small widths), as its symbolic
/// plan is built: every f32 add and multiply becomes an [`Elementwise`] (per block, the two
/// residual adds, the mask added to the scores and the queries' and keys' scaling; the
/// embeddings' two adds, the mask's scaling, and the mean pooling's multiply by the mask and
/// by one over the token count), and the tower's output keeps its bits at two
/// batch and sequence sizes. No AVX-512 needed: the products stay tract's where there is none.
#[test]
fn the_tiny_text_towers_symbolic_plan_keeps_its_bits() -> TractResult<()> {
    use crate::engine::graph::{Axis, Graph};
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
    let prepared = Graph::prepare(&tiny.join("textual/model.onnx"), 2).unwrap();
    let mut typed = prepared.typed().clone();
    super::super::rewrite(&mut typed, crate::engine::precision::Arithmetic::F32)?;
    let mut replaced = typed.clone();
    let blocks = 2;
    assert_eq!(ops(&mut replaced)?, 5 * blocks + 5);
    let generic = replaced.nodes().iter().filter(|n| {
        n.op_as::<TypedBinOp>()
            .is_some_and(|b| b.0.is::<Add>() || b.0.is::<Mul>())
            && n.outputs[0].fact.datum_type == f32::datum_type()
    });
    assert_eq!(generic.count(), 0);
    let run = |model: &TypedModel, batch: usize, seq: usize| -> TractResult<Tensor> {
        let mut model = model.clone();
        model.optimize()?;
        let ids: Vec<i64> = (0..batch * seq)
            .map(|i| match i % seq {
                0 => 0,
                p if p == seq - 1 => 2,
                p => (5 + (i * 31 + p) % 200) as i64,
            })
            .collect();
        let x = Tensor::from_shape(&[batch, seq], &ids)?
            .cast_to_dt(prepared.input_type())?
            .into_owned();
        Ok(model
            .into_runnable()?
            .run(tvec![x.into_tvalue()])?
            .remove(0)
            .into_tensor())
    };
    assert!(prepared
        .input_shape()
        .iter()
        .all(|a| matches!(a, Axis::Symbolic(_))));
    for (batch, seq) in [(1, 77), (3, 5)] {
        let (want, got) = (run(&typed, batch, seq)?, run(&replaced, batch, seq)?);
        assert_same_bits(&got, &want, "text tower");
    }
    Ok(())
}
