//! The board's web page (`/`, built into the binary) in a real browser: headless Chromium
//! driven by Playwright (`tests/web/page_test.py`) against `flm-edge serve` with the small
//! model: the talk view with the network as the audio source and the golden speech clip as
//! the fake microphone, and the captions view during a replay through `serve` (stepping as it
//! does on ALSA devices), and the page on a board with a token. Skipped, saying so, where
//! Chromium or Playwright is not installed.
//! The screenshots are left in `target/page-shots/` (README shows them from
//! `tests/web/screenshots/`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// One daemon at a time, so that its steps keep to real time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of `.ci/install-deps`' environment, or None (the reason printed) where it or
/// Chromium is missing; in CI (`CI` set), where `.ci/install-deps` has run, a missing one
/// fails the test instead.
fn browser_driver(test: &str) -> Option<PathBuf> {
    let py = python_env_path();
    let has_playwright = Command::new(&py)
        .args(["-c", "import playwright.async_api"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    let has_chromium = Path::new(CHROMIUM).exists();
    if has_chromium && has_playwright {
        return Some(py);
    }
    let found = |b: bool| if b { "found" } else { "missing" };
    let why = format!(
        "{test}: needs {CHROMIUM} (Debian's chromium: {}) and Playwright in {} \
         (playwright: {}); .ci/install-deps installs both",
        found(has_chromium),
        py.display(),
        found(has_playwright),
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED {why}");
    None
}

/// `serve` with the seed-3 small model and `[server]` on a free port, with the keys
/// `server`; `args` added.
fn serve(name: &str, args: &[&str], server: &str) -> (Reaped, u16, Scratch) {
    let dir = scratch(name);
    std::fs::create_dir_all(&*dir).unwrap();
    let port = free_port();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "threads = 2\n[schedule]\nlatency_frames = 6\nmax_backlog_frames = 15\n[status]\n\
             metrics = \"\"\nevents = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n{server}",
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
            .args(args)
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
    (daemon, port, dir)
}

/// Runs the page test with `args` against the daemon, then stops the daemon (SIGTERM);
/// both must succeed. Returns the test's summary line.
fn page_test(py: &Path, mut daemon: Reaped, port: u16, args: &[&str]) -> String {
    let shots = root().join("target/page-shots");
    let out = Command::new(py)
        .arg(root().join("tests/web/page_test.py"))
        .args(["--url", &format!("http://127.0.0.1:{port}/")])
        .args(["--shots", s(&shots)])
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if daemon.try_wait().unwrap().is_none() {
        signal(&daemon, SIGTERM);
    }
    let (st, log) = exit_of(&mut daemon);
    assert!(out.status.success(), "{said}{err}\nserve's log:\n{log}");
    assert!(st.success(), "serve exited {st}: {log}");
    said
}

#[test]
fn the_page_talks_and_shows_captions_in_chromium() {
    let Some(py) = browser_driver("the_page_talks_and_shows_captions_in_chromium") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (daemon, port, _dir) = serve("web-talk", &[], "");
    let wav = format!("{GOLDEN_MIMI}/speech.wav");
    println!("{}", page_test(&py, daemon, port, &["--wav", &wav]));
}

#[test]
fn the_captions_view_shows_a_replay_through_serve() {
    let Some(py) = browser_driver("the_captions_view_shows_a_replay_through_serve") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("web-replay-out");
    std::fs::create_dir_all(&*out).unwrap();
    let wav = format!("{GOLDEN_MIMI}/speech.wav");
    let reply = out.join("reply.wav");
    // The 11 s clip at the real-time pace: the page connects and watches while it plays.
    let (daemon, port, _dir) = serve(
        "web-replay",
        &["--input-wav", &wav, "--output-wav", s(&reply), "--realtime"],
        "",
    );
    println!("{}", page_test(&py, daemon, port, &["--captions-only"]));
}

#[test]
fn the_page_asks_once_for_the_boards_token() {
    let Some(py) = browser_driver("the_page_asks_once_for_the_boards_token") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TOKEN: &str = "page-0123456789abcdef";
    let (daemon, port, _dir) = serve("web-token", &[], &format!("token = \"{TOKEN}\"\n"));
    println!("{}", page_test(&py, daemon, port, &["--token", TOKEN]));
}
