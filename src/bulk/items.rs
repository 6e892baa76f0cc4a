//! What `clipserve embed` reads: the image files under a folder (recursively, in a stable
//! order), or the lines of a text file. Each item has a name that identifies it in the output
//! and in the skipped-file report, so a re-run can tell which items are already done.

use std::path::{Path, PathBuf};

use super::BulkError;

/// File extensions taken as images (compared case-insensitively). The decoder sniffs the
/// format from the bytes; the extension only selects which files are tried.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "bmp", "tif", "tiff",
];

/// Which tower a run feeds, and the key its output records use for the item's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Image files; records carry `"path"`, relative to the input folder.
    Images,
    /// Lines of a text file; records carry `"text"`.
    Texts,
}

impl Kind {
    /// The JSON key naming the item in output records.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Images => "path",
            Kind::Texts => "text",
        }
    }

    /// The plural noun for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Images => "images",
            Kind::Texts => "texts",
        }
    }
}

/// One thing to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The path relative to the input folder (with `/`), or the text itself.
    pub name: String,
    /// Where an image's bytes are read from; `None` for texts.
    pub file: Option<PathBuf>,
}

/// An input that could not be listed (an unreadable sub-folder), reported like a bad file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlisted {
    /// The folder, relative to the input folder.
    pub name: String,
    /// Why it could not be read.
    pub reason: String,
}

/// Lists the image files under `root`, recursively, sorted by relative path so every run sees
/// the same order. Symbolic links to files are followed; links to folders are not (no cycles).
pub fn image_files(root: &Path) -> Result<(Vec<Item>, Vec<Unlisted>), BulkError> {
    let meta = std::fs::metadata(root).map_err(|source| BulkError::Input {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BulkError::Usage(format!(
            "--images expects a folder; {} is not one",
            root.display()
        )));
    }
    let mut items = Vec::new();
    let mut unlisted = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if folder == root => {
                return Err(BulkError::Input {
                    path: folder,
                    source: e,
                })
            }
            Err(e) => {
                unlisted.push(Unlisted {
                    name: relative_name(root, &folder),
                    reason: format!("cannot list the folder: {e}"),
                });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                folders.push(path);
            } else if has_image_extension(&path) && (kind.is_file() || path.is_file()) {
                items.push(Item {
                    name: relative_name(root, &path),
                    file: Some(path),
                });
            }
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    unlisted.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((items, unlisted))
}

/// Whether the file name ends in one of [`IMAGE_EXTENSIONS`].
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The non-empty lines of a UTF-8 text file, each one item (a trailing `\r` is dropped).
pub fn text_lines(path: &Path) -> Result<Vec<Item>, BulkError> {
    let bytes = std::fs::read(path).map_err(|source| BulkError::Input {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        BulkError::Usage(format!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Item {
            name: line.to_string(),
            file: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_extensions_match_in_any_case() {
        assert!(has_image_extension(Path::new("a/b.JPG")));
        assert!(has_image_extension(Path::new("b.tiff")));
        assert!(!has_image_extension(Path::new("b.json")));
        assert!(!has_image_extension(Path::new("jpg")));
    }

    #[test]
    fn folders_are_listed_recursively_in_a_stable_order() {
        let dir = std::env::temp_dir().join(format!("clipserve-items-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("z/inner")).unwrap();
        for f in ["b.png", "a.jpg", "z/inner/c.webp", "notes.txt", "z/d.GIF"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let (items, unlisted) = image_files(&dir).unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.jpg", "b.png", "z/d.GIF", "z/inner/c.webp"]);
        assert!(unlisted.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
