//! Ops of our own that replace tract's in a tower's plan, where they run faster: above all the
//! products by the tower's weight matrices, in bf16, int8, 16-bit integers or f32
//! (`model.image_precision` / `text_precision`: `auto`, the default, keeps a lossy arithmetic
//! when it is faster here and the start-up check on the served weights passes; see
//! `precision/`), and around them the layer norms, softmaxes, sums, adds and multiplies, each
//! giving the bits of the op it replaces. The arithmetic itself, the crate's only AVX-512 code,
//! is in `kernel/`; this folder's other files are the tract ops and the graph rewrites that put
//! them in place. (This folder was `engine/bf16/`, after the first arithmetic it held, and
//! [`WeightMatMul`], [`ActMatMul`] and [`PatchEmbed`] were `Bf16MatMul`, `Bf16ActMatMul` and
//! `Bf16Patches`, until commit 840ca46: rows 1-67 of bench/RESULTS.md use those names.)
//!
//! Zen 4 and recent Intel parts have AVX512-BF16: `vdpbf16ps` multiplies 32 pairs of bf16
//! numbers and adds them into 16 f32 accumulators, twice the multiply-adds per cycle of an f32
//! FMA (bench/bf16_peak.c against bench/fma_peak.c on Zen 4: 234 against 117 GFLOP/s per
//! core). tract 0.23.9 has no kernel for it on these CPUs, so [`rewrite`] replaces each
//! product of an activation by a constant weight matrix (an `EinSum` of the decluttered graph)
//! with a [`WeightMatMul`] of our own: the weights are rounded to bf16
//! once, at load, and the activations at every run; the sums stay f32. In the image tower that
//! is the attention's input and output projections, the MLP's two layers and the final
//! projection; in the text tower the query, key, value and output projections, the MLP's two
//! layers and the projection head. The attention's two products of activations (scores, and
//! their weighting of the values) become [`ActMatMul`]s, both operands rounded at every run
//! (`activations.rs`), reading their operands in place where the graph only copies them into
//! shape first ([`fold_views`], per plan, `views.rs`), and the image tower's patch embedding a
//! [`PatchEmbed`] (`patches.rs`). A constant add of one value per output feature after a
//! [`WeightMatMul`] (a layer's bias), and a GELU after that, are folded into it, and a product
//! whose output only another sums (the MLP's first layer) writes it rounded for that one
//! (`fuse.rs`). A layer norm that only a [`WeightMatMul`] reads (the image tower's two per block)
//! is applied by that product to its input rows as it rounds them (`norms.rs`), and each other
//! layer norm runs as one [`RowLayerNorm`] (`rownorm.rs`); each softmax over a last axis runs
//! as a [`RowSoftmax`] (`softmax.rs`) and each other sum over one as a [`RowSum`]
//! (`rowsum.rs`): all seven give the bits of what they replace. In every plan, rewritten or
//! not, on any CPU, each f32 add or multiply of an activation by one broadcast to its shape
//! (the residual adds, the attention mask, the queries' scaling) runs as an [`Elementwise`]
//! (`elementwise.rs`, [`elementwise_ops`]), the same bits in one pass where tract's symbolic
//! plans kept its generic broadcasting loop. Everything else (the text tower's word-embedding
//! table among it) is tract's, and all of it stays f32.
//!
//! The same rewrite in f32 ([`rewrite`] with [`Arithmetic::F32`], what an f32 tower runs on a
//! CPU with AVX-512) packs the weights unrounded for f32 tiles of AVX-512 FMAs
//! (`kernel/fma.rs`), with the same folds of biases, GELUs and layer norms, the attention's
//! products of two activations in the same tiles, and the same row softmaxes and sums, all
//! exact f32; nothing is handed on in bf16. On an Intel Xeon without AMX, tract's f32 products ran at
//! about half its FMA peak and these at 85 %: an image batch took 0.76x the time, a batch of
//! queries 0.57x (bench/RESULTS.md, row 58).
//!
//! The same rewrite in int8 ([`Arithmetic::Int8`], on a CPU with AVX512-VNNI) packs the
//! weights of the blocks' products quantized per output feature to int8, and quantizes each
//! activation row per run to unsigned bytes with a scale and zero point of its own, a folded
//! layer norm applied first (`kernel/int8.rs`); the integer sums are scaled back to f32 before
//! the bias and GELU. The products of two activations, and those of one row per item (the
//! projections that make the embedding), stay f32 tiles. On an Intel Xeon whose bf16 is slow,
//! an image batch ran 2.95x as fast as in our f32 and the server served 2.7x the images, at
//! cosine 0.99994 to f32 on the random-weight export's calibration photos; its text tower
//! falls to 0.99976 (bench/RESULTS.md, row 62). [`Arithmetic::Int16`] does the same in 16-bit
//! integers of 10-bit levels, symmetric for activations and weights alike, with `vpdpwssd`
//! (`kernel/int16.rs`): a batch of queries ran 1.77x as fast as in our f32, and the text tower's
//! check found 0.99998 (bench/RESULTS.md, row 63).
//!
//! AVX512-BF16 is not faster everywhere: Zen 4 runs `vdpbf16ps` at twice its f32 FMA rate, an
//! Intel Xeon without AMX here at half (86 against 176 GFLOP/s a core), where the server ran
//! slower in bf16 than in tract's f32. So `auto` keeps bf16 only where [`speedups`] finds a
//! product faster in bf16 on this CPU (`speed.rs`).
//!
//! This is lossy: each product's inputs lose 16 bits of mantissa. On the random-weight exports
//! the embeddings stay at cosine >= 0.99995 to f32, but real weights, with their outliers, may
//! round worse: hence the check at start-up on the weights being served, against a calibration
//! set (`calibration/`). The arithmetic is in `kernel/`, the crate's only AVX512-BF16 code.
//! On the full-size random-weight export the start-up check's lowest cosines were the same with
//! the attention's products in bf16 as without (image 0.9999925 against 0.9999927, text
//! 0.9999809 against 0.9999808).

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::einsum::EinSum;

