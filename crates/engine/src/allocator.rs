//! Allocator settings for the engine's access pattern: every layer of a UNet step allocates
//! and frees activation buffers of megabytes to tens of megabytes.
//!
//! With glibc's defaults each such buffer is a fresh `mmap` that the kernel must zero page by
//! page and `munmap` again on free. Raising the mmap threshold to its maximum (32 MiB) and the
//! trim threshold lets freed buffers be reused instead. Measured on `loopback-scaler bench
//! --arch sd15 --size 512 --steps 1`: page faults 3.15 M → 2.33 M, CPU time −10 %, for about
//! 0.2 GiB more peak memory.
//!
//! Blocks over 32 MiB are still mapped afresh each time: at 1024² a UNet step's level-0
//! activations are 42 MB each. While a [`HeapOnly`] is held (the sampling loop, the `bench`
//! steps) every block comes from the heap instead; the VAE passes, whose largest tensors are
//! hundreds of megabytes, keep the mapped blocks, which return to the system on free and so
//! keep the run's peak down. Measured (1024² step −5 %, page faults 2.26 M → 1.07 M): see
//! `docs/performance-avx2.md`, "UNet passes without page faults".

/// Applies the settings; call once, first thing in `main`. A no-op where the C library is
/// not glibc.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The largest value glibc accepts for M_MMAP_THRESHOLD on 64-bit targets.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            // One arena for every thread: the runs' worker threads too allocate from the main
            // heap, where a [`HeapOnly`] phase keeps large blocks (a thread's own arena would
            // map blocks over 64 MiB and unmap its sub-heaps once they are empty).
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Returns the heap's free memory to the system (glibc's `malloc_trim`): for the boundary
/// between phases with different buffers, such as a UNet pass's activations and a VAE pass's
/// larger tensors, so memory the finished phase freed is not counted twice. Costs a few
/// milliseconds; the next phase faults its pages in afresh. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// While one is held, blocks of any size come from the heap and are reused after they are
/// freed, instead of being mapped (and zeroed page by page) afresh (glibc's `M_MMAP_MAX` = 0);
/// for the UNet passes, whose activations are allocated and freed again every layer. When the
/// last one is dropped, large blocks are mapped again and the heap's free memory is returned
/// to the system. A no-op where the C library is not glibc.
#[derive(Debug)]
#[must_use = "the heap-only phase ends when this is dropped"]
pub struct HeapOnly(());

/// Live [`HeapOnly`] values.
static HEAP_ONLY: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// glibc's default `M_MMAP_MAX`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_MMAP_MAX: libc::c_int = 65536;

impl HeapOnly {
    /// Starts (or joins) the heap-only phase.
    pub fn begin() -> Self {
        let mut live = HEAP_ONLY.lock().unwrap_or_else(|e| e.into_inner());
        if *live == 0 {
            set_mmap_max(false);
        }
        *live += 1;
        HeapOnly(())
    }
}

impl Drop for HeapOnly {
    fn drop(&mut self) {
        let mut live = HEAP_ONLY.lock().unwrap_or_else(|e| e.into_inner());
        *live -= 1;
        if *live == 0 {
            set_mmap_max(true);
            release_free_memory();
        }
    }
}

/// Lets glibc map large blocks (`mapped`) or not.
fn set_mmap_max(mapped: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator parameter; glibc takes its lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, if mapped { DEFAULT_MMAP_MAX } else { 0 });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = mapped;
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Whether glibc's `malloc` maps a block of `size` bytes by itself: bit 1 of the size
    /// word in front of the block (its chunk header).
    fn malloc_maps(size: usize) -> bool {
        // SAFETY: the block comes from malloc and is freed once; glibc's chunk header puts
        // the size word with its flag bits in the 8 bytes just before it.
        unsafe {
            let block = libc::malloc(size);
            assert!(!block.is_null(), "malloc({size}) failed");
            let size_word = std::ptr::read_volatile((block as *const usize).sub(1));
            libc::free(block);
            size_word & 2 != 0
        }
    }

    /// A block over glibc's largest mmap threshold (32 MiB) is mapped, except while a
    /// heap-only phase is held.
    #[test]
    fn large_blocks_come_from_the_heap_only_in_a_heap_only_phase() {
        const LARGE: usize = 40 << 20;
        {
            // No other test's phase may start meanwhile.
            let live = HEAP_ONLY.lock().unwrap_or_else(|e| e.into_inner());
            if *live == 0 {
                assert!(malloc_maps(LARGE), "outside a heap-only phase");
            }
        }
        let phase = HeapOnly::begin();
        assert!(!malloc_maps(LARGE), "inside a heap-only phase");
        drop(phase);
    }
}
