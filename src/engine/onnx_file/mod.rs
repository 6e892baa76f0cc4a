//! Reads an ONNX file without holding its weights twice.
//!
//! tract-onnx decodes the whole protobuf first (a copy of every weight, next to the mapped
//! file) and then makes a tensor of each weight (a second copy): for the 1.1 GB text tower
//! that put the start-up peak at 2.5 GB. Here the file is walked at the protobuf wire level
//! and copied without the raw data of its large initializers, each of which becomes an
//! external-data reference to its own bytes in the same file (ONNX's `data_location =
//! EXTERNAL`, with `location`, `offset` and `length`). tract then reads the weights one by one
//! as it makes the tensors, so the peak is the weights once plus the largest of them
//! (measured on the full-size model: start-up peak 2500 -> 2026 MB, bench/RESULTS.md).
//!
//! Embedding tables go further: a large 2-D f32 initializer that the graph only gathers rows
//! from (the text tower's word-embedding table, 250,002 x 768, 768 MB) is never read at all.
//! tract gets a two-row stand-in of it, and [`TableInFile`] records where its rows lie in the
//! file, so that `table.rs` can swap the gather for one that reads the rows a batch asks for
//! from the file (see there).
//!
//! Only the model's graph and the graph's initializers are rewritten; everything else (nodes,
//! attributes, subgraphs, metadata) is copied byte for byte (the graph's initializers move
//! after its other fields, which protobuf allows).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::model::ParseResult;
use tract_onnx::prelude::*;

mod message;

use message::{count_uses, tensor_header, Uses};

/// Initializers whose raw data is at least this long are read from the file in place.
const IN_PLACE_MIN_BYTES: u64 = 4096;

/// Gathered-only tables at least this large are left in the file (the tiny test model's word
/// table is 8 MB, the full one 768 MB; position tables, 1.5 MB, stay in memory).
const TABLE_MIN_BYTES: u64 = 4 << 20;

/// Field numbers of onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
const NODE_INPUT: u64 = 1;
const NODE_OP_TYPE: u64 = 4;
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_FLOAT: u64 = 1;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const DATA_LOCATION_EXTERNAL: u64 = 1;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// An embedding table left in the model file: tract holds a two-row stand-in of it, named
/// `name`, and the rows are read from `file` as they are gathered.
#[derive(Debug, Clone)]
pub struct TableInFile {
    /// The initializer's name (the name of the stand-in constant in tract's model).
    pub name: String,
    /// The model file, open since the walk, so a file replaced on disk later cannot shift
    /// the rows under us.
    pub file: Arc<File>,
    /// Where row 0 starts in the file.
    pub offset: u64,
    /// Rows (the vocabulary size).
    pub rows: usize,
    /// f32 values per row (the embedding width).
    pub cols: usize,
}

/// What [`model_for_path`] leaves in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InPlace {
    /// Large initializers are read as tract makes their tensors; gathered-only tables stay in
    /// the file for good.
    WeightsAndTables,
    /// Large initializers are read as tract makes their tensors; every table is loaded.
    Weights,
}

/// Loads `path` with its large initializers left in the file until tract makes their tensors,
/// and (with [`InPlace::WeightsAndTables`]) its embedding tables left there for good: their
/// stand-ins must then be replaced (`table.rs`) before the model runs. A file the walk cannot
/// follow is handed to tract as a whole, so its error is tract's.
pub fn model_for_path(
    onnx: &tract_onnx::Onnx,
    path: &Path,
    in_place: InPlace,
) -> TractResult<(InferenceModel, Vec<TableInFile>)> {
    let path = path
        .canonicalize()
        .map_err(|e| TractError::msg(format!("Opening {path:?}: {e}")))?;
    // tract resolves external data from a UTF-8 directory and a UTF-8 file name.
    let dir = path.parent().and_then(|d| d.to_str());
    let name = path.file_name().and_then(|n| n.to_str());
    let (Some(dir), Some(name)) = (dir, name) else {
        return Ok((onnx.model_for_path(&path)?, Vec::new()));
    };
    let (skeleton, tables) = match skeleton(&path, name, in_place) {
        Ok(walked) => walked,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "ONNX walk failed; tract reads the file");
            return Ok((onnx.model_for_path(&path)?, Vec::new()));
        }
    };
    tracing::debug!(
        path = %path.display(),
        skeleton_kb = skeleton.len() >> 10,
        tables = tables.len(),
        "ONNX weights left in the file"
    );
    let proto = onnx.proto_model_for_read(&mut skeleton.as_slice())?;
    drop(skeleton);
    let ParseResult {
        model,
        unresolved_inputs,
        ..
    } = onnx.parse(&proto, Some(dir))?;
    if !unresolved_inputs.is_empty() {
        return Err(TractError::msg(format!(
            "Could not resolve inputs at top-level: {unresolved_inputs:?}"
        )));
    }
    Ok((model, tables))
}

