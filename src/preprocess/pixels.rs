//! RGB image to the visual tower's input: OpenCLIP's eval transform, step for step.
//!
//! This module owns the model folder's `visual/preprocess_cfg.json` ([`PreprocessConfig`]: size,
//! mean, std, interpolation, resize mode, fill colour, each checked with an error naming the
//! field), the geometry of the three resize modes (torchvision's `Resize` + `CenterCrop` for
//! "shortest", open_clip's `ResizeKeepRatio` + `CenterCropOrPad` for "longest", an exact resize
//! for "squash"), and the final `ToTensor` + `Normalize` into a CHW [`PixelTensor`]. Resampling
//! itself is [`super::resize`]; only the window that survives the crop is ever computed.

use image::{Rgb, RgbImage};
use serde::Deserialize;
use serde_json::Value;

use super::resize::{resize_window, Filter, Window};

/// OpenAI CLIP's normalisation mean, open_clip's default (the Python literals; torch rounds
/// them to f32 as `as f32` does).
pub const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalisation std, open_clip's default.
pub const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

const fn to_f32(v: [f64; 3]) -> [f32; 3] {
    [v[0] as f32, v[1] as f32, v[2] as f32]
}

/// How the image is brought to the model's input size (open_clip's `resize_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Shortest side to the target, then centre crop (OpenCLIP's default).
    Shortest,
    /// Longest side to the target, then centre crop or pad with the fill colour.
    Longest,
    /// Resize to exactly the target, ignoring the aspect ratio.
    Squash,
}

/// A model's image preprocessing, validated: every value here is one open_clip accepts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub struct PreprocessConfig {
    height: u32,
    width: u32,
    mean: [f32; 3],
    std: [f32; 3],
    filter: Filter,
    resize_mode: ResizeMode,
    fill_color: u8,
}

/// A field of `preprocess_cfg.json` that open_clip would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("preprocess config field `{field}`: {reason}")]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The offending field, for start-up messages that name file and field.
    pub fn field(&self) -> &str {
        self.field
    }
}

impl Default for PreprocessConfig {
    /// open_clip's defaults: 224, OpenAI mean and std, bicubic, shortest, fill 0.
    fn default() -> PreprocessConfig {
        PreprocessConfig {
            height: 224,
            width: 224,
            mean: to_f32(OPENAI_MEAN),
            std: to_f32(OPENAI_STD),
            filter: Filter::Bicubic,
            resize_mode: ResizeMode::Shortest,
            fill_color: 0,
        }
    }
}

impl TryFrom<Value> for PreprocessConfig {
    type Error = ConfigError;

    fn try_from(value: Value) -> Result<Self, ConfigError> {
        PreprocessConfig::from_json(value)
    }
}

