//! The attention's two products of activations, in bf16 or f32: the scores (queries by keys)
//! and their weighting of the values. Each is an `EinSum` of two non-constant inputs with axes
//! shared by both (batch, heads), one summed axis and one kept axis on each side;
//! [`ActMatMul`] runs one product per batch and head, in bf16 both operands rounded at
//! every run (the right one packed on the fly, `kernel/activations.rs`), the sums in f32; in
//! f32 the same with the FMA tiles. tract runs these products
//! at about 50 GFLOP/s in f32 on the towers' small shapes (50 x 64 x 50 per head for an image),
//! plus a pass packing each operand.

use tract_onnx::prelude::tract_ndarray::{ArrayViewD, Axis, Ix2};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::kernel::{activation_products, Packing};
use super::views::OperandView;

/// `out = x . y` for two activations, with bf16 products: `x`'s axes read as `[batch..., m, k]`,
/// `y`'s as `[batch..., k, n]`, the result `[batch..., m, n]` laid out as the replaced einsum's
/// output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActMatMul {
    /// bf16 or f32, and the proof that this CPU runs it.
    packing: Packing,
    layout: ActLayout,
    /// Per operand, whether it is read in place from the tensor a chain of copies started from
    /// (`views.rs`) rather than being its input as it is.
    pub(super) views: [Option<OperandView>; 2],
}

/// Which axis of each operand is which, as [`ActLayout::plan`] reads them from an einsum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ActLayout {
    /// `x`'s axes in the order `[batch..., m, k]`.
    x_order: TVec<usize>,
    /// `y`'s axes in the order `[batch..., k, n]`.
    y_order: TVec<usize>,
    /// Output axis `i` is axis `out_order[i]` of `[batch..., m, n]`.
    out_order: TVec<usize>,
}

impl ActLayout {
    /// The layout of the einsum `expr` (`"xaxes,yaxes->outaxes"`, one letter per axis) if it is a
    /// batched product of two matrices: every axis of the output comes from `x` or `y`, the
    /// axes of both and of the output are batch axes, and there is exactly one summed axis
    /// (in both, not in the output), one axis kept from `x` and one kept from `y`.
    pub(super) fn plan(expr: &str) -> Option<ActLayout> {
        let (xs, ys, out) = super::einsum_axes(expr)?;
        let unique = |v: &[char]| v.iter().all(|c| v.iter().filter(|d| *d == c).count() == 1);
        if !unique(&xs) || !unique(&ys) || !unique(&out) {
            return None;
        }
        let batch: Vec<char> = xs
            .iter()
            .copied()
            .filter(|c| ys.contains(c) && out.contains(c))
            .collect();
        let only = |v: Vec<char>| (v.len() == 1).then(|| v[0]);
        let m = only(
            xs.iter()
                .copied()
                .filter(|c| !ys.contains(c) && out.contains(c))
                .collect(),
        )?;
        let n = only(
            ys.iter()
                .copied()
                .filter(|c| !xs.contains(c) && out.contains(c))
                .collect(),
        )?;
        let k = only(
            xs.iter()
                .copied()
                .filter(|c| ys.contains(c) && !out.contains(c))
                .collect(),
        )?;
        // Nothing else: no axis summed on one side only, no unit axes added.
        let rank = batch.len() + 2;
        if xs.len() != rank || ys.len() != rank || out.len() != rank {
            return None;
        }
        let position = |v: &[char], c: char| v.iter().position(|&a| a == c);
        let order = |v: &[char], last: [char; 2]| -> Option<TVec<usize>> {
            batch.iter().chain(&last).map(|&c| position(v, c)).collect()
        };
        let canonical: Vec<char> = batch.iter().copied().chain([m, n]).collect();
        Some(ActLayout {
            x_order: order(&xs, [m, k])?,
            y_order: order(&ys, [k, n])?,
            out_order: out
                .iter()
                .map(|&c| position(&canonical, c))
                .collect::<Option<_>>()?,
        })
    }

    fn batch_axes(&self) -> usize {
        self.x_order.len() - 2
    }

    /// Whether the batch axes of `x` and `y` have the same sizes (no broadcasting here).
    pub(super) fn fits(&self, x: &TypedFact, y: &TypedFact) -> bool {
        (0..self.batch_axes()).all(|i| x.shape[self.x_order[i]] == y.shape[self.y_order[i]])
    }

