//! A `.npy` file (NumPy's format, version 1.0) of float32 rows `[N, D]` that grows one batch at
//! a time and stays loadable after every batch: rows are appended first, then the item names
//! go to the sidecar listing, then the header's `N` is rewritten in place. An interrupted run
//! therefore leaves a header that counts only complete rows; [`NpyWriter::open`] trims whatever
//! a crash left beyond that, so the data, the names and the header agree again.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::BulkError;

/// The header length this writer gives new files (magic + version + length + dict, padded to a
/// multiple of 64 as the format asks): room for any `N` that fits in a `u64`.
const HEADER_LEN: usize = 128;
const MAGIC: &[u8] = b"\x93NUMPY";

/// The header dict for `rows x dims` float32, padded with spaces to `total` bytes in all.
fn header(rows: u64, dims: usize, total: usize, prefix: usize) -> Option<Vec<u8>> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}");
    let room = total.checked_sub(prefix + 1)?;
    if dict.len() > room {
        return None;
    }
    let mut text = dict.into_bytes();
    text.resize(room, b' ');
    text.push(b'\n');
    Some(text)
}

/// Where the header's dict starts and how long it is, from the first bytes of a file.
fn header_span(start: &[u8]) -> Option<(usize, usize)> {
    if start.len() < 12 || &start[..6] != MAGIC {
        return None;
    }
    match start[6] {
        1 => Some((10, u16::from_le_bytes([start[8], start[9]]) as usize)),
        2 | 3 => Some((
            12,
            u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as usize,
        )),
        _ => None,
    }
}

/// Reads `(rows, dims)` from a header dict, accepting only C-order little-endian float32 2-D.
fn parse_dict(dict: &str) -> Option<(u64, usize)> {
    let compact: String = dict.chars().filter(|c| !c.is_whitespace()).collect();
    let descr_ok = compact.contains("'descr':'<f4'");
    let order_ok = compact.contains("'fortran_order':False");
    let shape = compact.split("'shape':(").nth(1)?.split(')').next()?;
    let mut dims = shape.split(',').filter(|s| !s.is_empty());
    let rows = dims.next()?.parse().ok()?;
    let cols = dims.next()?.parse().ok()?;
    (descr_ok && order_ok && dims.next().is_none()).then_some((rows, cols))
}

/// An open `.npy` output and its names listing, positioned to append.
#[derive(Debug)]
pub struct NpyWriter {
    path: PathBuf,
    data: File,
    names: File,
    names_path: PathBuf,
    dict_at: usize,
    header_len: usize,
    dims: usize,
    rows: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BulkError + '_ {
    move |source| BulkError::Output {
        path: path.to_path_buf(),
        message: source.to_string(),
    }
}

fn refuse(path: &Path, message: String) -> BulkError {
    BulkError::Output {
        path: path.to_path_buf(),
        message,
    }
}

impl NpyWriter {
    /// Opens `path` (creating it for `dims`-wide rows) and its `names_path` listing, trims what
    /// an interrupted run left past the last complete batch, and returns the names already
    /// embedded, in order.
    pub fn open(
        path: &Path,
        names_path: &Path,
        dims: usize,
    ) -> Result<(NpyWriter, Vec<String>), BulkError> {
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        let len = data.metadata().map_err(io(path))?.len();
        if len > 0 && !names_path.exists() {
            return Err(refuse(
                path,
                format!(
                    "exists but its names listing {} does not: restore it or write to another file",
                    names_path.display()
                ),
            ));
        }
        let names = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(names_path)
            .map_err(io(names_path))?;
        let mut writer = NpyWriter {
            path: path.to_path_buf(),
            data,
            names,
            names_path: names_path.to_path_buf(),
            dict_at: 10,
            header_len: HEADER_LEN,
            dims,
            rows: 0,
        };
        if len == 0 {
            writer.names.set_len(0).map_err(io(names_path))?;
            let mut start = MAGIC.to_vec();
            start.extend([1, 0]);
            start.extend(((HEADER_LEN - 10) as u16).to_le_bytes());
            writer.data.write_all(&start).map_err(io(path))?;
            writer.write_header()?;
            return Ok((writer, Vec::new()));
        }
        let done = writer.resume(len)?;
        Ok((writer, done))
    }

