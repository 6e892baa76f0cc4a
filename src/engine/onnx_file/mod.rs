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

/// How a graph's nodes read one value.
#[derive(Default)]
struct Uses {
    /// As the data input of a `Gather` (a table whose rows are looked up).
    gathered: usize,
    /// Any other way.
    other: usize,
}

/// What the walk reads of one initializer it copied (without its raw data).
struct TensorHeader {
    name: String,
    dims: Vec<u64>,
    data_type: u64,
    /// Offset and length of its raw data in the model file, when the walk left it there.
    in_file: Option<(u64, u64)>,
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
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
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

/// One field of a protobuf message held in memory.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads a varint from the front of `bytes` and moves past it.
fn varint(bytes: &mut &[u8]) -> io::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes
            .split_first()
            .ok_or_else(|| malformed("message ends inside a varint"))?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

/// The fields of a message held in memory (a node, or an initializer without its raw data).
fn fields(mut bytes: &[u8]) -> io::Result<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            WIRE_VARINT => Field::Varint(varint(&mut bytes)?),
            WIRE_FIXED64 | WIRE_FIXED32 => {
                let n = if wire == WIRE_FIXED64 { 8 } else { 4 };
                bytes = bytes
                    .get(n..)
                    .ok_or_else(|| malformed("message ends inside a field"))?;
                Field::Fixed
            }
            WIRE_LEN => {
                let n = usize::try_from(varint(&mut bytes)?)
                    .ok()
                    .filter(|&n| n <= bytes.len())
                    .ok_or_else(|| malformed("field runs past its message"))?;
                let (value, rest) = bytes.split_at(n);
                bytes = rest;
                Field::Bytes(value)
            }
            _ => return Err(malformed("unsupported protobuf wire type")),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn utf8(bytes: &[u8]) -> io::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a name is not UTF-8"))
}

/// Adds the values a NodeProto reads to `uses`; true when the node holds a subgraph.
fn count_uses(node: &[u8], uses: &mut HashMap<String, Uses>) -> io::Result<bool> {
    let fields = fields(node)?;
    let op_type = fields.iter().find_map(|(f, v)| match v {
        Field::Bytes(b) if *f == NODE_OP_TYPE => Some(*b),
        _ => None,
    });
    let inputs = fields.iter().filter_map(|(f, v)| match v {
        Field::Bytes(b) if *f == NODE_INPUT => Some(*b),
        _ => None,
    });
    for (slot, input) in inputs.enumerate() {
        let u = uses.entry(utf8(input)?).or_default();
        if op_type == Some(b"Gather".as_slice()) && slot == 0 {
            u.gathered += 1;
        } else {
            u.other += 1;
        }
    }
    Ok(matches!(
        op_type,
        Some(b"If" | b"Loop" | b"Scan" | b"SequenceMap")
    ))
}

