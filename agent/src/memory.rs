//! The agent's heap: one malloc arena, and freed pages handed back to the kernel.
//!
//! glibc gives threads arenas of their own (up to eight per core) and keeps what is freed inside
//! them for reuse, resident. The agent's bursts — fifty pods at once (specs, status patches,
//! image manifests, netlink and nftables messages), the kernel's BTF parsed once while the eBPF
//! programs load (about 9 MiB) — leave most of that free once they end. So: one arena (glibc's
//! per-thread caches take the small allocations without its lock, and the agent's work is I/O),
//! large buffers (128 KiB and up) mapped and unmapped on their own rather than kept in the heap,
//! and every two seconds `malloc_trim`, which returns the free pages inside the heap as well as
//! its top. Measured with `cargo xtask bench pods`: about 4 MiB less with 50 pods
//! (docs/benchmarks.md). An operator's own `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins.

use std::time::Duration;

/// How often freed pages go back to the kernel.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Large allocations are mapped on their own from this size (glibc's default, kept fixed).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Sets the allocator up. Called before any other thread starts.
pub fn configure() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // SAFETY: mallopt only adjusts the allocator's parameters; no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the heap's free pages to the kernel now.
pub fn trim() {
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock).
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_INTERVAL`] on the runtime.
pub fn start_trimming() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(TRIM_INTERVAL).await;
            trim();
        }
    });
}
