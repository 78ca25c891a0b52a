//! `flm-edge selftest`: does a device compute what the CPU computes? Run first by installers
//! on a new board or build, it needs no model download: it writes a small seeded model in the
//! release's formats (the real Qwen2 vocabulary and tokenizer, a 2-layer backbone, a 2-layer
//! depth transformer and the full-size Mimi) into a temporary folder, converts it to f32, and
//! runs the same work on the device under test and on the reference device (the CPU):
//!
//! - Mimi: a streaming encode of a synthetic 4 s voice-like clip, and a decode of the
//!   reference's codes;
//! - the step engine: `steps` greedy steps fed with the reference's codes;
//! - the same steps with the quantized types of the board profiles (q8_0 on AGX Orin, q4_k
//!   on Orin NX, q3_k on Orin Nano), converted from the same checkpoint: the device is
//!   teacher-forced with the reference's choices, so that both compute every step from the
//!   same inputs, and compared with the CPU at the same type.
//!
//! Each check is one line with its bound; the exit status says whether all held. The first
//! names the device that did each side's work (ggml's names of the backends Mimi and the
//! depth transformer ran on, and the backbone's layers on the device): a device under test
//! whose work ran where the reference's did fails, unless the same device was asked for on
//! both sides (a check of the self-test itself).
//!
//! The bounds are what another summation order allows on f32 weights. A different device
//! adds up the same products in another order (f32 rounding, some 1e-6 relative): a Mimi
//! code flips only where two codebook entries are almost equally near (on Mesa's software
//! GPU, 99.8 % of codes equal the CPU's and the decode is 62 dB apart), text logits of order
//! 1-4 move by some 1e-5, and greedy choices, whose margins on this model are mostly above
//! 1e-2, do not change. A broken kernel moves all of these by orders of magnitude.
//!
//! Quantized weights are multiplied with activations that each backend rounds its own way:
//! the CPU quantizes them to 8 bits (q8_K or q8_0 blocks), CUDA to q8_1, and Mesa's
//! software Vulkan, by what it measures, more finely. An 8-bit rounding of every activation moves the
//! logits as much as q8_0's rounding of the weights does: on the self-test's model (seed 3,
//! 20 steps, teacher-forced) Vulkan's logits are 0.11 (q8_0), 0.17 (q4_k) and 0.17 (q3_k)
//! from the CPU's at most, 0.02-0.03 in root mean square, where the weights' own rounding
//! moves them from f32's by 0.16 (q8_0), 1.0 (q4_k) and 1.7 (q3_k); on q8_0 Vulkan is the
//! nearer to f32 (0.015 rms against the CPU's 0.025). q8_0 decisions of margin up to 0.043
//! flip between the two (tests/vulkan.rs). So: text logits within 0.25, no text decision
//! whose margin in the reference is 0.1 or more changed, and 80 % of the audio codes equal
//! (the depth transformer's near-ties flip; a broken kernel moves logits by their own size,
//! about 5, and leaves almost no code equal: 1 in 2048 by chance).

use std::path::Path;

use anyhow::{Context, Result};
use flm_conversion::model_files::MIMI_FILE;
use flm_conversion::{ConvertOptions, MimiDtype, Quant};
use flm_kernels::device::Device;
use flm_kernels::mimi::{FRAME, Mimi};

use crate::serve::abort::{self, Stage};

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
/// The quantized types of the board profiles (boards/jetson-*.toml).
pub const PROFILE_QUANTS: [Quant; 3] = [Quant::Q8_0, Quant::Q4K, Quant::Q3K];
/// Quantized weights: largest difference of a text logit against the CPU at the same type
/// (one side's 8-bit activations: up to 0.17 measured, see the module's notes).
pub const QUANT_LOGIT_DIFF_MAX: f32 = 0.25;
/// Quantized weights: a text decision whose margin in the reference (its best logit less
/// the second) is at least this must not change.
pub const QUANT_MARGIN_KEPT: f32 = 0.1;
/// Quantized weights: fraction of audio codes equal to the reference's.
pub const QUANT_AUDIO_EQUAL_MIN: f64 = 0.8;

/// Writes the seeded checkpoints under `work`.
fn make_checkpoints(work: &Path, seed: u64) -> Result<()> {
    flm_testkit::write_lm(&work.join("checkpoint"), &flm_testkit::LmSpec::tiny(), seed)
        .context("selftest: writing the seeded language model")?;
    flm_testkit::write_mimi(&work.join("mimi.safetensors"), seed)
        .context("selftest: writing the seeded Mimi")?;
    Ok(())
}

