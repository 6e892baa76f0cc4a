//! [`WeightMatMul`]: a product of an activation by a constant weight matrix (an `EinSum` of the
//! decluttered graph) with the weights packed in bf16 once, at load, and the activations rounded
//! at every run, plus the layer's bias and GELU when they follow it, and its output written as
//! bf16 for the product that reads it (the MLP's hidden layer; `fuse.rs`); and [`plan`], which
//! reads the einsums it can replace.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::einsum_axes;
use super::kernel::{matmul, Activations, Epilogue, LayerNorm, Output, PackedWeights, Packing};

/// Where an output axis comes from: an axis of the canonical result `[x's kept axes..., w's
/// kept axes...]`, or a unit axis the einsum adds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum OutAxis {
    Canonical(usize),
    Unit,
}

/// `y = x . w (+ bias)` for a constant `w`, with bf16 products: `x`'s trailing `contracted`
/// axes (in `w`'s order) are summed against `w`, and the result's axes are laid out as the
/// replaced einsum's output.
#[derive(Debug, Clone)]
pub struct WeightMatMul {
    pub(super) weights: Arc<PackedWeights>,
    /// Shapes of `w`'s kept axes, in `w`'s order (their product is `n`).
    pub(super) w_kept: TVec<usize>,
    /// Number of `x`'s trailing axes that are summed.
    pub(super) contracted: usize,
    /// The output's axes.
    pub(super) out_axes: TVec<OutAxis>,
    /// One value per output feature, added to the f32 sums in the product's registers: the
    /// constant add that followed the product in the graph (`super::fuse`).
    pub(super) bias: Option<Arc<Vec<f32>>>,
    /// Whether tract's exact GELU is applied to the sums (after the bias) in registers: the
    /// GELU that followed the product in the graph (`super::fuse`).
    pub(super) gelu: bool,
    /// Whether the input is rows already rounded to bf16 pairs (u32, `ceil(k / 2)` a row),
    /// the output of a product that writes [`Output::Pairs`] (`super::fuse::handoffs`).
    pub(super) pairs_in: bool,
    /// What the product writes: f32, or its outputs rounded to bf16 pairs for the one product
    /// that reads them (u32, the last axis `ceil(n / 2)` long).
    pub(super) output: Output,
    /// The layer norm applied to each input row as it is rounded: the norm that only this
    /// product read in the graph, over the summed axis (`super::norms`).
    pub(super) norm: Option<Arc<LayerNorm>>,
}

impl PartialEq for WeightMatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.w_kept == other.w_kept
            && self.contracted == other.contracted
            && self.out_axes == other.out_axes
            && self.bias.as_ref().map(Arc::as_ptr) == other.bias.as_ref().map(Arc::as_ptr)
            && self.gelu == other.gelu
            && self.pairs_in == other.pairs_in
            && self.output == other.output
            && self.norm.as_ref().map(Arc::as_ptr) == other.norm.as_ref().map(Arc::as_ptr)
    }
}
impl Eq for WeightMatMul {}

impl Hash for WeightMatMul {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.weights) as usize).hash(state);
        self.w_kept.hash(state);
        self.contracted.hash(state);
        self.out_axes.hash(state);
        self.bias
            .as_ref()
            .map(|b| Arc::as_ptr(b) as usize)
            .hash(state);
        self.gelu.hash(state);
        self.pairs_in.hash(state);
        self.output.hash(state);
        self.norm
            .as_ref()
            .map(|n| Arc::as_ptr(n) as usize)
            .hash(state);
    }
}

