#!/usr/bin/env bash
# Compile-and-link check of the `cuda` feature on a machine without a GPU or a system CUDA:
# builds `flm-edge --features cuda` against CUDA 13 from PyPI (tests/gpu/cuda-toolkit.sh) for
# one GPU architecture, in its own target dir, then checks the binary:
# - it links and loads: `ldd` resolves every library but the driver (libcuda.so.1, a stub
#   here, present only at link time);
# - it holds device code for the architecture (cuobjdump --list-elf names sm_XX);
# - run with the stub driver (no GPU), every command that takes `--backend` answers
#   `--backend cuda` with one line and a non-zero exit;
# - our own cfg(feature = "cuda") code is clippy-clean (CLIPPY=0 skips this).
# - every file of the repository that cargo lists as an input of the binary (its .d file) is
#   covered by the digest CI compares (tests/gpu/inputs.sh cuda).
# Its last line is the path of the binary it built. A pass for sm_87 is recorded in
# tests/gpu/cuda-build.verified: the digest of the inputs (tests/gpu/inputs.sh cuda), then
# evidence of the build: the binary's sha256 and its count of sm_87 device-code images.
# The build folder is $FLM_EDGE_CACHE/cuda-smXX (default target/; CI keeps it outside the
# clone, so that a later run rebuilds our crates, not ggml-cuda).
#
#   tests/gpu/cuda-build.sh            # Orin (sm_87)
#   CUDA_ARCH=90 CPU_TARGET=x86-64-v3 tests/gpu/cuda-build.sh   # an H200-class GPU
#
# CPU_TARGET builds the CPU side for that x86-64 level instead of this machine's CPU (for a
# binary that runs elsewhere: tests/gpu/device-prepare.sh).
# ggml-cuda is compiled with GGML_CUDA_FA=OFF: flm-edge turns llama.cpp's flash attention
# off (its CPU kernel rounds queries through f16), so the 37 flash-attention kernel units
# would be dead code on every board; boards/jetson/build.sh uses the same options.
set -euo pipefail
cd "$(dirname "$0")/../.."
arch="${CUDA_ARCH:-87}"
eval "$(tests/gpu/cuda-toolkit.sh)"
export CARGO_TARGET_DIR="${FLM_EDGE_CACHE:-$PWD/target}/cuda-sm$arch${CPU_TARGET:+-$CPU_TARGET}"
if [ -n "${CPU_TARGET:-}" ]; then
  # RUSTFLAGS replaces the repository's target-cpu=native (and the toolkit's link flags).
  export RUSTFLAGS="-C target-cpu=$CPU_TARGET $CUDA_LINK_RUSTFLAGS"
fi
export CMAKE_CUDA_ARCHITECTURES="$arch"
export GGML_CUDA_FA=OFF
t0=$(date +%s)
cargo build --release --locked --features cuda --bin flm-edge
bin="$CARGO_TARGET_DIR/release/flm-edge"
echo "cuda-build: built in $(($(date +%s) - t0)) s for sm_$arch"

fail() { echo "cuda-build: FAIL: $*" >&2; exit 1; }

# The digest CI compares covers every file of ours the binary was built from.
tests/gpu/inputs.sh --covers cuda "$bin.d" || fail "tests/gpu/inputs.sh cuda misses inputs of the binary"
echo "cuda-build: every input of the binary in cargo's list is in tests/gpu/inputs.sh cuda"

# Links and loads: everything resolves but the driver.
missing=$(LD_LIBRARY_PATH="$CUDA_TOOLKIT/lib" ldd "$bin" | awk '/not found/ { print $1 }')
[ "$missing" = "libcuda.so.1" ] || fail "ldd: unresolved libraries: '${missing:-none}' (expected libcuda.so.1 alone)"
echo "cuda-build: ldd: every library resolves but libcuda.so.1 (the driver)"
LD_LIBRARY_PATH="$CUDA_TOOLKIT/lib" ldd "$bin" | grep -E 'cuda|cublas' | sed 's/^/  /'

# Device code for the architecture.
elfs=$("$CUDA_TOOLKIT/bin/cuobjdump" --list-elf "$bin")
n=$(grep -c "sm_$arch" <<<"$elfs" || true)
[ "$n" -gt 0 ] || fail "no sm_$arch device code in $bin"
echo "cuda-build: $n device-code images for sm_$arch, e.g.:"
grep -m3 "sm_$arch" <<<"$elfs" | sed 's/^/  /'
other=$(grep -oE 'sm_[0-9]+' <<<"$elfs" | sort -u | grep -vx "sm_$arch" || true)
[ -z "$other" ] || fail "device code for other architectures too: $other"

# Without a GPU, `--backend cuda` is one line and a non-zero exit on every command taking it.
export LD_LIBRARY_PATH="$CUDA_STUBS:$CUDA_TOOLKIT/lib"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
check_refusal() {
  local name=$1
  shift
  set +e
  "$bin" "$@" >"$scratch/out" 2>"$scratch/err"
  local rc=$?
  set -e
  local lines
  lines=$(wc -l <"$scratch/err")
  if [ "$rc" -eq 0 ] || [ "$rc" -gt 128 ] || [ "$lines" -ne 1 ] || ! grep -q "cuda" "$scratch/err"; then
    sed 's/^/  | /' "$scratch/err" >&2
    fail "$name: expected one line naming cuda and a non-zero exit, got exit $rc and $lines lines"
  fi
  echo "cuda-build: $name --backend cuda: exit $rc: $(cat "$scratch/err")"
}
wav="$scratch/in.wav"
python3 - "$wav" <<'PY'
import struct, sys
n = 24000
with open(sys.argv[1], "wb") as f:
    f.write(b"RIFF" + struct.pack("<I", 36 + 2 * n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16))
    f.write(b"data" + struct.pack("<I", 2 * n) + bytes(2 * n))
PY
model="$scratch/model"
mkdir -p "$model"
check_refusal "run" run --model "$model" --input "$wav" --output "$scratch/out.wav" --backend cuda
check_refusal "mimi encode" mimi encode --model "$model" --input "$wav" --output "$scratch/c.npy" --backend cuda
check_refusal "bench step" bench step --model "$model" --backend cuda
check_refusal "bench mimi" bench mimi --model "$model" --backend cuda
check_refusal "selftest" selftest --backend cuda
check_refusal "serve" serve --model "$model" --input-wav "$wav" --output-wav "$scratch/o.wav" --backend cuda

if [ "${CLIPPY:-1}" != 0 ]; then
  cargo clippy --release --features cuda --all-targets -- -D warnings
  echo "cuda-build: clippy clean with --features cuda"
fi
echo "cuda-build: total $(($(date +%s) - t0)) s"
if [ "$arch" = 87 ] && [ -z "${CPU_TARGET:-}" ]; then
  # The record CI compares with (its first field, tests/gpu/inputs.sh cuda): these inputs
  # passed, with this binary (sha256) holding this many sm_87 device-code images.
  echo "$(tests/gpu/inputs.sh cuda) sm_87 passed binary-sha256=$(sha256sum "$bin" | cut -c1-64) sm_87-images=$n" \
    >tests/gpu/cuda-build.verified
fi
echo "$bin"
