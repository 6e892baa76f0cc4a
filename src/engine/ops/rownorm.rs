//! [`RowLayerNorm`]: a layer norm over a tensor's last axis as one op, for the norms no product
//! takes in (`norms.rs` folds those): the text tower's, which normalize after each residual add
//! and whose output the next block reads twice. tract's decluttered graph runs each as five ops
//! (the sum, the mean's subtraction, `RmsNorm`, then the scales and the biases as broadcasting
//! multiplies and adds, which tract 0.23.9 runs through its generic kernels): on the text tower,
//! 40 ms of a 743 ms run of 32 queries on one thread. This is the same f32 operations in the
//! same order (`kernel/norm.rs`), so the same bits, in one pass over each row to centre it and
//! sum its squares and one to scale it.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::fuse::sole_reader;
use super::kernel::{layer_norm_rows, Avx512Cpu, LayerNorm};
use super::norms::layer_norm;

/// tract's layer norm over the last axis of an f32 tensor (`kernel::LayerNorm`).
#[derive(Debug, Clone)]
pub struct RowLayerNorm {
    norm: Arc<LayerNorm>,
    cpu: Avx512Cpu,
}

impl PartialEq for RowLayerNorm {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.norm, &other.norm)
    }
}
impl Eq for RowLayerNorm {}

impl std::hash::Hash for RowLayerNorm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.norm) as usize).hash(state);
    }
}

impl Op for RowLayerNorm {
    fn name(&self) -> StaticName {
        "RowLayerNorm".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let k = *x.shape().last().context("a norm of a scalar")?;
        let mut y = Tensor::zero::<f32>(x.shape())?;
        if k > 0 {
            // The input's own buffer, where tract's sum would read it: its alignment decides
            // how the sums split (`rowsum.rs`).
            let x = x.try_as_plain_ram()?;
            let mut out = y.try_as_plain_ram_mut()?;
            layer_norm_rows(
                self.cpu,
                x.as_slice::<f32>()?,
                k,
                &self.norm,
                out.as_slice_mut()?,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for RowLayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// Replaces each layer norm over a last axis of known length in `model` by a [`RowLayerNorm`]
/// (the whole norm: a norm whose scales another norm-shaped step would follow is part of that
/// longer one); returns how many.
pub(super) fn rows(model: &mut TypedModel, cpu: Avx512Cpu) -> TractResult<usize> {
    let mut found = vec![];
    for node in model.nodes() {
        // (Nodes an earlier patch replaced are left without outputs until the model is
        // compacted.)
        if node.outputs.len() != 1 {
            continue;
        }
        let y = OutletId::new(node.id, 0);
        let Some(k) = last_len(model, y)? else {
            continue;
        };
        let Some((x, norm)) = layer_norm(model, y, k)? else {
            continue;
        };
        let extends = match sole_reader(model, node.id)? {
            Some(next) => layer_norm(model, OutletId::new(next.id, 0), k)?.is_some(),
            None => false,
        };
        if !extends {
            found.push((node.id, x, norm));
        }
    }
    let count = found.len();
    for (id, x, norm) in found {
        let op = RowLayerNorm {
            norm: Arc::new(norm),
            cpu,
        };
        super::replace_reading(model, id, op, &[x])?;
    }
    if count > 0 {
        // The norms' ops, read by nothing now.
        model.compact()?;
    }
    Ok(count)
}

/// The length of the last axis of `y`, an f32 tensor, where it is known.
fn last_len(model: &TypedModel, y: OutletId) -> TractResult<Option<usize>> {
    let fact = model.outlet_fact(y)?;
    if fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    Ok(fact.shape.last().and_then(|d| d.to_usize().ok()))
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::nn::RmsNorm;

    use super::super::kernel::testing::{assert_same_bits, layer_norm, run, values};
    use super::*;

    /// Norms with scales and biases, either, or neither, whose output two ops read, give the
    /// bits of tract's ops as one op each; only the whole norm is replaced.
    #[test]
    fn a_layer_norm_is_one_op_with_the_same_bits() -> TractResult<()> {
        let Some(cpu) = Avx512Cpu::detect() else {
            eprintln!("no AVX-512 on this CPU: the row norms are never used here");
            return Ok(());
        };
        let k = 80;
        let shape = [2usize, 7, k];
        let x = values(shape.iter().product(), 61);
        let gamma: Vec<f32> = values(k, 62).iter().map(|g| 1.0 + g).collect();
        let beta = values(k, 63);
        for (scales, biases) in [(true, true), (false, true), (true, false), (false, false)] {
            let what = format!("scales {scales}, biases {biases}");
            let (gamma, beta) = (scales.then_some(&gamma[..]), biases.then_some(&beta[..]));
            let mut model = TypedModel::default();
            let source = model.add_source("x", f32::fact(shape))?;
            let y = layer_norm(&mut model, source, k, gamma, beta)?;
            // Read twice: by the graph's output and by a residual add.
            let twice = model.wire_node(
                "residual",
                tract_onnx::tract_core::ops::math::add(),
                &[y, source],
            )?[0];
            model.select_output_outlets(&[y, twice])?;
            let want = run(model.clone(), &[(&shape, &x)]);
            assert_eq!(rows(&mut model, cpu)?, 1, "{what}");
            let ops = |name: &str| model.nodes().iter().filter(|n| n.op.name() == name).count();
            assert_eq!(ops("RowLayerNorm"), 1, "{what}");
            assert_eq!(
                model
                    .nodes()
                    .iter()
                    .filter(|n| n.op_is::<RmsNorm>())
                    .count(),
                0,
                "{what}"
            );
            let got = run(model, &[(&shape, &x)]);
            assert_same_bits(&got, &want, &what);
        }
        Ok(())
    }
}
