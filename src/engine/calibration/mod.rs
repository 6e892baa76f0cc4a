//! The calibration set compiled into the binary: the inputs the start-up precision check
//! (`precision/`) runs through a tower's arithmetics, on the weights being served.
//!
//! Eight real photos of varied content (a cat, coffee, a face, a rocket launch, grayscale
//! scenes, coins, a texture, a flower), downscaled to 256 px on the short side by
//! `make_photos.py` (181 KB in all; sources and licences in `LICENSES.md`), and 32 texts in 15
//! scripts (`texts.txt`, one a line): 24 short queries and 8 paragraphs longer than the 77
//! tokens the text tower reads, so that every position embedding and the longest plans are
//! exercised.

use crate::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy, ImageError};
use crate::preprocess::pixels::{PixelTensor, PreprocessConfig};

/// The photos, by file name.
pub const PHOTOS: [(&str, &[u8]); 8] = [
    ("cat.jpg", include_bytes!("photos/cat.jpg")),
    ("coffee.jpg", include_bytes!("photos/coffee.jpg")),
    ("astronaut.jpg", include_bytes!("photos/astronaut.jpg")),
    ("rocket.jpg", include_bytes!("photos/rocket.jpg")),
    ("cameraman.jpg", include_bytes!("photos/cameraman.jpg")),
    ("coins.jpg", include_bytes!("photos/coins.jpg")),
    ("brick.jpg", include_bytes!("photos/brick.jpg")),
    ("flower.jpg", include_bytes!("photos/flower.jpg")),
];

/// The texts, as written (the tokenizer cleans and truncates them like any request's).
pub fn texts() -> Vec<&'static str> {
    include_str!("texts.txt")
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
}

/// The photos as the image tower's input, through the model folder's own preprocessing.
pub fn pixels(preprocess: &PreprocessConfig) -> Result<Vec<PixelTensor>, ImageError> {
    PHOTOS
        .iter()
        .map(|(_, bytes)| {
            decode_rgb(bytes, &DecodeLimits::default(), ExifPolicy::Ignore)
                .map(|img| preprocess.tensor(&img))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_large_varied_and_small() {
        let bytes: usize = PHOTOS.iter().map(|(_, b)| b.len()).sum();
        assert!(bytes < 300 * 1024, "{bytes} bytes of photos");
        let texts = texts();
        assert!(texts.len() >= 32, "{} texts", texts.len());
        // Scripts, by a letter of each: Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
        // Bengali, Thai, Han, Kana, Hangul, Georgian, Armenian, Tamil, Ethiopic.
        let scripts = [
            'a', 'к', 'λ', 'ر', 'ס', 'प', 'ন', 'ต', '熊', 'の', '서', 'თ', 'Ե', 'க', 'አ',
        ];
        for letter in scripts {
            assert!(
                texts.iter().any(|t| t.contains(letter)),
                "no text with {letter}"
            );
        }
        let long = texts.iter().filter(|t| t.chars().count() > 140).count();
        assert!(long >= 8, "{long} long texts");
    }

    #[test]
    fn every_photo_decodes() {
        for (name, bytes) in PHOTOS {
            let img = decode_rgb(bytes, &DecodeLimits::default(), ExifPolicy::Ignore)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(img.width().min(img.height()), 256, "{name}");
        }
    }
}
