//! Mimi on ggml against Kyutai's PyTorch reference (golden files in tests/golden/mimi, made by
//! tests/golden/make_mimi_golden.py from the seed-1 checkpoint of the test kit).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use flm_kernels::ggml::Device;
use flm_kernels::mimi::{FRAME, Mimi};

/// Golden codes, frame-major, and their number of frames.
fn golden_codes() -> (Vec<i32>, usize) {
    let codes = flm_edge::codes_npy::read(&Path::new(GOLDEN_MIMI).join("codes.npy")).unwrap();
    let frames = codes.len() / 8;
    (codes, frames)
}

/// The seed-1 Mimi converted at `dtype` (the folder goes when the returned guard does).
fn mimi_gguf(dtype: &str) -> (Scratch, PathBuf) {
    let out = scratch(&format!("mimi-{dtype}"));
    let run = convert(
        checkpoints(1),
        &out,
        &["--quant", "q8_0", "--mimi-dtype", dtype],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let path = out.join("mimi.gguf");
    (out, path)
}

fn check(dtype: &str, min_equal: f64, min_snr: f64) {
    let (want, frames) = golden_codes();
    assert!(frames >= 100);
    let pcm = speech();
    let (_dir, path) = mimi_gguf(dtype);
    let mut mimi = Mimi::load(&path, Device::Cpu, 1).unwrap();
    let mut codes = vec![0i32; frames * 8];
    for f in 0..frames {
        mimi.encode(
            &pcm[f * FRAME..(f + 1) * FRAME],
            &mut codes[f * 8..(f + 1) * 8],
        )
        .unwrap();
    }
    let equal = codes.iter().zip(&want).filter(|(a, b)| a == b).count() as f64 / codes.len() as f64;
    let first_diff = codes.iter().zip(&want).position(|(a, b)| a != b);
    eprintln!(
        "{dtype}: {:.2} % of codes equal (first difference at {first_diff:?})",
        100.0 * equal
    );
    assert!(
        equal >= min_equal,
        "{dtype}: only {:.2} % of codes equal the reference",
        100.0 * equal
    );

    let reference = golden_decoded();
    let mut out = vec![0f32; frames * FRAME];
    for f in 0..frames {
        mimi.decode(
            &want[f * 8..(f + 1) * 8],
            &mut out[f * FRAME..(f + 1) * FRAME],
        )
        .unwrap();
    }
    let snr = snr_db(&reference, &out);
    eprintln!("{dtype}: decode SNR {snr:.1} dB");
    assert!(
        snr >= min_snr,
        "{dtype}: decode SNR {snr:.1} dB < {min_snr}"
    );
}

#[test]
fn the_generator_still_makes_the_golden_weights() {
    use sha2::Digest;
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(GOLDEN_MIMI).join("meta.json")).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(&checkpoints(1).mimi).unwrap();
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        meta["weights_sha256"].as_str().unwrap(),
        "flm-testkit changed: remake the golden files"
    );
}

#[test]
fn f32_weights_match_the_reference() {
    // Achieved: 100 % of the 1112 codes, 120 dB. f32 arithmetic in another summation order
    // (another CPU's kernels, a GPU) flips a code only at a near-tie between two codebook
    // entries, so up to 5 may flip; f32 rounding alone keeps the decode above 100 dB, while
    // any real error (a wrong tap, a shifted frame) falls far below.
    check("f32", 0.995, 100.0);
}

#[test]
fn f16_weights_stay_close_to_the_reference() {
    // Achieved: 99.19 % (9 of 1112 codes flip where f16 weights move a near-tie), 60 dB
    // (f16 keeps 11 bits: about 66 dB per weight, less after 200 layers of sums). The bounds
    // leave another CPU's summation order room for a few more flips and 5 dB.
    check("f16", 0.985, 55.0);
}