/// Converts the checkpoints of `work` at `quant` (Mimi f32); returns the model folder.
fn convert(work: &Path, quant: Quant) -> Result<std::path::PathBuf> {
    let out = work.join(format!("model-{quant}"));
    flm_conversion::convert(ConvertOptions {
        lm_dir: work.join("checkpoint"),
        mimi: work.join("mimi.safetensors"),
        out_dir: out.clone(),
        quant,
        mimi_dtype: MimiDtype::F32,
        force: false,
        log: &mut |_| {},
    })
    .with_context(|| format!("selftest: converting the test model at {quant}"))?;
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
    abort::at(None, Stage::SelftestMimi);
    for (f, out) in decoded.chunks_exact_mut(FRAME).enumerate() {
        mimi.decode(&codes[f * CODEBOOKS..(f + 1) * CODEBOOKS], out)?;
    }
    Ok((own, decoded))
}

/// What one step chose: the text token, then the 8 speaking codes.
type Choice = [i32; 1 + CODEBOOKS];

/// What a side's steps chose, their raw text logits, and where they ran.
struct Steps {
    tokens: Vec<Choice>,
    logits: Vec<Vec<f32>>,
    /// ggml's name of the backend of the backbone and the depth transformer ("CPU",
    /// "CUDA0", ...).
    device: String,
}

/// `codes.len() / 8` greedy steps fed with the user's `codes`; with `forced`, each step
/// continues with the reference's choices instead of its own (teacher forcing).
fn run_steps(
    model: &ModelDir,
    device: Device,
    threads: usize,
    codes: &[i32],
    forced: Option<&[Choice]>,
) -> Result<Steps> {
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
        },
    )?;
    let mut tokens = vec![];
    let mut logits = vec![];
    for (t, user) in codes.chunks_exact(CODEBOOKS).enumerate() {
        let user: &[i32; CODEBOOKS] = user.try_into().expect("chunk of CODEBOOKS");
        abort::at(Some(t as u64), Stage::SelftestSteps);
        let out = match forced {
            Some(f) => engine.step_forced(user, &f[t]),
            None => engine.step(user),
        }
        .with_context(|| format!("{device}: step {t}"))?;
        let mut chosen: Choice = [0; 1 + CODEBOOKS];
        chosen[0] = out.text;
        chosen[1..].copy_from_slice(&out.audio);
        tokens.push(chosen);
        logits.push(engine.text_logits()?.to_vec());
    }
    Ok(Steps {
        tokens,
        logits,
        device: engine.device_name(),
    })
}

