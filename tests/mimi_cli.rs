//! `flm-edge mimi encode/decode`: file formats, resampling, chunking, and bad input.
//!
//! Tests run side by side, so each ggml compute uses one thread: two processes spinning two
//! threads each on a 2-core machine slow everything down many times.

mod common;

use std::path::Path;

use common::*;
use flm_kernels::ggml::Device;
use flm_kernels::mimi::{FRAME, Mimi};

fn model() -> &'static Path {
    converted(1, "q8_0")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_codes(p: &Path) -> (Vec<u64>, Vec<i32>) {
    let bytes = std::fs::read(p).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.dtype().descr(), "'<i4'");
    (npy.shape().to_vec(), npy.into_vec().unwrap())
}

/// `flm-edge mimi VERB` on the test model, one thread.
fn mimi(verb: &str, input: &Path, output: &Path) -> std::process::Output {
    flm_edge(&[
        "mimi",
        verb,
        "--model",
        s(model()),
        "--threads",
        "1",
        "--input",
        s(input),
        "--output",
        s(output),
    ])
}

#[test]
fn encode_and_decode_files_match_the_reference() {
    let dir = scratch("files");
    std::fs::create_dir_all(&dir).unwrap();
    let codes = dir.join("codes.npy");
    let run = mimi("encode", &Path::new(GOLDEN_MIMI).join("speech.wav"), &codes);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (shape, got) = read_codes(&codes);
    let (want_shape, want) = read_codes(&Path::new(GOLDEN_MIMI).join("codes.npy"));
    // The clip is 139.4 frames: the last partial frame is completed with silence.
    assert_eq!(shape, vec![8, want_shape[1] + 1]);
    let t = shape[1] as usize;
    let tw = want_shape[1] as usize;
    let equal = (0..8)
        .flat_map(|q| (0..tw).map(move |f| (q, f)))
        .filter(|&(q, f)| got[q * t + f] == want[q * tw + f])
        .count();
    assert!(
        equal as f64 >= 0.99 * (8 * tw) as f64,
        "{equal} of {} codes equal",
        8 * tw
    );

    let wav = dir.join("out.wav");
    let run = mimi("decode", &Path::new(GOLDEN_MIMI).join("codes.npy"), &wav);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (spec, pcm) = read_wav(&wav);
    assert_eq!((spec.sample_rate, spec.channels), (24_000, 1));
    let snr = snr_db(&golden_decoded(), &pcm);
    assert!(snr >= 40.0, "decode SNR {snr:.1} dB");
}

