//! Image bytes -> decode_rgb -> PreprocessConfig::tensor: never a panic, never an allocation
//! past the limits, and every image that decodes becomes a finite 3 x 224 x 224 tensor.
#![no_main]

use clipserve::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy};
use clipserve::preprocess::pixels::PreprocessConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A smaller pixel limit than the server's keeps each run fast; the code path is the same.
    let limits = DecodeLimits::for_pixels(4_000_000);
    let exif = if data.len() % 2 == 0 {
        ExifPolicy::Apply
    } else {
        ExifPolicy::Ignore
    };
    if let Ok(rgb) = decode_rgb(data, &limits, exif) {
        assert!(u64::from(rgb.width()) * u64::from(rgb.height()) <= limits.max_pixels);
        let tensor = PreprocessConfig::default().tensor(&rgb);
        assert_eq!(tensor.as_slice().len(), 3 * 224 * 224);
        assert!(tensor.as_slice().iter().all(|v| v.is_finite()));
    }
});
