//! `flm-edge bench`: timings of the real-time stages, warm, per 80 ms frame.

use std::time::{Duration, Instant};

use anyhow::Result;
use flm_kernels::mimi::{FRAME, Mimi};

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
    pub encode: Stats,
    pub decode: Stats,
    pub weight_bytes: usize,
}

/// Streams `frames` frames through the encoder and the decoder, one frame per call, after
/// `warmup` frames, timing each call.
pub fn mimi(mimi: &mut Mimi, frames: usize, warmup: usize, threads: usize) -> Result<MimiBench> {
    let pcm = test_signal((frames + warmup) * FRAME);
    let mut codes = [0i32; 8];
    let mut out = vec![0f32; FRAME];
    let (mut enc, mut dec) = (Vec::with_capacity(frames), Vec::with_capacity(frames));
    mimi.reset();
    for f in 0..frames + warmup {
        let t0 = Instant::now();
        mimi.encode(&pcm[f * FRAME..(f + 1) * FRAME], &mut codes)?;
        let t1 = Instant::now();
        mimi.decode(&codes, &mut out)?;
        let t2 = Instant::now();
        if f >= warmup {
            enc.push(t1 - t0);
            dec.push(t2 - t1);
        }
    }
    Ok(MimiBench {
        frames,
        threads,
        encode: stats(&mut enc),
        decode: stats(&mut dec),
        weight_bytes: mimi.weight_bytes(),
    })
}

/// Sums per-node timings by op and output shape and prints the most expensive.
pub fn print_ops(nodes: Vec<(String, [i64; 4], f64)>) {
    let total: f64 = nodes.iter().map(|n| n.2).sum();
    let mut by: std::collections::HashMap<(String, [i64; 4]), (usize, f64)> = Default::default();
    for (op, ne, us) in nodes {
        let e = by.entry((op, ne)).or_default();
        e.0 += 1;
        e.1 += us;
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    println!(
        "ops of one encode + one decode frame, each node timed alone: {:.2} ms in all",
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