    /// The op, in the arithmetic of `packing`.
    pub(super) fn build(self, packing: Packing) -> ActMatMul {
        ActMatMul {
            packing,
            layout: self,
            views: [None, None],
        }
    }
}

impl Op for ActMatMul {
    fn name(&self) -> StaticName {
        match self.packing {
            Packing::Bf16(_) => "Bf16ActMatMul".into(),
            Packing::F32(_) => "F32ActMatMul".into(),
            Packing::Int8(_) | Packing::Int16(_) => {
                unreachable!("an integer tower's products of activations are f32")
            }
        }
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

/// The 2-d operand of batch `b` (row-major over the batch axes) of a view ordered
/// `[batch..., rows, columns]`.
fn operand<'a>(view: &ArrayViewD<'a, f32>, batch_axes: usize, mut b: usize) -> ArrayView2D<'a> {
    let shape = &view.shape()[..batch_axes];
    let mut index = vec![0; batch_axes];
    for (i, &d) in shape.iter().enumerate().rev() {
        index[i] = b % d;
        b /= d;
    }
    let mut v = view.clone();
    for i in index {
        v = v.index_axis_move(Axis(0), i);
    }
    v.into_dimensionality::<Ix2>()
        .expect("two axes left after the batch ones")
}

/// Input `t` as the product reads it: in place through its view, if it has one.
fn operand_view<'a>(t: &'a TValue, view: &Option<OperandView>) -> TractResult<ArrayViewD<'a, f32>> {
    match view {
        Some(v) => v.view(t),
        None => t.to_plain_array_view::<f32>(),
    }
}

type ArrayView2D<'a> = tract_ndarray::ArrayView2<'a, f32>;