impl Op for WeightMatMul {
    fn name(&self) -> StaticName {
        format!("{}MatMul", self.weights.kind()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let bias = if self.bias.is_some() { " + bias" } else { "" };
        let gelu = if self.gelu { ", GELU" } else { "" };
        let pairs_in = if self.pairs_in { ", bf16 in" } else { "" };
        let norm = if self.norm.is_some() { ", norm in" } else { "" };
        let pairs_out = if self.output == Output::Pairs {
            ", bf16 out"
        } else {
            ""
        };
        Ok(vec![format!(
            "k={} n={}{norm}{bias}{gelu}{pairs_in}{pairs_out}",
            self.weights.k, self.weights.n
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for WeightMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        if self.pairs_in {
            return self.eval_pairs(&x);
        }
        let x = x.to_plain_array_view::<f32>()?;
        let rank = x.ndim();
        ensure!(rank >= self.contracted, "input of rank {rank}");
        let kept = &x.shape()[..rank - self.contracted];
        let k: usize = x.shape()[rank - self.contracted..].iter().product();
        ensure!(
            k == self.weights.k,
            "input sums {k} values, weights {}",
            self.weights.k
        );
        let rows: usize = kept.iter().product();
        let x = x.as_standard_layout();
        let x = x.as_slice().context("contiguous input")?;
        let canonical: TVec<usize> = kept.iter().chain(&self.w_kept).copied().collect();
        let order: Vec<usize> = self
            .out_axes
            .iter()
            .filter_map(|a| match a {
                OutAxis::Canonical(i) => Some(*i),
                OutAxis::Unit => None,
            })
            .collect();
        let epilogue = self.epilogue();
        let (x_order, w_order) = order.split_at(kept.len());
        if w_order.iter().copied().eq(kept.len()..canonical.len()) {
            // The output features stay last and in order: the output is x's rows in another
            // order (or the same), which the product reads them in; no move after.
            let moved = x_order.iter().enumerate().any(|(i, &o)| i != o);
            let sources = moved.then(|| row_sources(kept, x_order));
            let mut shape: TVec<usize> = self
                .out_axes
                .iter()
                .map(|a| match a {
                    OutAxis::Canonical(i) => canonical[*i],
                    OutAxis::Unit => 1,
                })
                .collect();
            if self.output == Output::Pairs {
                // One feature axis, which pairs halve (`super::fuse::handoffs`).
                *shape.last_mut().expect("an output feature axis") = self.out_len();
            }
            let x = Activations::F32 {
                x,
                sources: sources.as_deref(),
                norm: self.norm.as_deref(),
            };
            let y = matmul(x, rows, &self.weights, epilogue, self.output, &shape)?;
            return Ok(tvec!(y.into_tvalue()));
        }
        ensure!(
            self.output == Output::F32,
            "pairs written with the features moved"
        );
        let x = Activations::F32 {
            x,
            sources: None,
            norm: self.norm.as_deref(),
        };
        let mut y = matmul(x, rows, &self.weights, epilogue, Output::F32, &canonical)?;
        y = y.permute_axes(&order)?;
        for (pos, a) in self.out_axes.iter().enumerate() {
            if *a == OutAxis::Unit {
                y.insert_axis(pos)?;
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl WeightMatMul {
    /// The length of the output's last axis: `n` features, or `ceil(n / 2)` pairs of them.
    fn out_len(&self) -> usize {
        self.output.row_len(self.weights.n)
    }

    fn output_fact(&self, shape: TVec<TDim>) -> TypedFact {
        match self.output {
            Output::F32 => f32::fact(shape),
            Output::Pairs => u32::fact(shape),
        }
    }

    fn epilogue(&self) -> Epilogue<'_> {
        Epilogue {
            bias: self.bias.as_deref().map(Vec::as_slice),
            gelu: self.gelu,
        }
    }

    /// The run of a product whose input is rows of bf16 pairs: one contracted axis, `ceil(k /
    /// 2)` long, and the output's axes those of the input, in order, then the features
    /// (`super::fuse::handoffs` only makes such products).
    fn eval_pairs(&self, x: &Tensor) -> TractResult<TVec<TValue>> {
        let kp = self.weights.k.div_ceil(2);
        let shape = x.shape();
        ensure!(
            x.datum_type() == u32::datum_type() && shape.last() == Some(&kp),
            "input of {kp} bf16 pairs a row, got {:?} {shape:?}",
            x.datum_type()
        );
        let rows = x.len() / kp;
        let mut out: TVec<usize> = shape.into();
        *out.last_mut().expect("rank 1 or more") = self.out_len();
        let x = Activations::Pairs(x.try_as_plain_ram()?.as_slice::<u32>()?);
        let y = matmul(x, rows, &self.weights, self.epilogue(), self.output, &out)?;
        Ok(tvec!(y.into_tvalue()))
    }
}

/// For an output that lays out the axes `dims` (row-major, in x's order) as `order` says (the
/// output's i-th axis is x's axis `order[i]`): the x row each output row comes from.
fn row_sources(dims: &[usize], order: &[usize]) -> Vec<usize> {
    let rows: Vec<usize> = (0..dims.iter().product()).collect();
    let rows = tract_ndarray::ArrayView::from_shape(dims, &rows).expect("one index per row");
    rows.permuted_axes(order).iter().copied().collect()
}

impl TypedOp for WeightMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        if self.pairs_in {
            // One contracted axis of pairs, the output laid out as the input (`eval_pairs`).
            let mut out: TVec<TDim> = shape.iter().cloned().collect();
            if let Some(last) = out.last_mut() {
                *last = self.out_len().to_dim();
            }
            return Ok(tvec!(self.output_fact(out)));
        }
        let rank = shape.rank();
        let canonical: TVec<TDim> = shape
            .iter()
            .take(rank - self.contracted)
            .cloned()
            .chain(self.w_kept.iter().map(|&d| d.to_dim()))
            .collect();
        let mut out: TVec<TDim> = self
            .out_axes
            .iter()
            .map(|a| match a {
                OutAxis::Canonical(i) => canonical[*i].clone(),
                OutAxis::Unit => 1.to_dim(),
            })
            .collect();
        if let Some(last) = out.last_mut().filter(|_| self.output == Output::Pairs) {
            *last = self.out_len().to_dim();
        }
        Ok(tvec!(self.output_fact(out)))
    }

    as_op!();
}

/// How a product by a weight matrix is laid out, as [`plan`] reads it from an einsum.
#[derive(Debug)]
pub(super) struct Layout {
    /// Whether `w`'s summed axes come first (`[K, N]`) or last (`[N, K]`).
    summed_first: bool,
    /// Summed values per output (the product of the summed axes).
    k: usize,
    /// Output features (the product of `w`'s kept axes).
    n: usize,
    w_kept: TVec<usize>,
    contracted: usize,
    out_axes: TVec<OutAxis>,
}

impl Layout {
    /// The op, with `w` packed as `packing` says.
    pub(super) fn build(self, w: &Tensor, packing: Packing) -> Option<WeightMatMul> {
        let view = w.to_plain_array_view::<f32>().ok()?;
        let data = view.as_slice()?;
        let (k, n) = (self.k, self.n);
        let weights = if self.summed_first {
            packing.pack(k, n, |ki, ni| data[ki * n + ni])
        } else {
            packing.pack(k, n, |ki, ni| data[ni * k + ki])
        };
        Some(WeightMatMul {
            weights: Arc::new(weights),
            w_kept: self.w_kept,
            contracted: self.contracted,
            out_axes: self.out_axes,
            bias: None,
            gelu: false,
            pairs_in: false,
            output: Output::F32,
            norm: None,
        })
    }
}

/// The layout of `expr` (`"xaxes,waxes->outaxes"`, one letter per axis) if it is a product the
/// op computes: `x`'s summed axes trailing and in `w`'s order, `w`'s summed axes all first or
/// all last, and the output made of `x`'s other axes, `w`'s other axes and unit axes.
pub(super) fn plan(expr: &str, w: &Tensor) -> Option<Layout> {
    let (xs, ws, out) = einsum_axes(expr)?;
    if ws.len() != w.rank() {
        return None;
    }
    let summed: Vec<char> = ws
        .iter()
        .copied()
        .filter(|c| xs.contains(c) && !out.contains(c))
        .collect();
    let w_kept: Vec<char> = ws.iter().copied().filter(|c| !summed.contains(c)).collect();
    let x_kept: Vec<char> = xs.iter().copied().filter(|c| !summed.contains(c)).collect();
    if summed.is_empty() || xs[xs.len() - summed.len()..] != summed[..] {
        return None;
    }
    // An axis of x absent from the output, or shared by x and w without being summed (a
    // batch axis of both), is not a plain product by a matrix.
    if x_kept.iter().any(|c| !out.contains(c) || ws.contains(c))
        || w_kept.iter().any(|c| !out.contains(c))
    {
        return None;
    }
    let summed_first = ws[..summed.len()] == summed[..];
    let summed_last = ws[ws.len() - summed.len()..] == summed[..];
    if !summed_first && !summed_last {
        return None;
    }
    let canonical: Vec<char> = x_kept.iter().chain(&w_kept).copied().collect();
    let out_axes: TVec<OutAxis> = out
        .iter()
        .map(|c| match canonical.iter().position(|a| a == c) {
            Some(i) => OutAxis::Canonical(i),
            None => OutAxis::Unit,
        })
        .collect();
    if out_axes.iter().filter(|a| **a != OutAxis::Unit).count() != canonical.len() {
        return None;
    }
    let shape = w.shape();
    let k: usize = summed
        .iter()
        .map(|c| shape[ws.iter().position(|a| a == c).unwrap()])
        .product();
    let w_kept_dims: TVec<usize> = w_kept
        .iter()
        .map(|c| shape[ws.iter().position(|a| a == c).unwrap()])
        .collect();
    let n: usize = w_kept_dims.iter().product();
    Some(Layout {
        summed_first,
        k,
        n,
        w_kept: w_kept_dims,
        contracted: summed.len(),
        out_axes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::kernel::testing::{
        arithmetics, as_read, assert_sums_close, product, run, run_alone_and_split, values,
    };
    use super::super::rewrite;
    use super::*;
    use crate::engine::precision::Arithmetic;

    #[test]
    fn the_layouts_of_the_towers_products_are_planned() {
        let w = |shape: &[usize]| Tensor::zero::<f32>(shape).unwrap();
        // The MLP: x [N, 50, 768] . w [768, 3072].
        let mlp = plan("amk,kn->amn", &w(&[8, 12])).expect("planned");
        assert_eq!((mlp.contracted, mlp.k, mlp.n), (1, 8, 12));
        assert_eq!(mlp.out_axes.as_slice(), [0, 1, 2].map(OutAxis::Canonical));
        // The attention's input projection: the output moves axes and gains a unit one.
        let qkv = plan("mak,kn->bamn", &w(&[8, 24])).expect("planned");
        assert_eq!(
            qkv.out_axes.as_slice(),
            [
                OutAxis::Unit,
                OutAxis::Canonical(1),
                OutAxis::Canonical(0),
                OutAxis::Canonical(2)
            ]
        );
        // The output projection sums two axes (heads, head size) of a weight stored [n, a, k].
        let out = plan("bmak,nak->mbn", &w(&[16, 2, 4])).expect("planned");
        assert_eq!((out.contracted, out.k, out.n), (2, 8, 16));
        // Products of two activations' shapes, or summed axes in another order, are not.
        assert!(plan("abmk,abnk->abmn", &w(&[2, 3, 4, 5])).is_none());
        assert!(plan("mka,kn->man", &w(&[8, 12])).is_none());
        assert!(plan("mak,ank->mn", &w(&[3, 8, 4])).is_none());
    }

    /// A rewritten graph computes what the einsum did (in bf16, up to the rounding of its
    /// inputs), in the einsum's output layout: the rows of x in their order, or in another (read
    /// in that order by the product), or an output whose features are not last (moved after the
    /// product); on one thread and split over a pool alike; in either arithmetic.
    #[test]
    fn a_rewritten_einsum_keeps_its_output_layout() -> TractResult<()> {
        for arithmetic in arithmetics() {
            einsums_keep_their_layout(arithmetic)?;
        }
        Ok(())
    }

    fn einsums_keep_their_layout(arithmetic: Arithmetic) -> TractResult<()> {
        for (expr, x_shape, w_shape) in [
            (
                "amk,kn->amn",
                [3usize, 7, 16].as_slice(),
                [16usize, 40].as_slice(),
            ),
            // The image tower's attention input projection: rows reordered, a unit axis added.
            ("mak,kn->bamn", &[3, 7, 16], &[16, 40]),
            // Its output projection: two summed axes, the rows reordered.
            ("bmak,nak->mbn", &[5, 3, 2, 8], &[33, 2, 8]),
            // Two kept axes of w, the features last: the output's last axis is w's last.
            ("amk,knh->amnh", &[3, 7, 16], &[16, 4, 10]),
            // Three kept axes of x, reordered.
            ("abck,kn->cabn", &[2, 3, 4, 8], &[8, 20]),
            // The features first: the output is moved after the product.
            ("amk,kn->nam", &[3, 7, 16], &[16, 40]),
        ] {
            let x: Vec<f32> = values(x_shape.iter().product(), 5);
            let w: Vec<f32> = values(w_shape.iter().product(), 6);
            let einsum = |w: &[f32]| -> TractResult<TypedModel> {
                let (mut model, y) = product(expr, x_shape, w_shape, w)?;
                model.select_output_outlets(&[y])?;
                Ok(model)
            };
            // tract's f32 einsum on the inputs as the product reads them (in bf16, already
            // rounded): the same products, exactly.
            let read = |v: &[f32]| as_read(arithmetic, v);
            let want = run(einsum(&read(&w))?, &[(x_shape, &read(&x))]);
            let mut model = einsum(&w)?;
            assert_eq!(rewrite(&mut model, arithmetic)?.by_weights, 1, "{expr}");
            let got = run_alone_and_split(model, &[(x_shape, &x)]);
            let k: usize = x_shape[x_shape.len() - 1];
            assert_sums_close(&got, &want, k, &format!("{}: {expr}", arithmetic.as_str()));
        }
        Ok(())
    }

    #[test]
    fn row_sources_follow_the_output_order_of_the_axes() {
        // x rows (i, j) of a [2, 3] layout, output laid out (j, i).
        assert_eq!(row_sources(&[2, 3], &[1, 0]), [0, 3, 1, 4, 2, 5]);
        // Identity, and three axes moved round.
        assert_eq!(row_sources(&[2, 2], &[0, 1]), [0, 1, 2, 3]);
        assert_eq!(row_sources(&[2, 1, 3], &[2, 0, 1]), [0, 3, 1, 4, 2, 5]);
    }
}
