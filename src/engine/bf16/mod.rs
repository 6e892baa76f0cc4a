//! bf16 products for a tower's weight matrices (`model.image_precision` / `text_precision`:
//! `auto`, the default, keeps them when the start-up check on the served weights passes; see
//! `precision.rs`).
//!
//! Zen 4 and recent Intel parts have AVX512-BF16: `vdpbf16ps` multiplies 32 pairs of bf16
//! numbers and adds them into 16 f32 accumulators, twice the multiply-adds per cycle of an f32
//! FMA (bench/bf16_peak.c against bench/fma_peak.c on Zen 4: 234 against 117 GFLOP/s per
//! core). tract 0.23.9 has no kernel for it on these CPUs, so [`rewrite`] replaces each
//! product of an activation by a constant weight matrix (an `EinSum` of the decluttered graph)
//! with a [`Bf16MatMul`] of our own: the weights are rounded to bf16
//! once, at load, and the activations at every run; the sums stay f32. In the image tower that
//! is the attention's input and output projections, the MLP's two layers and the final
//! projection; in the text tower the query, key, value and output projections, the MLP's two
//! layers and the projection head. The attention's two products of activations (scores, and
//! their weighting of the values) become [`Bf16ActMatMul`]s, both operands rounded at every run
//! (`activations.rs`). Everything else (norms, softmax, GELU, the image tower's patch
//! embedding, the text tower's word-embedding table) stays f32.
//!
//! This is lossy: each product's inputs lose 16 bits of mantissa. On the random-weight exports
//! the embeddings stay at cosine >= 0.99995 to f32, but real weights, with their outliers, may
//! round worse: hence the check at start-up on the weights being served, against a calibration
//! set (`calibration/`). The arithmetic is in `kernel.rs`, the crate's only AVX512-BF16 code.
//! On the full-size random-weight export the start-up check's lowest cosines were the same with
//! the attention's products in bf16 as without (image 0.9999925 against 0.9999927, text
//! 0.9999809 against 0.9999808).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::einsum::EinSum;

mod activations;
mod kernel;
mod patches;

use activations::ActLayout;
pub use activations::Bf16ActMatMul;
use kernel::{matmul, Bf16Cpu, PackedWeights};
pub use patches::Bf16Patches;

/// Whether this CPU has the instructions the bf16 products need.
pub fn supported() -> bool {
    Bf16Cpu::detect().is_some()
}

/// Where an output axis comes from: an axis of the canonical result `[x's kept axes..., w's
/// kept axes...]`, or a unit axis the einsum adds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OutAxis {
    Canonical(usize),
    Unit,
}

/// `y = x . w` for a constant `w`, with bf16 products: `x`'s trailing `contracted` axes (in
/// `w`'s order) are summed against `w`, and the result's axes are laid out as the replaced
/// einsum's output.
#[derive(Debug, Clone)]
pub struct Bf16MatMul {
    weights: Arc<PackedWeights>,
    /// Shapes of `w`'s kept axes, in `w`'s order (their product is `n`).
    w_kept: TVec<usize>,
    /// Number of `x`'s trailing axes that are summed.
    contracted: usize,
    /// The output's axes.
    out_axes: TVec<OutAxis>,
}

impl PartialEq for Bf16MatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.w_kept == other.w_kept
            && self.contracted == other.contracted
            && self.out_axes == other.out_axes
    }
}
impl Eq for Bf16MatMul {}

impl Hash for Bf16MatMul {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.weights) as usize).hash(state);
        self.w_kept.hash(state);
        self.contracted.hash(state);
        self.out_axes.hash(state);
    }
}

