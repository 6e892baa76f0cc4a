//! [`RowSum`]: tract's sum over a tensor's last axis (the layer norms' means), the same bits
//! eight rows at a time. tract 0.23.9 has no x86 kernel for it: its generic one adds a row's
//! floats one after the other, a chain of dependent adds that left the CPU idle most of the
//! time (1.7 % of an image run). Eight rows' chains side by side keep the order of each row's
//! additions, so each sum is the same float. [`rows`] puts one in place of each such sum of a
//! bf16 graph.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

/// Sum over the last axis of an f32 tensor, which stays as an axis of 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSum;

impl Op for RowSum {
    fn name(&self) -> StaticName {
        "RowSum".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let len = *x.shape().last().context("a sum of a scalar")?;
        let mut shape: TVec<usize> = x.shape().into();
        *shape.last_mut().expect("rank 1 or more") = 1;
        let x = x.to_plain_array_view::<f32>()?;
        let x = x.as_slice().context("contiguous input")?;
        let mut sums = Tensor::zero::<f32>(&shape)?;
        let mut plain = sums.try_as_plain_ram_mut()?;
        if len > 0 {
            sum_rows(x, len, plain.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(sums.into_tvalue()))
    }
}

impl TypedOp for RowSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.clone();
        let last = shape.rank().checked_sub(1).context("a sum of a scalar")?;
        shape.set(last, 1.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// The sum of each `len` floats of `x` into `out`, as tract adds them.
fn sum_rows(x: &[f32], len: usize, out: &mut [f32]) {
    let rows: Vec<&[f32]> = x.chunks_exact(len).collect();
    sums_of(&rows, out);
}

/// The sum of each of `rows` into `out`, the float tract's sum over the last axis gives it
/// where it lies. Where eight rows in turn each start on 16 bytes and fill whole groups of 4,
/// tract's kernel takes each in one piece: their chains run side by side. Also the layer norms
/// that a product applies to its input (`kernel/norm.rs`).
pub(super) fn sums_of(rows: &[&[f32]], out: &mut [f32]) {
    assert_eq!(rows.len(), out.len(), "a sum per row");
    let whole = |row: &[f32], len: usize| {
        row.len() == len && len >= 4 && len.is_multiple_of(4) && row.as_ptr().align_offset(16) == 0
    };
    for (group, sums) in rows.chunks(8).zip(out.chunks_mut(8)) {
        let len = group[0].len();
        match <&[&[f32]; 8]>::try_from(group) {
            Ok(eight) if eight.iter().all(|r| whole(r, len)) => {
                let eight = eight.map(|r| &r[..len]);
                let mut acc = [start(); 8];
                for j in 0..len {
                    for (a, row) in acc.iter_mut().zip(&eight) {
                        *a += row[j];
                    }
                }
                for (s, a) in sums.iter_mut().zip(acc) {
                    *s = 0.0 + a;
                }
            }
            _ => {
                for (row, s) in group.iter().zip(sums.iter_mut()) {
                    *s = tract_sum(row);
                }
            }
        }
    }
}

/// The value std's `Sum` for f32 starts from (tract's kernel sums a piece with it).
fn start() -> f32 {
    std::iter::empty::<f32>().sum()
}

/// One row's sum as tract's `Reducer::Sum` computes it on the last axis: rows under 4 long
/// with std's `sum`; others in the pieces its kernel's alignment gives (before the first 16
/// bytes boundary, whole groups of 4, the rest), a short piece padded with zeros to 4, each
/// piece summed in order, the pieces' sums added to 0 in order.
fn tract_sum(row: &[f32]) -> f32 {
    if row.len() < 4 {
        return row.iter().sum();
    }
    let prefix = row.as_ptr().align_offset(16).min(row.len());
    let whole = (row.len() - prefix) / 4 * 4;
    let padded = |piece: &[f32]| -> f32 {
        let mut four = [0f32; 4];
        four[..piece.len()].copy_from_slice(piece);
        four.iter().sum()
    };
    let mut sum = 0f32;
    if prefix > 0 {
        sum += padded(&row[..prefix]);
    }
    if whole > 0 {
        sum += row[prefix..prefix + whole].iter().sum::<f32>();
    }
    if prefix + whole < row.len() {
        sum += padded(&row[prefix + whole..]);
    }
    sum
}

/// Replaces every f32 sum over the last axis alone of `model` by a [`RowSum`]; returns how
/// many.
pub(super) fn rows(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_each(model, RowSum, |node, x| {
        node.op_as::<Reduce>().is_some_and(|op| {
            matches!(op.reducer, Reducer::Sum) && super::over_last_axis(&op.axes, x)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::kernel::testing::{assert_same_bits, values};
    use super::*;

    /// Rows of many lengths, at every alignment a row can start at, give the bits of tract's
    /// sum op on the same buffer.
    #[test]
    fn row_sums_are_tracts_bit_for_bit() {
        for (rows, len) in [
            (19, 768),
            (9, 16),
            (5, 50),
            (7, 77),
            (3, 3),
            (4, 1),
            (11, 4),
            (6, 9),
        ] {
            let x: Vec<f32> = values(rows * len, len as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1.0 + (i % 7) as f32 * 1e3))
                .collect();
            let tensor = Tensor::from_shape(&[rows, len], &x).unwrap();
            let tract = Reduce {
                axes: tvec![1],
                reducer: Reducer::Sum,
            };
            let ctx = EvalContext::out_of_plan();
            let want = tract
                .eval(&ctx, tvec![tensor.clone().into_tvalue()])
                .unwrap();
            let got = RowSum.eval(&ctx, tvec![tensor.into_tvalue()]).unwrap();
            assert_same_bits(&got[0], &want[0], &format!("{rows} x {len}"));
        }
    }
}
