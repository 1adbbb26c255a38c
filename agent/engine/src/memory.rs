//! The allocator's settings for a process that moves files: a steady stream of buffers of a
//! few hundred KiB (file data, frames, TLS records) allocated and freed at once.
//!
//! glibc's defaults serve each buffer of 128 KiB or more with a fresh `mmap`, and hand the
//! free memory at the top of each heap back to the kernel whenever it passes 128 KiB. Both mean
//! every buffer's pages fault in again, zeroed by the kernel: copying 200 MiB between two agents
//! took 130,000 page faults and 1,200 `madvise` calls, and about half the agents' CPU time.
//! Keeping freed memory for the next buffer costs no more memory at the peak.
//!
//! glibc also gives every thread that allocates an arena of its own, up to 8 per core, and what
//! is freed in those is hard to hand back: an agent idle after a full scan of a million files
//! held 236 MiB with the default and 50 MiB with one arena per core (2 here), its copy no
//! slower (`bench/million.sh`).

/// Buffers below this come from the heap: above the largest frame and its decompressed body.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory kept at the top of a heap before it goes back to the kernel.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Tunes the allocator as above. Called first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    let arenas = std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2));
    // SAFETY: mallopt only changes allocator parameters, and no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX));
    }
}

/// Other allocators keep freed memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}

/// An empty vector with room reserved for `at_least` elements and at least `MMAP_THRESHOLD`
/// bytes, so that it is a mapping of its own: its pages come in only as it fills, and it grows
/// and shrinks in place (`mremap`). Grown by doubling from the heap, a vector leaves each of
/// its smaller buffers behind as free heap memory that stays resident: tens of MiB for the
/// tree of a million-file scan. For buffers that may grow that large.
pub fn mapped_vec<T>(at_least: usize) -> Vec<T> {
    let room = (MMAP_THRESHOLD as usize).div_ceil(size_of::<T>().max(1));
    Vec::with_capacity(at_least.max(room))
}

/// Hands the memory freed so far back to the kernel, from every arena. For a process about to
/// idle after large work (an agent after a run over a million files), which would otherwise
/// keep it resident, unused, until its next run.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn give_back_freed() {
    // SAFETY: malloc_trim only returns free memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back_freed() {}
