//! Loading settings: defaults, then the TOML file, then `CLIPSERVE_*` environment variables,
//! then flags. Every value is checked on its own against its setting's type before the
//! sources are merged, so an error names the variable, `--set` key or file line it was
//! written under (never a line of the merged document); then the result is validated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::Origin;
use super::names::{self, PREFIX};
use super::validate::check_log_filter;
use super::{ConfigError, Settings};

/// Settings that are absent by default, so the defaults table cannot tell their type: all
/// are strings.
const OPTIONAL_KEYS: [&str; 1] = ["server.api_key"];

/// Where settings come from, besides the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file; missing is fine only when it is the implicit default path.
    pub file: Option<PathBuf>,
    /// Whether `file` was named explicitly (then it must exist).
    pub file_required: bool,
    /// `section.key=value` overrides from flags, applied after the environment, in order.
    pub overrides: Vec<(String, String)>,
    /// `--model`, applied last.
    pub model: Option<String>,
    /// `--addr`, applied last.
    pub addr: Option<String>,
}

/// One value from one source.
struct Entry {
    /// `section.field`.
    key: String,
    value: toml::Value,
    /// The value as the user wrote it.
    written: String,
    origin: Origin,
}

/// Every setting with its default (`None` for the optional ones).
struct Catalogue {
    defaults: toml::Table,
    keys: BTreeMap<String, Option<toml::Value>>,
}

impl Settings {
    /// Builds settings from defaults, `sources.file`, the given environment (normally the
    /// process's), and the flags in `sources`, then validates them. A `CLIPSERVE_*` variable
    /// that names no setting, shortcut or allowed variable ([`names::OTHER_VARIABLES`]) is an
    /// error, and so is an invalid `RUST_LOG`.
    pub fn load(
        sources: &Sources,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let catalogue = Catalogue::new()?;
        let mut entries = Vec::new();
        if let Some(path) = &sources.file {
            entries.extend(catalogue.file(path, sources.file_required)?);
        }
        entries.extend(catalogue.environment(env)?);
        for (key, value) in &sources.overrides {
            entries.push(catalogue.entry(key, value, Origin::Set)?);
        }
        if let Some(model) = &sources.model {
            entries.push(catalogue.entry("model.source", model, Origin::Flag("--model"))?);
        }
        if let Some(addr) = &sources.addr {
            entries.push(catalogue.entry("server.addr", addr, Origin::Flag("--addr"))?);
        }
        let mut merged = catalogue.defaults.clone();
        for entry in &entries {
            catalogue.check_type(entry)?;
            insert(&mut merged, &entry.key, entry.value.clone());
        }
        let settings: Settings = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Shape(e.message().to_string()))?;
        if let Some((key, message)) = settings.problem() {
            let place = match entries.iter().rev().find(|e| e.key == key) {
                Some(e) => e.origin.place(key, &e.written),
                None => format!("{key} = {}", settings.shown_value(key)),
            };
            return Err(ConfigError::Invalid {
                key: key.to_string(),
                place,
                message,
            });
        }
        Ok(settings)
    }
}

impl Catalogue {
    fn new() -> Result<Catalogue, ConfigError> {
        let defaults = toml::Table::try_from(Settings::default())
            .map_err(|e| ConfigError::Shape(e.to_string()))?;
        let mut keys = BTreeMap::new();
        for (section, fields) in &defaults {
            for (field, value) in fields.as_table().into_iter().flatten() {
                keys.insert(format!("{section}.{field}"), Some(value.clone()));
            }
        }
        for key in OPTIONAL_KEYS {
            keys.insert(key.to_string(), None);
        }
        Ok(Catalogue { defaults, keys })
    }

    /// Every variable that is accepted, for close matches.
    fn variables(&self) -> Vec<String> {
        let mut all: Vec<String> = self.keys.keys().map(|k| names::variable(k)).collect();
        all.extend(names::SHORTCUTS.iter().map(|(n, _)| n.to_string()));
        all.extend(names::OTHER_VARIABLES.iter().map(|(n, _)| n.to_string()));
        all
    }