    fn resume(&mut self, len: u64) -> Result<Vec<String>, BulkError> {
        let path = self.path.clone();
        let mut start = [0u8; 12];
        let got = self.data.read(&mut start).map_err(io(&path))?;
        let (dict_at, dict_len) = header_span(&start[..got])
            .ok_or_else(|| refuse(&path, "exists but is not a .npy file".into()))?;
        let mut dict = vec![0u8; dict_len];
        self.data
            .seek(SeekFrom::Start(dict_at as u64))
            .and_then(|_| self.data.read_exact(&mut dict))
            .map_err(io(&path))?;
        let (rows, dims) = std::str::from_utf8(&dict)
            .ok()
            .and_then(parse_dict)
            .ok_or_else(|| refuse(&path, "is not a 2-D float32 .npy file".into()))?;
        if dims != self.dims {
            return Err(refuse(&path, format!("holds {dims}-d rows, but this model makes {}-d embeddings: write to another file", self.dims)));
        }
        self.dict_at = dict_at;
        self.header_len = dict_at + dict_len;
        let row_bytes = 4 * dims as u64;
        let complete = len.saturating_sub(self.header_len as u64) / row_bytes;
        let mut names = Vec::new();
        let mut reader = BufReader::new(&self.names);
        reader.rewind().map_err(io(&self.names_path))?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io(&self.names_path))?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            names.push(line.trim_end_matches('\n').to_string());
        }
        let keep = rows.min(complete).min(names.len() as u64);
        names.truncate(keep as usize);
        let names_len: u64 = names.iter().map(|n| n.len() as u64 + 1).sum();
        self.names
            .set_len(names_len)
            .map_err(io(&self.names_path))?;
        self.data
            .set_len(self.header_len as u64 + keep * row_bytes)
            .map_err(io(&path))?;
        self.rows = keep;
        self.write_header()?;
        Ok(names)
    }

    fn write_header(&mut self) -> Result<(), BulkError> {
        let text =
            header(self.rows, self.dims, self.header_len, self.dict_at).ok_or_else(|| {
                refuse(
                    &self.path,
                    "its header has no room for the new row count".into(),
                )
            })?;
        self.data
            .seek(SeekFrom::Start(self.dict_at as u64))
            .and_then(|_| self.data.write_all(&text))
            .map_err(io(&self.path))
    }

    /// Appends rows (each `dims` long) and their names (no line breaks), then counts them in
    /// the header.
    pub fn append(&mut self, records: &[(&str, &[f32])]) -> Result<(), BulkError> {
        let mut bytes = Vec::with_capacity(records.len() * self.dims * 4);
        let mut listing = String::new();
        for (name, row) in records {
            debug_assert_eq!(row.len(), self.dims);
            bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
            listing.push_str(name);
            listing.push('\n');
        }
        self.data
            .seek(SeekFrom::End(0))
            .and_then(|_| self.data.write_all(&bytes))
            .map_err(io(&self.path))?;
        self.names
            .seek(SeekFrom::End(0))
            .and_then(|_| self.names.write_all(listing.as_bytes()))
            .map_err(io(&self.names_path))?;
        self.rows += records.len() as u64;
        self.write_header()
    }

    /// Flushes both files to disk.
    pub fn finish(self) -> Result<(), BulkError> {
        self.data.sync_all().map_err(io(&self.path))?;
        self.names.sync_all().map_err(io(&self.names_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_padded_to_a_fixed_length_and_parse_back() {
        let h = header(12345, 512, HEADER_LEN, 10).unwrap();
        assert_eq!(h.len() + 10, HEADER_LEN);
        assert_eq!(*h.last().unwrap(), b'\n');
        let dict = std::str::from_utf8(&h).unwrap();
        assert_eq!(parse_dict(dict), Some((12345, 512)));
        assert!(header(u64::MAX, 512, HEADER_LEN, 10).is_some());
    }

    #[test]
    fn other_dtypes_and_orders_are_refused() {
        assert_eq!(
            parse_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"),
            None
        );
        assert_eq!(
            parse_dict("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }"),
            None
        );
        assert_eq!(
            parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"),
            None
        );
    }
}
