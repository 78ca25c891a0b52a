//! `flm-edge licenses`: every notice the bundled code asks to go with the binary is printed,
//! and the Rust crates' list is that of the crates the binary is built from now.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::flm_edge;

fn licenses() -> String {
    let out = flm_edge(&["licenses"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_required_notice_is_printed() {
    let text = licenses();
    let bsd_binary = "Redistributions in binary form must reproduce the above copyright";
    let mit = "The above copyright notice and this permission notice shall be included";
    // Each notice's own copyright line and its license's condition, in its own part.
    for (part, needs) in [
        (
            "# WebRTC AEC3 (sonora)",
            &["Copyright (c) 2011, The WebRTC Project Authors", bsd_binary][..],
        ),
        (
            "# libopus",
            &["Copyright 2001-2011 Xiph.Org", bsd_binary][..],
        ),
        (
            "# llama.cpp and ggml",
            &[
                "Copyright (c) 2023-2026 The ggml authors",
                "Copyright 2024 Mozilla Foundation",
                mit,
            ][..],
        ),
        (
            "# Rust crates",
            &["sonora-aec3 0.2.0: BSD-3-Clause", "Apache License", mit][..],
        ),
    ] {
        let from = text
            .find(&format!("\n{part}\n"))
            .unwrap_or_else(|| panic!("no `{part}`"));
        let rest = &text[from + part.len() + 2..];
        let body = &rest[..rest.find("\n# ").unwrap_or(rest.len())];
        for need in needs {
            let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat(body).contains(&flat(need)), "{part}: no `{need}`");
        }
    }
}

/// The crates' list is made again from the lock file and must equal the one built in: a
/// dependency added or updated without running the script fails here.
#[test]
fn the_crates_list_is_that_of_the_lock_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("rust-crates.txt");
    let run = Command::new("python3")
        .arg("licenses/rust-crates.py")
        .arg(&fresh)
        .current_dir(root)
        .env("CARGO", env!("CARGO"))
        .output()
        .expect("python3 runs licenses/rust-crates.py");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let fresh = std::fs::read_to_string(&fresh).unwrap();
    let kept = std::fs::read_to_string(format!("{root}/licenses/rust-crates.txt")).unwrap();
    assert!(
        fresh == kept,
        "licenses/rust-crates.txt is out of date: run python3 licenses/rust-crates.py"
    );
    assert!(licenses().contains(&kept));
    // Every crate of the lock file that the list names is at the lock file's version.
    let lock = std::fs::read_to_string(format!("{root}/Cargo.lock")).unwrap();
    let listed: Vec<&str> = kept.lines().skip(3).take_while(|l| !l.is_empty()).collect();
    assert!(listed.len() > 100, "{} crates", listed.len());
    for l in listed {
        let (name, rest) = l.split_once(' ').unwrap();
        let version = rest.split(':').next().unwrap();
        assert!(
            lock.contains(&format!("name = \"{name}\"\nversion = \"{version}\"")),
            "{l}"
        );
    }
}

#[test]
fn a_reader_that_stops_early_is_no_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flm-edge"))
        .arg("licenses")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe is closed here, long before the 400 KB are written.
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");
}
