//! `flm-edge run`: a conversation from a file, its transcript and its reply.
//!
//! Each process computes with one thread: tests run side by side on small machines.

mod common;

use std::path::Path;

use common::*;
use npyz::WriterBuilder;

const GOLDEN_LM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/lm");

/// The seed-3 tiny model (the one of the LM golden files), f32.
fn model() -> &'static Path {
    converted(3, "f32")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--model", s(model()), "--threads", "1"];
    args.extend_from_slice(extra);
    flm_edge(&args)
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn transcript(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Text and 8 codes per step, as the transcript reports them.
fn tokens(lines: &[serde_json::Value]) -> Vec<Vec<i64>> {
    lines
        .iter()
        .map(|l| {
            let mut v = vec![l["text"].as_i64().unwrap()];
            v.extend(
                l["audio"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap()),
            );
            v
        })
        .collect()
}

#[test]
fn greedy_run_from_codes_follows_the_reference() {
    let dir = scratch("greedy");
    std::fs::create_dir_all(&*dir).unwrap();
    let (reply, steps) = (dir.join("reply.wav"), dir.join("steps.jsonl"));
    let codes = Path::new(GOLDEN_MIMI).join("codes.npy");
    let out = run(&[
        "--input-codes",
        s(&codes),
        "--output",
        s(&reply),
        "--transcript",
        s(&steps),
        "--greedy",
    ]);
    ok(&out);
    let lines = transcript(&steps);
    let bytes = std::fs::read(Path::new(GOLDEN_LM).join("tokens.npy")).unwrap();
    let want: Vec<i32> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
    let want: Vec<Vec<i64>> = want
        .chunks(9)
        .map(|c| c.iter().map(|&x| x as i64).collect())
        .collect();
    assert_eq!(tokens(&lines), want);
    for (t, l) in lines.iter().enumerate() {
        assert_eq!(l["step"].as_u64(), Some(t as u64));
        assert!(l["piece"].is_string());
        for k in [
            "encode", "embed", "backbone", "depth", "sample", "decode", "total",
        ] {
            assert!(l["ms"][k].as_f64().is_some(), "step {t}: ms.{k}");
        }
    }
    let (spec, pcm) = read_wav(&reply);
    assert_eq!((spec.sample_rate, spec.channels), (24_000, 1));
    assert_eq!(pcm.len(), lines.len() * 1920);
    // The first step completes no output frame: one frame of silence, then speech.
    assert!(pcm[..1920].iter().all(|&x| x == 0.0));
    assert!(pcm[1920..].iter().any(|&x| x.abs() > 1e-3));
}

#[test]
fn sampled_run_from_audio_is_seeded_and_as_long_as_the_input() {
    let dir = scratch("sampled");
    std::fs::create_dir_all(&*dir).unwrap();
    // 2.5 s at 16 kHz stereo: resampled to 24 kHz mono, not a whole number of frames.
    let input = dir.join("user.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&input, spec).unwrap();
    let speech = speech();
    for i in 0..40_000 {
        let x = (speech[i * 3 / 2] * 32767.0) as i16;
        w.write_sample(x).unwrap();
        w.write_sample(x).unwrap();
    }
    w.finalize().unwrap();
    let go = |seed: &str, name: &str| {
        let (reply, steps) = (
            dir.join(format!("{name}.wav")),
            dir.join(format!("{name}.jsonl")),
        );
        ok(&run(&[
            "--input",
            s(&input),
            "--output",
            s(&reply),
            "--transcript",
            s(&steps),
            "--seed",
            seed,
        ]));
        (read_wav(&reply).1, tokens(&transcript(&steps)))
    };
    let (a_pcm, a) = go("1", "a");
    let (b_pcm, b) = go("1", "b");
    let (_, c) = go("2", "c");
    assert_eq!(
        a_pcm.len(),
        60_000,
        "the reply is as long as the input at 24 kHz"
    );
    assert_eq!(a.len(), 60_000usize.div_ceil(1920));
    assert_eq!(a, b, "same seed, same conversation");
    assert_eq!(a_pcm, b_pcm);
    assert_ne!(a, c, "another seed, another conversation");
}

#[test]
fn bad_input_gets_one_line_and_no_output() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&*dir).unwrap();
    let reply = dir.join("reply.wav");
    let steps = dir.join("steps.jsonl");
    let not_wav = dir.join("user.wav");
    std::fs::write(&not_wav, b"RIFF....WAVEjunk").unwrap();
    let out = run(&[
        "--input",
        s(&not_wav),
        "--output",
        s(&reply),
        "--transcript",
        s(&steps),
    ]);
    assert_one_line_error(&out, &["user.wav"]);
    let codes = dir.join("codes.npy");
    let bytes = std::fs::read(Path::new(GOLDEN_MIMI).join("codes.npy")).unwrap();
    let mut v: Vec<i32> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
    v[5] = 2049;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[8, (v.len() / 8) as u64])
        .writer(std::fs::File::create(&codes).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(v).unwrap();
    w.finish().unwrap();
    let out = run(&["--input-codes", s(&codes), "--output", s(&reply)]);
    assert_one_line_error(&out, &["codes.npy", "2049"]);
    let out = flm_edge(&[
        "run",
        "--model",
        s(&dir),
        "--input-codes",
        s(&codes),
        "--output",
        s(&reply),
    ]);
    assert_one_line_error(&out, &["missing"]);
    // A GPU backend this build lacks: one line saying so, before anything is written.
    let good_codes = Path::new(GOLDEN_MIMI).join("codes.npy");
    if !cfg!(feature = "cuda") {
        let out = run(&[
            "--input-codes",
            s(&good_codes),
            "--output",
            s(&reply),
            "--backend",
            "cuda",
        ]);
        assert_one_line_error(&out, &["backend cuda", "--features cuda"]);
    }
    let out = run(&[
        "--input-codes",
        s(&codes),
        "--output",
        s(&reply),
        "--backend",
        "tpu",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not cpu, cuda, vulkan"));
    assert!(!reply.exists() && !steps.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Damage to a header that llama.cpp or ggml would abort the process for: one error line
/// naming the file and the key instead.
#[test]
fn damaged_model_header_gets_one_line() {
    let dir = scratch("damaged");
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::hard_link(model().join("mimi.gguf"), m.join("mimi.gguf")).unwrap();
    let originals: Vec<(&str, Vec<u8>)> = ["backbone.gguf", "audio.gguf"]
        .into_iter()
        .map(|f| (f, std::fs::read(model().join(f)).unwrap()))
        .collect();
    let find = |file: usize, needle: &[u8]| {
        originals[file]
            .1
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{:?} not in the header", String::from_utf8_lossy(needle)))
    };
    // A scalar's value follows its key and a 4-byte type.
    let value_of = |file: usize, key: &str| find(file, key.as_bytes()) + key.len() + 4;
    let mut one_char = 1u64.to_le_bytes().to_vec();
    one_char.push(b'7');
    let nan = f32::NAN.to_le_bytes().to_vec();
    let cases: Vec<(usize, usize, Vec<u8>, &[&str])> = vec![
        (
            0,
            value_of(0, "qwen2.block_count"),
            0u32.to_le_bytes().to_vec(),
            &["qwen2.block_count is 0"],
        ),
        (
            0,
            value_of(0, "qwen2.attention.layer_norm_rms_epsilon"),
            nan.clone(),
            &["layer_norm_rms_epsilon is NaN"],
        ),
        (
            0,
            value_of(0, "qwen2.attention.head_count_kv"),
            3u32.to_le_bytes().to_vec(),
            &["do not divide"],
        ),
        // The token "7" made a second "6".
        (0, find(0, &one_char) + 8, b"6".to_vec(), &["appears twice"]),
        (
            1,
            value_of(1, "flm.depformer.layer_norm_rms_epsilon"),
            nan,
            &["layer_norm_rms_epsilon", "NaN"],
        ),
        // The initial tokens index the embedding tables.
        (
            1,
            value_of(1, "flm.token.audio_pad"),
            5000u32.to_le_bytes().to_vec(),
            &["flm.token.audio_pad", "is 5000"],
        ),
        (
            1,
            value_of(1, "flm.token.text_wait"),
            (1u32 << 31).to_le_bytes().to_vec(),
            &["flm.token.text_wait"],
        ),
    ];
    let codes = Path::new(GOLDEN_MIMI).join("codes.npy");
    let reply = dir.join("reply.wav");
    for (file, at, bytes, needles) in cases {
        for (i, (name, good)) in originals.iter().enumerate() {
            let mut b = good.clone();
            if i == file {
                b[at..at + bytes.len()].copy_from_slice(&bytes);
            }
            std::fs::write(m.join(name), &b).unwrap();
        }
        let out = flm_edge(&[
            "run",
            "--model",
            s(&m),
            "--input-codes",
            s(&codes),
            "--output",
            s(&reply),
        ]);
        let mut want = vec![originals[file].0];
        want.extend_from_slice(needles);
        assert_one_line_error(&out, &want);
        assert!(!reply.exists());
    }
}
