//! What the plans of one tower hold in memory, and how they come to hold it only once.
//!
//! Optimizing a plan folds each matrix product's constant operand into a copy packed for the
//! kernel tract picked for that shape, and bakes it into the `OptMatMul` op, so every plan
//! would carry its own packed weights (about 350 MB per plan for each full-size tower: 12 GB
//! for the default 30 plans). [`WeightPool`] sees the constants and baked operands of each new
//! plan before it is made runnable, and where an earlier plan already holds an equal one (the
//! same node, the same packing, byte for byte) it points the new plan at that one and lets the
//! copy go. Plans whose shapes picked the same kernels then share every weight.
//!
//! [`half_embedding_tables`] stores the text tower's word-embedding table (250002 x 768) in
//! f16 and widens the gathered rows back to f32: the table is only read row by row, so halving
//! it saves 384 MB for one rounding of each weight to 11 significant bits.

use std::collections::HashMap;

use tract_onnx::prelude::tract_linalg::mmm::{
    EagerPackedInput, MMMInputValue, PackedMatrixStorage,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// Bytes a constant tensor holds (packed or plain).
pub fn tensor_bytes(t: &Tensor) -> usize {
    if let Some(packed) = t.storage_as::<PackedMatrixStorage>() {
        packed
            .values()
            .iter()
            .map(|v| {
                v.downcast_ref::<EagerPackedInput>()
                    .map_or(0, |e| e.packed.len())
            })
            .sum()
    } else {
        t.len() * t.datum_type().size_of()
    }
}

/// Constants of a tower's plans, shared across plans wherever they are equal.
#[derive(Default)]
pub struct WeightPool {
    /// Plain constants by node name.
    by_name: HashMap<String, Vec<Arc<Tensor>>>,
    /// Packed operands baked into matrix products, by a fingerprint of their bytes (fusion
    /// renames nodes from one shape to the next, so names do not identify them).
    baked: HashMap<u64, Vec<EagerPackedInput>>,
    /// Bytes of distinct constants held by the pool.
    pub held: usize,
    /// Bytes of copies that plans dropped in favour of a pooled constant.
    pub deduplicated: usize,
}

impl WeightPool {
    /// Points every constant of `model` (an optimized plan, not yet runnable) that equals one
    /// already pooled at the pooled tensor, and pools the others. Returns the bytes of the
    /// constants this plan added to the pool.
    pub fn share(&mut self, model: &mut TypedModel) -> TractResult<usize> {
        let mut added = 0;
        for node in model.nodes.iter_mut() {
            if let Some(mm) = node.op.downcast_mut::<OptMatMul>() {
                added += self.share_baked(mm);
                continue;
            }
            let Some(konst) = node.op_as::<Const>() else {
                continue;
            };
            let val = konst.val().clone();
            let bytes = tensor_bytes(&val);
            let pooled = self.by_name.entry(node.name.clone()).or_default();
            match pooled.iter().find(|p| Arc::ptr_eq(p, &val) || ***p == *val) {
                Some(same) if Arc::ptr_eq(same, &val) => {}
                Some(same) => {
                    let same = same.clone();
                    let exotic = konst
                        .exotic_fact()
                        .map(tract_onnx::tract_core::dyn_clone::clone_box);
                    node.op = Box::new(Const::new_with_opt_exotic_fact(same.clone(), exotic)?);
                    node.outputs[0].fact.konst = Some(same);
                    self.deduplicated += bytes;
                }
                None => {
                    pooled.push(val);
                    self.held += bytes;
                    added += bytes;
                }
            }
        }
        Ok(added)
    }

    fn share_baked(&mut self, mm: &mut OptMatMul) -> usize {
        let mut added = 0;
        for spec in mm.micro_ops.iter_mut() {
            let ProtoFusedSpec::AddMatMul { a, b, .. } = spec else {
                continue;
            };
            for operand in [a, b] {
                let MatMulOperand::Const(value) = operand else {
                    continue;
                };
                let Some(packed) = value.downcast_ref::<EagerPackedInput>() else {
                    continue;
                };
                let bytes = packed.packed.len();
                let key = fingerprint(packed.packed.as_bytes(), packed.panel_bytes, packed.mn);
                let pooled = self.baked.entry(key).or_default();
                match pooled.iter().find(|p| *p == packed) {
                    Some(same) if Arc::ptr_eq(&same.packed, &packed.packed) => {}
                    Some(same) => {
                        *value = Box::new(same.clone()) as Box<dyn MMMInputValue>;
                        self.deduplicated += bytes;
                    }
                    None => {
                        pooled.push(packed.clone());
                        self.held += bytes;
                        added += bytes;
                    }
                }
            }
        }
        added
    }
}

/// A cheap identity for a packed buffer: its sizes and a sample of its bytes (equality is
/// then checked in full).
fn fingerprint(bytes: &[u8], panel_bytes: usize, mn: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (bytes.len(), panel_bytes, mn).hash(&mut h);
    for i in (0..bytes.len()).step_by(4093) {
        bytes[i].hash(&mut h);
    }
    bytes[bytes.len().saturating_sub(64)..].hash(&mut h);
    h.finish()
}

/// How often each matrix-product kernel occurs in an optimized model (the kernel fixes how its
/// weights are packed, so plans that pick different kernels cannot share them).
pub fn matmul_kernels(model: &TypedModel) -> std::collections::BTreeMap<String, usize> {
    let mut kernels = std::collections::BTreeMap::new();
    for node in &model.nodes {
        if let Some(mm) = node.op_as::<OptMatMul>() {
            for k in &mm.mmm {
                *kernels.entry(k.name().to_string()).or_default() += 1;
            }
        }
    }
    kernels
}

/// Tables at least this large that are only gathered from are stored in f16.
const HALF_TABLE_MIN_BYTES: usize = 64 << 20;

/// Rewrites every f32 constant of at least 64 MB whose only use is a `Gather` (an embedding
/// table) to f16, with a cast of the gathered rows back to f32. Returns the bytes saved.
pub fn half_embedding_tables(model: &mut TypedModel) -> TractResult<usize> {
    let mut saved = 0;
    let candidates: Vec<(usize, usize)> = model
        .nodes
        .iter()
        .filter_map(|node| {
            let konst = node.op_as::<Const>()?;
            let t = konst.val();
            let succ = &node.outputs[0].successors;
            let gathered = succ.len() == 1 && succ[0].slot == 0;
            (t.datum_type() == f32::datum_type()
                && t.is_plain()
                && tensor_bytes(t) >= HALF_TABLE_MIN_BYTES
                && gathered)
                .then(|| (node.id, succ[0].node))
        })
        .filter(|(_, user)| model.node(*user).op_is::<Gather>())
        .collect();
    for (table, gather) in candidates {
        let f32_table = model
            .node(table)
            .op_as::<Const>()
            .expect("checked above")
            .val()
            .clone();
        let half = f32_table.cast_to_dt(f16::datum_type())?.into_owned();
        saved += tensor_bytes(&f32_table) - tensor_bytes(&half);
        let gather_node = model.node(gather);
        let gather_op = gather_node
            .op_as::<Gather>()
            .expect("checked above")
            .clone();
        let mut patch = TypedModelPatch::new("f16 embedding table");
        let name = model.node(table).name.clone();
        let half_table = patch.add_const(format!("{name}.f16"), half)?;
        let indices = patch.tap_model(model, gather_node.inputs[1])?;
        let rows = patch.wire_node(
            format!("{}.f16", gather_node.name),
            gather_op,
            &[half_table, indices],
        )?[0];
        let widened = patch.wire_node(
            format!("{}.to_f32", gather_node.name),
            cast(f32::datum_type()),
            &[rows],
        )?[0];
        patch.shunt_outside(model, OutletId::new(gather, 0), widened)?;
        patch.apply(model)?;
    }
    if saved > 0 {
        *model = model.clone().into_compact()?;
    }
    Ok(saved)
}