/// The name, shape, element type and place in the model file `location` of an initializer the
/// walk copied (raw data that an export put in another file is not "in the file").
fn tensor_header(tensor: &[u8], location: &str) -> io::Result<TensorHeader> {
    let mut header = TensorHeader {
        name: String::new(),
        dims: Vec::new(),
        data_type: 0,
        in_file: None,
    };
    let (mut offset, mut length, mut here) = (None, None, false);
    for (field, value) in fields(tensor)? {
        match (field, value) {
            (TENSOR_DIMS, Field::Varint(d)) => header.dims.push(d),
            (TENSOR_DIMS, Field::Bytes(mut packed)) => {
                while !packed.is_empty() {
                    header.dims.push(varint(&mut packed)?);
                }
            }
            (TENSOR_DATA_TYPE, Field::Varint(t)) => header.data_type = t,
            (TENSOR_NAME, Field::Bytes(n)) => header.name = utf8(n)?,
            (TENSOR_EXTERNAL_DATA, Field::Bytes(entry)) => {
                let (mut k, mut v) = (None, None);
                for (f, x) in fields(entry)? {
                    match (f, x) {
                        (1, Field::Bytes(b)) => k = Some(b),
                        (2, Field::Bytes(b)) => v = Some(b),
                        _ => {}
                    }
                }
                let v = v.and_then(|v| std::str::from_utf8(v).ok());
                let number = v.and_then(|v| v.parse::<u64>().ok());
                match k {
                    Some(b"location") => here = v == Some(location),
                    Some(b"offset") => offset = number,
                    Some(b"length") => length = number,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    header.in_file = offset.zip(length).filter(|_| here);
    Ok(header)
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
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::konst::Const;

    fn consts(model: InferenceModel) -> Vec<(String, Arc<Tensor>)> {
        let typed = model.into_typed().unwrap();
        let mut out: Vec<_> = typed
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.op_as::<Const>()?.val().clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_weights_read_in_place_equal_the_ones_tract_decodes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
        for tower in ["textual", "visual"] {
            let path = root.join(tower).join("model.onnx");
            let onnx = tract_onnx::onnx();
            let (skeleton, _) = skeleton(&path, "model.onnx", InPlace::Weights).unwrap();
            let file_len = std::fs::metadata(&path).unwrap().len() as usize;
            assert!(
                skeleton.len() * 4 < file_len,
                "{tower}: the skeleton ({} bytes) still holds the weights ({file_len})",
                skeleton.len()
            );
            let (ours, tables) = model_for_path(&onnx, &path, InPlace::Weights).unwrap();
            assert!(tables.is_empty());
            let ours = consts(ours);
            let theirs = consts(onnx.model_for_path(&path).unwrap());
            assert_eq!(ours.len(), theirs.len());
            assert!(ours.len() > 10, "{tower}: {} constants", ours.len());
            for ((na, a), (nb, b)) in ours.iter().zip(&theirs) {
                assert_eq!(na, nb);
                assert_eq!(a, b, "{tower}: constant {na} differs");
            }
        }
    }

    #[test]
    fn only_the_word_embedding_table_stays_in_the_file_and_its_stand_in_is_its_first_rows() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
        let onnx = tract_onnx::onnx();
        let text = root.join("textual/model.onnx");
        let (model, tables) = model_for_path(&onnx, &text, InPlace::WeightsAndTables).unwrap();
        let [table] = tables.as_slice() else {
            panic!("expected one table in the file, got {tables:?}");
        };
        assert_eq!(
            table.name,
            "text.transformer.embeddings.word_embeddings.weight"
        );
        assert_eq!((table.rows, table.cols), (250_002, 8));
        let ours = consts(model);
        let theirs = consts(onnx.model_for_path(&text).unwrap());
        assert_eq!(ours.len(), theirs.len());
        for ((na, a), (nb, b)) in ours.iter().zip(&theirs) {
            assert_eq!(na, nb);
            if na.starts_with(&table.name) {
                assert_eq!(a.shape(), [2, 8]);
                assert_eq!(
                    **a,
                    b.slice(0, 0, 2).unwrap(),
                    "the stand-in is not rows 0-1"
                );
            } else {
                assert_eq!(a, b, "constant {na} differs");
            }
        }
        // The position table (514 x 8) is gathered too, but small: it stays in memory.
        let visual = root.join("visual/model.onnx");
        let (_, tables) = model_for_path(&onnx, &visual, InPlace::WeightsAndTables).unwrap();
        assert!(tables.is_empty(), "{tables:?}");
    }

    /// An ONNX file whose output gathers rows of a `rows` x 16 table by the ids of its input;
    /// `also` adds a node of that op type that reads the table too (its output unused).
    fn gather_model(dir: &Path, rows: usize, also: Option<&str>) -> std::path::PathBuf {
        use prost::Message;
        use tract_onnx::pb::*;
        let value = |name: &str, elem_type: i32, dims: &[&str]| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| tensor_shape_proto::Dimension {
                                value: Some(match d.parse::<i64>() {
                                    Ok(n) => tensor_shape_proto::dimension::Value::DimValue(n),
                                    Err(_) => {
                                        tensor_shape_proto::dimension::Value::DimParam((*d).into())
                                    }
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|i| (*i).into()).collect(),
            output: vec![output.into()],
            name: output.into(),
            ..Default::default()
        };
        let values: Vec<f32> = (0..rows * 16).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut nodes = vec![node("Gather", &["table", "ids"], "rows")];
        if let Some(op) = also {
            nodes.push(node(op, &["table"], "other"));
        }
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "g".into(),
                node: nodes,
                initializer: vec![TensorProto {
                    name: "table".into(),
                    dims: vec![rows as i64, 16],
                    data_type: tensor_proto::DataType::Float as i32,
                    raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ..Default::default()
                }],
                input: vec![value("ids", tensor_proto::DataType::Int64 as i32, &["N"])],
                output: vec![value(
                    "rows",
                    tensor_proto::DataType::Float as i32,
                    &["N", "16"],
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join(format!("gather-{rows}-{}.onnx", also.unwrap_or("only")));
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn a_table_stays_in_the_file_only_when_large_and_only_gathered_from() {
        let dir = std::env::temp_dir().join(format!("clipserve-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let onnx = tract_onnx::onnx();
        let large = 70_000; // 70,000 x 16 f32: 4.3 MB
        let in_file = |path: &Path| {
            model_for_path(&onnx, path, InPlace::WeightsAndTables)
                .unwrap()
                .1
                .into_iter()
                .map(|t| (t.name, t.rows, t.cols))
                .collect::<Vec<_>>()
        };
        let only = gather_model(&dir, large, None);
        assert_eq!(in_file(&only), [("table".to_string(), large, 16)]);
        // Read by anything else, or too small to matter: loaded as usual.
        assert!(in_file(&gather_model(&dir, large, Some("Shape"))).is_empty());
        assert!(in_file(&gather_model(&dir, 1000, None)).is_empty());
        let (model, none) = model_for_path(&onnx, &only, InPlace::Weights).unwrap();
        assert!(none.is_empty());
        assert!(consts(model).iter().any(|(_, t)| t.shape() == [large, 16]));

        // The stand-in, swapped for the file's rows, gives the table's rows.
        let (model, tables) = model_for_path(&onnx, &only, InPlace::WeightsAndTables).unwrap();
        let mut typed = model.into_typed().unwrap().into_decluttered().unwrap();
        crate::engine::table::read_tables_in_place(&mut typed, tables).unwrap();
        let plan = typed.into_optimized().unwrap().into_runnable().unwrap();
        let ids = tensor1(&[69_999i64, 0, 12_345, -1]);
        let out = plan.run(tvec![ids.into()]).unwrap();
        let out = out[0].to_plain_array_view::<f32>().unwrap();
        for (i, row) in [69_999usize, 0, 12_345, 69_999].into_iter().enumerate() {
            for c in 0..16 {
                let want = (row * 16 + c) as f32 * 0.5 - 3.0;
                assert_eq!(out[[i, c]], want, "row {row} col {c}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_protobuf_gets_tracts_own_error() {
        let dir = std::env::temp_dir().join(format!("clipserve-onnx-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.onnx");
        std::fs::write(&path, b"\xff\xff\xff not an onnx file").unwrap();
        assert!(skeleton(&path, "model.onnx", InPlace::WeightsAndTables).is_err());
        assert!(model_for_path(&tract_onnx::onnx(), &path, InPlace::WeightsAndTables).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.last().map(|b| b & 0x80), Some(0));
            let mut rest = buf.as_slice();
            assert_eq!(varint(&mut rest).unwrap(), v);
            assert!(rest.is_empty());
            assert!(
                varint(&mut &buf[..buf.len() - 1]).is_err(),
                "a cut varint is an error"
            );
        }
    }
}
