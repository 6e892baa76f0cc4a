use super::*;
use crate::config::LogFormat;

fn sources(overrides: &[(&str, &str)]) -> Sources {
    Sources {
        overrides: overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Sources::default()
    }
}

fn load(env: &[(&str, &str)], overrides: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load(
        &sources(overrides),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn error(env: &[(&str, &str)], overrides: &[(&str, &str)]) -> String {
    load(env, overrides).unwrap_err().to_string()
}

/// A temporary TOML file, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "clipserve-config-{tag}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn load(&self) -> Result<Settings, ConfigError> {
        let sources = Sources {
            file: Some(self.0.clone()),
            file_required: true,
            ..Sources::default()
        };
        Settings::load(&sources, std::iter::empty())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn defaults_are_valid() {
    assert_eq!(load(&[], &[]).unwrap(), Settings::default());
}

#[test]
fn environment_overrides_defaults_and_flags_override_environment() {
    let s = load(
        &[
            ("CLIPSERVE_MODEL", "/models/x"),
            ("CLIPSERVE_ADDR", "127.0.0.1:9000"),
            ("CLIPSERVE_BATCHING_LINGER_MS", "7"),
            ("CLIPSERVE_MODEL_TEXT_SEQ_BUCKETS", "[16, 77]"),
            ("CLIPSERVE_SERVER_API_KEY", "12345"),
            ("OTHER", "ignored"),
        ],
        &[("batching.linger_ms", "9")],
    )
    .unwrap();
    assert_eq!(s.model.source, "/models/x");
    assert_eq!(s.server.addr, "127.0.0.1:9000");
    assert_eq!(s.batching.linger_ms, 9);
    assert_eq!(s.model.text_seq_buckets, vec![16, 77]);
    assert_eq!(s.server.api_key.as_deref(), Some("12345"));
}

#[test]
fn the_model_and_addr_flags_win_over_everything() {
    let sources = Sources {
        overrides: vec![("model.source".into(), "/from/set".into())],
        model: Some("/from/flag".into()),
        addr: Some("127.0.0.1:1".into()),
        ..Sources::default()
    };
    let env = [("CLIPSERVE_MODEL".to_string(), "/from/env".to_string())];
    let s = Settings::load(&sources, env).unwrap();
    assert_eq!(s.model.source, "/from/flag");
    assert_eq!(s.server.addr, "127.0.0.1:1");
}

#[test]
fn the_api_key_has_one_documented_name_and_the_old_one_still_works() {
    let short = load(&[("CLIPSERVE_API_KEY", "k1")], &[]).unwrap();
    assert_eq!(short.server.api_key.as_deref(), Some("k1"));
    let long = load(&[("CLIPSERVE_SERVER_API_KEY", "k2")], &[]).unwrap();
    assert_eq!(long.server.api_key.as_deref(), Some("k2"));
    let both = load(
        &[
            ("CLIPSERVE_API_KEY", "same"),
            ("CLIPSERVE_SERVER_API_KEY", "same"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(both.server.api_key.as_deref(), Some("same"));
}

#[test]
fn two_api_key_variables_that_disagree_stop_start_up_without_showing_either() {
    let e = error(
        &[
            ("CLIPSERVE_API_KEY", "alpha-key"),
            ("CLIPSERVE_SERVER_API_KEY", "beta-key"),
        ],
        &[],
    );
    assert_eq!(
        e,
        "CLIPSERVE_API_KEY and CLIPSERVE_SERVER_API_KEY both set server.api_key, to different \
         values: set only one"
    );
}

#[test]
fn a_misspelled_variable_is_refused_with_its_close_match() {
    let e = error(&[("CLIPSERVE_BATCHNG_LINGER_MS", "5")], &[]);
    assert_eq!(
        e,
        "CLIPSERVE_BATCHNG_LINGER_MS is not a setting; did you mean CLIPSERVE_BATCHING_LINGER_MS?"
    );
    let e = error(&[("CLIPSERVE_APIKEY", "k")], &[]);
    assert!(e.contains("did you mean CLIPSERVE_API_KEY"), "{e}");
    let e = error(&[("CLIPSERVE_BATCHING_LINGER", "1")], &[]);
    assert!(e.contains("CLIPSERVE_BATCHING_LINGER_MS"), "{e}");
}

#[test]
fn an_unrelated_variable_is_refused_with_what_is_accepted() {
    let e = error(&[("CLIPSERVE_FLUX_CAPACITOR", "1")], &[]);
    assert!(
        e.starts_with("CLIPSERVE_FLUX_CAPACITOR is not a setting: "),
        "{e}"
    );
    assert!(e.contains("CLIPSERVE_<SECTION>_<KEY>"), "{e}");
    assert!(e.contains("CLIPSERVE_CONFIG"), "{e}");
}

#[test]
fn variables_of_the_scripts_and_benches_are_allowed() {
    let env = [
        ("CLIPSERVE_CONFIG", "config/default.toml"),
        ("CLIPSERVE_PROGRESS", "never"),
        ("CLIPSERVE_BENCH_MODEL", "/models/full"),
        ("CLIPSERVE_BENCH_TEXT_SEQ", "77"),
        ("CLIPSERVE_BIN", "target/debug/clipserve"),
        ("CLIPSERVE_URL", "http://127.0.0.1:8080"),
        ("CLIPSERVE_BIND", "127.0.0.1"),
        ("CLIPSERVE_PORT", "8080"),
    ];
    assert_eq!(load(&env, &[]).unwrap(), Settings::default());
}

#[test]
fn a_bad_value_names_the_variable_the_value_and_what_is_accepted() {
    let e = error(&[("CLIPSERVE_BATCHING_MAX_IMAGE_BATCH", "abc")], &[]);
    assert_eq!(
        e,
        "CLIPSERVE_BATCHING_MAX_IMAGE_BATCH=abc: expected a whole number, 0 or more (default 8)"
    );
    let e = error(&[], &[("batching.linger_ms", "soon")]);
    assert_eq!(
        e,
        "--set batching.linger_ms=soon: expected a whole number, 0 or more (default 2)"
    );
    let e = error(&[("CLIPSERVE_LOG_FORMAT", "xml")], &[]);
    assert_eq!(e, "CLIPSERVE_LOG_FORMAT=xml: expected `text` or `json`");
    let e = error(&[], &[("model.image_precision", "fp8")]);
    assert_eq!(
        e,
        "--set model.image_precision=fp8: expected one of `auto`, `f32`, `bf16`, `int8`, `int16`"
    );
    let e = error(&[], &[("model.offline", "maybe")]);
    assert_eq!(
        e,
        "--set model.offline=maybe: expected true or false (default false)"
    );
    let e = error(&[("CLIPSERVE_MODEL_TEXT_SEQ_BUCKETS", "16,77")], &[]);
    assert!(
        e.starts_with("CLIPSERVE_MODEL_TEXT_SEQ_BUCKETS=16,77: expected a list"),
        "{e}"
    );
}

#[test]
fn an_inconsistent_value_names_where_it_was_written() {
    let e = error(&[("CLIPSERVE_BATCHING_MAX_TEXT_BATCH", "0")], &[]);
    assert_eq!(e, "CLIPSERVE_BATCHING_MAX_TEXT_BATCH=0: must be at least 1");
    let e = error(&[], &[("model.image_batch_buckets", "[4, 2]")]);
    assert_eq!(
        e,
        "--set model.image_batch_buckets=[4, 2]: expected increasing sizes of at least 1"
    );
    let e = error(&[("CLIPSERVE_API_KEY", "")], &[]);
    assert_eq!(
        e,
        "CLIPSERVE_API_KEY= (setting server.api_key): is empty: leave it unset to disable \
         authentication"
    );
}

#[test]
fn an_unknown_set_key_is_refused_with_its_close_match() {
    let e = error(&[], &[("batching.lingr_ms", "1")]);
    assert_eq!(
        e,
        "--set batching.lingr_ms is not a setting; did you mean batching.linger_ms?"
    );
    let e = error(&[], &[("nosuch.key", "1")]);
    assert!(
        e.starts_with("--set nosuch.key is not a setting; settings are"),
        "{e}"
    );
}

#[test]
fn a_bad_log_level_is_refused_wherever_it_is_written() {
    let e = error(&[], &[("log.level", "loud")]);
    assert!(
        e.starts_with("--set log.level=loud: `loud` is not a level or directive; expected a level (trace, debug, info, warn, error or off)"),
        "{e}"
    );
    let e = error(&[("CLIPSERVE_LOG_LEVEL", "verbose")], &[]);
    assert!(
        e.starts_with("CLIPSERVE_LOG_LEVEL=verbose: `verbose`"),
        "{e}"
    );
    let e = error(&[("RUST_LOG", "clipserve=chatty")], &[]);
    assert!(
        e.starts_with("RUST_LOG=clipserve=chatty: `clipserve=chatty`"),
        "{e}"
    );
    assert!(load(&[("RUST_LOG", "warn,clipserve=debug")], &[]).is_ok());
    assert!(load(&[("RUST_LOG", "")], &[]).is_ok());
}

#[test]
fn a_secret_never_appears_in_an_error() {
    // A type error is impossible for a string; a validation error elsewhere must not echo it.
    let e = error(
        &[("CLIPSERVE_API_KEY", "hunter2")],
        &[("batching.max_text_batch", "0")],
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = error(&[], &[("server.api_key", "")]);
    assert!(e.starts_with("--set server.api_key=: is empty"), "{e}");
}

#[test]
fn a_file_overrides_defaults() {
    let file = TempFile::new(
        "ok",
        "[limits]\nmax_text_chars = 10\n[log]\nformat = \"json\"\n",
    );
    let s = file.load().unwrap();
    assert_eq!(s.limits.max_text_chars, 10);
    assert_eq!(s.log.format, LogFormat::Json);
}

#[test]
fn a_bad_value_in_a_file_names_the_file_and_its_line() {
    let file = TempFile::new(
        "bad",
        "# comment\n[server]\naddr = \"127.0.0.1:1\"\n\n[batching]\nlinger_ms = 1\nmax_image_batch = \"abc\"\n",
    );
    let e = file.load().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}, line 7: batching.max_image_batch = \"abc\": expected a whole number, 0 or more (default 8)",
            file.0.display()
        )
    );
    let file = TempFile::new("zero", "[batching]\n\nmax_text_batch = 0\n");
    let e = file.load().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}, line 3: batching.max_text_batch = 0: must be at least 1",
            file.0.display()
        )
    );
}

