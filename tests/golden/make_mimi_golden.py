#!/usr/bin/env python3
"""Golden files for the Mimi codec, made with Kyutai's reference implementation.

Reference: the PyPI `moshi` package (PyTorch, CPU), `moshi.models.loaders.get_mimi`, which
loads the checkpoint strictly by the released tensor names, with 8 codebooks.

Weights: the Mimi checkpoint written by `flm-testkit mimi --seed SEED` (full size, f32, random
values; see tests/testkit/src/mimi.rs for the distributions: codebook vectors have std ~1 so
that nearest-code search spreads over many codes, LayerScale 0.1 so that the transformers
matter). The tests regenerate the same file from the seed.

Input: `speech.wav`, a clip synthesised with espeak-ng (see tests/golden/mimi/README.md),
24 kHz mono 16-bit.

Outputs (in OUT):
  codes.npy       int32 [8, T]: streaming encode, one 1920-sample frame per call
  decoded.npy     float32 [T*1920]: streaming decode of codes.npy, one frame per call
  meta.json       versions, seed, sizes, sha256 of the weights file and of the outputs

Usage: make_mimi_golden.py MIMI.safetensors speech.wav OUT_DIR SEED
"""
import hashlib
import json
import sys
import wave

import numpy as np
import torch

import moshi
from moshi.models import loaders


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    weights, wav_path, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    with wave.open(wav_path) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    frame = 1920
    n_frames = len(pcm) // frame
    pcm = pcm[: n_frames * frame]
    mimi = loaders.get_mimi(weights, device="cpu", num_codebooks=8)
    mimi.eval()
    codes = []
    with torch.no_grad(), mimi.streaming(1):
        for f in range(n_frames):
            chunk = torch.from_numpy(pcm[f * frame:(f + 1) * frame].copy()).view(1, 1, frame)
            codes.append(mimi.encode(chunk)[0, :, 0].numpy())
    codes = np.stack(codes, axis=1).astype(np.int32)  # [8, T]
    decoded = []
    with torch.no_grad(), mimi.streaming(1):
        for f in range(n_frames):
            c = torch.from_numpy(codes[:, f:f + 1].astype(np.int64)).view(1, 8, 1)
            decoded.append(mimi.decode(c)[0, 0].numpy())
    decoded = np.concatenate(decoded).astype(np.float32)
    np.save(f"{out}/codes.npy", codes)
    np.save(f"{out}/decoded.npy", decoded)
    distinct = [int(len(np.unique(codes[q]))) for q in range(8)]
    meta = {
        "reference": "PyPI moshi (Kyutai), moshi.models.loaders.get_mimi, streaming, 1 frame per call",
        "moshi": moshi.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seed": seed,
        "weights_sha256": sha256(weights),
        "input_sha256": sha256(wav_path),
        "frames": n_frames,
        "distinct_codes_per_codebook": distinct,
        "decoded_rms": float(np.sqrt(np.mean(decoded ** 2))),
        "codes_sha256": sha256(f"{out}/codes.npy"),
        "decoded_sha256": sha256(f"{out}/decoded.npy"),
    }
    with open(f"{out}/meta.json", "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
