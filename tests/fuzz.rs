//! Mutation fuzzing of every parser of outside input: GGUF, the safetensors header, WAV,
//! `.npy` codes and the TOML configuration. Each target starts from seed files in
//! `tests/fuzz/<target>/` (made by our own writers, and any input a past run found), mutates
//! them (bit flips, interesting values at random places, cuts, repeats, splices) and feeds
//! each mutant to the parser under `catch_unwind`: an error is fine, a panic is a failure,
//! and the input that caused it is written to `target/fuzz-crashes/` to be added to the
//! seeds as a regression.
//!
//! Deterministic (a fixed seed per target), and bounded by time: `FUZZ_SECONDS` per target
//! (default 10), so CI spends under a minute on all of them. Ogg pages carry a checksum that
//! almost every mutation breaks: every other Ogg mutant has its pages' checksums recomputed,
//! so that packet reassembly and Opus decoding are fuzzed too.
//!
//! The targets run in parallel and share one panic hook, installed once: it keeps the
//! caught panics of a fuzzing thread off the output and reports every other panic as the
//! default hook does.

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "{}: no seeds", dir.display());
    seeds
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    7,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

fn mutate(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        if d.is_empty() {
            d.push(0);
        }
        let at = rng.random_range(0..d.len());
        match rng.random_range(0..7) {
            0 => d[at] ^= 1 << rng.random_range(0..8),
            1 => d[at] = rng.random(),
            2 => {
                // An interesting value, little-endian, of 1, 2, 4 or 8 bytes.
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let w = [1, 2, 4, 8][rng.random_range(0..4)];
                for (i, b) in v.to_le_bytes().iter().take(w).enumerate() {
                    if at + i < d.len() {
                        d[at + i] = *b;
                    }
                }
            }
            3 => d.truncate(at),
            4 => {
                let len = rng.random_range(1..=64.min(d.len() - at));
                let chunk = d[at..at + len].to_vec();
                let to = rng.random_range(0..=d.len());
                d.splice(to..to, chunk);
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let len = rng.random_range(1..=256.min(other.len() - from));
                    let end = (at + len).min(d.len());
                    d.splice(at..end, other[from..from + len].iter().copied());
                }
            }
            _ => {
                let len = rng.random_range(1..=16.min(d.len() - at));
                d.drain(at..at + len);
            }
        }
    }
    d
}

thread_local! {
    /// This thread is fuzzing: its panics are caught and reported by `fuzz`.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
}

/// The binary's one panic hook: silent for a fuzzing thread, the default for every other.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !FUZZING.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `parse` on mutants of the target's seeds for the time budget; fails on a panic.
fn fuzz(target: &str, seed: u64, parse: impl Fn(&Path)) {
    fuzz_fixed(target, seed, |_| {}, parse)
}

/// `fuzz`, with `fix` applied to every other mutant (checksums made right again).
fn fuzz_fixed(target: &str, seed: u64, fix: impl Fn(&mut [u8]), parse: impl Fn(&Path)) {
    let seeds = corpus(target);
    let secs: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = common::scratch(&format!("fuzz-{target}"));
    std::fs::create_dir_all(&*dir).unwrap();
    let file = dir.join(format!("input.{target}"));
    // The seeds themselves parse without a panic.
    for s in &seeds {
        std::fs::write(&file, s).unwrap();
        parse(&file);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut runs = 0u64;
    // Panics are expected to be caught here; keep their messages off the test output.
    install_panic_hook();
    FUZZING.with(|f| f.set(true));
    let mut crash = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        let mut input = mutate(&mut rng, &seeds);
        if runs % 2 == 1 {
            fix(&mut input);
        }
        std::fs::write(&file, &input).unwrap();
        runs += 1;
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&file))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            crash = Some((input, msg));
            break;
        }
    }
    FUZZING.with(|f| f.set(false));
    if let Some((input, msg)) = crash {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
        std::fs::create_dir_all(&out).unwrap();
        let path = out.join(format!("{target}-{runs}"));
        std::fs::write(&path, &input).unwrap();
        panic!(
            "{target}: panic after {runs} inputs: {msg}; the input is in {}",
            path.display()
        );
    }
    eprintln!("{target}: {runs} inputs in {secs} s, no panic");
    assert!(runs > 100, "{target}: only {runs} inputs");
}

