//! The page cache of the model files, handed back once the model is loaded. A device backend
//! copies the weights it reads into its own buffers (on a Jetson, in the same DRAM as the page
//! cache): the file's cached pages would be a second copy of the weights until the kernel
//! needs the memory. `posix_fadvise(POSIX_FADV_DONTNEED)` drops a file's cached pages that no
//! mapping uses; the pages still mapped (the CPU backend's weights, the embedding tables a step
//! reads and keeps locked) stay, so this is safe on every backend.

use std::os::fd::AsRawFd;
use std::path::Path;

unsafe extern "C" {
    fn posix_fadvise(
        fd: std::ffi::c_int,
        offset: i64,
        len: i64,
        advice: std::ffi::c_int,
    ) -> std::ffi::c_int;
}

/// Linux's value of POSIX_FADV_DONTNEED.
const POSIX_FADV_DONTNEED: std::ffi::c_int = 4;

/// Drops the cached pages of `path` that no mapping uses. A failure is not an error: the pages
/// are only reclaimed later, under memory pressure.
pub fn drop_unmapped(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the descriptor is open for the call's duration (`file` lives until the end of the
    // function); fadvise only advises the kernel about the file's cached pages, never touches
    // memory of this process; offset 0 and length 0 mean the whole file.
    let rc = unsafe { posix_fadvise(file.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