use crate::engine::precision::Arithmetic;

mod activations;
mod elementwise;
mod fuse;
mod kernel;
mod matmul;
mod norms;
mod patches;
mod rownorm;
mod rowsum;
mod softmax;
mod speed;
mod views;

use activations::ActLayout;
pub use activations::ActMatMul;
pub use elementwise::{ops as elementwise_ops, Elementwise};
use kernel::{Avx512Cpu, Bf16Cpu, Packing, VnniCpu};
use matmul::plan;
pub use matmul::WeightMatMul;
pub use patches::PatchEmbed;
pub use rownorm::RowLayerNorm;
pub use rowsum::RowSum;
pub use softmax::RowSoftmax;
pub use speed::speedups;
pub use views::fold as fold_views;

/// Whether this CPU has the instructions the bf16 products need.
pub fn bf16_supported() -> bool {
    Bf16Cpu::detect().is_some()
}

/// Whether this CPU runs the f32 products of our own (`kernel/fma.rs`): it has AVX-512. On one
/// without, an f32 tower is tract's.
pub fn f32_supported() -> bool {
    Avx512Cpu::detect().is_some()
}

/// Whether this CPU runs the int8 and 16-bit integer products (`kernel/int8.rs`,
/// `kernel/int16.rs`): it has AVX512-VNNI.
pub fn vnni_supported() -> bool {
    VnniCpu::detect().is_some()
}

/// Bytes of packed weights (in whatever arithmetic) the [`WeightMatMul`] ops of `model` hold,
/// each copy counted once (the plans built from `model` share them).
pub fn weight_bytes(model: &TypedModel) -> usize {
    let mut seen = std::collections::HashSet::new();
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<WeightMatMul>())
        .filter(|op| seen.insert(Arc::as_ptr(&op.weights)))
        .map(|op| op.weights.bytes())
        .sum()
}

/// What [`rewrite`] replaced with ops of our own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Products of an activation by a weight matrix ([`WeightMatMul`]), the image tower's patch
    /// embedding among them ([`PatchEmbed`]).
    pub by_weights: usize,
    /// Products of two activations, the attention's ([`ActMatMul`]).
    pub of_activations: usize,
    /// Biases added inside a [`WeightMatMul`] instead of by an add of their own.
    pub biases: usize,
    /// GELUs applied inside a [`WeightMatMul`] instead of by an op of their own.
    pub gelus: usize,
    /// Products whose output goes to a [`WeightMatMul`] that sums it, written as bf16 pairs that
    /// the next one reads as they are (the MLP's first layer).
    pub handoffs: usize,
    /// Layer norms applied by the [`WeightMatMul`] that alone reads them, to its input rows as it
    /// rounds them (`norms.rs`).
    pub norms: usize,
    /// The other layer norms, each computed by a [`RowLayerNorm`] (`rownorm.rs`).
    pub layer_norms: usize,
    /// Softmaxes over a last axis computed by a [`RowSoftmax`].
    pub softmaxes: usize,
    /// Sums over a last axis computed by a [`RowSum`].
    pub sums: usize,
}

