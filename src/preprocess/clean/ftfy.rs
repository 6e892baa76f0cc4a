//! The deterministic part of `ftfy.fix_text` (ftfy 6.3.1, default `TextFixerConfig`):
//! segmenting, the "auto" HTML rule, and the fixers in ftfy's order, repeated per segment
//! until nothing changes. `fix_encoding` (mojibake repair) is deliberately absent; see the
//! parent module's docs for every difference.

use super::html::ftfy_unescape;
use super::tables::{
    C1_WINDOWS_1252, CONTROL_CHARS, DOUBLE_QUOTES, LIGATURES, PY_DIGITS, SINGLE_QUOTES, WIDTH_MAP,
};
use unicode_normalization::{is_nfc, UnicodeNormalization};

/// ftfy's `max_decode_length`: a line longer than this many code points is split.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// `ftfy.fix_text(text)` minus `fix_encoding`.
pub(super) fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // "auto": the first segment containing '<' turns HTML unescaping off for good.
    let mut unescape_html = true;
    let mut rest = text;
    while !rest.is_empty() {
        let end = segment_end(rest);
        let segment = &rest[..end];
        if segment.contains('<') {
            unescape_html = false;
        }
        out.push_str(&fix_segment(segment, unescape_html));
        rest = &rest[end..];
    }
    out
}

/// Byte length of the next segment: through the next `\n`, at most `MAX_DECODE_LENGTH` chars.
fn segment_end(text: &str) -> usize {
    let line = text.find('\n').map_or(text.len(), |i| i + 1);
    text[..line]
        .char_indices()
        .nth(MAX_DECODE_LENGTH)
        .map_or(line, |(i, _)| i)
}

/// `fix_and_explain` on one segment: apply every fixer, then NFC, until a fixpoint.
fn fix_segment(segment: &str, unescape_html: bool) -> String {
    let mut text = segment.to_owned();
    loop {
        let mut fixed = if unescape_html {
            ftfy_unescape(&text)
        } else {
            text.clone()
        };
        fixed = map_chars(&fixed);
        fixed = fix_line_breaks(&fixed);
        // fix_surrogates: a Rust string cannot hold surrogates, so there is nothing to do.
        fixed = remove_terminal_escapes(&fixed);
        fixed.retain(|c| !in_ranges(c, &CONTROL_CHARS));
        if !is_nfc(&fixed) {
            fixed = fixed.nfc().collect();
        }
        if fixed == text {
            return fixed;
        }
        text = fixed;
    }
}

/// `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width` and `uncurl_quotes` in
/// that order. Each is a context-free per-character map, so composing them per character
/// equals running them one after another over the whole string.
fn map_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = match u32::from(c) {
            n @ 0x80..=0x9F => C1_WINDOWS_1252[(n - 0x80) as usize],
            _ => c,
        };
        match lookup(&LIGATURES, c) {
            Some(letters) => letters.chars().for_each(|l| push_width_quote(&mut out, l)),
            None => push_width_quote(&mut out, c),
        }
    }
    out
}

/// The last two per-character maps: width, then quotes.
fn push_width_quote(out: &mut String, c: char) {
    match lookup(&WIDTH_MAP, c) {
        Some(normal) => normal.chars().for_each(|n| out.push(uncurl(n))),
        None => out.push(uncurl(c)),
    }
}

/// `uncurl_quotes` for one character.
fn uncurl(c: char) -> char {
    if in_ranges(c, &SINGLE_QUOTES) {
        '\''
    } else if in_ranges(c, &DOUBLE_QUOTES) {
        '"'
    } else {
        c
    }
}

/// `fix_line_breaks`: CRLF, CR, U+2028, U+2029 and U+0085 each become `\n`.
fn fix_line_breaks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            _ => out.push(c),
        }
    }
    out
}

