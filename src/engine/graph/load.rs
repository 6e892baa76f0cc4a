//! A tower's ONNX file read into a typed, decluttered tract model: the word-embedding table left
//! in the file (`table.rs`), and gathers of one row made slices (`narrow.rs`).

use std::path::Path;

use tract_onnx::prelude::*;

use super::super::narrow::{declutter_keeping_axes, narrow_scalar_gathers};
use super::super::onnx_file::{self, InPlace, TableInFile};
use super::super::table::{bytes_in_file, read_tables_in_place};

/// The file at `path` typed and decluttered, with output 0 its only output, and the bytes of the
/// tables its rows are read from rather than held; `None` when the graph has no inputs or no
/// outputs. The word-embedding table stays in the file (see `table.rs`); should its stand-in be
/// read by anything but one gather of rows, the file is read again with the table loaded.
pub(super) fn typed(path: &Path) -> TractResult<Option<(TypedModel, usize)>> {
    let Some((mut typed, tables)) = read(path, InPlace::WeightsAndTables)? else {
        return Ok(None);
    };
    if tables.is_empty() {
        return Ok(Some((typed, 0)));
    }
    if let Err(e) = read_tables_in_place(&mut typed, tables) {
        tracing::warn!(
            graph = %path.display(),
            error = %format!("{e:#}"),
            "cannot read the embedding table from the file; loading it"
        );
        drop(typed);
        let Some((loaded, _)) = read(path, InPlace::Weights)? else {
            return Ok(None);
        };
        return Ok(Some((loaded, 0)));
    }
    let in_file = bytes_in_file(&typed);
    Ok(Some((typed, in_file)))
}

/// One read of the file, leaving in it what `in_place` says.
fn read(path: &Path, in_place: InPlace) -> TractResult<Option<(TypedModel, Vec<TableInFile>)>> {
    let (mut model, tables) = onnx_file::model_for_path(
        &tract_onnx::onnx().with_ignore_output_shapes(true),
        path,
        in_place,
    )?;
    if model.inputs.is_empty() || model.outputs.is_empty() {
        return Ok(None);
    }
    // Bind input 0 and output 0 only: extra outputs (token states, say) are dropped.
    let out0 = model.outputs[0];
    model.select_output_outlets(&[out0])?;
    Ok(Some((model.into_typed()?.into_decluttered()?, tables)))
}

/// `typed` with its scalar-index gathers made slices and decluttered again, so that rows the
/// output never reads are not computed (see `narrow.rs`). Should that fail on some export, the
/// model is kept as it was: the rewrite saves time, it is never needed for a right answer.
pub(super) fn narrowed(typed: TypedModel, path: &Path) -> (TypedModel, usize) {
    let mut model = typed.clone();
    let rewritten = narrow_scalar_gathers(&mut model).and_then(|n| {
        if n > 0 {
            declutter_keeping_axes(&mut model)?;
        }
        Ok((n, model))
    });
    match rewritten {
        Ok((0, _)) => (typed, 0),
        Ok((rewritten, model)) => {
            tracing::debug!(graph = %path.display(), rewritten, "scalar gathers made slices");
            (model, rewritten)
        }
        Err(e) => {
            tracing::warn!(
                graph = %path.display(),
                error = %format!("{e:#}"),
                "could not narrow the graph to the rows its output reads; running it whole"
            );
            (typed, 0)
        }
    }
}
