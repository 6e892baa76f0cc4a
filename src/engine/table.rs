//! The text tower's word-embedding table, read from the model file row by row.
//!
//! The table is 250,002 x 768 f32 (768 MB), yet a batch reads a few dozen of its rows. Held in
//! memory it was the largest single cost of a ready server (384 MB even in f16, 768 MB while it
//! loaded). `onnx_file/` leaves it in the file and gives tract a two-row stand-in;
//! [`read_tables_in_place`] then replaces the `Gather` of that stand-in with a [`FileGather`],
//! which reads the rows a batch asks for with positioned reads (`pread`) of the file it keeps
//! open. The rows are the exported f32 values, bit for bit.
//!
//! The rows a server reads stay in the kernel's page cache, which is not the process's
//! resident memory and is given back under pressure: a query then pays a disk read per row it
//! misses (the file must stay where it is, which a model folder does).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::konst::Const;

use super::onnx_file::TableInFile;

/// `table[indices]` along axis 0, with the table's rows read from the model file.
#[derive(Debug, Clone)]
pub struct FileGather {
    table: Arc<TableInFile>,
}

impl PartialEq for FileGather {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }
}
impl Eq for FileGather {}

impl Hash for FileGather {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.table) as usize).hash(state);
    }
}

impl FileGather {
    /// The rows `indices` name (negative ones count from the end, as ONNX's `Gather` does),
    /// each read once however often it occurs (padding repeats one id hundreds of times).
    fn gather(&self, indices: &[i64]) -> TractResult<Vec<f32>> {
        let TableInFile {
            rows, cols, offset, ..
        } = *self.table;
        let mut out = vec![0f32; indices.len() * cols];
        let mut bytes = vec![0u8; cols * 4];
        let mut first_at: HashMap<usize, usize> = HashMap::new();
        for (i, &index) in indices.iter().enumerate() {
            let row = if index < 0 {
                index + rows as i64
            } else {
                index
            };
            let row = usize::try_from(row)
                .ok()
                .filter(|&r| r < rows)
                .ok_or_else(|| format_err!("index {index} is outside the table's {rows} rows"))?;
            let dst = i * cols;
            if let Some(&src) = first_at.get(&row) {
                out.copy_within(src..src + cols, dst);
                continue;
            }
            self.table
                .file
                .read_exact_at(&mut bytes, offset + (row * cols * 4) as u64)
                .with_context(|| format!("reading row {row} of {}", self.table.name))?;
            for (v, b) in out[dst..dst + cols].iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            first_at.insert(row, dst);
        }
        Ok(out)
    }
}

