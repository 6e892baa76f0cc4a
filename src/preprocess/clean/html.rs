//! HTML character references, decoded the two ways the reference decodes them: Python's
//! `html.unescape` (applied twice by OpenCLIP's `basic_clean`) and ftfy's stricter
//! `unescape_html` fixer (run inside `ftfy.fix_text`).

use super::entities::HTML5;
use super::tables::{INVALID_CHARREFS, INVALID_CODEPOINTS};

/// Characters that end a named reference in Python's `_charref` regex: `[^\t\n\f <&#;]`.
const NAME_STOP: [char; 8] = ['\t', '\n', '\u{c}', ' ', '<', '&', '#', ';'];
/// Python's `_charref` regex reads at most this many characters of a name.
const MAX_NAME_CHARS: usize = 32;
/// ftfy's `HTML_ENTITY_RE` reads at most this many ASCII alphanumerics.
const FTFY_MAX_NAME: usize = 24;
/// Any number at or above this decodes like every other out-of-range value (U+FFFD).
const OUT_OF_RANGE: u32 = 0x11_0000;

/// Python's `html.unescape`: every named (HTML5 table, longest legacy prefix) and numeric
/// reference, with the WHATWG remapping of invalid numbers.
pub(super) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp + 1..];
        match charref(tail) {
            Some((consumed, decoded)) => {
                decoded.push_to(&mut out);
                rest = &tail[consumed..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What one character reference decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoded {
    /// A table value (possibly empty).
    Text(&'static str),
    /// A code point from a numeric reference.
    Char(char),
}

impl Decoded {
    fn push_to(self, out: &mut String) {
        match self {
            Decoded::Text(text) => out.push_str(text),
            Decoded::Char(c) => out.push(c),
        }
    }
}

/// Decodes the reference at the start of `tail` (the text after an `&`), returning the
/// bytes it spans and its replacement, or `None` when Python leaves the `&` as is.
fn charref(tail: &str) -> Option<(usize, Decoded)> {
    if let Some(after_hash) = tail.strip_prefix('#') {
        let decimal = leading(after_hash, |b| b.is_ascii_digit());
        if decimal > 0 {
            let num = parse_saturating(&after_hash[..decimal], 10);
            return Some((
                1 + decimal + semicolon(&after_hash[decimal..]),
                numeric(num),
            ));
        }
        let hex_body = after_hash.strip_prefix(['x', 'X'])?;
        let hex = leading(hex_body, |b| b.is_ascii_hexdigit());
        if hex == 0 {
            return None;
        }
        let num = parse_saturating(&hex_body[..hex], 16);
        return Some((2 + hex + semicolon(&hex_body[hex..]), numeric(num)));
    }
    let mut name_len = 0;
    for (i, c) in tail.char_indices().take(MAX_NAME_CHARS) {
        if NAME_STOP.contains(&c) {
            break;
        }
        name_len = i + c.len_utf8();
    }
    if name_len == 0 {
        return None;
    }
    let name = &tail[..name_len + semicolon(&tail[name_len..])];
    if let Some(value) = html5(name) {
        return Some((name.len(), Decoded::Text(value)));
    }
    // Longest prefix of at least two characters, shorter than the whole match.
    let mut bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    bounds.reverse();
    bounds
        .into_iter()
        .find_map(|end| html5(&name[..end]).map(|value| (end, Decoded::Text(value))))
}

/// Python's `_replace_charref` for a numeric reference.
fn numeric(num: u32) -> Decoded {
    if let Ok(i) = INVALID_CHARREFS.binary_search_by_key(&num, |&(k, _)| k) {
        return Decoded::Text(INVALID_CHARREFS[i].1);
    }
    if INVALID_CODEPOINTS.binary_search(&num).is_ok() {
        return Decoded::Text("");
    }
    // Surrogates and anything past U+10FFFF are exactly the values `from_u32` rejects.
    Decoded::Char(char::from_u32(num).unwrap_or('\u{FFFD}'))
}

/// ftfy's `unescape_html`: only `&name;` / `&#num;` with a semicolon and at most 24 ASCII
/// alphanumerics, plus the all-caps forms of lowercase entities (`&EACUTE;` -> `É`).
pub(super) fn ftfy_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let hash = usize::from(tail[1..].starts_with('#'));
        let body = &tail[1 + hash..];
        let run = leading(body, |b| b.is_ascii_alphanumeric());
        if (1..=FTFY_MAX_NAME).contains(&run) && body[run..].starts_with(';') {
            let whole = &tail[..1 + hash + run + 1];
            out.push_str(&ftfy_fixup(whole, hash == 1, &body[..run]));
            rest = &tail[whole.len()..];
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `_unescape_fixup` for one `HTML_ENTITY_RE` match.
fn ftfy_fixup(whole: &str, numeric_ref: bool, name: &str) -> String {
    if numeric_ref {
        let decoded = unescape(whole);
        // Python only accepts the decode when it consumed the semicolon.
        return if decoded.contains(';') {
            whole.to_owned()
        } else {
            decoded
        };
    }
    if let Some(value) = html5(&whole[1..]) {
        return value.to_owned();
    }
    match upper_entity(name, whole) {
        Some(value) => value,
        None => whole.to_owned(),
    }
}

/// ftfy's generated `&NAME;` entries: the upper-cased name of a lowercase `name;` entity,
/// when Python's `html.unescape` would leave that spelling alone; the value is upper-cased.
fn upper_entity(name: &str, whole: &str) -> Option<String> {
    if name.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let lower = format!("{};", name.to_ascii_lowercase());
    let value = html5(&lower)?;
    (unescape(whole) == whole).then(|| value.to_uppercase())
}

/// Looks a name (with its `;` if any) up in Python's `html.entities.html5`.
fn html5(name: &str) -> Option<&'static str> {
    HTML5
        .binary_search_by(|&(k, _)| k.cmp(name))
        .ok()
        .map(|i| HTML5[i].1)
}

/// Length in bytes of the leading run of ASCII bytes satisfying `pred`.
fn leading(s: &str, pred: impl Fn(u8) -> bool) -> usize {
    s.bytes().take_while(|&b| pred(b)).count()
}

/// 1 when `s` starts with `;` (the optional semicolon of a reference), else 0.
fn semicolon(s: &str) -> usize {
    usize::from(s.starts_with(';'))
}

/// Parses ASCII digits, clamping anything out of Unicode's range to [`OUT_OF_RANGE`].
fn parse_saturating(digits: &str, radix: u32) -> u32 {
    digits.chars().fold(0u32, |acc, c| {
        let digit = c.to_digit(radix).unwrap_or(0);
        acc.saturating_mul(radix)
            .saturating_add(digit)
            .min(OUT_OF_RANGE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_references_decode_with_and_without_semicolon() {
        assert_eq!(unescape("a &amp; b &lt;c&gt;"), "a & b <c>");
        assert_eq!(unescape("&amp"), "&");
        assert_eq!(unescape("&eacute;t&eacute"), "été");
    }

    #[test]
    fn legacy_names_decode_by_longest_prefix() {
        assert_eq!(unescape("&ampx"), "&x");
        assert_eq!(unescape("&notit;"), "¬it;");
        assert_eq!(unescape("&notin;"), "∉");
        assert_eq!(unescape("&LTIMES;"), "<IMES;");
    }

    #[test]
    fn unknown_names_and_bare_ampersands_stay() {
        assert_eq!(
            unescape("AT&T & co &#; &#x; &bogus;"),
            "AT&T & co &#; &#x; &bogus;"
        );
    }

    #[test]
    fn numeric_references_follow_pythons_special_cases() {
        assert_eq!(unescape("&#65;&#x42;&#X43"), "ABC");
        assert_eq!(unescape("&#0;"), "\u{FFFD}");
        assert_eq!(unescape("&#x80;&#150;"), "€–");
        assert_eq!(unescape("&#x81;"), "\u{81}");
        assert_eq!(
            unescape("&#xD800;&#x110000;&#99999999999999;"),
            "\u{FFFD}".repeat(3)
        );
        assert_eq!(unescape("a&#1;b&#xFFFF;c&#x7f;d"), "abcd");
        assert_eq!(unescape("&#0x41;"), "\u{FFFD}x41;");
        assert_eq!(unescape("&#0000065;"), "A");
    }

    #[test]
    fn huge_decimal_references_decode_to_the_replacement_character() {
        // Python raises ValueError past 4300 digits; we treat it as out of range.
        let huge = format!("&#{};x", "1".repeat(5000));
        assert_eq!(unescape(&huge), "\u{FFFD}x");
    }

    #[test]
    fn python_unescape_is_applied_once_per_call() {
        assert_eq!(unescape("&amp;amp;"), "&amp;");
        assert_eq!(unescape(&unescape("&amp;amp;amp;")), "&amp;");
    }

    #[test]
    fn names_longer_than_32_characters_are_cut_at_32() {
        let long = format!("&{};", "a".repeat(40));
        assert_eq!(unescape(&long), long);
        assert_eq!(unescape("&CounterClockwiseContourIntegral;"), "∳");
    }

    #[test]
    fn ftfy_unescape_needs_the_semicolon() {
        assert_eq!(ftfy_unescape("&amp &amp; &lt;b&gt;"), "&amp & <b>");
        assert_eq!(ftfy_unescape("this&not that"), "this&not that");
    }

    #[test]
    fn ftfy_unescape_knows_upper_case_entities() {
        assert_eq!(ftfy_unescape("P&EACUTE;REZ"), "PÉREZ");
        assert_eq!(ftfy_unescape("BUNDESSTRA&SZLIG;E"), "BUNDESSTRASSE");
        assert_eq!(
            ftfy_unescape("&ntilde; &Ntilde; &NTILDE; &nTILDE;"),
            "ñ Ñ Ñ &nTILDE;"
        );
        assert_eq!(ftfy_unescape("&LTIMES;"), "&LTIMES;");
    }

    #[test]
    fn ftfy_unescape_rejects_partial_numeric_decodes() {
        assert_eq!(ftfy_unescape("&#x41;&#65;"), "AA");
        assert_eq!(ftfy_unescape("&#59;"), "&#59;");
        assert_eq!(ftfy_unescape("&#65x;"), "&#65x;");
    }

    #[test]
    fn ftfy_unescape_ignores_names_past_24_characters() {
        assert_eq!(
            ftfy_unescape("&CounterClockwiseContourIntegral;"),
            "&CounterClockwiseContourIntegral;"
        );
    }

    #[test]
    fn entity_table_is_sorted_for_binary_search() {
        assert!(HTML5.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(INVALID_CHARREFS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(INVALID_CODEPOINTS.windows(2).all(|w| w[0] < w[1]));
    }
}
