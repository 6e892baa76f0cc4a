//! One tower's ONNX graph in tract: its input facts (which axes are fixed, which symbolic) and
//! the runnable plans built from it.
//!
//! The file is parsed once, typed and decluttered once, and a gather of one row (the image
//! tower's class token) becomes a slice, so that the ops above it compute only that row (see
//! `narrow.rs`). With [`Arithmetic::Bf16`], the products by weight matrices and the attention's
//! products of two activations then become bf16 ops of our own (see `ops/`, which also holds
//! the norms, softmaxes, sums, adds and multiplies that replace tract's); with
//! [`Arithmetic::F32`] on a CPU with AVX-512, the products by weight matrices become f32 ops of
//! our own; with [`Arithmetic::Int8`] or [`Arithmetic::Int16`] on a CPU with AVX512-VNNI, the
//! blocks' products by weight matrices become integer ones and the rest f32 ones. From that model:
//! - a graph with fixed shapes (immich's static export) gets one plan, and every run uses it;
//! - a graph with symbolic batch (and sequence) axes gets one plan per configured bucket, made by
//!   binding the symbols to concrete values and optimizing (tract picks faster kernels for
//!   concrete shapes), plus, unless every shape is covered by buckets, one plan that keeps the
//!   symbols and runs any shape.
//!
//! Optimization packs each weight for the kernel it picked; [`WeightPool`] then makes plans
//! that packed a weight the same way share one copy, so plans cost memory only where their
//! kernels differ (see `weights.rs`). The word-embedding table stays in the model file and its
//! rows are read as they are gathered (see `table.rs`); a table that cannot is stored in f16.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;
use tract_onnx::prelude::*;

use super::narrow::declutter_keeping_axes;
use super::precision::Arithmetic;
use super::weights::{half_embedding_tables, matmul_kernels, WeightPool};

mod load;
mod schedule;

pub use schedule::Run;

/// A plan tract can run.
pub type Plan = Arc<TypedRunnableModel>;

/// An axis of input 0: fixed by the graph, or free (a symbol).
#[derive(Debug, Clone, PartialEq)]
pub enum Axis {
    /// The graph only accepts this size.
    Fixed(usize),
    /// The graph accepts any size; the symbol is bound per plan.
    Symbolic(Symbol),
}

impl Axis {
    fn of(dim: &TDim) -> Option<Axis> {
        match dim {
            TDim::Val(v) => usize::try_from(*v).ok().map(Axis::Fixed),
            TDim::Sym(s) => Some(Axis::Symbolic(s.clone())),
            _ => None,
        }
    }

    /// The size the graph requires, if any.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Axis::Fixed(n) => Some(*n),
            Axis::Symbolic(_) => None,
        }
    }
}

/// A graph that could not be loaded or run.
#[derive(Debug, Error)]
pub enum GraphError {
    /// tract could not read, type or optimize the file.
    #[error("{path}: {message}")]
    Load {
        /// The ONNX file.
        path: PathBuf,
        /// tract's error chain.
        message: String,
    },
    /// The graph's inputs or outputs do not fit the model folder contract.
    #[error("{path}: {what}")]
    Contract {
        /// The ONNX file.
        path: PathBuf,
        /// Which fact did not fit, and how.
        what: String,
    },
    /// A run failed inside tract.
    #[error("inference failed: {0}")]
    Run(String),
}

/// Which concrete shapes get a plan of their own.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    /// Batch sizes (axis 0) to specialize for; empty keeps only the symbolic plan.
    pub batch: Vec<usize>,
    /// Sequence lengths (axis 1 of the text graph) to specialize for.
    pub seq: Vec<usize>,
}

