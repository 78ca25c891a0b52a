//! The board's web page (`/`, built into the binary) in a real browser: headless Chromium
//! driven by Playwright (`tests/web/page_test.py`) against `flm-edge serve` with the small
//! model, the network its audio source, and the golden speech clip as the fake microphone.
//! Skipped, saying so, where Chromium or Playwright is not installed. The screenshots of both
//! views are left in `target/page-shots/`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_page_talks_and_shows_captions_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join("target/pyclient/bin/python");
    let has_playwright = Command::new(&py)
        .args(["-c", "import playwright.async_api"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !Path::new(CHROMIUM).exists() || !has_playwright {
        eprintln!(
            "SKIPPED the_page_talks_and_shows_captions_in_chromium: needs {CHROMIUM} (Debian's \
             chromium: {}) and Playwright in {} (playwright: {})",
            if Path::new(CHROMIUM).exists() {
                "found"
            } else {
                "missing"
            },
            py.display(),
            if has_playwright { "found" } else { "missing" },
        );
        return;
    }

    let dir = scratch("web");
    std::fs::create_dir_all(&*dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "threads = 2\n[schedule]\nlatency_frames = 6\nmax_backlog_frames = 15\n[status]\n\
             metrics = \"\"\nevents = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n",
            s(&dir.join("events.sock"))
        ),
    )
    .unwrap();
    let mut daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_flm-edge"))
            .args([
                "serve",
                "--config",
                s(&cfg),
                "--model",
                s(converted(3, "f32")),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = daemon.try_wait() {
            panic!("serve exited ({st}): {}", exit_of(&mut daemon).1);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let shots = root.join("target/page-shots");
    let out = Command::new(&py)
        .arg(root.join("tests/web/page_test.py"))
        .args(["--url", &format!("http://127.0.0.1:{port}/")])
        .args(["--wav", &format!("{GOLDEN_MIMI}/speech.wav")])
        .args(["--shots", s(&shots)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    signal(&daemon, SIGTERM);
    let (st, log) = exit_of(&mut daemon);
    assert!(out.status.success(), "{said}{err}\nserve's log:\n{log}");
    assert!(st.success(), "serve exited {st}: {log}");
    println!("{said}");
}