impl Op for Bf16MatMul {
    fn name(&self) -> StaticName {
        "Bf16MatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("k={} n={}", self.weights.k, self.weights.n)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Bf16MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
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
        let y = matmul(x, rows, &self.weights);
        let canonical: TVec<usize> = kept.iter().chain(&self.w_kept).copied().collect();
        // The product's buffer becomes the tensor as it is, without a copy.
        let mut y: Tensor = tract_ndarray::ArrayD::from_shape_vec(canonical.as_slice(), y)?.into();
        let order: Vec<usize> = self
            .out_axes
            .iter()
            .filter_map(|a| match a {
                OutAxis::Canonical(i) => Some(*i),
                OutAxis::Unit => None,
            })
            .collect();
        if order.iter().enumerate().any(|(i, &o)| i != o) {
            y = y.permute_axes(&order)?;
        }
        for (pos, a) in self.out_axes.iter().enumerate() {
            if *a == OutAxis::Unit {
                y.insert_axis(pos)?;
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Bf16MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let rank = shape.rank();
        let canonical: TVec<TDim> = shape
            .iter()
            .take(rank - self.contracted)
            .cloned()
            .chain(self.w_kept.iter().map(|&d| d.to_dim()))
            .collect();
        let out: TVec<TDim> = self
            .out_axes
            .iter()
            .map(|a| match a {
                OutAxis::Canonical(i) => canonical[*i].clone(),
                OutAxis::Unit => 1.to_dim(),
            })
            .collect();
        Ok(tvec!(f32::fact(out)))
    }

    as_op!();
}

/// Bytes of bf16 weights the [`Bf16MatMul`] ops of `model` hold, each copy counted once (the
/// plans built from `model` share them).
pub fn weight_bytes(model: &TypedModel) -> usize {
    let mut seen = std::collections::HashSet::new();
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<Bf16MatMul>())
        .filter(|op| seen.insert(Arc::as_ptr(&op.weights)))
        .map(|op| op.weights.data.len() * std::mem::size_of::<u32>())
        .sum()
}

/// What [`rewrite`] made bf16.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Products of an activation by a weight matrix ([`Bf16MatMul`]), the image tower's patch
    /// embedding among them ([`Bf16Patches`]).
    pub by_weights: usize,
    /// Products of two activations, the attention's ([`Bf16ActMatMul`]).
    pub of_activations: usize,
}

/// Replaces every f32 product of an activation by a constant matrix that fits the
/// [`Bf16MatMul`] layout, every convolution that is a patch embedding ([`Bf16Patches`]), and
/// every product of two activations that fits [`Bf16ActMatMul`]'s; returns how many of each.
/// Products it cannot express stay f32.
pub fn rewrite(model: &mut TypedModel) -> TractResult<Rewritten> {
    // Nothing is rewritten on a CPU without the instructions.
    let Some(cpu) = Bf16Cpu::detect() else {
        return Ok(Rewritten::default());
    };
    let mut by_weights: Vec<(usize, Bf16MatMul)> = vec![];
    let mut of_activations: Vec<(usize, Bf16ActMatMul)> = vec![];
    let mut patches: Vec<(usize, Bf16Patches)> = vec![];
    for node in model.nodes() {
        if let Some(conv) = node.op_as::<Conv>() {
            let x = model.outlet_fact(node.inputs[0])?;
            let konst = |i: usize| -> TractResult<Option<Arc<Tensor>>> {
                Ok(match node.inputs.get(i) {
                    Some(&input) => model.outlet_fact(input)?.konst.clone(),
                    None => None,
                })
            };
            let (kernel, bias) = (konst(1)?, konst(2)?);
            let bias_is_const = node.inputs.len() < 3 || bias.is_some();
            if let (Some(kernel), true) = (kernel, bias_is_const && x.konst.is_none()) {
                if let Some(op) = Bf16Patches::plan(conv, x, &kernel, bias.as_deref(), cpu) {
                    patches.push((node.id, op));
                }
            }
            continue;
        }
        let Some(einsum) = node.op_as::<EinSum>() else {
            continue;
        };
        if einsum.q_params.is_some()
            || einsum.operating_dt != f32::datum_type()
            || node.inputs.len() != 2
        {
            continue;
        }
        let x = model.outlet_fact(node.inputs[0])?;
        let w = model.outlet_fact(node.inputs[1])?;
        if x.konst.is_some()
            || x.datum_type != f32::datum_type()
            || w.datum_type != f32::datum_type()
        {
            continue;
        }
        let expr = einsum.axes.to_string();
        match w.konst.as_ref() {
            Some(weights) => {
                if let Some(op) = plan(&expr, weights).and_then(|l| l.build(weights, cpu)) {
                    by_weights.push((node.id, op));
                }
            }
            None => {
                if let Some(layout) = ActLayout::plan(&expr).filter(|l| l.fits(x, w)) {
                    of_activations.push((node.id, layout.build(cpu)));
                }
            }
        }
    }
    let counts = Rewritten {
        by_weights: by_weights.len() + patches.len(),
        of_activations: of_activations.len(),
    };
    for (id, op) in by_weights {
        replace(model, id, op, 1)?;
    }
    for (id, op) in patches {
        replace(model, id, op, 1)?;
    }
    for (id, op) in of_activations {
        replace(model, id, op, 2)?;
    }
    Ok(counts)
}

