#!/usr/bin/env python3
"""Side-by-side streaming Mimi timings on the same weights: Kyutai's PyTorch Mimi (PyPI
`moshi`) and Kyutai's Rust/candle Mimi (PyPI `rustymimi`), one 80 ms frame per call, warm,
median and p99 over FRAMES frames. flm-edge is measured by `flm-edge bench mimi` on the GGUF
converted from the same checkpoint (tests/bench/mimi-compare.sh runs all three).

Usage: mimi_compare.py MIMI.safetensors FRAMES THREADS
Needs: pip install moshi==0.2.13 rustymimi==0.4.1
"""
import sys
import time

import numpy as np
import torch


def signal(n):
    # The same kind of test signal as `flm-edge bench`: drifting harmonics and noise.
    t = np.arange(n, dtype=np.float64) / 24000.0
    f0 = 120.0 + 30.0 * np.sin(t * 1.3)
    voiced = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    rng = np.random.default_rng(0)
    x = 0.15 * voiced * (0.5 + 0.5 * np.abs(np.sin(t * 3.0))) + 0.02 * (rng.random(n) - 0.5)
    return x.astype(np.float32)


def stats(ms):
    ms = np.sort(np.array(ms))
    return np.median(ms), ms[int(round((len(ms) - 1) * 0.99))]


def time_stream(encode, decode, pcm, frames, warm):
    """Streams pcm one frame per call; returns per-frame encode and decode times in ms."""
    enc, dec = [], []
    for f in range(frames + warm):
        x = pcm[f * 1920:(f + 1) * 1920]
        t0 = time.perf_counter()
        c = encode(x)
        t1 = time.perf_counter()
        decode(c)
        t2 = time.perf_counter()
        if f >= warm:
            enc.append((t1 - t0) * 1e3)
            dec.append((t2 - t1) * 1e3)
    return stats(enc), stats(dec)


def report(name, timings):
    (em, ep), (dm, dp) = timings
    print(f"{name:18} encode median {em:6.2f} ms p99 {ep:6.2f} | decode median {dm:6.2f} ms p99 {dp:6.2f} | total {em + dm:6.2f} ms")


def main():
    weights, frames, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    warm = 10
    pcm = signal((frames + warm) * 1920)

    from moshi.models import loaders
    mimi = loaders.get_mimi(weights, device="cpu", num_codebooks=8)
    mimi.eval()
    with torch.no_grad(), mimi.streaming(1):
        report("pytorch moshi", time_stream(
            lambda x: mimi.encode(torch.from_numpy(x.copy()).view(1, 1, 1920)),
            mimi.decode, pcm, frames, warm))

    import rustymimi
    tok = rustymimi.Tokenizer(weights, num_codebooks=8)
    report("candle rustymimi", time_stream(
        lambda x: tok.encode_step(x.reshape(1, 1, 1920)), tok.decode_step, pcm, frames, warm))


if __name__ == "__main__":
    main()