    /// The entries of the `CLIPSERVE_*` variables; refuses unknown ones, two variables that set
    /// one setting differently, and an invalid `RUST_LOG`.
    fn environment(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<Entry>, ConfigError> {
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(PREFIX) || name == "RUST_LOG")
            .collect();
        vars.sort();
        let by_variable: BTreeMap<String, &String> =
            self.keys.keys().map(|k| (names::variable(k), k)).collect();
        let mut entries: Vec<Entry> = Vec::new();
        for (name, value) in vars {
            if name == "RUST_LOG" {
                if !value.trim().is_empty() {
                    check_log_filter(&value).map_err(|message| ConfigError::Invalid {
                        key: name.clone(),
                        place: format!("RUST_LOG={value}"),
                        message,
                    })?;
                }
                continue;
            }
            let key = match names::shortcut(&name) {
                Some(key) => key.to_string(),
                None => match by_variable.get(&name) {
                    Some(key) => key.to_string(),
                    None if names::is_other_variable(&name) => continue,
                    None => {
                        let variables = self.variables();
                        let matches = names::close_matches(
                            &name,
                            variables.iter().map(String::as_str),
                            PREFIX,
                            '_',
                        );
                        let hint = if matches.is_empty() {
                            unknown_variable_help()
                        } else {
                            names::did_you_mean(&matches)
                        };
                        return Err(ConfigError::Unknown {
                            written: name,
                            hint,
                        });
                    }
                },
            };
            if let Some(other) = entries.iter().find(|e| e.key == key && e.written != value) {
                return Err(ConfigError::Conflict {
                    first: other.origin.name(&key),
                    second: name,
                    key,
                });
            }
            entries.push(self.entry(&key, &value, Origin::Env(name))?);
        }
        Ok(entries)
    }

    /// The entries of a TOML file, each with its line.
    fn file(&self, path: &Path, required: bool) -> Result<Vec<Entry>, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Vec::new())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let sections: Vec<&str> = self.defaults.keys().map(String::as_str).collect();
        let mut entries = Vec::new();
        for (section, value) in table {
            let origin = Origin::File {
                path: path.to_path_buf(),
                line: line_of(&text, &section, None),
            };
            let Some(fields) = value.as_table() else {
                return Err(ConfigError::Unknown {
                    written: origin.name(&section),
                    hint: format!(": settings sit in the sections {}", bracketed(&sections)),
                });
            };
            if !sections.contains(&section.as_str()) {
                let matches = names::close_matches(&section, sections.iter().copied(), "", '.');
                return Err(ConfigError::Unknown {
                    written: origin.name(&format!("[{section}]")),
                    hint: section_hint(&matches, &sections),
                });
            }
            for (field, value) in fields {
                let key = format!("{section}.{field}");
                let origin = Origin::File {
                    path: path.to_path_buf(),
                    line: line_of(&text, &section, Some(field)),
                };
                if !self.keys.contains_key(&key) {
                    return Err(ConfigError::Unknown {
                        written: origin.name(&key),
                        hint: self.key_hint(&key),
                    });
                }
                entries.push(Entry {
                    written: value.to_string(),
                    value: value.clone(),
                    key,
                    origin,
                });
            }
        }
        Ok(entries)
    }

    /// The entry of a value written as text (a variable or flag): read as a TOML value
    /// (number, bool, list) when it parses as one and as a string otherwise; a string setting
    /// keeps whatever was written (an API key of digits stays a string).
    fn entry(&self, key: &str, written: &str, origin: Origin) -> Result<Entry, ConfigError> {
        let Some(default) = self.keys.get(key) else {
            return Err(ConfigError::Unknown {
                written: match &origin {
                    Origin::Set => format!("--set {key}"),
                    other => other.name(key),
                },
                hint: self.key_hint(key),
            });
        };
        let parsed = format!("v = {written}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"));
        let is_string = matches!(default, None | Some(toml::Value::String(_)));
        let value = match parsed {
            Some(v) if v.is_str() || !is_string => v,
            _ => toml::Value::String(written.to_string()),
        };
        Ok(Entry {
            key: key.to_string(),
            value,
            written: written.to_string(),
            origin,
        })
    }

    fn key_hint(&self, key: &str) -> String {
        let matches = names::close_matches(key, self.keys.keys().map(String::as_str), "", '.');
        if matches.is_empty() {
            "; settings are section.key, such as batching.linger_ms (see the README's \
             Configuration section)"
                .into()
        } else {
            names::did_you_mean(&matches)
        }
    }

    /// Whether the entry's value has its setting's type (checked alone, on the defaults).
    fn check_type(&self, entry: &Entry) -> Result<(), ConfigError> {
        let mut one = self.defaults.clone();
        insert(&mut one, &entry.key, entry.value.clone());
        match one.try_into::<Settings>() {
            Ok(_) => Ok(()),
            Err(e) => Err(ConfigError::Invalid {
                key: entry.key.clone(),
                place: entry.origin.place(&entry.key, &entry.written),
                message: accepted(&entry.key, self.keys.get(&entry.key), e.message()),
            }),
        }
    }
}

