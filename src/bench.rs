//! `flm-edge bench`: timings of the real-time stages, warm, per 80 ms frame.

use std::time::{Duration, Instant};

use anyhow::Result;
use flm_kernels::ggml::Traffic;
use flm_kernels::mimi::{FRAME, Mimi};

use flm_conversion::model_files::BACKBONE_FILE;

use crate::engine::{Device, Engine};
use crate::llama::{BackboneParams, LlamaBackbone};
use crate::model_dir::ModelDir;

/// Median, 99th percentile and maximum of a set of durations, in milliseconds.
pub struct Stats {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    Stats {
        median: at(0.5),
        p99: at(0.99),
        max: ms(*samples.last().unwrap()),
    }
}

/// A deterministic speech-like test signal: a few drifting harmonics and noise, -12 dBFS.
pub fn test_signal(n: usize) -> Vec<f32> {
    let mut seed = 0x2545f4914f6cdd1du64;
    (0..n)
        .map(|i| {
            let t = i as f32 / 24_000.0;
            let f0 = 120.0 + 30.0 * (t * 1.3).sin();
            let voiced: f32 = (1..6)
                .map(|h| (std::f32::consts::TAU * f0 * h as f32 * t).sin() / h as f32)
                .sum();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            0.15 * voiced * (0.5 + 0.5 * (t * 3.0).sin().abs()) + 0.02 * noise
        })
        .collect()
}

pub struct MimiBench {
    pub frames: usize,
    pub threads: usize,
    /// Streams encoded and decoded together in each call.
    pub streams: usize,
    pub encode: Stats,
    pub decode: Stats,
    pub weight_bytes: usize,
    /// Graph computes and host-device copies of the timed frames (encode and decode).
    pub traffic: Traffic,
}

/// Streams `frames` frames of every stream of `mimi` through the encoder and the decoder,
/// one frame of each per call (all streams in one call), after `warmup` frames, timing each
/// call. Stream s hears the test signal from frame s on.
pub fn mimi(mimi: &mut Mimi, frames: usize, warmup: usize, threads: usize) -> Result<MimiBench> {
    let n = mimi.streams();
    let streams: Vec<usize> = (0..n).collect();
    let pcm = test_signal((frames + warmup + n) * FRAME);
    let mut codes = vec![0i32; 8 * n];
    let mut out = vec![0f32; FRAME * n];
    let (mut enc, mut dec) = (Vec::with_capacity(frames), Vec::with_capacity(frames));
    mimi.reset();
    let mut before = Traffic::now();
    for f in 0..frames + warmup {
        if f == warmup {
            before = Traffic::now();
        }
        let t0 = Instant::now();
        mimi.encode_streams(&streams, &pcm[f * FRAME..(f + n) * FRAME], &mut codes)?;
        let t1 = Instant::now();
        mimi.decode_streams(&streams, &codes, &mut out)?;
        let t2 = Instant::now();
        if f >= warmup {
            enc.push(t1 - t0);
            dec.push(t2 - t1);
        }
    }
    Ok(MimiBench {
        frames,
        threads,
        streams: n,
        encode: stats(&mut enc),
        decode: stats(&mut dec),
        weight_bytes: mimi.weight_bytes(),
        traffic: Traffic::now().since(&before),
    })
}

/// Ogg-Opus as remote clients' audio goes through the server: each 80 ms frame encoded to a
/// page, and that page decoded; median, p99, max per frame.
pub fn opus(frames: usize) -> Result<(Stats, Stats)> {
    use crate::remote::ogg_opus::{OggOpusReader, OggOpusWriter};
    let pcm = test_signal((frames + 10) * FRAME);
    let mut writer = OggOpusWriter::new()?;
    let mut reader = OggOpusReader::new()?;
    for h in writer.headers()? {
        reader.push(&h, &mut |_: &[f32]| {})?;
    }
    let (mut enc, mut dec) = (Vec::with_capacity(frames), Vec::with_capacity(frames));
    let mut got = 0;
    for f in 0..frames + 10 {
        let t0 = Instant::now();
        let page = writer.frame(&pcm[f * FRAME..(f + 1) * FRAME])?;
        let t1 = Instant::now();
        reader.push(&page, &mut |x: &[f32]| got += x.len())?;
        let t2 = Instant::now();
        if f >= 10 {
            enc.push(t1 - t0);
            dec.push(t2 - t1);
        }
    }
    anyhow::ensure!(got == (frames + 10) * FRAME, "Opus returned {got} samples");
    Ok((stats(&mut enc), stats(&mut dec)))
}