/// The file's ModelProto with each large initializer's raw data replaced by a reference to
/// where it lies in the file named `name`, and each table left in the file replaced by a
/// two-row stand-in.
fn skeleton(path: &Path, name: &str, in_place: InPlace) -> io::Result<(Vec<u8>, Vec<TableInFile>)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let table_file = Arc::new(file.try_clone()?);
    let mut walk = Walk {
        r: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        name,
        tables_in_file: in_place == InPlace::WeightsAndTables,
        file: table_file,
        tables: Vec::new(),
    };
    let mut out = Vec::new();
    walk.message(len, Kind::Model, &mut out)?;
    Ok((out, walk.tables))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Model,
    Graph,
    Tensor,
    /// Any other message: copied as it is.
    Opaque,
}

struct Walk<'a> {
    r: BufReader<File>,
    pos: u64,
    name: &'a str,
    /// Whether gathered-only tables are left in the file for good.
    tables_in_file: bool,
    /// The file again, for the tables' readers.
    file: Arc<File>,
    /// Tables left in the file so far.
    tables: Vec<TableInFile>,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Walk<'_> {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> io::Result<u64> {
        message::varint_from(|| self.byte())
    }

    fn copy(&mut self, n: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.r).take(n), out)?;
        self.pos += copied;
        if copied != n {
            return Err(malformed("field runs past the end of the file"));
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| malformed("field too long"))?;
        self.r.seek_relative(n)?;
        self.pos += n as u64;
        Ok(())
    }

    /// Copies the message that ends at `end` into `out`, rewriting what `kind` calls for.
    fn message(&mut self, end: u64, kind: Kind, out: &mut Vec<u8>) -> io::Result<()> {
        let mut in_place: Option<(u64, u64)> = None;
        // A graph's initializers, written after its other fields once every node's inputs
        // are known, and how its nodes use each value.
        let mut initializers: Vec<Vec<u8>> = Vec::new();
        let mut uses: HashMap<String, Uses> = HashMap::new();
        let mut subgraphs = false;
        while self.pos < end {
            let key = self.varint()?;
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                WIRE_VARINT => {
                    let v = self.varint()?;
                    put_varint(out, key);
                    put_varint(out, v);
                }
                WIRE_FIXED64 | WIRE_FIXED32 => {
                    put_varint(out, key);
                    self.copy(if wire == WIRE_FIXED64 { 8 } else { 4 }, out)?;
                }
                WIRE_LEN => {
                    let len = self.varint()?;
                    let inner_end = self
                        .pos
                        .checked_add(len)
                        .filter(|&e| e <= end)
                        .ok_or_else(|| malformed("field runs past its message"))?;
                    let inner = match (kind, field) {
                        (Kind::Model, MODEL_GRAPH) => Kind::Graph,
                        (Kind::Graph, GRAPH_INITIALIZER) => Kind::Tensor,
                        _ => Kind::Opaque,
                    };
                    if kind == Kind::Tensor && field == TENSOR_RAW_DATA && len >= IN_PLACE_MIN_BYTES
                    {
                        in_place = Some((self.pos, len));
                        self.skip(len)?;
                    } else if kind == Kind::Graph && field == GRAPH_NODE {
                        let mut node = Vec::new();
                        self.copy(len, &mut node)?;
                        subgraphs |= count_uses(&node, &mut uses)?;
                        put_varint(out, key);
                        put_varint(out, len);
                        out.extend_from_slice(&node);
                    } else if inner == Kind::Opaque {
                        put_varint(out, key);
                        put_varint(out, len);
                        self.copy(len, out)?;
                    } else {
                        let mut sub = Vec::new();
                        self.message(inner_end, inner, &mut sub)?;
                        if inner == Kind::Tensor && kind == Kind::Graph {
                            initializers.push(sub);
                        } else {
                            put_varint(out, key);
                            put_varint(out, sub.len() as u64);
                            out.extend_from_slice(&sub);
                        }
                    }
                }
                _ => return Err(malformed("unsupported protobuf wire type")),
            }
        }
        if self.pos != end {
            return Err(malformed("message runs past its end"));
        }
        for tensor in initializers {
            // A subgraph (If, Loop, Scan) may read any value without the walk seeing it.
            let tensor = if self.tables_in_file && !subgraphs {
                self.table_stand_in(tensor, &uses)?
            } else {
                tensor
            };
            put_varint(out, GRAPH_INITIALIZER << 3 | WIRE_LEN);
            put_varint(out, tensor.len() as u64);
            out.extend_from_slice(&tensor);
        }
        if let Some((offset, len)) = in_place {
            put_in_file(out, self.name, offset, len);
        }
        Ok(())
    }

    /// `tensor` (an initializer as the walk copied it) or, when it is a large f32 matrix the
    /// graph only gathers rows from, a stand-in of its first two rows, with the table recorded
    /// in `self.tables`.
    fn table_stand_in(
        &mut self,
        tensor: Vec<u8>,
        uses: &HashMap<String, Uses>,
    ) -> io::Result<Vec<u8>> {
        let header = tensor_header(&tensor, self.name)?;
        let gathered_only = uses
            .get(&header.name)
            .is_some_and(|u| u.gathered > 0 && u.other == 0);
        let (&[rows, cols], Some((offset, len))) = (header.dims.as_slice(), header.in_file) else {
            return Ok(tensor);
        };
        let table = gathered_only
            && header.data_type == TENSOR_FLOAT
            && rows >= 2
            && len >= TABLE_MIN_BYTES
            && rows.checked_mul(cols).and_then(|n| n.checked_mul(4)) == Some(len);
        if !table {
            return Ok(tensor);
        }
        let mut stand_in = Vec::new();
        for d in [2, cols] {
            put_varint(&mut stand_in, TENSOR_DIMS << 3 | WIRE_VARINT);
            put_varint(&mut stand_in, d);
        }
        put_varint(&mut stand_in, TENSOR_DATA_TYPE << 3 | WIRE_VARINT);
        put_varint(&mut stand_in, TENSOR_FLOAT);
        put_string(&mut stand_in, TENSOR_NAME, &header.name);
        put_in_file(&mut stand_in, self.name, offset, 2 * cols * 4);
        let too_large = || malformed("table larger than this machine's address space");
        self.tables.push(TableInFile {
            name: header.name,
            file: self.file.clone(),
            offset,
            rows: usize::try_from(rows).map_err(|_| too_large())?,
            cols: usize::try_from(cols).map_err(|_| too_large())?,
        });
        Ok(stand_in)
    }
}

/// Appends the fields that make a TensorProto's raw data the `len` bytes at `offset` of the
/// file `location` (beside the model).
fn put_in_file(out: &mut Vec<u8>, location: &str, offset: u64, len: u64) {
    put_varint(out, TENSOR_DATA_LOCATION << 3 | WIRE_VARINT);
    put_varint(out, DATA_LOCATION_EXTERNAL);
    for (k, v) in [
        ("location", location.to_string()),
        ("offset", offset.to_string()),
        ("length", len.to_string()),
    ] {
        let mut entry = Vec::new();
        put_string(&mut entry, 1, k);
        put_string(&mut entry, 2, &v);
        put_varint(out, TENSOR_EXTERNAL_DATA << 3 | WIRE_LEN);
        put_varint(out, entry.len() as u64);
        out.extend_from_slice(&entry);
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_string(out: &mut Vec<u8>, field: u64, s: &str) {
    put_varint(out, field << 3 | WIRE_LEN);
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests;