/// A loaded tower graph with its plans.
pub struct Graph {
    path: PathBuf,
    input_type: DatumType,
    input_shape: Vec<Axis>,
    output_dim: usize,
    /// Plans for concrete shapes, keyed by (batch, seq) (seq is 0 for the image graph).
    fixed: BTreeMap<(usize, usize), Plan>,
    /// The plan that runs any shape, when some axis is symbolic and not fully bucketed.
    symbolic: Option<Plan>,
    /// Bytes of distinct constants across the plans.
    weight_bytes: usize,
    /// Scalar-index gathers made slices, so that only the rows they read are computed.
    narrowed: usize,
    /// What the products by weights run in.
    arithmetic: Arithmetic,
    /// Products rewritten as ops of our own, and what they absorbed (`super::ops::rewrite`).
    rewritten: super::ops::Rewritten,
    /// Bytes the word-embedding table saved by being stored in f16.
    halved: usize,
    /// Bytes of the word-embedding table read from the file rather than held.
    in_file: usize,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("path", &self.path)
            .field("input_type", &self.input_type)
            .field("input_shape", &self.input_shape)
            .field("output_dim", &self.output_dim)
            .field("fixed_plans", &self.fixed.keys().collect::<Vec<_>>())
            .field("symbolic_plan", &self.symbolic.is_some())
            .finish()
    }
}

/// A tower's graph read, typed, decluttered, narrowed and checked against the contract, with
/// its word-embedding table left in the file (or, failing that, halved): the f32 model that the
/// plans of either arithmetic are built from ([`Graph::build`]), so a tower can be built twice
/// (f32, then a lossy arithmetic) from one read of its file.
pub struct Prepared {
    path: PathBuf,
    typed: TypedModel,
    input_type: DatumType,
    input_shape: Vec<Axis>,
    output_dim: usize,
    narrowed: usize,
    halved: usize,
    in_file: usize,
}

impl Prepared {
    /// The ONNX file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Element type of input 0.
    pub fn input_type(&self) -> DatumType {
        self.input_type
    }

    /// The f32 model, for inspection.
    pub fn typed(&self) -> &TypedModel {
        &self.typed
    }

    /// The axes of input 0.
    pub fn input_shape(&self) -> &[Axis] {
        &self.input_shape
    }
}

impl Graph {
    /// Loads `path` and checks input 0 has `rank` axes and output 0 is `[N, D]` float32, ready
    /// for [`Graph::build`].
    pub fn prepare(path: &Path, rank: usize) -> Result<Prepared, GraphError> {
        let load_err = |e: TractError| GraphError::Load {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let contract = |what: String| GraphError::Contract {
            path: path.to_path_buf(),
            what,
        };
        let (typed, in_file) = load::typed(path)
            .map_err(load_err)?
            .ok_or_else(|| contract("the graph has no inputs or no outputs".into()))?;
        let (mut typed, narrowed) = load::narrowed(typed, path);
        // Before any plan, so that both arithmetics share the one f16 table and the f32 one
        // is freed now rather than held while the plans are built. Only a table that could
        // not stay in the file is left to halve.
        let halved = half_embedding_tables(&mut typed).map_err(load_err)?;

        let input = typed.input_fact(0).map_err(load_err)?;
        let input_type = input.datum_type;
        let input_shape: Vec<Axis> = input
            .shape
            .iter()
            .map(Axis::of)
            .collect::<Option<_>>()
            .ok_or_else(|| {
                contract(format!(
                    "input 0 has an unsupported shape {:?}",
                    input.shape
                ))
            })?;
        if input_shape.len() != rank {
            return Err(contract(format!(
                "input 0 has {} axes, expected {rank} (shape {:?})",
                input_shape.len(),
                input.shape
            )));
        }
        let output = typed.output_fact(0).map_err(load_err)?;
        if output.datum_type != f32::datum_type() {
            return Err(contract(format!(
                "output 0 is {:?}, expected float32",
                output.datum_type
            )));
        }
        let output_dim = match output.shape.iter().collect::<Vec<_>>().as_slice() {
            [_, d] => d
                .to_i64()
                .ok()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| contract(format!("output 0 has a symbolic width {d}")))?,
            _ => {
                return Err(contract(format!(
                    "output 0 has shape {:?}, expected [N, D]",
                    output.shape
                )))
            }
        };
        Ok(Prepared {
            path: path.to_path_buf(),
            typed,
            input_type,
            input_shape,
            output_dim,
            narrowed,
            halved,
            in_file,
        })
    }

