//! `flm-edge licenses`: the notices of the code built into the binary that asks for one to
//! go with it: WebRTC's AEC3 (BSD), libopus (BSD), llama.cpp and ggml (MIT), and the Rust
//! crates' licenses and notices (`licenses/`, the crates' list made by
//! `licenses/rust-crates.py`).

use std::io::Write;

use anyhow::{Context, Result};

/// Each notice: what it covers, and its text.
pub const NOTICES: [(&str, &str); 4] = [
    (
        "WebRTC AEC3 (sonora)",
        include_str!("../../licenses/webrtc-aec3.txt"),
    ),
    ("libopus", include_str!("../../licenses/libopus.txt")),
    (
        "llama.cpp and ggml",
        include_str!("../../licenses/llama.cpp.txt"),
    ),
    (
        "Rust crates",
        include_str!("../../licenses/rust-crates.txt"),
    ),
];

pub fn exec() -> Result<()> {
    let mut text =
        String::from("flm-edge includes code by others, under these licenses and notices.\n");
    for (what, notice) in NOTICES {
        let rule = "#".repeat(78);
        text += &format!("\n{rule}\n# {what}\n{rule}\n\n{notice}");
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A reader that stopped early (`| head`) wanted no more.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the notices"),
    }
}