#[test]
fn an_unknown_key_or_section_in_a_file_is_refused_with_its_line_and_close_match() {
    let file = TempFile::new("key", "[batching]\nlinger_msec = 1\n");
    let e = file.load().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}, line 2: batching.linger_msec is not a setting; did you mean batching.linger_ms?",
            file.0.display()
        )
    );
    let file = TempFile::new("section", "\n[batchng]\nlinger_ms = 1\n");
    let e = file.load().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}, line 2: [batchng] is not a setting; did you mean [batching]?",
            file.0.display()
        )
    );
}

#[test]
fn bf16_image_products_are_chosen_by_name_from_a_file_or_the_environment() {
    let env = load(&[("CLIPSERVE_MODEL_IMAGE_PRECISION", "bf16")], &[]).unwrap();
    assert_eq!(env.model.image_precision, crate::engine::Precision::Bf16);
    let set = load(&[], &[("model.image_precision", "f32")]).unwrap();
    assert_eq!(set.model.image_precision, crate::engine::Precision::F32);
}

#[test]
fn the_shipped_default_file_equals_the_built_in_defaults() {
    let sources = Sources {
        file: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")),
        file_required: true,
        ..Sources::default()
    };
    assert_eq!(
        Settings::load(&sources, std::iter::empty()).unwrap(),
        Settings::default()
    );
}

#[test]
fn a_required_file_that_is_missing_is_an_error() {
    let sources = Sources {
        file: Some("/nonexistent/clipserve.toml".into()),
        file_required: true,
        ..Sources::default()
    };
    assert!(matches!(
        Settings::load(&sources, std::iter::empty()),
        Err(ConfigError::Read { .. })
    ));
}
