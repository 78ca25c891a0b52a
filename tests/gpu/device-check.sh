#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU: what tests/gpu/device-prepare.sh built
# (flm-edge with CUDA, flm-testkit) in the folder given, nothing else needed (no Rust, no
# network). Within some 10 minutes on an H200-class machine:
#
#   DIR/device-check.sh DIR [OUT]
#
# 1. the compute devices ggml finds, and `selftest`: Mimi and 50 greedy steps on the GPU
#    against the CPU, each check against its bound;
# 2. a full-size random model (FLM-Audio's shapes, flm-testkit) converted at q4_k and q8_0;
#    `bench step` on each (ms per stage per step, graph computes, copies and host
#    synchronisations per step, graph splits of the backbone) and `bench mimi` (f32).
# Logs go to OUT (default: a temporary folder), one file per part, and to stdout.
#
# BACKEND=cpu runs the same on the CPU (to try the script where there is no GPU); SIZE=tiny
# uses the small model instead of the full-size one; STEPS and FRAMES set the bench lengths.
set -euo pipefail
dir="$(cd "${1:?usage: device-check.sh DIR [OUT]}" && pwd)"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
backend="${BACKEND:-cuda}"
size="${SIZE:-full}"
steps="${STEPS:-50}"
frames="${FRAMES:-200}"
kit="$dir/flm-testkit"
bin="$dir/flm-edge"
if [ -e "$dir/flm-edge.gz" ]; then
  # device-prepare.sh carries it compressed.
  unpacked=$(mktemp -d)
  gzip -dc "$dir/flm-edge.gz" >"$unpacked/flm-edge"
  chmod +x "$unpacked/flm-edge"
  bin="$unpacked/flm-edge"
fi
# cuBLAS 13, wherever this machine keeps it: the toolkit, or a Python environment's wheels.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null || true); do
  [ -e "$d/libcublas.so.13" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
t0=$(date +%s)
part() { echo "== $1 ($(($(date +%s) - t0)) s)"; }

part "devices"
(nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none") | tee "$out/devices.txt"
"$bin" devices 2>&1 | sed -n '/compute devices/,$p' | tee -a "$out/devices.txt"

part "selftest --backend $backend"
"$bin" selftest --backend "$backend" 2>&1 | tee "$out/selftest.txt"

part "full-size random model ($size)"
work=$(mktemp -d "${WORK:-/tmp}/flm-device-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$kit" lm --size "$size" --seed 1 --out "$work/checkpoint"
"$kit" mimi --seed 1 --out "$work/mimi.safetensors"
for q in q4_k q8_0; do
  part "convert $q"
  "$bin" convert --lm "$work/checkpoint" --mimi "$work/mimi.safetensors" --out "$work/$q" --quant "$q" 2>&1 | tail -4
  part "bench step $q --backend $backend"
  "$bin" bench step --model "$work/$q" --backend "$backend" --steps "$steps" 2>&1 | tee "$out/bench-step-$q.txt"
  if [ "$q" = q4_k ]; then
    part "bench mimi --backend $backend"
    "$bin" bench mimi --model "$work/$q" --backend "$backend" --frames "$frames" 2>&1 | tee "$out/bench-mimi.txt"
  fi
  [ "$q" = q8_0 ] || rm -f "$work/$q/backbone.gguf" "$work/$q/audio.gguf"
done
part "done: logs in $out"
