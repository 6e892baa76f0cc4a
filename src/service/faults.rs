//! Test hooks (cargo feature `fault-injection`; the test suite turns it on, a release build
//! has none of this): make the image encoder fail on chosen items exactly as a bad input
//! would, by handing it NaN pixels, so tests can show that one bad item fails only itself.

use std::sync::atomic::{AtomicBool, Ordering};

/// Which items the encoder is made to fail on.
#[derive(Debug, Default)]
pub struct Faults {
    /// Images of one flat colour (every value of a channel the same) get NaN pixels, so the
    /// encoder's output for them is not a usable embedding.
    uniform_images_to_nan: AtomicBool,
}

impl Faults {
    /// Turns the NaN-for-flat-images fault on or off.
    pub fn fail_uniform_images(&self, on: bool) {
        self.uniform_images_to_nan.store(on, Ordering::SeqCst);
    }

    /// The views the encoder gets: `nan` (at least as long as any view) in place of each
    /// flat-coloured image while the fault is on.
    pub fn apply<'a>(&self, views: Vec<&'a [f32]>, nan: &'a [f32]) -> Vec<&'a [f32]> {
        if !self.uniform_images_to_nan.load(Ordering::SeqCst) {
            return views;
        }
        views
            .into_iter()
            .map(|px| if is_uniform(px) { &nan[..px.len()] } else { px })
            .collect()
    }
}

/// True when the first channel's values are all equal.
fn is_uniform(px: &[f32]) -> bool {
    let plane = &px[..px.len() / 3];
    plane.iter().all(|&v| v == plane[0])
}
