//! The device path, checked where there is no GPU: `selftest` with the CPU on both sides,
//! device choices a build or machine lacks (one line, before any file is read), and what
//! `bench` reports of a step's graph computes, copies and synchronisations.

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn selftest_on_the_cpu_passes_every_check() {
    let out = flm_edge(&[
        "selftest",
        "--backend",
        "cpu",
        "--steps",
        "12",
        "--threads",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("FAIL"))
        .collect();
    // The devices, Mimi's two, the f32 steps' two, two for each of q8_0, q4_k and q3_k.
    assert_eq!(checks.len(), 11, "{stdout}");
    assert!(checks.iter().all(|l| l.starts_with("ok ")), "{stdout}");
    // The same device on both sides computes the same numbers.
    assert!(stdout.contains("100.00 % of 96"), "{stdout}");
    assert!(stdout.contains("12 of 12 steps"), "{stdout}");
    assert!(stdout.contains("0.00e0 over 12 steps"), "{stdout}");
    assert!(
        stdout.contains("ok   devices: cpu: Mimi CPU, steps CPU; cpu: Mimi CPU, steps CPU"),
        "{stdout}"
    );
    for q in ["q8_0", "q4_k", "q3_k"] {
        assert!(
            stdout.contains(&format!(
                "ok   {q}: text logits against the CPU's, largest difference: 0.00e0"
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.ends_with("selftest: all 11 checks passed\n"),
        "{stdout}"
    );
}

#[test]
fn a_device_this_build_lacks_is_one_line_before_any_file_is_read() {
    let missing = Path::new("/nonexistent/model");
    let mut wanted = vec![];
    if !cfg!(feature = "cuda") {
        wanted.push(("cuda", "--features cuda"));
        wanted.push(("cuda1", "--features cuda"));
    }
    if !cfg!(feature = "vulkan") {
        wanted.push(("vulkan", "--features vulkan"));
    }
    if !cfg!(any(feature = "cuda", feature = "vulkan")) {
        wanted.push(("gpu", "CPU backend only"));
    }
    for (backend, hint) in wanted {
        let needles = [&format!("backend {backend}")[..], hint];
        for args in [
            vec!["selftest", "--backend", backend],
            vec!["bench", "step", "--model", s(missing), "--backend", backend],
            vec!["bench", "mimi", "--model", s(missing), "--backend", backend],
            vec![
                "mimi",
                "decode",
                "--model",
                s(missing),
                "--input",
                "x.npy",
                "--output",
                "y.wav",
                "--backend",
                backend,
            ],
            vec!["serve", "--model", s(missing), "--backend", backend],
        ] {
            let out = flm_edge(&args);
            assert_one_line_error(&out, &needles);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.contains("nonexistent"),
                "{args:?}: read a file first: {err}"
            );
        }
    }
    // A name that is no device at all.
    let out = flm_edge(&["selftest", "--backend", "tpu0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not cpu, cuda, vulkan, gpu"));
}

/// `bench step` on one thread with `extra` arguments; its stdout and stderr, after success.
fn bench_step(model: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["bench", "step", "--model", s(model), "--threads", "1"];
    args.extend_from_slice(extra);
    let out = flm_edge(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

#[test]
fn bench_reports_graphs_copies_and_synchronisations_per_step() {
    let model = converted(3, "f32");
    let (stdout, _) = bench_step(model, &["--steps", "3"]);
    // Two graphs a step: the backbone's (the embedding, its position, its cache slots and
    // its mask cell up in one copy) and the depth transformer's 8 positions and their draws
    // (8 uniform numbers and the penalty windows up in one copy, the 8 codes and their 8
    // check values down in one). On the CPU the host draws the text token from the logit row
    // (594 KiB down, one wait); the depth transformer reads the hidden state where the
    // backbone left it, and the host waits once more for its codes.
    let line = counter_line(&stdout);
    assert!(
        line.contains("2.0 graph computes, 2.0 uploads")
            && line.contains("2.0 downloads (594.1 KiB), 2.0 host synchronisations")
            && line.contains("the host draws the text token"),
        "{line}"
    );
    // llama.cpp's decode of the same file beside it.
    assert!(stdout.contains("llama.cpp: 1 graph split(s)"), "{stdout}");
    // Steps that shift the context are timed apart (here: a context of 48 steps, a sink of
    // 16, so a shift every 16 steps).
    let (shifts, stderr) = bench_step(model, &["--steps", "100", "--context", "48"]);
    let line = shifts
        .lines()
        .find(|l| l.contains("steps shifted the context"))
        .unwrap_or_else(|| panic!("{shifts}"));
    let n: usize = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!((2..=6).contains(&n), "{line}");
    // A shift asked for every 10 steps, in a context that never fills: 20 steps after 5
    // warm-up steps, so at the 10th and 20th timed steps.
    let (asked, _) = bench_step(
        model,
        &["--steps", "20", "--shift-every", "10", "--sink", "2"],
    );
    assert!(asked.contains("    2 steps shifted the context"), "{asked}");
    // All of it in host memory, on the CPU backend.
    assert!(
        stderr.lines().any(|l| l.starts_with("backbone on CPU: ")),
        "{stderr}"
    );
}