    /// Builds the plans for `buckets` from `prepared`, with the products by weight matrices in
    /// `arithmetic` (bf16 ones are made only where the CPU has AVX512-BF16, int8 and int16 ones
    /// where it has AVX512-VNNI, f32 ones of our own where it has AVX-512, tract's elsewhere;
    /// see `ops/`).
    /// `seq_cap` bounds the sequence buckets (the context length).
    pub fn build(
        prepared: &Prepared,
        buckets: &Buckets,
        seq_cap: usize,
        arithmetic: Arithmetic,
    ) -> Result<Graph, GraphError> {
        let path = &prepared.path;
        let mut typed = prepared.typed.clone();
        // A lossy arithmetic never on a CPU without the instructions (the choice in `precision/`
        // checks it first); f32 products of our own where the CPU has AVX-512, else tract's.
        let rewritten =
            super::ops::rewrite(&mut typed, arithmetic).map_err(|e| GraphError::Load {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        if rewritten.by_weights + rewritten.of_activations > 0 {
            tracing::info!(
                graph = %path.display(),
                arithmetic = arithmetic.as_str(),
                by_weights = rewritten.by_weights,
                of_activations = rewritten.of_activations,
                biases_fused = rewritten.biases,
                gelus_fused = rewritten.gelus,
                bf16_handoffs = rewritten.handoffs,
                norms_fused = rewritten.norms,
                layer_norms = rewritten.layer_norms,
                row_softmaxes = rewritten.softmaxes,
                row_sums = rewritten.sums,
                "products by weights rewritten"
            );
        }
        let mut graph = Graph {
            path: path.clone(),
            input_type: prepared.input_type,
            input_shape: prepared.input_shape.clone(),
            output_dim: prepared.output_dim,
            fixed: BTreeMap::new(),
            symbolic: None,
            weight_bytes: 0,
            narrowed: prepared.narrowed,
            arithmetic,
            rewritten,
            halved: prepared.halved,
            in_file: prepared.in_file,
        };
        graph.build_plans(typed, buckets, seq_cap)?;
        Ok(graph)
    }

    fn build_plans(
        &mut self,
        typed: TypedModel,
        buckets: &Buckets,
        seq_cap: usize,
    ) -> Result<(), GraphError> {
        let load_err = |e: TractError| GraphError::Load {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        let started = Instant::now();
        // Held by our ops themselves, outside tract's constants, shared by every plan.
        let own_bytes = super::ops::weight_bytes(&typed);
        let batch_axis = self.input_shape[0].clone();
        let seq_axis = if self.is_text() {
            Some(self.input_shape[1].clone())
        } else {
            None
        };
        let batch_sizes: Vec<usize> = match &batch_axis {
            Axis::Fixed(n) => vec![*n],
            Axis::Symbolic(_) => buckets.batch.clone(),
        };
        let seq_sizes: Vec<usize> = match &seq_axis {
            None => vec![0],
            Some(Axis::Fixed(s)) => vec![*s],
            Some(Axis::Symbolic(_)) => buckets.seq.iter().map(|&s| s.min(seq_cap)).collect(),
        };
        let mut pool = WeightPool::default();
        let path = self.path.clone();
        let mut build = |model: TypedModel, shape: (usize, usize)| -> TractResult<Plan> {
            // Binding symbols lets declutter fold more, but the axes were laid out once, on
            // the symbolic model (see `narrow.rs`).
            let mut optimized = model;
            declutter_keeping_axes(&mut optimized)?;
            // With the shapes bound: the attention's products read their operands in place.
            let in_place = super::ops::fold_views(&mut optimized)?;
            // Before tract's own codegen, which leaves a symbolic plan's ones generic.
            let elementwise = super::ops::elementwise_ops(&mut optimized)?;
            optimized.optimize()?;
            let added = pool.share(&mut optimized)?;
            tracing::debug!(
                graph = %path.display(),
                ?shape,
                new_weights_mb = added >> 20,
                operands_in_place = in_place,
                elementwise,
                kernels = ?matmul_kernels(&optimized),
                "plan built"
            );
            optimized.into_runnable()
        };
        for &b in &batch_sizes {
            for &s in &seq_sizes {
                let mut subs = std::collections::HashMap::new();
                if let Axis::Symbolic(sym) = &batch_axis {
                    subs.insert(sym.clone(), TDim::Val(b as i64));
                }
                if let Some(Axis::Symbolic(sym)) = &seq_axis {
                    subs.insert(sym.clone(), TDim::Val(s as i64));
                }
                let bound = if subs.is_empty() {
                    typed.clone()
                } else {
                    typed.set_symbols(&subs).map_err(load_err)?
                };
                self.fixed
                    .insert((b, s), build(bound, (b, s)).map_err(load_err)?);
            }
        }
        // Buckets cover every request only if any batch can be made of them (a bucket of 1)
        // and the longest text fits one; otherwise keep a plan that runs any shape.
        let batches_covered = match &batch_axis {
            Axis::Fixed(_) => true,
            Axis::Symbolic(_) => buckets.batch.contains(&1),
        };
        let seqs_covered = match &seq_axis {
            None | Some(Axis::Fixed(_)) => true,
            Some(Axis::Symbolic(_)) => seq_sizes.iter().any(|&s| s >= seq_cap),
        };
        if self.fixed.is_empty() || !(batches_covered && seqs_covered) {
            self.symbolic = Some(build(typed, (0, 0)).map_err(load_err)?);
        }
        self.weight_bytes = pool.held + own_bytes;
        tracing::info!(
            graph = %self.path.display(),
            plans = self.fixed.len() + usize::from(self.symbolic.is_some()),
            weights_mb = pool.held >> 20,
            own_weights_mb = own_bytes >> 20,
            shared_mb = pool.deduplicated >> 20,
            f16_table_saved_mb = self.halved >> 20,
            table_in_file_mb = self.in_file >> 20,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plans built"
        );
        Ok(())
    }

    /// How many gathers of one row were made slices, so that the ops above them compute only
    /// that row (1 for an OpenCLIP image tower: its class token; see `narrow.rs`).
    pub fn narrowed(&self) -> usize {
        self.narrowed
    }

    /// What the products by weight matrices run in.
    pub fn arithmetic(&self) -> Arithmetic {
        self.arithmetic
    }

    /// What runs in ops of our own (`super::ops::rewrite`), in [`Self::arithmetic`]: products,
    /// and what they absorbed. All zero for a graph left to tract (f32 on a CPU without
    /// AVX-512).
    pub fn rewritten(&self) -> super::ops::Rewritten {
        self.rewritten
    }

    /// Bytes of constants (weights, packed for their kernels) the plans hold, each counted once.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn is_text(&self) -> bool {
        self.input_shape.len() == 2
    }

    /// The ONNX file this graph came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Element type of input 0 (f32 for images; i32 or i64 for token ids).
    pub fn input_type(&self) -> DatumType {
        self.input_type
    }

    /// The axes of input 0.
    pub fn input_shape(&self) -> &[Axis] {
        &self.input_shape
    }

    /// Width of output 0 (the embedding dimension).
    pub fn output_dim(&self) -> usize {
        self.output_dim
    }

    /// The concrete shapes that have a plan of their own.
    pub fn plan_shapes(&self) -> Vec<(usize, usize)> {
        self.fixed.keys().copied().collect()
    }

    /// The batch sizes the plans run without padding, ascending, when every plan is of a fixed
    /// batch size; empty when a plan runs any batch size.
    pub fn batch_sizes(&self) -> Vec<usize> {
        if self.symbolic.is_some() {
            return Vec::new();
        }
        self.fixed_batches()
    }

    /// The batch sizes of the fixed plans, ascending (the map is ordered by batch, then length).
    fn fixed_batches(&self) -> Vec<usize> {
        let mut batches: Vec<usize> = self.fixed.keys().map(|(b, _)| *b).collect();
        batches.dedup();
        batches
    }

    /// Runs one plan on a prepared input tensor and returns output 0 as rows of width D.
    pub fn run(&self, plan: &Plan, input: Tensor) -> Result<Vec<Vec<f32>>, GraphError> {
        let outputs = plan
            .run(tvec![input.into()])
            .map_err(|e| GraphError::Run(format!("{e:#}")))?;
        let out = outputs
            .first()
            .ok_or_else(|| GraphError::Run("the graph returned no output".into()))?;
        let view = out
            .to_plain_array_view::<f32>()
            .map_err(|e| GraphError::Run(format!("{e:#}")))?;
        let shape = view.shape().to_vec();
        if shape.len() != 2 || shape[1] != self.output_dim {
            return Err(GraphError::Run(format!(
                "output 0 has shape {shape:?}, expected [N, {}]",
                self.output_dim
            )));
        }
        Ok(view
            .outer_iter()
            .map(|row| row.iter().copied().collect())
            .collect())
    }
}
