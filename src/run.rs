//! `flm-edge run`: a whole conversation from a file, one 80 ms step per input frame, as fast
//! as the machine allows. The reply has the input's length: one leading silent frame (the
//! first step completes no output frame), then the model's audio.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use flm_conversion::model_files::{MIMI_FILE, audio_keys};
use flm_kernels::mimi::{FRAME, Mimi};
use serde::Serialize;

use crate::detok::Detokenizer;
use crate::engine::{Engine, EngineOptions};
use crate::files::write_atomic;
use crate::model_dir::ModelDir;
use crate::token_ring::CODEBOOKS;
use crate::{codes_npy, wav};

pub enum UserInput {
    /// Any PCM WAV, encoded with Mimi step by step.
    Wav(PathBuf),
    /// Mimi codes [8, T] (.npy): the encoder is skipped.
    Codes(PathBuf),
}

pub struct RunOptions {
    pub model: PathBuf,
    pub input: UserInput,
    pub output: PathBuf,
    pub transcript: Option<PathBuf>,
    pub engine: EngineOptions,
}

/// One line of `steps.jsonl`.
#[derive(Serialize)]
struct StepLine<'a> {
    step: usize,
    text: i32,
    audio: [i32; CODEBOOKS],
    piece: &'a str,
    ms: StepMs,
}

#[derive(Serialize)]
struct StepMs {
    encode: f64,
    embed: f64,
    backbone: f64,
    depth: f64,
    sample: f64,
    decode: f64,
    total: f64,
}

pub struct RunSummary {
    pub steps: usize,
    pub text: String,
    pub median_step_ms: f64,
}

pub fn run(opts: RunOptions) -> Result<RunSummary> {
    let model = ModelDir::open(&opts.model)?;
    // Read the input first: a bad file fails before the model is loaded.
    let (user_pcm, user_codes, out_len) = match &opts.input {
        UserInput::Wav(p) => {
            let pcm = wav::read_mono_24k(p)?;
            let frames = pcm.len().div_ceil(FRAME);
            let len = pcm.len();
            let mut padded = pcm;
            padded.resize(frames * FRAME, 0.0);
            (Some(padded), None, len)
        }
        UserInput::Codes(p) => {
            let codes = codes_npy::read(p)?;
            let len = codes.len() / CODEBOOKS * FRAME;
            (None, Some(codes), len)
        }
    };
    let tokenizer = model
        .audio
        .get_str(audio_keys::TOKENIZER_JSON)
        .with_context(|| {
            model
                .path(flm_conversion::model_files::AUDIO_FILE)
                .display()
                .to_string()
        })?;
    let mut detok = Detokenizer::from_json(tokenizer)?;
    let mut mimi = Mimi::load(
        &model.path(MIMI_FILE),
        opts.engine.device,
        opts.engine.threads,
    )?;
    let mut engine = Engine::load(&model, &opts.engine)?;

    let frames = out_len.div_ceil(FRAME);
    let mut reply = vec![0f32; frames * FRAME];
    let mut lines = Vec::with_capacity(frames * 160);
    let mut text = String::new();
    let mut totals = Vec::with_capacity(frames);
    for t in 0..frames {
        let t0 = Instant::now();
        let mut user = [0i32; CODEBOOKS];
        match (&user_pcm, &user_codes) {
            (Some(pcm), _) => mimi.encode(&pcm[t * FRAME..(t + 1) * FRAME], &mut user)?,
            (_, Some(codes)) => user.copy_from_slice(&codes[t * CODEBOOKS..(t + 1) * CODEBOOKS]),
            _ => unreachable!(),
        }
        let encode = t0.elapsed().as_secs_f64() * 1e3;
        let out = engine.step(&user).with_context(|| format!("step {t}"))?;
        let t1 = Instant::now();
        if let Some(frame) = out.frame {
            let mut codes = [0i32; CODEBOOKS];
            codes.copy_from_slice(&frame[1..]);
            mimi.decode(&codes, &mut reply[t * FRAME..(t + 1) * FRAME])?;
        }
        let decode = t1.elapsed().as_secs_f64() * 1e3;
        let piece = detok.push(out.text);
        text.push_str(piece);
        let s = out.times;
        let total = t0.elapsed().as_secs_f64() * 1e3;
        totals.push(total);
        let line = StepLine {
            step: t,
            text: out.text,
            audio: out.audio,
            piece,
            ms: StepMs {
                encode: round3(encode),
                embed: round3(s.embed),
                backbone: round3(s.backbone),
                depth: round3(s.depth),
                sample: round3(s.sample),
                decode: round3(decode),
                total: round3(total),
            },
        };
        serde_json::to_writer(&mut lines, &line)?;
        lines.push(b'\n');
    }
    reply.truncate(out_len);
    if let Some(path) = &opts.transcript {
        write_atomic(path, |tmp| write_all(tmp, &lines))?;
    }
    wav::write_mono_24k(&opts.output, &reply)?;
    totals.sort_by(f64::total_cmp);
    Ok(RunSummary {
        steps: frames,
        text,
        median_step_ms: totals.get(frames / 2).copied().unwrap_or(0.0),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn write_all(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