pub fn selftest(opts: &SelftestOptions) -> Result<Vec<Check>> {
    opts.device.check()?;
    opts.reference.check()?;
    abort::install();
    let work = tempfile::Builder::new()
        .prefix("flm-edge-selftest-")
        .tempdir()
        .context("selftest: cannot make a temporary folder")?;
    make_checkpoints(work.path(), opts.seed)?;
    let dir = convert(work.path(), Quant::F32)?;
    let model = ModelDir::open(&dir)?;
    let pcm = clip(opts.steps.max(1));

    abort::at(None, Stage::SelftestMimi);
    let (ref_codes, ref_decoded, ref_mimi) = {
        let mut mimi = Mimi::load(&model.path(MIMI_FILE), opts.reference, opts.threads)?;
        let (c, d) = mimi_round(&mut mimi, &pcm, None)?;
        (c, d, mimi.backend_name())
    };
    let (codes, decoded, mimi_device) = {
        let mut mimi = Mimi::load(&model.path(MIMI_FILE), opts.device, opts.threads)?;
        let (c, d) = mimi_round(&mut mimi, &pcm, Some(&ref_codes))?;
        (c, d, mimi.backend_name())
    };
    let reference = run_steps(&model, opts.reference, opts.threads, &ref_codes, None)?;
    let tested = run_steps(&model, opts.device, opts.threads, &ref_codes, None)?;
    let mut checks = vec![devices_check(
        opts,
        [&mimi_device, &tested.device],
        [&ref_mimi, &reference.device],
    )];
    checks.push(codes_check(&codes, &ref_codes));
    checks.push(decode_check(&decoded, &ref_decoded));
    checks.extend(step_checks(
        &tested.tokens,
        &reference.tokens,
        &tested.logits,
        &reference.logits,
    ));

    for quant in PROFILE_QUANTS {
        let dir = convert(work.path(), quant)?;
        let model = ModelDir::open(&dir)?;
        let reference = run_steps(&model, opts.reference, opts.threads, &ref_codes, None)?;
        let tested = run_steps(
            &model,
            opts.device,
            opts.threads,
            &ref_codes,
            Some(&reference.tokens),
        )?;
        checks.extend(quant_checks(quant, &tested, &reference));
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(checks)
}

/// Which device did each side's work; fails when the device under test ran where the
/// reference did though another was asked for (a backend that fell back to the CPU).
fn devices_check(
    opts: &SelftestOptions,
    [mimi, steps]: [&str; 2],
    [ref_mimi, ref_steps]: [&str; 2],
) -> Check {
    let value = format!(
        "{}: Mimi {mimi}, steps {steps}; {}: Mimi {ref_mimi}, steps {ref_steps}",
        opts.device, opts.reference
    );
    if opts.device == opts.reference {
        return Check {
            name: "devices",
            value,
            bound: "the same device on both sides, as asked (a check of the self-test, not of a device)".into(),
            pass: true,
        };
    }
    // The backbone and the depth transformer run on one backend: its name is the steps'.
    let on_device = |n: &str| n != ref_mimi && n != ref_steps;
    Check {
        name: "devices",
        value,
        bound: "the device under test did its side's work: not where the reference's ran".into(),
        pass: on_device(mimi) && on_device(steps),
    }
}

/// A quantized type's checks: the device teacher-forced with the reference's choices.
fn quant_checks(quant: Quant, tested: &Steps, reference: &Steps) -> [Check; 2] {
    let n = reference.tokens.len();
    let mut diff = 0f32;
    let mut kept = (0, 0); // text decisions of margin >= QUANT_MARGIN_KEPT: (unchanged, all)
    let mut worst_flip = 0f32;
    let mut audio_equal = 0;
    for t in 0..n.min(tested.tokens.len()) {
        let (a, b) = (&tested.logits[t], &reference.logits[t]);
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            diff = if d.is_nan() {
                f32::INFINITY
            } else {
                diff.max(d)
            };
        }
        let margin = margin(b);
        let same_text = tested.tokens[t][0] == reference.tokens[t][0];
        if !same_text {
            worst_flip = worst_flip.max(margin);
        }
        if margin >= QUANT_MARGIN_KEPT {
            kept.1 += 1;
            kept.0 += same_text as usize;
        }
        audio_equal += (1..=CODEBOOKS)
            .filter(|&k| tested.tokens[t][k] == reference.tokens[t][k])
            .count();
    }
    let audio = audio_equal as f64 / (n * CODEBOOKS).max(1) as f64;
    let name = |what: &str| -> &'static str {
        // The names of the checks of the three profile types, written out once.
        match (quant, what) {
            (Quant::Q8_0, "logits") => "q8_0: text logits against the CPU's, largest difference",
            (Quant::Q8_0, _) => "q8_0: tokens equal the CPU's (teacher-forced)",
            (Quant::Q4K, "logits") => "q4_k: text logits against the CPU's, largest difference",
            (Quant::Q4K, _) => "q4_k: tokens equal the CPU's (teacher-forced)",
            (Quant::Q3K, "logits") => "q3_k: text logits against the CPU's, largest difference",
            (Quant::Q3K, _) => "q3_k: tokens equal the CPU's (teacher-forced)",
            (_, "logits") => "quantized: text logits against the CPU's, largest difference",
            _ => "quantized: tokens equal the CPU's (teacher-forced)",
        }
    };
    [
        Check {
            name: name("logits"),
            value: format!("{diff:.2e} over {n} steps"),
            bound: format!("≤ {QUANT_LOGIT_DIFF_MAX}"),
            pass: tested.tokens.len() == n && diff <= QUANT_LOGIT_DIFF_MAX,
        },
        Check {
            name: name("tokens"),
            value: format!(
                "text: {} of {} decisions of margin ≥ {QUANT_MARGIN_KEPT} (largest margin changed {worst_flip:.3}); audio: {:.1} % of {}",
                kept.0,
                kept.1,
                100.0 * audio,
                n * CODEBOOKS
            ),
            bound: format!(
                "every text decision of margin ≥ {QUANT_MARGIN_KEPT}, audio ≥ {} %",
                100.0 * QUANT_AUDIO_EQUAL_MIN
            ),
            pass: tested.tokens.len() == n && kept.0 == kept.1 && audio >= QUANT_AUDIO_EQUAL_MIN,
        },
    ]
}

