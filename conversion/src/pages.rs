//! Handing the pages of a read-only file mapping back to the kernel once they are converted.

use memmap2::{Mmap, UncheckedAdvice};

const PAGE: usize = 4096;

/// Drops the whole pages inside `[lo, hi)` of `map` from this process's resident set.
/// Only a hint: on failure the pages simply stay resident until the map is dropped.
pub fn release(map: &Mmap, lo: usize, hi: usize) {
    let start = lo.div_ceil(PAGE) * PAGE;
    let end = hi / PAGE * PAGE;
    if end > start {
        // SAFETY: the map is a read-only, file-backed mapping that nothing writes through.
        // MADV_DONTNEED on such pages only drops them; a later read faults them in again from
        // the file with the same contents, so no slice into the map observes a change.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }
}
