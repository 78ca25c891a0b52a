#!/usr/bin/env bash
# Benchmark: convert a full-size FLM-Audio checkpoint (8.2 B parameters, bf16, 4 shards, all
# random, exact names/shapes/config of the release) to q4_k and q8_0, and report wall time and
# peak resident memory of each conversion. Needs ~45 GB of free disk in WORK. Not run in CI.
#
#   tests/bench/convert-full.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-target/bench-full}"
command -v /usr/bin/time >/dev/null || { echo "error: needs GNU time (apt-get install time)" >&2; exit 1; }
cargo build --release --workspace
mkdir -p "$work"
if [ ! -f "$work/lm/model.safetensors.index.json" ] || [ ! -f "$work/mimi.safetensors" ]; then
  target/release/flm-testkit lm --size full --seed 7 --out "$work/lm"
  target/release/flm-testkit mimi --seed 7 --out "$work/mimi.safetensors"
fi
echo "input: $(du -sb "$work/lm" | cut -f1) bytes; largest tensor: 152064 x 3584 bf16 = 1089978368 bytes"
for q in q4_k q8_0; do
  rm -rf "$work/model-$q"
  /usr/bin/time -v target/release/flm-edge convert --lm "$work/lm" --mimi "$work/mimi.safetensors" \
    --out "$work/model-$q" --quant "$q" 2> "$work/convert-$q.log" >/dev/null
  wall=$(grep "Elapsed (wall clock)" "$work/convert-$q.log" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/convert-$q.log" | awk '{print $NF}')
  size=$(du -sb "$work/model-$q" | cut -f1)
  echo "$q: wall $wall, peak RSS $((rss / 1024)) MiB, output $((size / 1048576)) MiB"
  rm -rf "$work/model-$q"
done