/// Echo cancellation at 48 kHz (8 blocks of 10 ms per 80 ms frame, render and capture), on
/// the test signal and its delayed, scaled echo; median, p99, max per frame.
pub fn echo(frames: usize) -> Result<Stats> {
    let far = test_signal((frames + 10) * FRAME * 2);
    let mut aec = crate::echo::EchoCanceller::new(48_000)?;
    let b = aec.block();
    let mut out = vec![0f32; b];
    let mut mic = vec![0f32; b];
    let mut times = Vec::with_capacity(frames);
    for f in 0..frames + 10 {
        let t0 = Instant::now();
        for k in 0..8 {
            let at = (f * 8 + k) * b;
            for (i, m) in mic.iter_mut().enumerate() {
                *m = 0.3 * far[(at + i).saturating_sub(1440)];
            }
            aec.render(&far[at..at + b]);
            aec.capture(&mic, &mut out);
        }
        if f >= 10 {
            times.push(t0.elapsed());
        }
    }
    Ok(stats(&mut times))
}

/// Sums per-node timings by op and output shape and prints the most expensive.
pub fn print_ops(nodes: Vec<(String, [i64; 4], f64)>) {
    let total: f64 = nodes.iter().map(|n| n.2).sum();
    let n_nodes = nodes.len();
    let mut by: std::collections::HashMap<(String, [i64; 4]), (usize, f64)> = Default::default();
    for (op, ne, us) in nodes {
        let e = by.entry((op, ne)).or_default();
        e.0 += 1;
        e.1 += us;
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    println!(
        "ops: {n_nodes} graph nodes (views included), each timed alone: {:.2} ms in all",
        total / 1e3
    );
    for ((op, ne), (count, us)) in rows.into_iter().take(30) {
        println!(
            "  {:>8.1} us  {:5.1} %  {count:3} × {op:<14} {ne:?}",
            us,
            100.0 * us / total
        );
    }
}

pub struct StepBench {
    pub steps: usize,
    pub threads: usize,
    pub embed: Stats,
    pub backbone: Stats,
    pub depth: Stats,
    pub sample: Stats,
    pub total: Stats,
    /// The backbone's graph alone, waited for, on the same embedding as `peer`.
    pub backbone_alone: Stats,
    /// llama.cpp's decode of the same backbone file on the same device, one embedding per
    /// decode (None when not asked for).
    pub peer: Option<Peer>,
    pub weight_bytes_per_step: u64,
    pub peak_rss_bytes: u64,
    /// Graph computes and host-device copies of the timed steps: the backbone's graph, the
    /// depth transformer's, and the host's text draw on the CPU (which reads the logit row).
    pub traffic: Traffic,
    /// Whether the text token was drawn in the backbone's graph (only it comes back).
    pub text_on_device: bool,
    /// The backbone's time in the steps that shifted the context (dropped the oldest half
    /// of the KV cache, re-rotated and moved the keys left), if any did.
    pub shift_backbone: Option<Stats>,
    pub shifts: usize,
}

fn stats_ms(samples: &mut [f64]) -> Stats {
    let mut d: Vec<Duration> = samples
        .iter()
        .map(|&ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    stats(&mut d)
}

/// Bytes of weights one step reads: every backbone and depth-transformer weight, plus one
/// embedding row per stream (17) instead of whole tables.
pub fn weight_bytes_per_step(model: &ModelDir) -> u64 {
    use flm_conversion::plan::audio_names::{DEP_WTE, LISTEN_EMBD, SPEAK_EMBD};
    let row = |t: &flm_conversion::gguf::TensorInfo| t.ty.row_bytes(t.ne[0]);
    let mut bytes = 0;
    for t in &model.backbone.tensors {
        bytes += if t.name == "token_embd.weight" {
            row(t)
        } else {
            t.n_bytes()
        };
    }
    for t in &model.audio.tensors {
        bytes += match t.name.as_str() {
            SPEAK_EMBD | LISTEN_EMBD | DEP_WTE => 8 * row(t),
            _ => t.n_bytes(),
        };
    }
    bytes
}

/// Peak resident memory of this process.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// llama.cpp's decode of the backbone: the peer the backbone's graph is timed beside.
pub struct Peer {
    pub decode: Stats,
    /// Graph splits of its one-position graph, and at most how many host synchronisations
    /// a decode costs on a device (None on the CPU).
    pub splits: Option<u32>,
    pub syncs: Option<u32>,
}

/// Runs `steps` engine steps (of all its conversations) after `warmup`, with pseudo-random
/// user codes, then times the
/// backbone's graph alone and, with `peer`, llama.cpp's decode of the same file and input
/// on the same device, alternated.
pub fn step(
    engine: &mut Engine,
    model: &ModelDir,
    steps: usize,
    warmup: usize,
    threads: usize,
    shift_every: Option<usize>,
    peer: Option<Device>,
) -> Result<StepBench> {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = steps.max(1);
    let (mut embed, mut backbone, mut depth, mut sample, mut total) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut shifted = vec![];
    engine.reset();
    let mut before = Traffic::now();
    for s in 0..n + warmup {
        if s == warmup {
            before = Traffic::now();
        }
        let users: Vec<[i32; 8]> = (0..engine.conversations())
            .map(|_| std::array::from_fn(|_| (next() % 2048) as i32))
            .collect();
        if let Some(k) = shift_every
            && s >= warmup
            && (s - warmup + 1).is_multiple_of(k.max(1))
        {
            engine.shift_context_now()?;
        }
        let out = engine.step_all(&users)?[0];
        if out.context_shifted {
            shifted.push(out.times.backbone);
        }
        if s >= warmup {
            let t = out.times;
            embed.push(t.embed);
            backbone.push(t.backbone);
            depth.push(t.depth);
            sample.push(t.sample);
            total.push(t.total());
        }
    }
    let traffic = Traffic::now().since(&before);
    let reps = n.min(20);
    let width = engine.backbone().shape().embd;
    let embd: Vec<f32> = (0..width).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut llama = match peer {
        Some(device) => Some(LlamaBackbone::load(
            &model.path(BACKBONE_FILE),
            &BackboneParams {
                n_ctx: 64,
                n_threads: threads as i32,
                device,
                kv_f32: engine.backbone().kv_f32(),
                flash_attn: false,
            },
        )?),
        None => None,
    };
    let (mut ours, mut theirs) = (vec![], vec![]);
    engine.reset();
    for r in 0..reps {
        let t0 = Instant::now();
        engine.backbone_alone(&embd)?;
        ours.push(t0.elapsed());
        if let Some(l) = llama.as_mut() {
            let t0 = Instant::now();
            l.step(&embd, r as i32)?;
            theirs.push(t0.elapsed());
        }
    }
    engine.reset();
    let on_cpu = engine.device_name() == "CPU";
    let peer = llama.map(|l| Peer {
        decode: stats(&mut theirs),
        splits: l.placement().splits,
        syncs: l.placement().decode_synchronisations().filter(|_| !on_cpu),
    });
    Ok(StepBench {
        steps: n,
        threads,
        embed: stats_ms(&mut embed),
        backbone: stats_ms(&mut backbone),
        depth: stats_ms(&mut depth),
        sample: stats_ms(&mut sample),
        total: stats_ms(&mut total),
        backbone_alone: stats(&mut ours),
        peer,
        weight_bytes_per_step: weight_bytes_per_step(model),
        peak_rss_bytes: peak_rss_bytes(),
        traffic,
        text_on_device: engine.backbone().draws_text(),
        shifts: shifted.len(),
        shift_backbone: (!shifted.is_empty()).then(|| stats_ms(&mut shifted)),
    })
}

/// One line: what `t`, counted over `n` steps or frames, costs per one of them.
pub fn traffic_line(t: &Traffic, n: usize, what: &str) -> String {
    let n = n.max(1) as f64;
    let per = |x: u64| x as f64 / n;
    format!(
        "{:.1} graph computes, {:.1} uploads ({:.1} KiB), {:.1} downloads ({:.1} KiB), {:.1} host synchronisations on a device, per {what}",
        per(t.graphs),
        per(t.uploads),
        per(t.upload_bytes) / 1024.0,
        per(t.downloads),
        per(t.download_bytes) / 1024.0,
        per(t.synchronisations()),
    )
}