/// Replaces node `id` by `op` reading the node's first `inputs` inputs.
fn replace(model: &mut TypedModel, id: usize, op: impl TypedOp, inputs: usize) -> TractResult<()> {
    let node = model.node(id);
    let name = node.name.clone();
    let wires: TVec<OutletId> = node.inputs[..inputs].into();
    let mut patch = TypedModelPatch::new(format!("bf16 {name}"));
    let tapped: TVec<OutletId> = wires
        .iter()
        .map(|&w| patch.tap_model(model, w))
        .collect::<TractResult<_>>()?;
    let y = patch.wire_node(format!("{name}.bf16"), op, &tapped)?[0];
    patch.shunt_outside(model, OutletId::new(id, 0), y)?;
    patch.apply(model)
}

/// How a product by a weight matrix is laid out, as [`plan`] reads it from an einsum.
#[derive(Debug)]
struct Layout {
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
    /// The op, with `w` packed for the CPU `cpu` proves.
    fn build(self, w: &Tensor, cpu: Bf16Cpu) -> Option<Bf16MatMul> {
        let view = w.to_plain_array_view::<f32>().ok()?;
        let data = view.as_slice()?;
        let (k, n) = (self.k, self.n);
        let weights = if self.summed_first {
            PackedWeights::pack(cpu, k, n, |ki, ni| data[ki * n + ni])
        } else {
            PackedWeights::pack(cpu, k, n, |ki, ni| data[ni * k + ki])
        };
        Some(Bf16MatMul {
            weights: Arc::new(weights),
            w_kept: self.w_kept,
            contracted: self.contracted,
            out_axes: self.out_axes,
        })
    }
}