/// "expected ..." for a value of the wrong type, from the setting's default.
fn accepted(key: &str, default: Option<&Option<toml::Value>>, serde_message: &str) -> String {
    let default = default.cloned().flatten();
    match &default {
        Some(toml::Value::Integer(d)) => format!("expected a whole number, 0 or more (default {d})"),
        Some(toml::Value::Boolean(d)) => format!("expected true or false (default {d})"),
        Some(toml::Value::Array(d)) if key == "server.cors_origins" => format!(
            "expected a list of origins, such as [\"https://example.com\"], or [\"*\"] (default {})",
            toml::Value::Array(d.clone())
        ),
        Some(toml::Value::Array(d)) => format!(
            "expected a list of whole numbers, such as [1, 8] (default {})",
            toml::Value::Array(d.clone())
        ),
        _ => match serde_message.split_once("expected ") {
            // An enum: "unknown variant `xml`, expected `text` or `json`".
            Some((_, accepted)) => format!("expected {}", accepted.trim()),
            None => format!("expected a string ({})", serde_message.trim()),
        },
    }
}

fn unknown_variable_help() -> String {
    let others: Vec<&str> = names::SHORTCUTS
        .iter()
        .chain(names::OTHER_VARIABLES.iter())
        .map(|(n, _)| *n)
        .collect();
    format!(
        ": settings are {PREFIX}<SECTION>_<KEY>, such as CLIPSERVE_BATCHING_LINGER_MS, and the \
         other accepted variables are {} and {}* (see the README's Configuration section)",
        others.join(", "),
        names::BENCH_PREFIX
    )
}

/// `[server], [model], ...`: the sections as a file writes them.
fn bracketed(sections: &[&str]) -> String {
    sections
        .iter()
        .map(|s| format!("[{s}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn section_hint(matches: &[String], sections: &[&str]) -> String {
    if matches.is_empty() {
        format!("; the sections are {}", bracketed(sections))
    } else {
        let bracketed: Vec<String> = matches.iter().map(|m| format!("[{m}]")).collect();
        names::did_you_mean(&bracketed)
    }
}

/// Sets `section.field` in a table of sections.
fn insert(table: &mut toml::Table, key: &str, value: toml::Value) {
    let (section, field) = key.split_once('.').unwrap_or((key, ""));
    if let Some(toml::Value::Table(fields)) = table.get_mut(section) {
        fields.insert(field.to_string(), value);
    }
}

/// The 1-based line of `[section]` (or of `field` in it) in a TOML text, when it can be found.
fn line_of(text: &str, section: &str, field: Option<&str>) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let (key, value) = document
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == section)?;
    let span = match field {
        None => key.span(),
        Some(field) => value
            .get_ref()
            .as_table()?
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == field)?
            .0
            .span(),
    };
    Some(text.get(..span.start)?.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests;
