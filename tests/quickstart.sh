#!/usr/bin/env bash
# Quick start without hardware or downloads: builds flm-edge, writes a small seeded FLM-Audio
# checkpoint and a full-size Mimi checkpoint in the released formats (random weights),
# converts them to a q4_k model folder, inspects it, runs a speech clip through Mimi, and holds
# a conversation with the clip as the user's voice (flm-edge run; a random model says nothing
# meaningful, but every stage runs as it would with the released weights).
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/install-deps
work="${1:-target/quickstart}"
cargo build --release --workspace
mkdir -p "$work"
target/release/flm-testkit lm --size tiny --seed 1 --out "$work/lm"
target/release/flm-testkit mimi --seed 1 --out "$work/mimi.safetensors"
target/release/flm-edge convert --lm "$work/lm" --mimi "$work/mimi.safetensors" --out "$work/model" --quant q4_k --force
target/release/flm-edge inspect "$work/model" | grep -E "^(==|model folder)|^  (general.architecture|flm.model_id)|tensors  " 
target/release/flm-edge mimi encode --model "$work/model" --input tests/golden/mimi/speech.wav --output "$work/codes.npy"
target/release/flm-edge mimi decode --model "$work/model" --input "$work/codes.npy" --output "$work/decoded.wav"
target/release/flm-edge bench mimi --model "$work/model" --frames 50
target/release/flm-edge run --model "$work/model" --input tests/golden/mimi/speech.wav \
  --output "$work/reply.wav" --transcript "$work/steps.jsonl" > /dev/null
echo "model folder ready: $work/model (Mimi round trip: $work/decoded.wav; reply: $work/reply.wav, $work/steps.jsonl)"