#[test]
fn any_pcm_wav_is_resampled_and_mixed_down() {
    let dir = scratch("formats");
    std::fs::create_dir_all(&dir).unwrap();
    let pcm = speech();
    let secs = pcm.len() as f64 / 24_000.0;
    // (rate, channels, bits, float)
    for (rate, ch, bits, float) in [
        (48_000u32, 2u16, 16u16, false),
        (16_000, 1, 24, false),
        (44_100, 2, 32, true),
        (8_000, 1, 8, false),
        (24_000, 2, 32, false),
    ] {
        let path = dir.join(format!("in-{rate}-{ch}-{bits}-{float}.wav"));
        let spec = hound::WavSpec {
            channels: ch,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        let n = (secs * rate as f64) as usize;
        for i in 0..n {
            // Nearest-sample resampling of the clip: content only, rates are what is tested.
            let x = pcm[(i as f64 * 24_000.0 / rate as f64) as usize % pcm.len()];
            for _ in 0..ch {
                if float {
                    w.write_sample(x).unwrap();
                } else {
                    let max = ((1i64 << (bits - 1)) - 1) as f32;
                    w.write_sample((x * max) as i32).unwrap();
                }
            }
        }
        w.finalize().unwrap();
        let codes = dir.join(format!("codes-{rate}.npy"));
        let run = mimi("encode", &path, &codes);
        assert!(
            run.status.success(),
            "{rate}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (shape, values) = read_codes(&codes);
        let frames = ((n as f64 * 24_000.0 / rate as f64) / FRAME as f64).ceil() as u64;
        assert!(
            shape == vec![8, frames] || shape == vec![8, frames + 1],
            "{rate}: shape {shape:?}, expected [8, {frames}]"
        );
        assert!(values.iter().all(|&c| (0..2048).contains(&c)));
    }
}

#[test]
fn streamed_equals_chunked() {
    let m = model().join("mimi.gguf");
    let pcm = speech();
    let frames = 100;
    let mut one = Mimi::load(&m, Device::Cpu, 1).unwrap();
    let mut chunked = Mimi::load(&m, Device::Cpu, 1).unwrap();
    let (mut a, mut b) = (vec![0i32; frames * 8], vec![0i32; frames * 8]);
    for f in 0..frames {
        one.encode(&pcm[f * FRAME..(f + 1) * FRAME], &mut a[f * 8..(f + 1) * 8])
            .unwrap();
    }
    for (start, len) in [(0, 1), (1, 7), (8, 92)] {
        chunked
            .encode(
                &pcm[start * FRAME..(start + len) * FRAME],
                &mut b[start * 8..(start + len) * 8],
            )
            .unwrap();
    }
    assert_eq!(a, b, "encode: one frame per call vs chunks");
    let (mut x, mut y) = (vec![0f32; frames * FRAME], vec![0f32; frames * FRAME]);
    for f in 0..frames {
        one.decode(&a[f * 8..(f + 1) * 8], &mut x[f * FRAME..(f + 1) * FRAME])
            .unwrap();
    }
    // The whole clip in one call.
    chunked.decode(&a, &mut y).unwrap();
    let diff = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= 1e-5,
        "decode: frame by frame vs whole clip differ by {diff}"
    );
    // A new stream after reset gives the same result again.
    one.reset();
    let mut again = vec![0i32; 8];
    one.encode(&pcm[..FRAME], &mut again).unwrap();
    assert_eq!(&again[..], &a[..8]);
}

/// Per frame, the encoder and the decoder each put their inputs up in one copy, run one
/// graph and bring their outputs down in one copy, and the host waits for the device once
/// (it was 2 graphs, 11 uploads, 9 downloads and 22 waits). What goes up is what changed:
/// the samples (7680 bytes) or codes (32), and the ring inputs of two steps (slots, pairs,
/// positions and the 256 × 2 mask: 2068 bytes), with the CPU buffer's 32-byte alignment
/// between them: 12000 bytes, 11.7 KiB; the encoder's first-call flag, which sits before the
/// samples, would make it 11.8. What comes down is the 8 codes and the 1920 samples.
#[test]
fn bench_counts_one_upload_one_download_and_one_wait_per_direction() {
    let out = flm_edge(&[
        "bench",
        "mimi",
        "--model",
        s(model()),
        "--threads",
        "1",
        "--frames",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = counter_line(&stdout);
    assert!(
        line.contains("2.0 graph computes, 2.0 uploads (11.7 KiB), 2.0 downloads (7.5 KiB), 2.0 host synchronisations"),
        "{line}"
    );
}

fn wav_header(format: u16, channels: u16, rate: u32, bits: u16, data_len: u32) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut h = b"RIFF".to_vec();
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&format.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * block as u32).to_le_bytes());
    h.extend_from_slice(&block.to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

#[test]
fn bad_audio_gets_one_error_line_and_no_output() {
    let dir = scratch("bad-wav");
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(format!("{GOLDEN_MIMI}/speech.wav")).unwrap();
    let mut alaw = wav_header(6, 1, 8000, 8, 8000);
    alaw.extend(vec![0x55u8; 8000]);
    let mut rate0 = wav_header(1, 1, 0, 16, 4000);
    rate0.extend(vec![0u8; 4000]);
    let mut huge = wav_header(1, 1, 1_000_000_000, 16, 4000);
    huge.extend(vec![0u8; 4000]);
    let mut chan0 = wav_header(1, 0, 24000, 16, 4000);
    chan0.extend(vec![0u8; 4000]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.wav",
            b"hello, this is not audio".to_vec(),
            "not a WAV file",
        ),
        ("alaw.wav", alaw, "not a PCM WAV"),
        (
            "empty.wav",
            wav_header(1, 1, 24000, 16, 0),
            "no audio samples",
        ),
        ("zero-bytes.wav", vec![], "not a WAV file"),
        (
            "truncated.wav",
            good[..good.len() / 2].to_vec(),
            "truncated",
        ),
        ("rate0.wav", rate0, "wav"),
        ("huge-rate.wav", huge, "sample rate 1000000000 Hz"),
        ("no-channels.wav", chan0, "wav"),
    ];
    for (name, bytes, needle) in cases {
        let input = dir.join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = dir.join(format!("{name}.npy"));
        let run = mimi("encode", &input, &out);
        assert_one_line_error(&run, &[name, needle]);
        assert!(!out.exists(), "{name}: output written");
    }
}

fn write_npy<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    values: &[T],
) {
    use npyz::WriterBuilder;
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn bad_codes_get_one_error_line_and_no_output() {
    let dir = scratch("bad-codes");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ok = vec![5i32; 8 * 3];
    write_npy(&dir.join("big.npy"), &[8, 3], &{
        ok[7] = 2048;
        ok.clone()
    });
    ok[7] = -1;
    write_npy(&dir.join("negative.npy"), &[8, 3], &ok);
    write_npy(&dir.join("shape7.npy"), &[7, 3], &[1i32; 21]);
    write_npy(&dir.join("flat.npy"), &[24], &[1i32; 24]);
    write_npy(&dir.join("float.npy"), &[8, 3], &[1.0f32; 24]);
    write_npy(&dir.join("int64.npy"), &[8, 3], &[3i64; 24]);
    std::fs::write(dir.join("garbage.npy"), b"\x93NUMPY garbage").unwrap();
    // A header claiming 2^62 frames over a few bytes of data.
    let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (8, 4611686018427387904), }";
    let mut absurd = b"\x93NUMPY\x01\x00".to_vec();
    let padded = (10 + header.len() + 1).next_multiple_of(64) - 10;
    absurd.extend_from_slice(&(padded as u16).to_le_bytes());
    absurd.extend_from_slice(header.as_bytes());
    absurd.resize(10 + padded - 1, b' ');
    absurd.push(b'\n');
    absurd.extend_from_slice(&[0u8; 96]);
    std::fs::write(dir.join("absurd.npy"), absurd).unwrap();
    let good = std::fs::read(format!("{GOLDEN_MIMI}/codes.npy")).unwrap();
    std::fs::write(dir.join("truncated.npy"), &good[..good.len() - 100]).unwrap();
    for (name, needle) in [
        ("big.npy", "code 2048"),
        ("negative.npy", "code -1"),
        ("shape7.npy", "expected [8, T]"),
        ("flat.npy", "expected [8, T]"),
        ("float.npy", "expected int32 or int64"),
        ("garbage.npy", "not a .npy file"),
        ("truncated.npy", "truncated"),
        ("absurd.npy", "needs more data than the file"),
    ] {
        let out = dir.join(format!("{name}.wav"));
        let run = mimi("decode", &dir.join(name), &out);
        assert_one_line_error(&run, &[name, needle]);
        assert!(!out.exists(), "{name}: output written");
    }
    // int64 codes (numpy's default integer) are accepted.
    let out = dir.join("int64.wav");
    let run = mimi("decode", &dir.join("int64.npy"), &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        hound::WavReader::open(&out).unwrap().len() as usize,
        3 * FRAME
    );
}