impl EvalOp for ActMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let layout = &self.layout;
        let (x, y) = args_2!(inputs);
        let x = operand_view(&x, &self.views[0])?;
        let y = operand_view(&y, &self.views[1])?;
        let scales = self
            .views
            .each_ref()
            .map(|v| v.as_ref().and_then(OperandView::scale));
        let x = x.permuted_axes(layout.x_order.as_slice());
        let y = y.permuted_axes(layout.y_order.as_slice());
        let nb = layout.batch_axes();
        ensure!(
            x.shape()[..nb] == y.shape()[..nb],
            "batch axes {:?} against {:?}",
            &x.shape()[..nb],
            &y.shape()[..nb]
        );
        let (m, k, n) = (x.shape()[nb], x.shape()[nb + 1], y.shape()[nb + 1]);
        ensure!(y.shape()[nb] == k, "sums {k} against {}", y.shape()[nb]);
        let batches: usize = x.shape()[..nb].iter().product();
        let canonical: TVec<usize> = x.shape()[..nb].iter().copied().chain([m, n]).collect();
        let mut out = activation_products(
            self.packing,
            (batches, m, n),
            |b| (operand(&x, nb, b), operand(&y, nb, b)),
            scales,
            &canonical,
        )?;
        if layout.out_order.iter().enumerate().any(|(i, &o)| i != o) {
            out = out.permute_axes(&layout.out_order)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for ActMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let layout = &self.layout;
        let shape = |i: usize| -> ShapeFact {
            match &self.views[i] {
                Some(v) => v.shape.iter().map(|&d| TDim::from(d)).collect(),
                None => inputs[i].shape.clone(),
            }
        };
        let (x, y) = (&shape(0), &shape(1));
        let nb = layout.batch_axes();
        let canonical: TVec<TDim> = layout.x_order[..nb + 1]
            .iter()
            .map(|&a| x[a].clone())
            .chain([y[layout.y_order[nb + 1]].clone()])
            .collect();
        let out: TVec<TDim> = layout
            .out_order
            .iter()
            .map(|&c| canonical[c].clone())
            .collect();
        Ok(tvec!(f32::fact(out)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::einsum::EinSum;

    use super::super::kernel::testing::{
        arithmetics, as_read, assert_sums_close, run, run_alone_and_split, values,
    };
    use super::*;
    use crate::engine::precision::Arithmetic;

    /// The attention's products as the two towers' graphs write them (tests/fixtures tiny
    /// model, after tract's decluttering).
    const TOWERS: [(&str, [usize; 4], [usize; 4]); 5] = [
        // Image scores: [batch, heads, tokens, head size] by the keys, same layout.
        ("abmk,abnk->abmn", [3, 2, 7, 33], [3, 2, 45, 33]),
        // Image weighting of the values, the output moved to [tokens, batch, heads, size].
        ("abmk,abkn->mabn", [3, 2, 7, 45], [3, 2, 45, 40]),
        // Text scores, queries and keys as [batch, tokens, heads, head size].
        ("ambk,anbk->abmn", [2, 9, 3, 17], [2, 6, 3, 17]),
        // Text weighting of the values, the values as [batch, tokens, heads, size].
        ("abmk,akbn->ambn", [2, 3, 9, 6], [2, 6, 3, 70]),
        // Not the towers': no operand has a contiguous row or column (gathered first).
        ("amkb,ankb->abmn", [2, 5, 7, 3], [2, 4, 7, 3]),
    ];

    fn einsum(expr: &str, x: &[usize], y: &[usize]) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let a = model.add_source("x", f32::fact(x))?;
        let b = model.add_source("y", f32::fact(y))?;
        let op = EinSum::new(expr.parse()?, f32::datum_type());
        let out = model.wire_node("product", op, &[a, b])?;
        model.select_output_outlets(&out)?;
        Ok(model)
    }

    /// The rewritten graph gives tract's f32 einsum of the same inputs as the product reads
    /// them (rounded, in bf16), in the einsum's output layout, on one thread and split over a
    /// pool, in either arithmetic.
    #[test]
    fn the_attentions_products_are_the_einsums_of_rounded_inputs() -> TractResult<()> {
        for arithmetic in arithmetics() {
            for (expr, xs, ys) in TOWERS {
                let what = format!("{}: {expr}", arithmetic.as_str());
                let x = values(xs.iter().product(), 11);
                let y = values(ys.iter().product(), 12);
                let read = |v: &[f32]| as_read(arithmetic, v);
                let want = run(
                    einsum(expr, &xs, &ys)?,
                    &[(&xs, &read(&x)), (&ys, &read(&y))],
                );
                let mut model = einsum(expr, &xs, &ys)?;
                let counts = super::super::rewrite(&mut model, arithmetic)?;
                assert_eq!((counts.by_weights, counts.of_activations), (0, 1), "{what}");
                let got = run_alone_and_split(model, &[(&xs, &x), (&ys, &y)]);
                assert_sums_close(&got, &want, xs[expr.find('k').unwrap()], &what);
            }
        }
        Ok(())
    }

    #[test]
    fn only_batched_products_of_two_matrices_are_planned() {
        for (expr, _, _) in TOWERS {
            assert!(ActLayout::plan(expr).is_some(), "{expr}");
        }
        let image = ActLayout::plan("abmk,abkn->mabn").unwrap();
        assert_eq!(image.x_order.as_slice(), [0, 1, 2, 3]);
        assert_eq!(image.y_order.as_slice(), [0, 1, 2, 3]);
        assert_eq!(image.out_order.as_slice(), [2, 0, 1, 3]);
        let text = ActLayout::plan("ambk,anbk->abmn").unwrap();
        assert_eq!(text.x_order.as_slice(), [0, 2, 1, 3]);
        assert_eq!(text.y_order.as_slice(), [0, 2, 3, 1]);
        for expr in [
            // Two summed axes, no kept axis on one side, an axis summed on one side only, an
            // axis of one input kept beside the batch ones, a repeated axis.
            "abmk,abkl->abm",
            "abk,abkn->abn",
            "abmkz,abkn->abmn",
            "abmk,abkn->abmnk",
            "abmm,abmn->abmn",
            "mk,kn->mn,",
        ] {
            assert!(ActLayout::plan(expr).is_none(), "{expr}");
        }
    }

    /// Batch axes of different sizes (a broadcast) are left to tract.
    #[test]
    fn broadcast_batch_axes_are_not_rewritten() -> TractResult<()> {
        if !super::super::bf16_supported() {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return Ok(());
        }
        let mut model = einsum("abmk,abkn->abmn", &[2, 3, 4, 8], &[2, 1, 8, 5])?;
        assert_eq!(
            super::super::rewrite(&mut model, Arithmetic::Bf16)?.of_activations,
            0
        );
        Ok(())
    }
}
