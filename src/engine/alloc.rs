//! How the process hands memory back to the OS around model loading (glibc only).
//!
//! Loading parses two ONNX files (1.4 GB of weights), types, declutters and packs them, and
//! frees most of that again. glibc's malloc raises its mmap threshold each time a large block
//! is freed, so later large tensors come from the heap, and the freed heap stays resident:
//! measured on the full-size model, 2.34 GB RSS once ready with glibc's defaults, 1.53 GB with
//! a fixed threshold. [`before_load`] fixes the thresholds, so tensors above 128 KB are mapped
//! and unmapped on their own; [`after_load`] trims whatever the heap still holds free, then
//! raises the thresholds so that inference reuses its buffers: mapping each activation afresh
//! cost a third of the image tower's throughput (batch 8, one thread: 6.1 -> 9.0 images/s once
//! buffers are reused; text 16 tokens x 32: 22 -> 31 texts/s).
//!
//! Under load the heaps also keep the buffers of the runs in flight, and after it they hold
//! them free (about 100 MB on the full-size model: 1466 -> 1374 MB once released after a load
//! test): the server calls [`release_free_memory`] once both towers have been idle a while.
//!
//! Its unsafe blocks are calls into glibc, which take plain integers and have no
//! preconditions (the crate's other unsafe code is the AVX2 resize passes and the AVX512-BF16
//! products, each proving its own precondition). Other allocators and platforms get no-ops.

/// Allocations from this size up get their own mapping, returned to the OS when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Most malloc arenas. glibc gives each thread that allocates under contention an arena of its
/// own, and each keeps the activation buffers of its last runs: with 2 arenas the server held
/// 1468 MB after a load test against 1522 MB with glibc's default (8 per core), at the same
/// throughput.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Fixes glibc's mmap and trim thresholds (they otherwise grow with the largest block freed).
#[allow(unsafe_code)]
pub fn before_load() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers, touches only the allocator's own settings and may be
    // called at any time; a rejected value is reported by its return value and changes nothing.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Once loaded, blocks up to this size come from the heap and are reused between runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const STEADY_MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of a heap that glibc keeps for the next runs instead of trimming.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const STEADY_TRIM_THRESHOLD: libc::c_int = 16 << 20;

/// Returns the memory glibc holds free, in every arena and not only at the top of a heap, to
/// the OS. It walks the arenas under their locks; meant for when the towers are idle.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `after_load`: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the free memory at the top of glibc's heaps to the OS, then lets inference reuse
/// its activation buffers: with the load's 128 KB threshold every activation of a run was a
/// fresh mapping, zeroed page by page by the kernel and unmapped after the run.
#[allow(unsafe_code)]
pub fn after_load() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes a padding
    // size and may be called at any time from any thread. mallopt as in `before_load`.
    unsafe {
        libc::malloc_trim(0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD);
    }
}
