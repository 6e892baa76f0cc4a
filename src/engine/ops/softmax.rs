//! [`RowSoftmax`]: tract's softmax over a tensor's last axis, the same bits without its
//! per-row kernel calls (`kernel/softmax.rs`). [`rows`] puts one in place of each such softmax
//! of a rewritten graph; in the image tower's attention (rows of 50) they took 2.7 % of a run.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

use super::kernel::{softmax_rows, Avx512Cpu};

/// Softmax over the last axis of an f32 tensor, in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSoftmax {
    cpu: Avx512Cpu,
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let row_len = *x.shape().last().context("a softmax of a scalar")?;
        // In place, as tract's op: its buffer's alignment decides where the sums split.
        let mut y = x.into_tensor();
        let mut plain = y.try_as_plain_ram_mut()?;
        softmax_rows(self.cpu, plain.as_slice_mut::<f32>()?, row_len);
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// Replaces every f32 softmax over the last axis of `model` by a [`RowSoftmax`]; returns how
/// many.
pub(super) fn rows(model: &mut TypedModel, cpu: Avx512Cpu) -> TractResult<usize> {
    super::replace_each(model, RowSoftmax { cpu }, |node, x| {
        node.op_as::<Softmax>().is_some_and(|op| {
            op.kind == SoftmaxKind::Softmax
                && op.quant_output_dt.is_none()
                && super::over_last_axis(&op.axes, x)
        })
    })
}
