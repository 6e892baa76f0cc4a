//! How the process hands memory back to the OS around model loading (glibc only).
//!
//! Loading parses two ONNX files (1.4 GB of weights), types, declutters and packs them, and
//! frees most of that again. glibc's malloc raises its mmap threshold each time a large block
//! is freed, so later large tensors come from the heap, and the freed heap stays resident:
//! measured on the full-size model, 2.34 GB RSS once ready with glibc's defaults, 1.53 GB with
//! a fixed threshold. [`before_load`] fixes the thresholds, so tensors above 128 KB are mapped
//! and unmapped on their own; [`after_load`] trims whatever the heap still holds free.
//!
//! The only unsafe code of the crate: two calls into glibc, which take plain integers and have
//! no preconditions. Other allocators and platforms get no-ops.

/// Allocations from this size up get their own mapping, returned to the OS when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes glibc's mmap and trim thresholds (they otherwise grow with the largest block freed).
#[allow(unsafe_code)]
pub fn before_load() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers, touches only the allocator's own settings and may be
    // called at any time; a rejected value is reported by its return value and changes nothing.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the free memory at the top of glibc's heaps to the OS.
#[allow(unsafe_code)]
pub fn after_load() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes a padding
    // size and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
