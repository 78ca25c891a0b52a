//! `flm-edge selftest`: does a device compute what the CPU computes? Run first by installers
//! on a new board or build, it needs no model download: it writes a small seeded model in the
//! release's formats (the real Qwen2 vocabulary and tokenizer, a 2-layer backbone, a 2-layer
//! depth transformer and the full-size Mimi) into a temporary folder, converts it to f32, and
//! runs the same work on the device under test and on the reference device (the CPU):
//!
//! - Mimi: a streaming encode of a synthetic 4 s voice-like clip, and a decode of the
//!   reference's codes;
//! - the step engine: `steps` greedy steps fed with the reference's codes.
//!
//! Each check is one line with its bound; the exit status says whether all held.
//!
//! The bounds are what another summation order allows on f32 weights. A different device
//! adds up the same products in another order (f32 rounding, some 1e-6 relative): a Mimi
//! code flips only where two codebook entries are almost equally near (on Mesa's software
//! GPU, 99.8 % of codes equal the CPU's and the decode is 62 dB apart), text logits of order
//! 1-4 move by some 1e-5, and greedy choices, whose margins on this model are mostly above
//! 1e-2, do not change. A broken kernel moves all of these by orders of magnitude.

use std::path::Path;

use anyhow::{Context, Result};
use flm_conversion::model_files::MIMI_FILE;
use flm_conversion::{ConvertOptions, MimiDtype, Quant};
use flm_kernels::device::Device;
use flm_kernels::mimi::{FRAME, Mimi};

use crate::engine::{Engine, EngineOptions, Sampling, SamplingOverrides};
use crate::model_dir::ModelDir;
use crate::token_ring::CODEBOOKS;

pub struct SelftestOptions {
    /// The device under test.
    pub device: Device,
    /// The device it is compared with.
    pub reference: Device,
    /// Steps of the language model (frames of the clip: 80 ms each).
    pub steps: usize,
    pub threads: usize,
    /// Seed of the model's weights.
    pub seed: u64,
}

/// One comparison and its bound.
pub struct Check {
    pub name: &'static str,
    pub value: String,
    pub bound: String,
    pub pass: bool,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.pass { "ok  " } else { "FAIL" };
        write!(
            f,
            "{verdict} {}: {} (bound {})",
            self.name, self.value, self.bound
        )
    }
}

/// Fraction of Mimi codes that must equal the reference's.
pub const CODES_EQUAL_MIN: f64 = 0.99;
/// Decode of the same codes on both devices, SNR of one against the other.
pub const DECODE_SNR_MIN_DB: f64 = 50.0;
/// Largest difference of a text logit (logits are of order 1-4).
pub const LOGIT_DIFF_MAX: f32 = 1e-3;

/// Writes the seeded checkpoints under `work` and converts them to f32; returns the model
/// folder.
fn make_model(work: &Path, seed: u64) -> Result<std::path::PathBuf> {
    let lm = work.join("checkpoint");
    let mimi = work.join("mimi.safetensors");
    let out = work.join("model");
    flm_testkit::write_lm(&lm, &flm_testkit::LmSpec::tiny(), seed)
        .context("selftest: writing the seeded language model")?;
    flm_testkit::write_mimi(&mimi, seed).context("selftest: writing the seeded Mimi")?;
    flm_conversion::convert(ConvertOptions {
        lm_dir: lm,
        mimi,
        out_dir: out.clone(),
        quant: Quant::F32,
        mimi_dtype: MimiDtype::F32,
        force: false,
        log: &mut |_| {},
    })?;
    Ok(out)
}

