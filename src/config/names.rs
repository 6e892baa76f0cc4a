//! Every name a setting can be written under (`section.key`, `CLIPSERVE_SECTION_KEY`, the
//! shortcuts), the other `CLIPSERVE_*` variables that are allowed in the environment, and
//! the close matches offered for a name that is none of them.

/// Shortcut variables, beside `CLIPSERVE_<SECTION>_<KEY>`, and the setting each one sets.
/// `CLIPSERVE_API_KEY` is the documented name of the API key, shared by the server and
/// `clipserve embed --server`; `CLIPSERVE_SERVER_API_KEY` is accepted too.
pub const SHORTCUTS: [(&str, &str); 3] = [
    ("CLIPSERVE_MODEL", "model.source"),
    ("CLIPSERVE_ADDR", "server.addr"),
    ("CLIPSERVE_API_KEY", "server.api_key"),
];

/// `CLIPSERVE_*` variables that are not settings but may be in the environment of the binary,
/// with who reads them. Any other `CLIPSERVE_*` name stops start-up, so a typo is never
/// silently ignored. Keep this list, the README's and the scripts' in step.
pub const OTHER_VARIABLES: [(&str, &str); 6] = [
    ("CLIPSERVE_CONFIG", "the settings file, as --config"),
    ("CLIPSERVE_PROGRESS", "`clipserve embed --progress`"),
    (
        "CLIPSERVE_BIN",
        "the binary tests/browser/run.sh and examples/python/run.sh start",
    ),
    ("CLIPSERVE_URL", "the server the Python examples call"),
    (
        "CLIPSERVE_BIND",
        "docker-compose.yml: the host address the port is published on",
    ),
    (
        "CLIPSERVE_PORT",
        "docker-compose.yml: the published host port",
    ),
];

/// Prefix of the benchmarks' own variables (`CLIPSERVE_BENCH_MODEL` and the like, read by
/// benches/ and bench/run.sh, which starts the server in the same environment).
pub const BENCH_PREFIX: &str = "CLIPSERVE_BENCH_";

/// The prefix of every variable clipserve reads.
pub const PREFIX: &str = "CLIPSERVE_";

/// The variable of the setting `section.key`: `CLIPSERVE_SECTION_KEY`.
pub fn variable(key: &str) -> String {
    format!("{PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Whether `name` is allowed in the environment without naming a setting.
pub fn is_other_variable(name: &str) -> bool {
    name.starts_with(BENCH_PREFIX) || OTHER_VARIABLES.iter().any(|(n, _)| *n == name)
}

/// The setting a shortcut variable sets.
pub fn shortcut(name: &str) -> Option<&'static str> {
    SHORTCUTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, key)| *key)
}

/// The candidates close to `written`, closest first (at most three): those within an edit
/// distance of a quarter of the name's length (at least 2), and those that end with the whole
/// of what was written after a `separator` (a key written without its section). Case is
/// ignored; `prefix` (common to all names) is left out of the comparison.
pub fn close_matches<'a>(
    written: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    prefix: &str,
    separator: char,
) -> Vec<String> {
    let strip = |s: &str| {
        let upper = s.to_ascii_uppercase();
        upper
            .strip_prefix(&prefix.to_ascii_uppercase())
            .map_or(upper.clone(), str::to_string)
    };
    let target = strip(written);
    let limit = (target.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter_map(|candidate| {
            let c = strip(candidate);
            let distance = edit_distance(&target, &c);
            let ends_with = !target.is_empty()
                && c.len() > target.len()
                && c.ends_with(&target)
                && c[..c.len() - target.len()].ends_with(separator.to_ascii_uppercase());
            if distance <= limit {
                Some((distance, candidate))
            } else if ends_with {
                Some((limit + 1, candidate))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// ", did you mean A?" / ", did you mean A or B?"; empty without candidates.
pub fn did_you_mean(matches: &[String]) -> String {
    match matches {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [rest @ .., last] => format!("; did you mean {} or {last}?", rest.join(", ")),
    }
}

/// Levenshtein distance over characters: insertions, deletions and substitutions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARIABLES: [&str; 5] = [
        "CLIPSERVE_BATCHING_LINGER_MS",
        "CLIPSERVE_BATCHING_MAX_IMAGE_BATCH",
        "CLIPSERVE_BATCHING_MAX_TEXT_BATCH",
        "CLIPSERVE_LOG_LEVEL",
        "CLIPSERVE_CONFIG",
    ];

    fn matches(written: &str) -> Vec<String> {
        close_matches(written, VARIABLES, PREFIX, '_')
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("BATCHNG", "BATCHING"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn a_misspelled_section_or_key_finds_the_setting() {
        assert_eq!(
            matches("CLIPSERVE_BATCHNG_LINGER_MS"),
            ["CLIPSERVE_BATCHING_LINGER_MS"]
        );
        assert_eq!(matches("CLIPSERVE_LOG_LEVLE"), ["CLIPSERVE_LOG_LEVEL"]);
        assert_eq!(matches("clipserve_confg"), ["CLIPSERVE_CONFIG"]);
    }

    #[test]
    fn the_closest_name_comes_first() {
        let found = matches("CLIPSERVE_BATCHING_MAX_IMAGES_BATCH");
        assert_eq!(found[0], "CLIPSERVE_BATCHING_MAX_IMAGE_BATCH", "{found:?}");
    }

    #[test]
    fn a_key_written_without_its_section_finds_it() {
        assert_eq!(
            matches("CLIPSERVE_LINGER_MS"),
            ["CLIPSERVE_BATCHING_LINGER_MS"]
        );
        assert_eq!(
            close_matches("linger_ms", ["batching.linger_ms", "log.level"], "", '.'),
            ["batching.linger_ms"]
        );
    }

    #[test]
    fn an_unrelated_name_has_no_match() {
        assert!(matches("CLIPSERVE_WORKERS_COUNT").is_empty());
        assert_eq!(did_you_mean(&[]), "");
        assert_eq!(
            did_you_mean(&["A".into(), "B".into(), "C".into()]),
            "; did you mean A, B or C?"
        );
    }

    #[test]
    fn variables_are_the_keys_in_upper_case() {
        assert_eq!(
            variable("batching.linger_ms"),
            "CLIPSERVE_BATCHING_LINGER_MS"
        );
        assert_eq!(shortcut("CLIPSERVE_API_KEY"), Some("server.api_key"));
        assert!(is_other_variable("CLIPSERVE_BENCH_MODEL"));
        assert!(is_other_variable("CLIPSERVE_CONFIG"));
        assert!(!is_other_variable("CLIPSERVE_CONFG"));
    }
}
