#!/usr/bin/env bash
# Streaming Mimi, per 80 ms frame, on the same random full-size weights: flm-edge (ggml, CPU)
# beside Kyutai's PyTorch and candle implementations. Not run in CI.
#
#   tests/bench/mimi-compare.sh [PYTHON] [WORK]
# PYTHON must have `moshi==0.2.13` and `rustymimi==0.4.1` installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${1:-python3}"
work="${2:-target/bench-mimi}"
threads=$(nproc)
cargo build --release --workspace
mkdir -p "$work"
target/release/flm-testkit lm --size tiny --seed 1 --out "$work/lm"
target/release/flm-testkit mimi --seed 1 --out "$work/mimi.safetensors"
for dtype in f32 f16 q8_0; do
  target/release/flm-edge convert --lm "$work/lm" --mimi "$work/mimi.safetensors" --out "$work/model-$dtype" \
    --quant q8_0 --mimi-dtype "$dtype" --force > /dev/null 2>&1
  echo "flm-edge --mimi-dtype $dtype:"
  target/release/flm-edge bench mimi --model "$work/model-$dtype" --frames 200 --threads "$threads"
done
"$py" tests/bench/mimi_compare.py "$work/mimi.safetensors" 200 "$threads"
