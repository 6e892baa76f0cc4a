//! The copies in front of the attention's products, folded away. Between the image tower's
//! input projection and its two [`ActMatMul`]s, tract's graph splits the projection's
//! output into queries, keys and values and lays each out as `[batch, heads, tokens, head size]`:
//! a reshape, an axis move, a gather, another reshape and move, and a multiply by a constant
//! (the queries' and keys' scaling), each a pass over the whole activation (2.3 % of an image
//! run on one thread, `examples/op_profile`). The product packs its operands itself, from any
//! strides, so [`fold`] has it read the projection's output in place instead: a chain of ops
//! that only move elements becomes one strided view of the tensor the chain starts from, and
//! a multiply by a single constant becomes a factor applied as the operand is rounded. The
//! bits stay tract's: each element is multiplied in f32 before rounding, as tract's multiply
//! gave it.
//!
//! Which element of the start each operand element is, is not derived op by op: [`fold`] runs
//! the chain once, on the plan's concrete shapes, over a tensor whose values are their own
//! positions, and keeps the chain only if the positions it gives are one offset plus one
//! stride per axis (an affine map); otherwise a shorter chain, or none.

use std::collections::HashMap;

use tract_onnx::prelude::tract_ndarray::{ArrayViewD, Dimension, IxDyn, ShapeBuilder};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::math::Mul;

use super::ActMatMul;

/// An operand of a [`ActMatMul`] read in place from the tensor a chain of copies started
/// from: element `idx` is `source[offset + sum(idx[a] * strides[a])]`, times `scale`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct OperandView {
    /// The operand's shape, as the chain gave it.
    pub(super) shape: TVec<usize>,
    strides: TVec<usize>,
    offset: usize,
    /// The factor's bits (f32 is not `Hash`), if the chain multiplied by one.
    scale: Option<u32>,
}

impl OperandView {
    /// The operand, a view of `source` (the tensor the chain started from).
    pub(super) fn view<'a>(&self, source: &'a Tensor) -> TractResult<ArrayViewD<'a, f32>> {
        let data = source.to_plain_array_view::<f32>()?;
        let data = data
            .to_slice()
            .ok_or_else(|| format_err!("the source of a view is not contiguous"))?;
        let shape = IxDyn(&self.shape).strides(IxDyn(&self.strides));
        let tail = data
            .get(self.offset..)
            .ok_or_else(|| format_err!("offset {} past {} values", self.offset, data.len()))?;
        Ok(ArrayViewD::from_shape(shape, tail)?)
    }

    /// The factor the operand is multiplied by before rounding, if any.
    pub(super) fn scale(&self) -> Option<f32> {
        self.scale.map(f32::from_bits)
    }
}

/// Sources up to this many elements are probed; positions stay exact integers in f32.
const MOST_PROBED: usize = 1 << 24;

/// Has every [`ActMatMul`] of `model` (shapes concrete) read its operands in place where
/// the chain in front of them only moves elements (and multiplies by one constant); returns
/// how many operands now do. The copies no product reads any more are left for tract to prune.
pub fn fold(model: &mut TypedModel) -> TractResult<usize> {
    let mut probed: HashMap<String, Option<OperandView>> = HashMap::new();
    let mut folded = 0;
    let ids: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<ActMatMul>())
        .map(|n| n.id)
        .collect();
    for id in ids {
        let node = model.node(id);
        let mut op = node.op_as::<ActMatMul>().unwrap().clone();
        let mut wires: TVec<OutletId> = node.inputs.iter().copied().collect();
        let mut changed = false;
        for (operand, wire) in wires.iter_mut().enumerate() {
            if op.views[operand].is_some() {
                continue;
            }
            let mut links = chain_before(model, *wire)?;
            // The longest chain that is one view, dropping ops from its start until one is.
            while let Some(&(_, start)) = links.first() {
                let chain: Vec<usize> = links.iter().map(|&(id, _)| id).collect();
                let key = probe_key(model, start, &chain)?;
                let view = match probed.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let v = probe(model, start, &chain)?;
                        probed.insert(key, v.clone());
                        v
                    }
                };
                if let Some(view) = view {
                    op.views[operand] = Some(view);
                    *wire = start;
                    changed = true;
                    folded += 1;
                    break;
                }
                links.remove(0);
            }
        }
        if changed {
            super::replace_reading(model, id, op, &wires)?;
        }
    }
    Ok(folded)
}