#[test]
fn gguf_reader() {
    fuzz("gguf", 1, |p| {
        if let Ok(g) = flm_conversion::Gguf::open(p) {
            for t in &g.tensors {
                let _ = flm_conversion::gguf::read_tensor_bytes(p, &g, t);
            }
            let _ = flm_edge::inspect::render(&g);
        }
    });
}

#[test]
fn safetensors_header() {
    fuzz("safetensors", 2, |p| {
        if let Ok(c) = flm_conversion::checkpoint::Checkpoint::open_file(p) {
            for t in c.tensors() {
                let mut one = [0f32; 1];
                if t.n_elements() > 0 {
                    let _ = c.read_f32(t, 0, &mut one);
                }
            }
        }
    });
}

#[test]
fn wav() {
    fuzz("wav", 3, |p| {
        let _ = flm_edge::wav::read_mono_24k(p);
    });
}

#[test]
fn npy_codes() {
    fuzz("npy", 4, |p| {
        let _ = flm_edge::codes_npy::read(p);
    });
}

#[test]
fn toml_config() {
    fuzz("toml", 5, |p| {
        let _ = flm_edge::config::Config::load(None, Some(p));
        let _ = flm_edge::config::Config::load(Some("jetson-orin-nano"), Some(p));
    });
}

/// Ogg's CRC-32 (polynomial 0x04c11db7, not reflected, initial value 0).
fn ogg_crc(bytes: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in bytes {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Recomputes the checksum of every whole page in `d` (a page: "OggS", 27 header bytes,
/// the lacing values, the body they sum to).
fn fix_ogg_checksums(d: &mut [u8]) {
    let mut at = 0;
    while at + 27 <= d.len() {
        if &d[at..at + 4] != b"OggS" {
            at += 1;
            continue;
        }
        let n = d[at + 26] as usize;
        if at + 27 + n > d.len() {
            break;
        }
        let len = 27
            + n
            + d[at + 27..at + 27 + n]
                .iter()
                .map(|&v| v as usize)
                .sum::<usize>();
        if at + len > d.len() {
            break;
        }
        d[at + 22..at + 26].fill(0);
        let crc = ogg_crc(&d[at..at + len]);
        d[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
        at += len;
    }
}

#[test]
fn the_ogg_checksum_is_the_one_ogg_pages_carry() {
    let seeds = corpus("ogg");
    let mut fixed = seeds[0].clone();
    fix_ogg_checksums(&mut fixed);
    assert_eq!(
        fixed, seeds[0],
        "the seeds' checksums are recomputed unchanged"
    );
    let mut r = flm_edge::remote::ogg_opus::OggOpusReader::new().unwrap();
    r.push(&fixed, &mut |_: &[f32]| {}).unwrap();
}

#[test]
fn ogg_opus_stream() {
    fuzz_fixed("ogg", 6, fix_ogg_checksums, |p| {
        let bytes = std::fs::read(p).unwrap();
        // Whole, and split as a network would split it.
        let mut r = flm_edge::remote::ogg_opus::OggOpusReader::new().unwrap();
        let _ = r.push(&bytes, &mut |_: &[f32]| {});
        let mut r = flm_edge::remote::ogg_opus::OggOpusReader::new().unwrap();
        for c in bytes.chunks(61) {
            if r.push(c, &mut |_: &[f32]| {}).is_err() {
                break;
            }
        }
    });
}

#[test]
fn settings_json() {
    fuzz("settings", 7, |p| {
        let bytes = std::fs::read(p).unwrap();
        let _ = flm_edge::remote::settings::Settings::default().with(&bytes);
    });
}

/// Writes the seed files of every target with our own writers (run once; the files are in
/// the repository): `cargo test --release --test fuzz -- --ignored`.
#[test]
#[ignore = "writes the seed corpora into tests/fuzz"]
fn write_seed_corpora() {
    use flm_conversion::GgmlType;
    use flm_conversion::gguf::{Array, GgufBuilder, Value};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let dir = |t: &str| {
        let d = root.join(t);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // GGUF: scalars, strings, arrays and two small tensors.
    let mut b = GgufBuilder::new();
    b.set("general.architecture", Value::Str("mimi".into()));
    b.set("flm.token.audio_pad", Value::U32(2048));
    b.set("flm.rms_eps", Value::F32(1e-5));
    b.set("flm.delays", Value::Array(Array::I32(vec![0, 0, 1, 1])));
    b.set(
        "tokenizer.ggml.tokens",
        Value::Array(Array::Str(vec!["a".into(), "bc".into(), "<wait>".into()])),
    );
    b.add_tensor("w", &[4, 2], GgmlType::F32).unwrap();
    b.add_tensor("h", &[32], GgmlType::F16).unwrap();
    let mut out = vec![];
    b.write(&mut out, |i, w| {
        let n = [32, 64][i];
        w.write_all(&vec![0x3c; n])?;
        Ok(())
    })
    .unwrap();
    std::fs::write(dir("gguf").join("small.gguf"), out).unwrap();
    // safetensors: two dtypes and metadata.
    use flm_testkit::safetensors_out::{Dtype, Entry, write};
    let entries = [
        Entry {
            name: "model.a.weight".into(),
            dtype: Dtype::F32,
            shape: vec![2, 3],
        },
        Entry {
            name: "model.b".into(),
            dtype: Dtype::BF16,
            shape: vec![4],
        },
    ];
    let meta = serde_json::json!({"format": "pt"});
    write(
        &dir("safetensors").join("small.safetensors"),
        &entries,
        Some(&meta),
        |_, out| out.fill(0.5),
    )
    .unwrap();
    // WAV: 16-bit mono at 24 kHz, 32-bit float stereo at 48 kHz.
    for (name, channels, rate, bits, fmt) in [
        ("mono16.wav", 1, 24_000, 16, hound::SampleFormat::Int),
        ("stereo-f32.wav", 2, 48_000, 32, hound::SampleFormat::Float),
    ] {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: fmt,
        };
        let mut w = hound::WavWriter::create(dir("wav").join(name), spec).unwrap();
        for i in 0..200 {
            match fmt {
                hound::SampleFormat::Int => w.write_sample((i * 97 % 2000) as i16).unwrap(),
                hound::SampleFormat::Float => w.write_sample((i as f32 * 0.01).sin()).unwrap(),
            }
        }
        w.finalize().unwrap();
    }
    // .npy: int32 codes [8, 3].
    flm_edge::codes_npy::write(
        &dir("npy").join("codes.npy"),
        &(0..24).map(|i| i * 80).collect::<Vec<i32>>(),
    )
    .unwrap();
    // TOML: the documented file, and a short one.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/flm-edge.toml"),
        dir("toml").join("flm-edge.toml"),
    )
    .unwrap();
    std::fs::write(
        dir("toml").join("short.toml"),
        "backend = \"cpu\"\nthreads = 2\n[audio]\nrate = 16000\n[schedule]\nlatency_frames = 3\n",
    )
    .unwrap();
    // Ogg-Opus: the headers and three 80 ms pages of our writer (as sphn's), and 20 ms
    // packets two per page without headers (as Kyutai's web client).
    use flm_edge::remote::ogg_opus::{OggOpusWriter, PACKET_SAMPLES};
    let tone: Vec<f32> = (0..3 * PACKET_SAMPLES)
        .map(|i| 0.3 * (i as f32 * 0.05).sin())
        .collect();
    let mut w = OggOpusWriter::new().unwrap();
    let mut sphn_like = w.headers().unwrap().concat();
    for f in tone.chunks(PACKET_SAMPLES) {
        sphn_like.extend_from_slice(&w.frame(f).unwrap());
    }
    std::fs::write(dir("ogg").join("sphn-like.ogg"), sphn_like).unwrap();
    let mut enc =
        opus::Encoder::new(24_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let mut pw = ogg::writing::PacketWriter::new(Vec::new());
    for (i, c) in tone.chunks(480).enumerate() {
        let end = if i % 2 == 1 {
            ogg::writing::PacketWriteEndInfo::EndPage
        } else {
            ogg::writing::PacketWriteEndInfo::NormalPacket
        };
        pw.write_packet(
            enc.encode_vec_float(c, 4000).unwrap(),
            5,
            end,
            i as u64 * 960,
        )
        .unwrap();
    }
    std::fs::write(dir("ogg").join("web-client.ogg"), pw.into_inner()).unwrap();
    // Settings: what the official Gradio client posts.
    std::fs::write(
        dir("settings").join("gradio.json"),
        r#"{"temp_text": 0.01, "top_p_text": 1.0, "top_k_text": 0, "repetition_penalty_text": 1.1, "repetition_penalty_window_text": 50, "temp_audio": 0.1, "top_p_audio": 0.9, "top_k_audio": 0, "repetition_penalty_audio": 1.2, "repetition_penalty_window_audio": 50, "use_sampling": true}"#,
    )
    .unwrap();
}
