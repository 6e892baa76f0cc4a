//! OpenCLIP's text cleaning for `HFTokenizer(clean="whitespace")`, reproduced in Rust:
//! `whitespace_clean(basic_clean(text))` from `open_clip/tokenizer.py`, i.e.
//!
//! 1. `ftfy.fix_text(text)` (ftfy 6.3.1 defaults),
//! 2. `html.unescape(html.unescape(text))`,
//! 3. `.strip()`, then `" ".join(text.split())` (Python's Unicode whitespace).
//!
//! Every table the Python consults (HTML5 entities, invalid numeric references, ftfy's
//! ligature/width/control/quote sets, Python's whitespace and `\d`) is generated from the
//! reference interpreter by `tools/gen_clean_tables.py` into `clean/tables.rs` and
//! `clean/entities.rs` (the HTML5 entities), and `tests/text_tokenize.rs` checks the whole
//! pipeline against Python outputs.
//!
//! # What differs from the Python reference
//!
//! * **No mojibake repair.** ftfy's `fix_encoding` step (re-decoding text that its `is_bad`
//!   heuristic flags as UTF-8 read in Latin-1/Windows-125x/MacRoman/cp437, with its
//!   `restore_byte_a0`, `replace_lossy_sequences` and `decode_inconsistent_utf8` helpers)
//!   is not implemented: it is a heuristic with a large codec model, not a rule. Python
//!   turns `"cafÃ©"` into `"café"`; here it stays `"cafÃ©"`. Text ftfy does not flag as
//!   bad (all ASCII text, and ordinary text in any script) is unaffected. The stand-alone
//!   `fix_c1_controls` fixer, which ftfy runs even outside `fix_encoding`, *is* implemented.
//! * **`fix_surrogates` is a no-op.** A Rust `&str` cannot contain UTF-16 surrogates;
//!   numeric references to surrogates decode to U+FFFD exactly as in Python.
//! * **Unicode version of NFC.** Python 3.11 normalises with Unicode 14.0 data, the
//!   `unicode-normalization` crate with a newer version. Characters assigned after 14.0
//!   that have canonical decompositions or non-zero combining classes (for example Kirat
//!   Rai vowel signs) may normalise differently. All other tables are Python's own.
//! * **Huge decimal references.** `&#` followed by more than 4300 decimal digits makes
//!   Python's `html.unescape` raise `ValueError` (integer string conversion limit), so the
//!   reference fails the request; here it decodes to U+FFFD like any out-of-range number.

mod entities;
mod ftfy;
mod html;
mod tables;

use tables::PY_WHITESPACE;

/// Cleans `text` exactly as OpenCLIP's `_clean_whitespace` does before tokenizing, so
/// that the Rust service and the Python reference feed the tokenizer the same string.
/// The result has no leading, trailing or repeated whitespace; it may be empty.
pub fn clean(text: &str) -> String {
    let fixed = ftfy::fix_text(text);
    let unescaped = html::unescape(&html::unescape(&fixed));
    whitespace_clean(&unescaped)
}

/// Python's `" ".join(text.split())`: words separated by single spaces.
fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_py_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Python's `str.isspace`: Rust's `char::is_whitespace` plus U+001C..U+001F.
fn is_py_whitespace(c: char) -> bool {
    ftfy::in_ranges(c, &PY_WHITESPACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        for c in [
            '\u{1c}', '\u{1d}', '\u{1e}', '\u{1f}', '\u{85}', '\u{a0}', '\u{3000}',
        ] {
            assert!(is_py_whitespace(c), "{c:?}");
        }
        for c in ['\u{200b}', '\u{180e}', '\u{feff}', 'a'] {
            assert!(!is_py_whitespace(c), "{c:?}");
        }
    }

    #[test]
    fn whitespace_collapses_and_strips() {
        assert_eq!(whitespace_clean("  a \t\n b\u{a0}\u{3000}c  "), "a b c");
        assert_eq!(whitespace_clean("x\u{1c}y"), "x y");
        assert_eq!(whitespace_clean(" \n\t "), "");
    }

    #[test]
    fn empty_and_blank_texts_clean_to_nothing() {
        assert_eq!(clean(""), "");
        assert_eq!(clean(" \r\n\t\u{3000}\u{a0} "), "");
    }

    #[test]
    fn html_is_unescaped_twice_after_ftfy() {
        assert_eq!(clean("Tom &amp;amp; Jerry"), "Tom & Jerry");
        assert_eq!(clean("<b>&amp;amp;amp;</b>"), "<b>&amp;</b>");
        assert_eq!(clean("fish &amp chips"), "fish & chips");
        assert_eq!(clean("&nbsp;x&nbsp;"), "x");
    }

    #[test]
    fn typical_noise_is_normalised() {
        assert_eq!(
            clean("  \u{201c}Ｈｅｌｌｏ\u{201d}\r\n\u{fb01}sh  "),
            "\"Hello\" fish"
        );
        assert_eq!(clean("cafe\u{301}"), "café");
    }

    #[test]
    fn mojibake_is_left_alone() {
        assert_eq!(clean("caf\u{c3}\u{a9}"), "caf\u{c3}\u{a9}");
    }
}