/// The layout of `expr` (`"xaxes,waxes->outaxes"`, one letter per axis) if it is a product the
/// op computes: `x`'s summed axes trailing and in `w`'s order, `w`'s summed axes all first or
/// all last, and the output made of `x`'s other axes, `w`'s other axes and unit axes.
fn plan(expr: &str, w: &Tensor) -> Option<Layout> {
    let (inputs, out) = expr.split_once("->")?;
    let (xs, ws) = inputs.split_once(',')?;
    let (xs, ws, out): (Vec<char>, Vec<char>, Vec<char>) = (
        xs.chars().collect(),
        ws.chars().collect(),
        out.chars().collect(),
    );
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
    use super::kernel::testing::{round, values};
    use super::*;

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

    /// A rewritten graph computes what the einsum did, up to the rounding of its inputs.
    #[test]
    fn a_rewritten_einsum_keeps_its_output_layout() -> TractResult<()> {
        if !supported() {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return Ok(());
        }
        for (expr, x_shape, w_shape) in [
            (
                "mak,kn->bamn",
                [3usize, 7, 16].as_slice(),
                [16usize, 40].as_slice(),
            ),
            ("bmak,nak->mbn", &[5, 3, 2, 8], &[33, 2, 8]),
        ] {
            let x: Vec<f32> = values(x_shape.iter().product(), 5);
            let w: Vec<f32> = values(w_shape.iter().product(), 6);
            let einsum = |w: &[f32]| -> TractResult<TypedModel> {
                let mut model = TypedModel::default();
                let source = model.add_source("x", f32::fact(x_shape))?;
                let weights = model.add_const("w", Tensor::from_shape(w_shape, w)?)?;
                let axes: AxesMapping = expr.parse()?;
                let op = EinSum::new(axes, f32::datum_type());
                let y = model.wire_node("product", op, &[source, weights])?;
                model.select_output_outlets(&y)?;
                Ok(model)
            };
            // The f32 einsum on inputs already rounded to bf16: the same products, exactly.
            let rounded = |v: &[f32]| v.iter().map(|&a| round(a)).collect::<Vec<f32>>();
            let x_rounded = Tensor::from_shape(x_shape, &rounded(&x))?;
            let want = einsum(&rounded(&w))?
                .into_runnable()?
                .run(tvec!(x_rounded.into_tvalue()))?;
            let mut model = einsum(&w)?;
            assert_eq!(rewrite(&mut model)?.by_weights, 1, "{expr}");
            let x = Tensor::from_shape(x_shape, &x)?;
            let got = model.into_runnable()?.run(tvec!(x.into_tvalue()))?;
            assert_eq!(got[0].shape(), want[0].shape(), "{expr}");
            let got = got[0].to_plain_array_view::<f32>()?;
            let want = want[0].to_plain_array_view::<f32>()?;
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{expr}: {g} against {w}"
                );
            }
        }
        Ok(())
    }

    /// Which products of the towers become bf16 ones, on the committed tiny model (the real
    /// architecture, small widths): every product by a weight matrix has a layout
    /// [`Bf16MatMul`] computes, and the others are products of two activations (the attention's
    /// scores and their weighting of the values) that [`Bf16ActMatMul`] computes. Only the
    /// layouts are checked, so this runs on any CPU;
    /// the engine tests count the rewritten products where the CPU has AVX512-BF16.
    #[test]
    fn every_product_by_a_weight_matrix_of_both_towers_has_a_bf16_layout() {
        let tiny =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
        let blocks = 2;
        for (file, rank, want) in [
            // Per block: the attention's input and output projections and the MLP's two
            // layers; plus the final projection.
            ("visual/model.onnx", 4, 4 * blocks + 1),
            // Per block: query, key, value, the attention's output projection and the MLP's
            // two layers; plus the projection head's two layers.
            ("textual/model.onnx", 2, 6 * blocks + 2),
        ] {
            let prepared = crate::engine::graph::Graph::prepare(&tiny.join(file), rank).unwrap();
            let model = prepared.typed();
            let (mut planned, mut activations) = (0, 0);
            for node in model.nodes() {
                let Some(einsum) = node.op_as::<EinSum>() else {
                    continue;
                };
                let facts: Vec<_> = node
                    .inputs
                    .iter()
                    .map(|i| model.outlet_fact(*i).unwrap())
                    .collect();
                match facts[1].konst.as_ref() {
                    Some(w) => {
                        assert!(
                            plan(&einsum.axes.to_string(), w).is_some(),
                            "{file}: {} {} has no bf16 layout",
                            node.name,
                            einsum.axes
                        );
                        planned += 1;
                    }
                    None => {
                        assert!(facts[0].konst.is_none(), "{file}: {}", node.name);
                        let layout = ActLayout::plan(&einsum.axes.to_string());
                        assert!(
                            layout.is_some_and(|l| l.fits(facts[0], facts[1])),
                            "{file}: {} {} has no bf16 layout",
                            node.name,
                            einsum.axes
                        );
                        activations += 1;
                    }
                }
            }
            assert_eq!(planned, want, "{file}");
            assert_eq!(activations, 2 * blocks, "{file}");
        }
    }
}