/// The nodes in front of `wire` that only move elements or multiply by one constant, nearest
/// the start first, at most one multiply, each with the wire of the activation it reads;
/// empty if there are none.
fn chain_before(model: &TypedModel, mut wire: OutletId) -> TractResult<Vec<(usize, OutletId)>> {
    let mut chain = vec![];
    let mut multiplied = false;
    loop {
        let node = model.node(wire.node);
        if wire.slot != 0 || model.outlet_fact(wire)?.datum_type != f32::datum_type() {
            break;
        }
        let moves = node.op_is::<AxisOp>() && node.inputs.len() == 1;
        let gathers = node.op_is::<Gather>()
            && node.inputs.len() == 2
            && model.outlet_fact(node.inputs[1])?.konst.is_some();
        let data = if moves || gathers {
            node.inputs[0]
        } else if let (Some(_), false) = (scalar_factor(model, node)?, multiplied) {
            multiplied = true;
            let konst = |i: usize| model.outlet_fact(node.inputs[i]).map(|f| f.konst.is_some());
            node.inputs[if konst(0)? { 1 } else { 0 }]
        } else {
            break;
        };
        chain.insert(0, (node.id, data));
        wire = data;
    }
    Ok(chain)
}

/// The constant of `node` if it multiplies one f32 activation by a single constant value,
/// giving the activation's own shape.
fn scalar_factor(model: &TypedModel, node: &TypedNode) -> TractResult<Option<f32>> {
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !bin.0.is::<Mul>() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = [
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    ];
    let out = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (x, k) = match (&facts[0].konst, &facts[1].konst) {
        (None, Some(k)) => (facts[0], k),
        (Some(k), None) => (facts[1], k),
        _ => return Ok(None),
    };
    let f32s = [x.datum_type, k.datum_type(), out.datum_type] == [f32::datum_type(); 3];
    if !f32s || k.len() != 1 || x.shape != out.shape {
        return Ok(None);
    }
    Ok(k.to_plain_array_view::<f32>()?.iter().next().copied())
}

/// What decides a chain's view: the start's shape and each op with its constants.
fn probe_key(model: &TypedModel, start: OutletId, chain: &[usize]) -> TractResult<String> {
    let mut key = format!("{:?}", model.outlet_fact(start)?.shape);
    for &id in chain {
        let node = model.node(id);
        key.push_str(&format!(" | {:?}", node.op));
        for &i in &node.inputs {
            key.push_str(&format!(" {:?}", model.outlet_fact(i)?.konst));
        }
    }
    Ok(key)
}

/// The view `chain` (applied to `start`) amounts to, found by running its ops (the multiply
/// aside) on a tensor of positions; `None` if the result is not an affine map of them.
fn probe(model: &TypedModel, start: OutletId, chain: &[usize]) -> TractResult<Option<OperandView>> {
    let Some(shape) = model
        .outlet_fact(start)?
        .shape
        .as_concrete()
        .map(|s| s.to_vec())
    else {
        return Ok(None);
    };
    let len: usize = shape.iter().product();
    if len == 0 || len > MOST_PROBED {
        return Ok(None);
    }
    let mut probe = TypedModel::default();
    let mut wire = probe.add_source("positions", f32::fact(&shape))?;
    let mut scale = None;
    for &id in chain {
        let node = model.node(id);
        if let Some(factor) = scalar_factor(model, node)? {
            scale = Some(factor.to_bits());
            continue;
        }
        let mut inputs = tvec![wire];
        for (j, &i) in node.inputs.iter().enumerate().skip(1) {
            let konst = model.outlet_fact(i)?.konst.clone();
            let konst = konst.ok_or_else(|| format_err!("{} reads a non-constant", node.name))?;
            inputs.push(probe.add_const(format!("{}.{j}", node.name), konst)?);
        }
        wire = probe.wire_node(&node.name, node.op.clone(), &inputs)?[0];
    }
    probe.select_output_outlets(&[wire])?;
    let positions = Tensor::from_shape(&shape, &(0..len).map(|i| i as f32).collect::<Vec<_>>())?;
    let got = probe
        .into_runnable()?
        .run(tvec![positions.into_tvalue()])?
        .remove(0);
    let got = got.to_plain_array_view::<f32>()?;
    Ok(affine(&got).map(|(offset, strides)| OperandView {
        shape: got.shape().into(),
        strides,
        offset,
        scale,
    }))
}

/// `(offset, strides)` with `positions[idx] == offset + sum(idx[a] * strides[a])` for every
/// index, strides not negative; `None` if there are none.
fn affine(positions: &ArrayViewD<f32>) -> Option<(usize, TVec<usize>)> {
    let shape = positions.shape();
    if shape.contains(&0) {
        return None;
    }
    let at = |idx: &[usize]| positions[IxDyn(idx)] as usize;
    let zero = vec![0; shape.len()];
    let offset = at(&zero);
    let mut strides = tvec![];
    for a in 0..shape.len() {
        let mut one = zero.clone();
        one[a] = 1.min(shape[a] - 1);
        strides.push(at(&one).checked_sub(offset)?);
    }
    let fits = positions.indexed_iter().all(|(idx, &p)| {
        let idx = idx.slice();
        p as usize == offset + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()
    });
    fits.then_some((offset, strides))
}

#[cfg(test)]
mod tests;