/// A voice-like test clip: a gliding harmonic tone with syllable-rate loudness and a little
/// seeded noise, 24 kHz.
fn clip(frames: usize) -> Vec<f32> {
    let sr = 24_000.0f64;
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    (0..frames * FRAME)
        .map(|i| {
            use std::f64::consts::TAU;
            let t = i as f64 / sr;
            // The pitch glides as 140 + 40·sin(2π·0.7·t) Hz; the phase is its integral.
            let phase = TAU * 140.0 * t - 40.0 / 0.7 * ((TAU * 0.7 * t).cos() - 1.0);
            let voice: f64 = (1..=8).map(|h| (h as f64 * phase).sin() / h as f64).sum();
            let envelope = 0.5 + 0.5 * (TAU * 4.0 * t).sin();
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let n = (noise >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
            (0.2 * envelope * voice + 0.01 * n) as f32
        })
        .collect()
}

/// Signal-to-noise ratio of `got` against `reference`, in dB; minus infinity when `got`
/// holds a NaN or an infinity.
pub fn snr_db(reference: &[f32], got: &[f32]) -> f64 {
    let sig: f64 = reference.iter().map(|&x| (x as f64).powi(2)).sum();
    let err: f64 = reference
        .iter()
        .zip(got)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    if !err.is_finite() {
        return f64::NEG_INFINITY; // NaN or Inf in the output (f64::max would hide a NaN)
    }
    10.0 * (sig / err.max(1e-30)).log10()
}

/// Streaming encode of `pcm`, then decode of `codes` (or of its own codes), frame by frame.
fn mimi_round(mimi: &mut Mimi, pcm: &[f32], codes: Option<&[i32]>) -> Result<(Vec<i32>, Vec<f32>)> {
    let frames = pcm.len() / FRAME;
    let mut own = vec![0i32; frames * CODEBOOKS];
    for (f, c) in own.chunks_exact_mut(CODEBOOKS).enumerate() {
        mimi.encode(&pcm[f * FRAME..(f + 1) * FRAME], c)?;
    }
    let codes = codes.unwrap_or(&own);
    let mut decoded = vec![0f32; frames * FRAME];
    for (f, out) in decoded.chunks_exact_mut(FRAME).enumerate() {
        mimi.decode(&codes[f * CODEBOOKS..(f + 1) * CODEBOOKS], out)?;
    }
    Ok((own, decoded))
}

/// What one step chose: the text token, then the 8 speaking codes.
type Choice = [i32; 1 + CODEBOOKS];

/// What `steps` greedy steps chose and their raw text logits.
fn greedy_steps(
    model: &ModelDir,
    device: Device,
    threads: usize,
    codes: &[i32],
) -> Result<(Vec<Choice>, Vec<Vec<f32>>)> {
    let sampling = Sampling::for_model(
        model,
        &SamplingOverrides::default(),
        &SamplingOverrides::default(),
        true,
    )?;
    let mut engine = Engine::load(
        model,
        &EngineOptions {
            device,
            threads,
            sampling,
            seed: 0,
            context: None,
            sink: 16,
            kv_f32: None,
            keep_text_logits: true,
        },
    )?;
    let mut tokens = vec![];
    let mut logits = vec![];
    for (t, user) in codes.chunks_exact(CODEBOOKS).enumerate() {
        let user: &[i32; CODEBOOKS] = user.try_into().expect("chunk of CODEBOOKS");
        let out = engine
            .step(user)
            .with_context(|| format!("{device}: step {t}"))?;
        let mut chosen: Choice = [0; 1 + CODEBOOKS];
        chosen[0] = out.text;
        chosen[1..].copy_from_slice(&out.audio);
        tokens.push(chosen);
        logits.push(engine.backbone().logits()?.to_vec());
    }
    Ok((tokens, logits))
}

pub fn selftest(opts: &SelftestOptions) -> Result<Vec<Check>> {
    opts.device.check()?;
    opts.reference.check()?;
    let work = tempfile::Builder::new()
        .prefix("flm-edge-selftest-")
        .tempdir()
        .context("selftest: cannot make a temporary folder")?;
    let dir = make_model(work.path(), opts.seed)?;
    let model = ModelDir::open(&dir)?;
    let pcm = clip(opts.steps.max(1));
    let mut checks = vec![];

    let (ref_codes, ref_decoded) = {
        let mut mimi = Mimi::load(&model.path(MIMI_FILE), opts.reference, opts.threads)?;
        mimi_round(&mut mimi, &pcm, None)?
    };
    let (codes, decoded) = {
        let mut mimi = Mimi::load(&model.path(MIMI_FILE), opts.device, opts.threads)?;
        mimi_round(&mut mimi, &pcm, Some(&ref_codes))?
    };
    checks.push(codes_check(&codes, &ref_codes));
    checks.push(decode_check(&decoded, &ref_decoded));

    let (ref_tokens, ref_logits) = greedy_steps(&model, opts.reference, opts.threads, &ref_codes)?;
    let (tokens, logits) = greedy_steps(&model, opts.device, opts.threads, &ref_codes)?;
    checks.extend(step_checks(&tokens, &ref_tokens, &logits, &ref_logits));
    Ok(checks)
}

fn codes_check(codes: &[i32], reference: &[i32]) -> Check {
    let equal = codes.iter().zip(reference).filter(|(a, b)| a == b).count();
    let frac = equal as f64 / reference.len().max(1) as f64;
    Check {
        name: "Mimi codes equal (streaming encode)",
        value: format!("{:.2} % of {}", 100.0 * frac, reference.len()),
        bound: format!("≥ {} %", 100.0 * CODES_EQUAL_MIN),
        pass: codes.len() == reference.len() && frac >= CODES_EQUAL_MIN,
    }
}

fn decode_check(decoded: &[f32], reference: &[f32]) -> Check {
    let snr = snr_db(reference, decoded);
    Check {
        name: "Mimi decode of the same codes, SNR between devices",
        value: format!("{snr:.1} dB"),
        bound: format!("≥ {DECODE_SNR_MIN_DB} dB"),
        // NaN compares false: a NaN decode fails.
        pass: decoded.len() == reference.len() && snr >= DECODE_SNR_MIN_DB,
    }
}

fn step_checks(
    tokens: &[Choice],
    reference: &[Choice],
    logits: &[Vec<f32>],
    ref_logits: &[Vec<f32>],
) -> [Check; 2] {
    let same = tokens
        .iter()
        .zip(reference)
        .take_while(|(a, b)| a == b)
        .count();
    // Logits compare only while both sides have fed the same tokens.
    let diff = logits
        .iter()
        .zip(ref_logits)
        .take(same.max(1))
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    [
        Check {
            name: "greedy text and audio tokens identical",
            value: format!("{same} of {} steps", reference.len()),
            bound: "every step".into(),
            pass: same == reference.len() && tokens.len() == reference.len(),
        },
        Check {
            name: "text logits, largest difference",
            value: format!("{diff:.2e} over {} steps", same.max(1)),
            bound: format!("≤ {LOGIT_DIFF_MAX:.0e}"),
            pass: diff <= LOGIT_DIFF_MAX,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clip_is_audible_and_deterministic() {
        let a = clip(3);
        assert_eq!(a.len(), 3 * FRAME);
        assert_eq!(a, clip(3));
        let rms = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!((0.05..0.5).contains(&rms), "{rms}");
    }

    #[test]
    fn each_check_fails_beyond_its_bound() {
        let codes: Vec<i32> = (0..400).collect();
        assert!(codes_check(&codes, &codes).pass);
        let mut flipped = codes.clone();
        for c in flipped.iter_mut().take(4) {
            *c += 1;
        }
        assert!(
            codes_check(&flipped, &codes).pass,
            "1 % flipped is within the bound"
        );
        flipped[4] += 1;
        assert!(!codes_check(&flipped, &codes).pass);

        let pcm = clip(2);
        assert!(decode_check(&pcm, &pcm).pass);
        let noisy: Vec<f32> = pcm.iter().map(|x| x * (1.0 + 1e-2)).collect();
        assert!(!decode_check(&noisy, &pcm).pass, "40 dB is below the bound");
        let mut nan = pcm.clone();
        nan[7] = f32::NAN;
        assert!(!decode_check(&nan, &pcm).pass);

        let toks: Vec<Choice> = (0..5).map(|i| [i; 9]).collect();
        let logits: Vec<Vec<f32>> = (0..5).map(|i| vec![i as f32; 10]).collect();
        assert!(
            step_checks(&toks, &toks, &logits, &logits)
                .iter()
                .all(|c| c.pass)
        );
        let mut other = toks.clone();
        other[3][5] = 99;
        let [t, l] = step_checks(&other, &toks, &logits, &logits);
        assert!(!t.pass && l.pass, "{t} / {l}");
        assert_eq!(t.value, "3 of 5 steps");
        let mut off = logits.clone();
        off[1][2] += 2e-3;
        assert!(!step_checks(&toks, &toks, &off, &logits)[1].pass);
        off[1][2] = f32::NAN;
        assert!(!step_checks(&toks, &toks, &off, &logits)[1].pass);
    }

    #[test]
    fn snr_of_a_copy_is_huge_and_of_noise_is_low() {
        let a = clip(1);
        assert!(snr_db(&a, &a) > 200.0);
        let half: Vec<f32> = a.iter().map(|x| x * 0.5).collect();
        assert!((snr_db(&a, &half) - 6.02).abs() < 0.01);
    }
}
