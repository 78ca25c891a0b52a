//! Keeps what the step reads from mapped files in memory: the embedding rows of a token not
//! seen before (or evicted under memory pressure) would otherwise be a disk read inside an
//! 80 ms deadline. A range is read in once at load (every page touched) and locked with
//! `mlock`; where the lock is refused (RLIMIT_MEMLOCK), the pages are still in, and one
//! warning says so.

use std::sync::Once;

unsafe extern "C" {
    fn mlock(addr: *const std::ffi::c_void, len: usize) -> std::ffi::c_int;
}

const PAGE: usize = 4096;

/// Touches every page of `bytes` and locks them in memory; returns whether the lock held.
pub fn keep_resident(bytes: &[u8], what: &str) -> bool {
    let mut sum = 0u8;
    for p in bytes.iter().step_by(PAGE) {
        sum = sum.wrapping_add(*p);
    }
    std::hint::black_box(sum);
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: the range is a live borrowed slice; mlock only pins its pages, never changes
    // their contents, and the pages stay pinned until the mapping is unmapped.
    let locked = unsafe { mlock(bytes.as_ptr().cast(), bytes.len()) } == 0;
    if !locked {
        static WARN: Once = Once::new();
        let why = std::io::Error::last_os_error();
        WARN.call_once(|| {
            eprintln!(
                "warning: {what}: not locked in memory ({why}); raise the memlock limit (LimitMEMLOCK) so that evicted pages cannot cost a disk read in a step"
            )
        });
    }
    locked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Locked memory of this process, in KiB (`VmLck`).
    fn locked_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn a_kept_range_is_locked_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.bin");
        std::fs::write(&path, vec![7u8; 64 * PAGE]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only map of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let before = locked_kib();
        // 128 KiB: within the smallest default memlock limit (8 MiB), so the lock must hold.
        assert!(keep_resident(&map[8 * PAGE..40 * PAGE], "test table"));
        assert!(locked_kib() >= before + 128, "{before} -> {}", locked_kib());
    }
}
