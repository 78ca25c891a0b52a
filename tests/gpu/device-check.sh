#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU: what tests/gpu/device-prepare.sh built
# (flm-edge with CUDA, flm-testkit, the libraries they need besides the driver and cuBLAS) in
# the folder given, nothing else needed (no Rust, no network). Within some 10 minutes on an
# H200-class machine:
#
#   DIR/device-check.sh DIR [OUT]
#
# 0. the machine (nvidia-smi: GPU, driver, CUDA version) and the binary's libraries: every
#    line of `ldd` that says "not found", as it is. ALSA and libgomp, which a bare GPU
#    machine may lack, are carried in DIR/lib and used only where the machine has none;
# 1. the compute devices ggml finds, and `selftest`: Mimi and 50 greedy steps on the GPU
#    against the CPU (f32, then the boards' quantized types), each check against its bound;
# 2. a full-size random model (FLM-Audio's shapes, flm-testkit) converted at q4_k and q8_0;
#    `bench step` on each (ms per stage per step, graph computes, copies and host
#    synchronisations per step, graph splits of the backbone) and `bench mimi` (f32); at
#    q4_k, N = 2, 4 and 8 conversations in one step (`bench step --conversations N`) and
#    Mimi streams in one graph (`bench mimi --streams N`), each beside one alone.
# Every part runs whatever an earlier one did: a failure is recorded (its exit status in the
# summary) and the next part goes on. Each part's log is a file in OUT (default: a temporary
# folder), and goes to stdout too. It closes with the figures of the benches (ms per step
# per stage, the counters) and one line per part; the exit status is 1 when a part failed.
#
# BACKEND=cpu runs the same on the CPU (to try the script where there is no GPU); SIZE=tiny
# uses the small model instead of the full-size one; STEPS and FRAMES set the bench lengths.
set -uo pipefail
dir="$(cd "${1:?usage: device-check.sh DIR [OUT]}" && pwd)"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
backend="${BACKEND:-cuda}"
size="${SIZE:-full}"
steps="${STEPS:-50}"
frames="${FRAMES:-200}"
kit="$dir/flm-testkit"
bin="$dir/flm-edge"
scratch=$(mktemp -d "${WORK:-/tmp}/flm-device-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
if [ -e "$dir/flm-edge.gz" ]; then
  # device-prepare.sh carries it compressed.
  gzip -dc "$dir/flm-edge.gz" >"$scratch/flm-edge"
  chmod +x "$scratch/flm-edge"
  bin="$scratch/flm-edge"
fi
t0=$(date +%s)
results=()
# part NAME LOG COMMAND...: runs COMMAND, its output to stdout and to OUT/LOG; records it.
part() {
  local name=$1 log=$2
  shift 2
  echo "== $name ($(($(date +%s) - t0)) s)"
  "$@" 2>&1 | tee "$out/$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then
    results+=("ok   $name ($log)")
  else
    results+=("FAIL $name: exit $rc ($log)")
  fi
  return 0
}

# --- 0. The machine and the binary's libraries --------------------------------------------
machine() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvidia-smi | grep -m1 'CUDA Version' | sed -E 's/.*(Driver Version: [0-9.]+).*(CUDA Version: [0-9.]+).*/\1, \2/'
  else
    echo "nvidia-smi: not found"
  fi
  uname -srm
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"
}
part "machine" machine.txt machine
# cuBLAS 13, wherever this machine keeps it: the toolkit, or a Python environment's wheels.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null || true); do
  [ -e "$d/libcublas.so.13" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# ALSA and libgomp as carried: only those the machine's own libraries leave unresolved are
# made visible (linked one by one into a folder of their own), the machine's others stay first.
missing=$(ldd "$bin" 2>&1 | awk '/not found/ { print $1 }')
for lib in $missing; do
  if [ -e "$dir/lib/$lib" ]; then
    echo "device-check: $lib: not on this machine, the carried one used ($dir/lib)"
    mkdir -p "$scratch/lib"
    ln -sf "$dir/lib/$lib" "$scratch/lib/$lib"
  fi
done
[ -d "$scratch/lib" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$scratch/lib"
libraries() {
  local rc=0 b
  for b in "$bin" "$kit"; do
    echo "ldd $b:"
    ldd "$b" 2>&1 | tee "$scratch/ldd"
    if grep -q 'not found' "$scratch/ldd"; then
      echo "unresolved libraries of $b:"
      grep 'not found' "$scratch/ldd"
      rc=1
    fi
  done
  return $rc
}
part "libraries (ldd $bin)" ldd.txt libraries

# --- 1. Devices and the self-test ---------------------------------------------------------
part "devices" devices.txt "$bin" devices
part "selftest --backend $backend" selftest.txt "$bin" selftest --backend "$backend"

# --- 2. A full-size random model, the benches ---------------------------------------------
part "full-size random model ($size)" model.txt sh -c \
  "'$kit' lm --size '$size' --seed 1 --out '$scratch/checkpoint' && '$kit' mimi --seed 1 --out '$scratch/mimi.safetensors'"
for q in q4_k q8_0; do
  part "convert $q" "convert-$q.txt" "$bin" convert --lm "$scratch/checkpoint" \
    --mimi "$scratch/mimi.safetensors" --out "$scratch/$q" --quant "$q"
  part "bench step $q --backend $backend" "bench-step-$q.txt" \
    "$bin" bench step --model "$scratch/$q" --backend "$backend" --steps "$steps"
  if [ "$q" = q4_k ]; then
    part "bench mimi --backend $backend" bench-mimi.txt \
      "$bin" bench mimi --model "$scratch/$q" --backend "$backend" --frames "$frames"
    # Several conversations in one step: N = 2, 4, 8 beside one alone in the same run (the
    # ratio of the times, the counters per step or frame, which must not grow with N).
    for n in 2 4 8; do
      part "bench step $q --conversations $n" "bench-step-$q-x$n.txt" \
        "$bin" bench step --model "$scratch/$q" --backend "$backend" --steps "$steps" \
        --no-peer --conversations "$n"
      part "bench mimi --streams $n" "bench-mimi-x$n.txt" \
        "$bin" bench mimi --model "$scratch/$q" --backend "$backend" --frames "$frames" \
        --streams "$n"
    done
  fi
  [ "$q" = q8_0 ] || rm -rf "$scratch/$q"
done

# --- Summary ------------------------------------------------------------------------------
{
  echo "== summary ($(($(date +%s) - t0)) s, logs in $out)"
  head -2 "$out/machine.txt"
  grep -h 'not found' "$out/ldd.txt" || echo "libraries: every one resolved"
  for f in bench-step-q4_k bench-step-q8_0 bench-mimi \
    bench-step-q4_k-x2 bench-step-q4_k-x4 bench-step-q4_k-x8 \
    bench-mimi-x2 bench-mimi-x4 bench-mimi-x8; do
    [ -s "$out/$f.txt" ] || continue
    echo "-- $f: ms per step and counters"
    grep -E ' ms|graph computes|uploads|downloads|synchronis|splits|per (step|frame)' "$out/$f.txt" |
      grep -v '^ *[0-9.]* us ' | sed 's/^/  /'
  done
  printf '%s\n' "${results[@]}"
} | tee "$out/summary.txt"
! printf '%s\n' "${results[@]}" | grep -q '^FAIL'
