//! Where `clipserve embed` writes: JSON Lines (`{"path"|"text": ..., "embedding": [...]}`, one
//! record a line) or `.npy` with a names listing beside it (see [`super::npy`]). Opening an
//! existing output resumes it: the names already in it are returned so the run skips them, and
//! whatever an interrupted run left past its last complete record is trimmed first.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::items::Kind;
use super::npy::NpyWriter;
use super::BulkError;

/// The output file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object a line.
    Jsonl,
    /// A float32 `[N, D]` NumPy array plus a `<name>.names.txt` listing, one item a line.
    Npy,
}

impl Format {
    /// The format a file name implies: `.npy`, or `.jsonl` / `.ndjson` / `.json`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "npy" => Some(Format::Npy),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// A file beside `output` named after it: `out.npy` -> `out.<suffix>`.
pub fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "embeddings".into());
    output.with_file_name(format!("{stem}.{suffix}"))
}

/// An open output, positioned to append.
#[derive(Debug)]
pub enum Output {
    /// JSON Lines.
    Jsonl(JsonlWriter),
    /// NumPy array plus names listing.
    Npy(NpyWriter),
}

/// Names already in an output, each with how many times it occurs (an input may repeat a text).
pub type Done = HashMap<String, usize>;

impl Output {
    /// Opens or creates `path` for `kind` records of `dims` floats, and returns what it holds.
    pub fn open(
        path: &Path,
        format: Format,
        kind: Kind,
        dims: usize,
    ) -> Result<(Output, Done, usize), BulkError> {
        let (output, names) = match format {
            Format::Jsonl => {
                let (w, names) = JsonlWriter::open(path, kind, dims)?;
                (Output::Jsonl(w), names)
            }
            Format::Npy => {
                let (w, names) = NpyWriter::open(path, &sidecar(path, "names.txt"), dims)?;
                (Output::Npy(w), names)
            }
        };
        let count = names.len();
        let mut done = Done::new();
        for name in names {
            *done.entry(name).or_default() += 1;
        }
        Ok((output, done, count))
    }

    /// Appends one batch of records; after it returns, the file is a valid output again.
    pub fn append(&mut self, records: &[(&str, &[f32])]) -> Result<(), BulkError> {
        match self {
            Output::Jsonl(w) => w.append(records),
            Output::Npy(w) => w.append(records),
        }
    }

    /// Flushes to disk.
    pub fn finish(self) -> Result<(), BulkError> {
        match self {
            Output::Jsonl(w) => w.finish(),
            Output::Npy(w) => w.finish(),
        }
    }
}

/// A JSON Lines output.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
    key: &'static str,
}

#[derive(Deserialize)]
struct Record {
    path: Option<String>,
    text: Option<String>,
    embedding: Vec<f32>,
}

impl JsonlWriter {
    fn open(path: &Path, kind: Kind, dims: usize) -> Result<(JsonlWriter, Vec<String>), BulkError> {
        let io = |source: std::io::Error| BulkError::Output {
            path: path.to_path_buf(),
            message: source.to_string(),
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut names = Vec::new();
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        let mut good_len = 0u64;
        for number in 1.. {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io)?;
            if n == 0 || line.last() != Some(&b'\n') {
                // End of file, or a last line cut short by an interrupted write: trimmed below.
                break;
            }
            let name = parse_line(&line, kind, dims).map_err(|why| BulkError::Output {
                path: path.to_path_buf(),
                message: format!("line {number} {why}; refusing to append to it"),
            })?;
            names.push(name);
            good_len += n as u64;
        }
        drop(reader);
        file.set_len(good_len).map_err(io)?;
        let writer = JsonlWriter {
            path: path.to_path_buf(),
            file,
            key: kind.key(),
        };
        Ok((writer, names))
    }

    fn append(&mut self, records: &[(&str, &[f32])]) -> Result<(), BulkError> {
        let mut buf = Vec::with_capacity(records.len() * 512 * 12);
        for (name, embedding) in records {
            // Written by hand so the name comes first; f32 values print in their shortest form.
            buf.extend_from_slice(format!("{{\"{}\":", self.key).as_bytes());
            serde_json::to_writer(&mut buf, name)
                .and_then(|_| {
                    buf.extend_from_slice(b",\"embedding\":");
                    serde_json::to_writer(&mut buf, embedding)
                })
                .map_err(|e| BulkError::Output {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
            buf.extend_from_slice(b"}\n");
        }
        // One write per batch, so a batch is in the file whole or (after a crash) cut inside
        // its last line, which the next run trims.
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.flush())
            .map_err(|e| BulkError::Output {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    fn finish(self) -> Result<(), BulkError> {
        self.file.sync_all().map_err(|e| BulkError::Output {
            path: self.path,
            message: e.to_string(),
        })
    }
}

/// The item name of one complete output line, or why the line does not belong in this output.
fn parse_line(line: &[u8], kind: Kind, dims: usize) -> Result<String, String> {
    let record: Record =
        serde_json::from_slice(line).map_err(|e| format!("is not an embedding record ({e})"))?;
    let name = match kind {
        Kind::Images => record.path,
        Kind::Texts => record.text,
    }
    .ok_or_else(|| format!("has no \"{}\" (it holds other kinds of items)", kind.key()))?;
    if record.embedding.len() != dims {
        return Err(format!(
            "holds a {}-d embedding, but this model makes {dims}-d ones",
            record.embedding.len()
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension_and_sidecars_sit_beside_the_output() {
        assert_eq!(Format::from_path(Path::new("a/e.NPY")), Some(Format::Npy));
        assert_eq!(Format::from_path(Path::new("e.jsonl")), Some(Format::Jsonl));
        assert_eq!(Format::from_path(Path::new("e.csv")), None);
        assert_eq!(
            sidecar(Path::new("out/e.npy"), "names.txt"),
            Path::new("out/e.names.txt")
        );
    }

    #[test]
    fn lines_of_another_kind_or_width_are_refused() {
        let line = br#"{"text": "a cat", "embedding": [0.6, 0.8]}"#;
        assert_eq!(parse_line(line, Kind::Texts, 2).unwrap(), "a cat");
        assert!(parse_line(line, Kind::Images, 2)
            .unwrap_err()
            .contains("\"path\""));
        assert!(parse_line(line, Kind::Texts, 3)
            .unwrap_err()
            .contains("2-d"));
        assert!(parse_line(b"{oops", Kind::Texts, 2).is_err());
    }
}