/// Replaces, in `arithmetic` (where this CPU runs it: nothing is rewritten elsewhere; int8 and
/// int16 leave products of one row per item and of two activations in f32), every f32
/// product of an activation by a constant matrix that fits the [`WeightMatMul`] layout, every
/// convolution that is a patch embedding ([`PatchEmbed`]), and every product of two activations that fits [`ActMatMul`]'s, then folds the biases added
/// after products by weights, and the GELUs after those, into them, hands the MLP's hidden
/// layer from its first product to its second as bf16 (in bf16 only, `fuse.rs`), folds each layer
/// norm that only a product reads into it (`norms.rs`) and runs each other as one op
/// (`rownorm.rs`); returns how many of each. Products it cannot
/// express stay f32.
pub fn rewrite(model: &mut TypedModel, arithmetic: Arithmetic) -> TractResult<Rewritten> {
    // Nothing is rewritten on a CPU without the instructions.
    let packing = match arithmetic {
        Arithmetic::Bf16 => Bf16Cpu::detect().map(Packing::Bf16),
        Arithmetic::F32 => Avx512Cpu::detect().map(Packing::F32),
        Arithmetic::Int8 => VnniCpu::detect().map(Packing::Int8),
        Arithmetic::Int16 => VnniCpu::detect().map(Packing::Int16),
    };
    let Some(packing) = packing else {
        return Ok(Rewritten::default());
    };
    let mut by_weights: Vec<(usize, WeightMatMul)> = vec![];
    let mut of_activations: Vec<(usize, ActMatMul)> = vec![];
    let mut patches: Vec<(usize, PatchEmbed)> = vec![];
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
                if let Some(op) = PatchEmbed::plan(conv, x, &kernel, bias.as_deref(), packing) {
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
                // A product of one row per item (the projection that makes the embedding, the
                // text tower's projection head) is a sliver of the work, and its error reaches
                // the embedding unaveraged: int8 and int16 leave it f32.
                let packing = if x.rank() <= 2 {
                    packing.unquantized()
                } else {
                    packing
                };
                if let Some(op) = plan(&expr, weights).and_then(|l| l.build(weights, packing)) {
                    by_weights.push((node.id, op));
                }
            }
            None => {
                if let Some(layout) = ActLayout::plan(&expr).filter(|l| l.fits(x, w)) {
                    of_activations.push((node.id, layout.build(packing.unquantized())));
                }
            }
        }
    }
    let mut counts = Rewritten {
        by_weights: by_weights.len() + patches.len(),
        of_activations: of_activations.len(),
        biases: 0,
        gelus: 0,
        handoffs: 0,
        norms: 0,
        layer_norms: 0,
        softmaxes: 0,
        sums: 0,
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
    counts.biases = fuse::biases(model)?;
    counts.gelus = fuse::gelus(model)?;
    counts.handoffs = fuse::handoffs(model)?;
    counts.norms = norms::layer_norms(model)?;
    counts.layer_norms = rownorm::rows(model, packing.avx512())?;
    counts.softmaxes = softmax::rows(model, packing.avx512())?;
    counts.sums = rowsum::rows(model)?;
    Ok(counts)
}

/// Replaces by `op` every node of `model` that `fits` (given the node and the fact of its first
/// input, an f32 one); returns how many.
fn replace_each(
    model: &mut TypedModel,
    op: impl TypedOp + Clone,
    fits: impl Fn(&TypedNode, &TypedFact) -> bool,
) -> TractResult<usize> {
    let mut found = vec![];
    for node in model.nodes() {
        let Some(&x) = node.inputs.first() else {
            continue;
        };
        let x = model.outlet_fact(x)?;
        if x.datum_type == f32::datum_type() && fits(node, x) {
            found.push(node.id);
        }
    }
    for &id in &found {
        replace(model, id, op.clone(), 1)?;
    }
    Ok(found.len())
}

/// Whether `axes` is the last axis of `x` alone.
fn over_last_axis(axes: &[usize], x: &TypedFact) -> bool {
    x.rank().checked_sub(1).is_some_and(|last| axes == [last])
}

/// Replaces node `id` by `op` reading the node's first `inputs` inputs.
fn replace(model: &mut TypedModel, id: usize, op: impl TypedOp, inputs: usize) -> TractResult<()> {
    let wires: TVec<OutletId> = model.node(id).inputs[..inputs].into();
    replace_reading(model, id, op, &wires)
}

/// Replaces node `id` by `op` reading `wires`.
fn replace_reading(
    model: &mut TypedModel,
    id: usize,
    op: impl TypedOp,
    wires: &[OutletId],
) -> TractResult<()> {
    let name = model.node(id).name.clone();
    let mut patch = TypedModelPatch::new(format!("bf16 {name}"));
    let tapped: TVec<OutletId> = wires
        .iter()
        .map(|&w| patch.tap_model(model, w))
        .collect::<TractResult<_>>()?;
    let y = patch.wire_node(format!("{name}.bf16"), op, &tapped)?[0];
    patch.shunt_outside(model, OutletId::new(id, 0), y)?;
    patch.apply(model)
}

/// The axes of an einsum `expr` (`"xaxes,yaxes->outaxes"`, one letter per axis): x's, y's and
/// the output's.
fn einsum_axes(expr: &str) -> Option<(Vec<char>, Vec<char>, Vec<char>)> {
    let (inputs, out) = expr.split_once("->")?;
    let (xs, ys) = inputs.split_once(',')?;
    Some((
        xs.chars().collect(),
        ys.chars().collect(),
        out.chars().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which products of the towers become bf16 ones, on the committed tiny model (the real
    /// architecture, small widths): every product by a weight matrix has a layout
    /// [`WeightMatMul`] computes, and the others are products of two activations (the attention's
    /// scores and their weighting of the values) that [`ActMatMul`] computes. Only the
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