impl Op for FileGather {
    fn name(&self) -> StaticName {
        "FileGather".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} ({} x {}) at offset {}",
            self.table.name, self.table.rows, self.table.cols, self.table.offset
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FileGather {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let indices = args_1!(inputs);
        let indices = indices.cast_to::<i64>()?;
        let shape: TVec<usize> = indices
            .shape()
            .iter()
            .copied()
            .chain([self.table.cols])
            .collect();
        let indices: Vec<i64> = indices
            .to_plain_array_view::<i64>()?
            .iter()
            .copied()
            .collect();
        let rows = self.gather(&indices)?;
        let out: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), rows)?.into();
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for FileGather {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape: TVec<TDim> = inputs[0]
            .shape
            .iter()
            .cloned()
            .chain([self.table.cols.to_dim()])
            .collect();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Replaces the `Gather` of each table's stand-in with a [`FileGather`] of the table, and
/// drops the stand-in. Fails, naming the table, when a stand-in is not read by exactly one
/// gather of rows: the caller must then load the table instead, since the stand-in's two rows
/// are not the table.
pub fn read_tables_in_place(model: &mut TypedModel, tables: Vec<TableInFile>) -> TractResult<()> {
    for table in tables {
        // Typing may suffix the initializer's name (`name.0`).
        let named = |n: &str| {
            n.strip_prefix(table.name.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        let stand_ins: Vec<&TypedNode> = model
            .nodes
            .iter()
            .filter(|n| named(&n.name))
            .filter(|n| {
                n.op_as::<Const>()
                    .is_some_and(|c| c.val().shape() == [2, table.cols])
            })
            .collect();
        let [stand_in] = stand_ins.as_slice() else {
            bail!(
                "{} constants in the typed model stand in for {}",
                stand_ins.len(),
                table.name
            );
        };
        let succ = &stand_in.outputs[0].successors;
        let gather = match succ.as_slice() {
            [only] if only.slot == 0 => model.node(only.node),
            _ => bail!(
                "{} is read by {} ops, not one gather",
                table.name,
                succ.len()
            ),
        };
        let rows_of_table = gather
            .op_as::<Gather>()
            .is_some_and(|g| g.axis == 0 && g.output_type.is_none());
        if !rows_of_table {
            bail!(
                "{} is read by {}, not a gather of rows",
                table.name,
                gather.op.name()
            );
        }
        let (gather_id, gather_name, indices) = (gather.id, gather.name.clone(), gather.inputs[1]);
        let mut patch = TypedModelPatch::new(format!("{} read in place", table.name));
        let tapped = patch.tap_model(model, indices)?;
        let rows = patch.wire_node(
            format!("{gather_name}.in_file"),
            FileGather {
                table: Arc::new(table),
            },
            &[tapped],
        )?[0];
        patch.shunt_outside(model, OutletId::new(gather_id, 0), rows)?;
        patch.apply(model)?;
    }
    *model = model.clone().into_compact()?;
    Ok(())
}

/// Bytes of the tables the [`FileGather`] ops of `model` read from their files, each counted
/// once.
pub fn bytes_in_file(model: &TypedModel) -> usize {
    let mut seen = std::collections::HashSet::new();
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<FileGather>())
        .filter(|op| seen.insert(Arc::as_ptr(&op.table)))
        .map(|op| op.table.rows * op.table.cols * 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::onnx_file::{model_for_path, InPlace};
    use super::*;

    fn tiny_text() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny/textual/model.onnx")
    }

    fn typed(in_place: InPlace) -> (TypedModel, Vec<TableInFile>) {
        let (model, tables) = model_for_path(&tract_onnx::onnx(), &tiny_text(), in_place).unwrap();
        (
            model.into_typed().unwrap().into_decluttered().unwrap(),
            tables,
        )
    }

    #[test]
    fn the_tower_reading_its_table_from_the_file_gives_the_same_bits_as_the_loaded_table() {
        let (loaded, none) = typed(InPlace::Weights);
        assert!(none.is_empty());
        let (mut in_file, tables) = typed(InPlace::WeightsAndTables);
        assert_eq!(tables.len(), 1);
        read_tables_in_place(&mut in_file, tables).unwrap();
        assert_eq!(bytes_in_file(&in_file), 250_002 * 8 * 4);
        assert!(!in_file.nodes.iter().any(|n| n
            .op_as::<Const>()
            .is_some_and(|c| c.val().shape() == [2, 8])));
        // Ids from all over the vocabulary, padding repeated, the last row included.
        let ids: Vec<i64> = vec![
            0, 5, 17, 250_001, 12_345, 2, 1, 1, //
            0, 99_999, 200_000, 3, 3, 3, 2, 1,
        ];
        let input = tract_ndarray::Array2::from_shape_vec((2, 8), ids).unwrap();
        let run = |model: TypedModel| {
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let out = plan.run(tvec![Tensor::from(input.clone()).into()]).unwrap();
            out[0].clone().into_tensor()
        };
        let (a, b) = (run(loaded), run(in_file));
        assert_eq!(a.shape(), [2, 512]);
        assert_eq!(
            a, b,
            "embeddings differ between the loaded and the in-file table"
        );
    }

    #[test]
    fn rows_are_read_as_they_are_in_the_file_and_an_index_outside_the_table_is_an_error() {
        let (_, mut tables) = typed(InPlace::WeightsAndTables);
        let op = FileGather {
            table: Arc::new(tables.remove(0)),
        };
        let (whole, _) = tract_onnx::onnx()
            .model_for_path(tiny_text())
            .map(|m| (m, ()))
            .unwrap();
        let table = whole
            .nodes
            .iter()
            .find(|n| n.name == op.table.name)
            .and_then(|n| n.op_as::<tract_onnx::tract_hir::ops::konst::Const>())
            .map(|c| c.val().clone())
            .unwrap();
        let table = table.to_plain_array_view::<f32>().unwrap();
        let rows = op.gather(&[7, -1, 7, 250_000]).unwrap();
        for (i, row) in [7usize, 250_001, 7, 250_000].into_iter().enumerate() {
            let want: Vec<f32> = table.slice(tract_ndarray::s![row, ..]).to_vec();
            assert_eq!(rows[i * 8..(i + 1) * 8], want[..], "row {row}");
        }
        for bad in [250_002, -250_003, i64::MAX, i64::MIN] {
            let err = op.gather(&[1, bad]).unwrap_err();
            assert!(
                format!("{err}").contains("outside the table's 250002 rows"),
                "{bad}: {err}"
            );
        }
    }
}