/// The best logit less the second best.
fn margin(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
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

    fn steps(tokens: Vec<Choice>, logits: Vec<Vec<f32>>, device: &str) -> Steps {
        Steps {
            tokens,
            logits,
            device: device.into(),
        }
    }

    #[test]
    fn quantized_checks_fail_beyond_their_bounds() {
        // Two steps; the reference's text margins are 1.0 and 0.05.
        let logits = vec![vec![3.0, 2.0, 0.0], vec![1.0, 0.95, 0.0]];
        let toks: Vec<Choice> = vec![[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8]];
        let reference = steps(toks.clone(), logits.clone(), "CPU");
        let same = steps(toks.clone(), logits.clone(), "CUDA0");
        assert!(
            quant_checks(Quant::Q4K, &same, &reference)
                .iter()
                .all(|c| c.pass)
        );
        // Logits 0.2 apart and the near-tie's text flipped: within the bounds.
        let mut near = steps(toks.clone(), logits.clone(), "CUDA0");
        near.logits[1][1] += 0.2;
        near.tokens[1][0] = 1;
        let [l, t] = quant_checks(Quant::Q3K, &near, &reference);
        assert!(l.pass && t.pass, "{l} / {t}");
        assert!(t.value.contains("largest margin changed 0.050"), "{t}");
        // The clear decision flipped: fails.
        let mut flipped = steps(toks.clone(), logits.clone(), "CUDA0");
        flipped.tokens[0][0] = 1;
        assert!(!quant_checks(Quant::Q8_0, &flipped, &reference)[1].pass);
        // 3 audio codes of 16 differ (81 %): passes; 4 (75 %): fails.
        let mut audio = steps(toks.clone(), logits.clone(), "CUDA0");
        for k in 1..=3 {
            audio.tokens[0][k] = 99;
        }
        assert!(quant_checks(Quant::Q8_0, &audio, &reference)[1].pass);
        audio.tokens[1][1] = 99;
        assert!(!quant_checks(Quant::Q8_0, &audio, &reference)[1].pass);
        // A logit 0.3 off, or NaN: fails.
        let mut off = steps(toks.clone(), logits.clone(), "CUDA0");
        off.logits[0][2] = 0.3;
        assert!(!quant_checks(Quant::Q8_0, &off, &reference)[0].pass);
        off.logits[0][2] = f32::NAN;
        assert!(!quant_checks(Quant::Q8_0, &off, &reference)[0].pass);
    }

    #[test]
    fn the_devices_check_fails_when_the_device_did_not_do_the_work() {
        let opts = |device: &str| SelftestOptions {
            device: device.parse().unwrap(),
            reference: Device::Cpu,
            steps: 1,
            threads: 1,
            seed: 0,
        };
        let cpu = ["CPU", "CPU"];
        let c = devices_check(&opts("cpu"), cpu, cpu);
        assert!(c.pass && c.bound.contains("as asked"), "{c}");
        assert_eq!(
            c.value,
            "cpu: Mimi CPU, steps CPU; cpu: Mimi CPU, steps CPU"
        );
        let gpu = ["CUDA0", "CUDA0"];
        let c = devices_check(&opts("gpu"), gpu, cpu);
        assert!(c.pass, "{c}");
        assert_eq!(
            c.value,
            "gpu: Mimi CUDA0, steps CUDA0; cpu: Mimi CPU, steps CPU"
        );
        // The GPU asked for, the work done on the CPU: fails.
        assert!(!devices_check(&opts("gpu"), cpu, cpu).pass);
        assert!(!devices_check(&opts("gpu"), ["CUDA0", "CPU"], cpu).pass);
    }

    #[test]
    fn snr_of_a_copy_is_huge_and_of_noise_is_low() {
        let a = clip(1);
        assert!(snr_db(&a, &a) > 200.0);
        let half: Vec<f32> = a.iter().map(|x| x * 0.5).collect();
        assert!((snr_db(&a, &half) - 6.02).abs() < 0.01);
    }
}