impl PreprocessConfig {
    /// Reads a parsed `preprocess_cfg.json`; absent or null fields take open_clip's defaults,
    /// unknown keys are ignored, and a value open_clip would reject is an error naming its field.
    pub fn from_json(value: Value) -> Result<PreprocessConfig, ConfigError> {
        let Value::Object(map) = value else {
            return Err(ConfigError::new("(document)", "expected a JSON object"));
        };
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());
        let mut cfg = PreprocessConfig::default();
        if let Some(v) = get("size") {
            (cfg.height, cfg.width) = parse_size(v)?;
        }
        if let Some(v) = get("mode") {
            if v.as_str() != Some("RGB") {
                return Err(ConfigError::new(
                    "mode",
                    format!("only \"RGB\" is supported, got {v}"),
                ));
            }
        }
        if let Some(v) = get("mean") {
            cfg.mean = parse_triple("mean", v, |x| x.is_finite())?;
        }
        if let Some(v) = get("std") {
            cfg.std = parse_triple("std", v, |x| x.is_finite() && x > 0.0)?;
        }
        if let Some(v) = get("interpolation") {
            cfg.filter = match v.as_str() {
                // open_clip ignores "random" at inference and uses bicubic.
                Some("bicubic" | "random") => Filter::Bicubic,
                Some("bilinear") => Filter::Bilinear,
                _ => {
                    let reason =
                        format!("expected \"bicubic\", \"bilinear\" or \"random\", got {v}");
                    return Err(ConfigError::new("interpolation", reason));
                }
            };
        }
        if let Some(v) = get("resize_mode") {
            cfg.resize_mode = match v.as_str() {
                Some("shortest") => ResizeMode::Shortest,
                Some("longest") => ResizeMode::Longest,
                Some("squash") => ResizeMode::Squash,
                _ => {
                    let reason =
                        format!("expected \"shortest\", \"longest\" or \"squash\", got {v}");
                    return Err(ConfigError::new("resize_mode", reason));
                }
            };
        }
        if let Some(v) = get("fill_color") {
            cfg.fill_color = v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| {
                    ConfigError::new("fill_color", format!("expected 0..=255, got {v}"))
                })?;
        }
        Ok(cfg)
    }

    /// The model's input size as (height, width).
    pub fn size(&self) -> (u32, u32) {
        (self.height, self.width)
    }

    /// Per-channel normalisation mean.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Per-channel normalisation std.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// The resampling filter of the resize step.
    pub fn filter(&self) -> Filter {
        self.filter
    }

    /// How the image is fitted to the input size.
    pub fn resize_mode(&self) -> ResizeMode {
        self.resize_mode
    }

    /// Padding value for "longest" mode.
    pub fn fill_color(&self) -> u8 {
        self.fill_color
    }

    /// Resize and crop (or pad) to the input size: the uint8 image open_clip's transform holds
    /// just before `ToTensor`.
    pub fn crop(&self, img: &RgbImage) -> RgbImage {
        let geo = self.geometry(img.width(), img.height());
        let mut out = RgbImage::from_pixel(self.width, self.height, Rgb([geo.fill; 3]));
        // The part of the crop rectangle that lies on the resized image; the rest is padding.
        let span = |off: i64, len: u32, size: u32| {
            let start = off.max(0);
            let end = (off + i64::from(len)).min(i64::from(size));
            (start < end).then_some((start as u32, (end - start) as u32, (start - off) as u32))
        };
        let (Some((left, w, dst_x)), Some((top, h, dst_y))) = (
            span(geo.off_x, self.width, geo.resized_w),
            span(geo.off_y, self.height, geo.resized_h),
        ) else {
            return out;
        };
        if img.width() == 0 || img.height() == 0 {
            return out;
        }
        let window = Window {
            left,
            top,
            width: w,
            height: h,
        };
        let part = resize_window(img, geo.resized_w, geo.resized_h, geo.filter, window)
            .expect("sizes are non-zero and the window lies inside the resized image");
        image::imageops::replace(&mut out, &part, i64::from(dst_x), i64::from(dst_y));
        out
    }

    /// `ToTensor` then `Normalize`, in f32 as torch computes them, laid out CHW.
    pub fn normalize(&self, crop: &RgbImage) -> PixelTensor {
        let (w, h) = crop.dimensions();
        let plane = w as usize * h as usize;
        let mut data = vec![0f32; 3 * plane];
        for (i, px) in crop.pixels().enumerate() {
            for c in 0..3 {
                let x = f32::from(px.0[c]) / 255.0;
                data[c * plane + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        PixelTensor {
            data,
            height: h,
            width: w,
        }
    }

    /// The whole transform: [`crop`](Self::crop) then [`normalize`](Self::normalize).
    pub fn tensor(&self, img: &RgbImage) -> PixelTensor {
        self.normalize(&self.crop(img))
    }

    /// Size after the resize step, where the crop starts in it, and the padding value.
    fn geometry(&self, src_w: u32, src_h: u32) -> Geometry {
        let (th, tw) = (self.height, self.width);
        let (w, h) = (u64::from(src_w.max(1)), u64::from(src_h.max(1)));
        let (resized_w, resized_h, filter, fill) = match self.resize_mode {
            ResizeMode::Shortest if th == tw => {
                // torchvision's Resize(int): _compute_resized_output_size.
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = (u64::from(th) * long) as f64 / short as f64;
                let new_long = (new_long as u64).clamp(1, u64::from(u32::MAX)) as u32;
                let (rw, rh) = if w <= h {
                    (th, new_long)
                } else {
                    (new_long, th)
                };
                (rw, rh, self.filter, 0)
            }
            // open_clip's ResizeKeepRatio(size) keeps its own default, bicubic, here.
            ResizeMode::Shortest => {
                let (rw, rh) = keep_ratio(w, h, tw, th, false);
                (rw, rh, Filter::Bicubic, 0)
            }
            ResizeMode::Longest => {
                let (rw, rh) = keep_ratio(w, h, tw, th, true);
                (rw, rh, self.filter, self.fill_color)
            }
            ResizeMode::Squash => (tw, th, self.filter, 0),
        };
        Geometry {
            resized_w,
            resized_h,
            off_x: crop_offset(resized_w, tw),
            off_y: crop_offset(resized_h, th),
            filter,
            fill,
        }
    }
}

struct Geometry {
    resized_w: u32,
    resized_h: u32,
    /// Where the crop's first column lies in the resized image (negative: left padding).
    off_x: i64,
    off_y: i64,
    filter: Filter,
    fill: u8,
}

/// open_clip's `ResizeKeepRatio.get_params` (no random scale): Python floats, `round` to even.
/// A side that would round to 0 becomes 1 (PIL would refuse to resize to it).
fn keep_ratio(w: u64, h: u64, tw: u32, th: u32, longest: bool) -> (u32, u32) {
    let (ratio_h, ratio_w) = (h as f64 / f64::from(th), w as f64 / f64::from(tw));
    let ratio = if longest {
        ratio_h.max(ratio_w)
    } else {
        ratio_h.min(ratio_w)
    };
    let side =
        |x: u64| ((x as f64 / ratio).round_ties_even() as u64).clamp(1, u64::from(u32::MAX)) as u32;
    (side(w), side(h))
}

/// torchvision's `center_crop` (and open_clip's `center_crop_or_pad`) along one axis: pad
/// `(crop - size) // 2` before when the image is smaller, else start at
/// `int(round((size - crop) / 2.0))` with Python's round half to even.
fn crop_offset(size: u32, crop: u32) -> i64 {
    if crop > size {
        -i64::from((crop - size) / 2)
    } else {
        (f64::from(size - crop) / 2.0).round_ties_even() as i64
    }
}

/// Normalised pixels in CHW order (3 x height x width), what the visual tower takes per image.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelTensor {
    data: Vec<f32>,
    height: u32,
    width: u32,
}

impl PixelTensor {
    /// The values, channel-major: all R, then all G, then all B, each row by row.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The values, without copying.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Rows per channel.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Columns per channel.
    pub fn width(&self) -> u32 {
        self.width
    }
}

/// `size` is an int (square) or `[height, width]`, as in open_clip.
fn parse_size(v: &Value) -> Result<(u32, u32), ConfigError> {
    let side = |x: &Value| {
        x.as_u64()
            .filter(|n| (1..=8192).contains(n))
            .map(|n| n as u32)
    };
    let parsed = match v {
        Value::Array(a) if a.len() == 2 => side(&a[0]).zip(side(&a[1])),
        Value::Array(a) if a.len() == 1 => side(&a[0]).map(|s| (s, s)),
        other => side(other).map(|s| (s, s)),
    };
    parsed.ok_or_else(|| {
        ConfigError::new(
            "size",
            format!("expected an integer or [height, width] in 1..=8192, got {v}"),
        )
    })
}

/// `mean` / `std` are one number (used for all channels) or three, as in open_clip.
fn parse_triple(
    field: &'static str,
    v: &Value,
    ok: fn(f64) -> bool,
) -> Result<[f32; 3], ConfigError> {
    let num = |x: &Value| x.as_f64().filter(|&f| ok(f)).map(|f| f as f32);
    let parsed = match v {
        Value::Array(a) if a.len() == 3 => match (num(&a[0]), num(&a[1]), num(&a[2])) {
            (Some(r), Some(g), Some(b)) => Some([r, g, b]),
            _ => None,
        },
        other => num(other).map(|x| [x; 3]),
    };
    parsed.ok_or_else(|| {
        ConfigError::new(
            field,
            format!("expected a number or 3 valid numbers, got {v}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<PreprocessConfig, ConfigError> {
        PreprocessConfig::from_json(v)
    }

    #[test]
    fn open_clips_own_config_for_this_model_parses() {
        let c = cfg(
            json!({"size": [224, 224], "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD,
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}),
        )
        .expect("valid config");
        assert_eq!(c, PreprocessConfig::default());
        assert_eq!(cfg(json!({"size": 224})).expect("valid").size(), (224, 224));
        assert_eq!(
            cfg(json!({"size": [256, 192]})).expect("valid").size(),
            (256, 192)
        );
    }

    #[test]
    fn unknown_values_are_errors_naming_the_field() {
        for (doc, field) in [
            (json!({"interpolation": "lanczos"}), "interpolation"),
            (json!({"resize_mode": "fit"}), "resize_mode"),
            (json!({"mode": "L"}), "mode"),
            (json!({"size": 0}), "size"),
            (json!({"size": [224, "x"]}), "size"),
            (json!({"std": [0.2, 0.0, 0.2]}), "std"),
            (json!({"mean": [0.5, 0.5]}), "mean"),
            (json!({"fill_color": 300}), "fill_color"),
        ] {
            let err = cfg(doc).expect_err("invalid config");
            assert_eq!(err.field(), field);
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn deserializing_validates_too() {
        let e = serde_json::from_str::<PreprocessConfig>(r#"{"resize_mode": "zoom"}"#);
        assert!(e.expect_err("invalid").to_string().contains("resize_mode"));
    }

    #[test]
    fn shortest_follows_torchvision_sizes_and_bankers_rounding_of_the_crop() {
        let c = PreprocessConfig::default();
        let g = c.geometry(451, 300);
        // int(224 * 451 / 300) = 336; crop_left = round(112 / 2) = 56
        assert_eq!(
            (g.resized_w, g.resized_h, g.off_x, g.off_y),
            (336, 224, 56, 0)
        );
        // 225 wide: round(0.5) = 0 in Python
        assert_eq!(crop_offset(225, 224), 0);
        assert_eq!(crop_offset(227, 224), 2);
        assert_eq!(crop_offset(200, 224), -12);
    }

    #[test]
    fn longest_pads_with_the_fill_colour() {
        let c = cfg(json!({"resize_mode": "longest", "fill_color": 9})).expect("valid");
        let img = RgbImage::from_pixel(200, 100, Rgb([50, 60, 70]));
        let out = c.crop(&img);
        assert_eq!(out.dimensions(), (224, 224));
        assert_eq!(out.get_pixel(0, 0).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(112, 112).0, [50, 60, 70]);
        // 112 rows of image, 56 rows of padding above
        assert_eq!(out.get_pixel(0, 55).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(0, 56).0, [50, 60, 70]);
    }

    #[test]
    fn squash_ignores_the_aspect_ratio() {
        let c = cfg(json!({"resize_mode": "squash"})).expect("valid");
        let img = RgbImage::from_pixel(500, 20, Rgb([1, 2, 3]));
        let out = c.crop(&img);
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [1, 2, 3]));
    }

    #[test]
    fn a_one_pixel_image_and_a_thin_strip_work() {
        let c = PreprocessConfig::default();
        let one = RgbImage::from_pixel(1, 1, Rgb([4, 5, 6]));
        assert!(c.crop(&one).pixels().all(|p| p.0 == [4, 5, 6]));
        // Its full resize would be 224 x 4,480,000 pixels; only the crop is computed.
        let strip = RgbImage::from_pixel(1, 20_000, Rgb([7, 8, 9]));
        assert!(c.crop(&strip).pixels().all(|p| p.0 == [7, 8, 9]));
    }

    #[test]
    fn normalize_gives_torchs_exact_f32_values_in_chw_order() {
        // torchvision: ToTensor()(uint8 image) then Normalize(OPENAI_MEAN, OPENAI_STD), as bits.
        const TORCH: [[u32; 4]; 3] = [
            [0xbfe568dc, 0xbfdfcdc6, 0x3d9c5620, 0x3ff71541],
            [0xbfe044b8, 0xbfda8165, 0x3e2cf36b, 0x4004cae5],
            [0xbfbd77d8, 0xbfb801f4, 0x3eae0dc4, 0x40095660],
        ];
        let levels = [0u8, 3, 128, 255];
        let img = RgbImage::from_fn(4, 1, |x, _| Rgb([levels[x as usize]; 3]));
        let t = PreprocessConfig::default().normalize(&img);
        assert_eq!((t.height(), t.width()), (1, 4));
        let bits: Vec<u32> = t.as_slice().iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, TORCH.concat());
    }
}
