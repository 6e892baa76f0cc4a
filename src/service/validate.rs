//! The rules every request's items must pass, one function per rule, each with its one message
//! (see [`ServiceError`]'s variants). The HTTP extractors, the routes and the service itself
//! all call these; nothing else checks the same thing.

use base64::Engine as _;
use bytes::Bytes;

use super::ServiceError;

/// A request carries between one and `max` items.
pub fn count(what: &'static str, count: usize, max: usize) -> Result<(), ServiceError> {
    if count == 0 {
        return Err(ServiceError::Empty { what });
    }
    if count > max {
        return Err(ServiceError::TooMany { what, count, max });
    }
    Ok(())
}

/// At most `max` items: for a count still growing as a body streams in.
pub fn at_most(what: &'static str, count: usize, max: usize) -> Result<(), ServiceError> {
    if count > max {
        return Err(ServiceError::TooMany { what, count, max });
    }
    Ok(())
}

/// A text no longer than `max` characters (`context` is the model's length in tokens, which
/// the message names).
pub fn text_length(
    index: usize,
    text: &str,
    max: usize,
    context: usize,
) -> Result<(), ServiceError> {
    let chars = text.chars().count();
    if chars > max {
        return Err(ServiceError::TextTooLong {
            index,
            chars,
            max,
            context,
        });
    }
    Ok(())
}

/// Decodes each string as a `data:` URI or bare base64 (see [`image_data`]).
pub fn image_data_list(items: &[String]) -> Result<Vec<Bytes>, ServiceError> {
    items
        .iter()
        .enumerate()
        .map(|(index, s)| {
            image_data(s).map_err(|message| ServiceError::BadImageData { index, message })
        })
        .collect()
}

/// Decodes one image string: `data:<type>;base64,<data>` or bare base64. Whitespace (line
/// breaks from MIME encoders) is ignored; padding is optional. A URL is refused: the service
/// never fetches anything.
pub fn image_data(s: &str) -> Result<Bytes, String> {
    if is_url(s) {
        return Err(
            "image URLs are not fetched: send the image itself as base64 or a data URI".into(),
        );
    }
    let data = if let Some(rest) = s.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or("a data URI needs a comma before its data")?;
        if !header.ends_with(";base64") {
            return Err("only base64 data URIs are accepted (`data:image/png;base64,...`)".into());
        }
        data
    } else {
        s
    };
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err("empty image data".into());
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(&compact)
        .map(Bytes::from)
        .map_err(|e| format!("invalid base64 ({e}); send standard base64 or a data URI"))
}

/// Whether an image string is a URL (of a scheme a client might expect to be fetched).
fn is_url(s: &str) -> bool {
    let head = s
        .trim_start()
        .chars()
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    ["http://", "https://", "file:", "ftp://"]
        .iter()
        .any(|scheme| head.starts_with(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris_and_bare_base64_decode_the_same() {
        let a = image_data("data:image/png;base64,aGVsbG8=").unwrap();
        let b = image_data("aGVs\nbG8").unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..], b"hello");
    }

    #[test]
    fn malformed_base64_is_refused_with_a_reason() {
        assert!(image_data("data:image/png,raw")
            .unwrap_err()
            .contains("base64"));
        assert!(image_data("data:image/png;base64")
            .unwrap_err()
            .contains("comma"));
        assert!(image_data("@@@").unwrap_err().contains("invalid base64"));
        assert!(image_data("  ").unwrap_err().contains("empty"));
        for url in [
            "https://example.com/a.jpg",
            "HTTP://x/y",
            "file:///etc/passwd",
        ] {
            assert!(
                image_data(url).unwrap_err().contains("not fetched"),
                "{url}"
            );
        }
    }

    #[test]
    fn a_bad_item_is_named_by_its_position() {
        let items = vec!["aGVsbG8=".to_string(), "https://x/y.jpg".to_string()];
        let e = image_data_list(&items).unwrap_err();
        assert_eq!(e.index(), Some(1));
    }

    #[test]
    fn counts_must_be_between_one_and_the_limit() {
        assert!(count("texts", 1, 1).is_ok());
        assert_eq!(
            count("texts", 0, 1),
            Err(ServiceError::Empty { what: "texts" })
        );
        assert_eq!(
            count("texts", 2, 1),
            Err(ServiceError::TooMany {
                what: "texts",
                count: 2,
                max: 1
            })
        );
        assert!(at_most("images", 0, 1).is_ok());
    }

    #[test]
    fn texts_over_the_character_limit_are_refused_with_their_length() {
        assert!(text_length(0, "abc", 3, 77).is_ok());
        let e = text_length(4, "日本語です", 4, 77).unwrap_err();
        assert_eq!(
            e,
            ServiceError::TextTooLong {
                index: 4,
                chars: 5,
                max: 4,
                context: 77
            }
        );
        assert!(e
            .to_string()
            .contains("text 4 has 5 characters; the limit is 4"));
    }
}
