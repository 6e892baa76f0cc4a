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
//! Only the model's graph and the graph's initializers are rewritten; everything else (nodes,
//! attributes, subgraphs, metadata) is copied byte for byte.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use tract_onnx::model::ParseResult;
use tract_onnx::prelude::*;

/// Initializers whose raw data is at least this long are read from the file in place.
const IN_PLACE_MIN_BYTES: u64 = 4096;

/// Field numbers of onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const DATA_LOCATION_EXTERNAL: u64 = 1;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// Loads `path` with its large initializers left in the file until tract makes their tensors.
/// A file the walk cannot follow is handed to tract as a whole, so its error is tract's.
pub fn model_for_path(onnx: &tract_onnx::Onnx, path: &Path) -> TractResult<InferenceModel> {
    let path = path
        .canonicalize()
        .map_err(|e| TractError::msg(format!("Opening {path:?}: {e}")))?;
    // tract resolves external data from a UTF-8 directory and a UTF-8 file name.
    let dir = path.parent().and_then(|d| d.to_str());
    let name = path.file_name().and_then(|n| n.to_str());
    let (Some(dir), Some(name)) = (dir, name) else {
        return onnx.model_for_path(&path);
    };
    let skeleton = match skeleton(&path, name) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "ONNX walk failed; tract reads the file");
            return onnx.model_for_path(&path);
        }
    };
    tracing::debug!(
        path = %path.display(),
        skeleton_kb = skeleton.len() >> 10,
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
    Ok(model)
}

/// The file's ModelProto with each large initializer's raw data replaced by a reference to
/// where it lies in the file named `name`.
fn skeleton(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut walk = Walk {
        r: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        name,
    };
    let mut out = Vec::new();
    walk.message(len, Kind::Model, &mut out)?;
    Ok(out)
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
                    } else if inner == Kind::Opaque {
                        put_varint(out, key);
                        put_varint(out, len);
                        self.copy(len, out)?;
                    } else {
                        let mut sub = Vec::new();
                        self.message(inner_end, inner, &mut sub)?;
                        put_varint(out, key);
                        put_varint(out, sub.len() as u64);
                        out.extend_from_slice(&sub);
                    }
                }
                _ => return Err(malformed("unsupported protobuf wire type")),
            }
        }
        if self.pos != end {
            return Err(malformed("message runs past its end"));
        }
        if let Some((offset, len)) = in_place {
            put_varint(out, TENSOR_DATA_LOCATION << 3 | WIRE_VARINT);
            put_varint(out, DATA_LOCATION_EXTERNAL);
            for (k, v) in [
                ("location", self.name.to_string()),
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
        Ok(())
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
            let skeleton = skeleton(&path, "model.onnx").unwrap();
            let file_len = std::fs::metadata(&path).unwrap().len() as usize;
            assert!(
                skeleton.len() * 4 < file_len,
                "{tower}: the skeleton ({} bytes) still holds the weights ({file_len})",
                skeleton.len()
            );
            let ours = consts(model_for_path(&onnx, &path).unwrap());
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
    fn a_file_that_is_not_protobuf_gets_tracts_own_error() {
        let dir = std::env::temp_dir().join(format!("clipserve-onnx-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.onnx");
        std::fs::write(&path, b"\xff\xff\xff not an onnx file").unwrap();
        assert!(skeleton(&path, "model.onnx").is_err());
        assert!(model_for_path(&tract_onnx::onnx(), &path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut decoded = 0u64;
            for (i, b) in buf.iter().enumerate() {
                decoded |= u64::from(b & 0x7f) << (7 * i);
            }
            assert_eq!(decoded, v);
            assert_eq!(buf.last().map(|b| b & 0x80), Some(0));
        }
    }
}