/// `remove_terminal_escapes`: deletes matches of `\x1b\[((?:\d|;)*)([a-zA-Z])`, where `\d`
/// is Python's Unicode decimal digit.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(esc) = rest.find('\u{1b}') {
        out.push_str(&rest[..esc]);
        let tail = &rest[esc..];
        match ansi_escape_len(tail) {
            Some(len) => rest = &tail[len..],
            None => {
                out.push('\u{1b}');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Byte length of the ANSI escape at the start of `text`, if there is one.
fn ansi_escape_len(text: &str) -> Option<usize> {
    let params = text.strip_prefix("\u{1b}[")?;
    let body: usize = params
        .chars()
        .take_while(|&c| c == ';' || in_ranges(c, &PY_DIGITS))
        .map(char::len_utf8)
        .sum();
    let last = params[body..].chars().next()?;
    last.is_ascii_alphabetic().then_some(2 + body + 1)
}

/// Looks `c` up in a generated table sorted by character.
fn lookup(table: &[(char, &'static str)], c: char) -> Option<&'static str> {
    table
        .binary_search_by_key(&c, |&(k, _)| k)
        .ok()
        .map(|i| table[i].1)
}

/// Whether `c` lies in one of the sorted, inclusive `ranges`.
pub(super) fn in_ranges(c: char, ranges: &[(char, char)]) -> bool {
    let i = ranges.partition_point(|&(_, hi)| hi < c);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftfy_docstring_examples_hold() {
        assert_eq!(
            fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"),
            "Broken text… it's flubberific!"
        );
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(fix_text("Ｕﾀｰﾝ"), "Uターン");
        assert_eq!(fix_text("ﬂuﬃeﬆ"), "fluffiest");
        assert_eq!(
            fix_text("\u{201c}here\u{2019}s a test\u{201d}"),
            "\"here's a test\""
        );
    }

    #[test]
    fn c1_controls_become_windows_1252_before_line_breaks_run() {
        assert_eq!(fix_text("a\u{85}b \u{80}5 \u{93}q\u{94}"), "a…b €5 \"q\"");
        assert_eq!(fix_text("keep\u{81}"), "keep\u{81}");
    }

    #[test]
    fn line_breaks_become_unix() {
        assert_eq!(fix_text("a\r\nb\rc\u{2028}d\u{2029}e"), "a\nb\nc\nd\ne");
    }

    #[test]
    fn terminal_escapes_and_control_characters_are_removed() {
        assert_eq!(fix_text("\u{1b}[36;44mblue\u{1b}[0m"), "blue");
        assert_eq!(fix_text("\u{1b}[٣m x"), " x");
        assert_eq!(fix_text("\u{1b}[12"), "[12");
        assert_eq!(
            fix_text("a\u{0}\u{7}\u{b}\u{1c}\u{7f}\u{feff}\u{fffc}b\tc\u{c}"),
            "ab\tc\u{c}"
        );
    }

    #[test]
    fn a_less_than_sign_disables_unescaping_from_that_line_on() {
        assert_eq!(fix_text("&amp;\n<b> &amp;\n&amp;"), "&\n<b> &amp;\n&amp;");
    }

    #[test]
    fn fixers_repeat_until_nothing_changes() {
        assert_eq!(fix_text("&amp;amp;amp;"), "&");
        assert_eq!(fix_text("＆amp;"), "&");
        assert_eq!(fix_text("\u{149}"), "'n");
    }

    #[test]
    fn output_is_nfc() {
        assert_eq!(fix_text("e\u{301}"), "é");
    }

    #[test]
    fn long_lines_split_at_a_million_code_points() {
        let text = "é".repeat(MAX_DECODE_LENGTH + 5);
        assert_eq!(segment_end(&text), MAX_DECODE_LENGTH * 2);
        assert_eq!(segment_end("ab\ncd"), 3);
    }

    #[test]
    fn range_lookup_handles_edges() {
        let ranges = [('b', 'c'), ('x', 'x')];
        assert!(!in_ranges('a', &ranges));
        assert!(in_ranges('b', &ranges) && in_ranges('c', &ranges) && in_ranges('x', &ranges));
        assert!(!in_ranges('d', &ranges) && !in_ranges('z', &ranges));
    }
}
