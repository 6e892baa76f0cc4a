//! Reading the small protobuf messages the walk keeps in memory (a node, an initializer
//! without its raw data): their fields, what a node reads, what an initializer is.

use std::collections::HashMap;
use std::io;

use super::{
    malformed, NODE_INPUT, NODE_OP_TYPE, TENSOR_DATA_TYPE, TENSOR_DIMS, TENSOR_EXTERNAL_DATA,
    TENSOR_NAME, WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT,
};

/// How a graph's nodes read one value.
#[derive(Default)]
pub(super) struct Uses {
    /// As the data input of a `Gather` (a table whose rows are looked up).
    pub(super) gathered: usize,
    /// Any other way.
    pub(super) other: usize,
}

/// What the walk reads of one initializer it copied (without its raw data).
pub(super) struct TensorHeader {
    pub(super) name: String,
    pub(super) dims: Vec<u64>,
    pub(super) data_type: u64,
    /// Offset and length of its raw data in the model file, when the walk left it there.
    pub(super) in_file: Option<(u64, u64)>,
}

/// One field of a protobuf message held in memory.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Decodes a varint from the bytes `next` yields, one at a time.
pub(super) fn varint_from(mut next: impl FnMut() -> io::Result<u8>) -> io::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = next()?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

/// Reads a varint from the front of `bytes` and moves past it.
pub(super) fn varint(bytes: &mut &[u8]) -> io::Result<u64> {
    varint_from(|| {
        let (&b, rest) = bytes
            .split_first()
            .ok_or_else(|| malformed("message ends inside a varint"))?;
        *bytes = rest;
        Ok(b)
    })
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
pub(super) fn count_uses(node: &[u8], uses: &mut HashMap<String, Uses>) -> io::Result<bool> {
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
pub(super) fn tensor_header(tensor: &[u8], location: &str) -> io::Result<TensorHeader> {
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
