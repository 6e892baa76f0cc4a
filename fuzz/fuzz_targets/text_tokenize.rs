//! Any text -> OpenCLIP cleaning -> XLM-R tokenizer with truncation: never a panic, never an
//! error, and always `<s> ... </s>` within the context length.
#![no_main]

use std::sync::OnceLock;

use clipserve::preprocess::clean::clean;
use clipserve::preprocess::text::TextTokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/tiny/textual/tokenizer.json"
        );
        TextTokenizer::from_file(path, 77).expect("the fixture tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = clean(&text);
    let tok = tokenizer();
    let ids = tok.encode(&text).expect("every text tokenizes");
    let ids = ids.as_slice();
    assert!(ids.len() >= 2 && ids.len() <= 77, "{} ids", ids.len());
    assert_eq!(ids[0], tok.bos_id());
    assert_eq!(ids[ids.len() - 1], tok.eos_id());
});
