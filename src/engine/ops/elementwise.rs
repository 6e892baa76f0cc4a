//! [`Elementwise`]: tract's f32 add or multiply of two tensors, where one is broadcast to the
//! other's shape (or has it), the same floats in one pass. tract 0.23.9 runs such an op through
//! its own kernels only when it can prove from the shapes that they pay (at least 32 elements
//! per call); with a symbolic batch and sequence it cannot, and its generic broadcasting loop
//! took 1.4 ns an element. In the text tower's plan, which keeps both axes symbolic, its 39 adds
//! (the residuals and the attention mask) and 26 multiplies (the queries' and keys' scaling)
//! were 7 ms of a lone 77-token query's 55 (`examples/op_profile`). [`ops`] puts one in place of
//! each such op of a plan with symbolic shapes; plans whose shapes are bound keep tract's.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::math::{Add, Mul};

use super::fuse::is_bin;

/// The arithmetic of an [`Elementwise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    Add,
    Mul,
}

impl Arith {
    fn apply(self, x: &mut [f32], y: &[f32]) {
        match self {
            Arith::Add => x.iter_mut().zip(y).for_each(|(x, y)| *x += y),
            Arith::Mul => x.iter_mut().zip(y).for_each(|(x, y)| *x *= y),
        }
    }

    fn apply_one(self, x: &mut [f32], y: f32) {
        match self {
            Arith::Add => x.iter_mut().for_each(|x| *x += y),
            Arith::Mul => x.iter_mut().for_each(|x| *x *= y),
        }
    }
}

/// `a op b` for f32 tensors of one rank, where every axis of `b` is `a`'s or 1: the output has
/// `a`'s shape and is written over `a` (copied first only if another op still reads it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Elementwise {
    pub arith: Arith,
}

impl Op for Elementwise {
    fn name(&self) -> StaticName {
        match self.arith {
            Arith::Add => "F32Add".into(),
            Arith::Mul => "F32Mul".into(),
        }
    }

    op_as_typed_op!();
}

impl EvalOp for Elementwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let shape: TVec<usize> = a.shape().into();
        let b_shape: TVec<usize> = b.shape().into();
        ensure!(
            shape.len() == b_shape.len()
                && shape.iter().zip(&b_shape).all(|(&n, &m)| m == n || m == 1),
            "{} of {shape:?} by {b_shape:?}: not a broadcast to the first",
            self.name()
        );
        let mut out = a.into_tensor();
        let b = b.to_plain_array_view::<f32>()?;
        let b = b.as_slice().context("contiguous second input")?;
        let mut plain = out.try_as_plain_ram_mut()?;
        apply(
            self.arith,
            plain.as_slice_mut::<f32>()?,
            &shape,
            b,
            &b_shape,
        );
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Elementwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// `a[i] op= b[i']`, `i'` being `i` with the axes where `b` has 1 set to 0. The axes at the end
/// where both have the same size are one contiguous run in both; so are those where `b` has 1,
/// over which `b` is one value. `a` goes by runs of the longer of the two.
fn apply(arith: Arith, a: &mut [f32], shape: &[usize], b: &[f32], b_shape: &[usize]) {
    if a.is_empty() {
        return;
    }
    let same = shape.iter().zip(b_shape).rev().take_while(|(n, m)| n == m);
    let (same_axes, same_len) = same.fold((0, 1), |(k, l), (n, _)| (k + 1, l * n));
    let ones = shape.iter().zip(b_shape).rev().take_while(|(_, &m)| m == 1);
    let (one_axes, one_len) = ones.fold((0, 1), |(k, l), (n, _)| (k + 1, l * n));
    let (inner_axes, run, b_runs) = if same_len >= one_len {
        (same_axes, same_len, true)
    } else {
        (one_axes, one_len, false)
    };
    // Strides of b over the outer axes, 0 where b is broadcast.
    let outer = shape.len() - inner_axes;
    let mut strides = vec![0; outer];
    let mut stride = b_shape[outer..].iter().product::<usize>();
    for axis in (0..outer).rev() {
        if b_shape[axis] != 1 {
            strides[axis] = stride;
        }
        stride *= b_shape[axis];
    }
    let mut index = vec![0; outer];
    let mut at = 0;
    for chunk in a.chunks_exact_mut(run) {
        if b_runs {
            arith.apply(chunk, &b[at..at + run]);
        } else {
            arith.apply_one(chunk, b[at]);
        }
        // The next outer index, carrying like an odometer.
        for axis in (0..outer).rev() {
            index[axis] += 1;
            at += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            at -= strides[axis] * index[axis];
            index[axis] = 0;
        }
    }
}

/// Replaces each f32 add or multiply of `model` with a symbolic input shape whose output has
/// one input's shape, the other input being broadcast to it, by an [`Elementwise`] (inputs
/// swapped if the broadcast one is first); returns how many.
pub fn ops(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = vec![];
    for node in model.nodes() {
        let arith = if is_bin::<Add>(node) {
            Arith::Add
        } else if is_bin::<Mul>(node) {
            Arith::Mul
        } else {
            continue;
        };
        let facts = [
            model.outlet_fact(node.inputs[0])?,
            model.outlet_fact(node.inputs[1])?,
        ];
        let out = model.outlet_fact(OutletId::new(node.id, 0))?;
        let f32s =
            [facts[0].datum_type, facts[1].datum_type, out.datum_type] == [f32::datum_type(); 3];
        // Where the shapes are known, tract's codegen picks its own kernels; this op is for
        // the plans it leaves generic.
        let symbolic = facts.iter().any(|f| f.shape.as_concrete().is_none());
        if !f32s || !symbolic || facts[0].rank() != facts[1].rank() {
            continue;
        }
        let onto = |a: &TypedFact, b: &TypedFact| {
            a.shape == out.shape
                && a.shape
                    .iter()
                    .zip(b.shape.iter())
                    .all(|(n, m)| m == n || *m == TDim::Val(1))
        };
        let swapped = if onto(facts[0], facts[1]) {
            false
        } else if onto(facts[1], facts[0]) {
            true
        } else {
            continue;
        };
        found.push((node.id, arith, swapped));
    }
    for &(id, arith, swapped) in &found {
        // Read now: a replacement before this one may have rewired them.
        let mut wires = model.node(id).inputs.clone();
        if swapped {
            wires.swap(0, 1);
        }
        super::replace_reading(model, id, Elementwise { arith }, &wires)?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests;
