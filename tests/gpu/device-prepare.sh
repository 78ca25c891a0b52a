#!/usr/bin/env bash
# Prepares the GPU check for a data-center machine with an NVIDIA GPU, CUDA 13 and no Rust
# toolchain or network (an H200: sm_90): builds here what tests/gpu/device-check.sh runs
# there, into one folder to carry along (well under 64 MiB):
#
#   tests/gpu/device-prepare.sh [DIR]     # default DIR: .gpu-check (git-ignored)
#
# - flm-edge with the CUDA backend for CUDA_ARCH (default 90), its CPU side built for
#   x86-64-v3 rather than this machine's CPU (tests/gpu/cuda-build.sh), stripped and
#   compressed (flm-edge.gz);
# - flm-testkit, which writes the full-size random model there (no download);
# - the libraries flm-edge needs besides the driver and cuBLAS that a bare GPU machine may
#   lack, ALSA's and libgomp (lib/; device-check.sh uses them only where the machine has none);
# - device-check.sh itself.
# cuBLAS is linked as a shared library (libcublas.so.13, libcublasLt.so.13): the check finds
# the GPU machine's own. The folder stays under 56 MiB (the carry limit is 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-.gpu-check}"
arch="${CUDA_ARCH:-90}"
bin=$(CUDA_ARCH="$arch" CPU_TARGET=x86-64-v3 CLIPPY=0 tests/gpu/cuda-build.sh | tee /dev/stderr | tail -1)
RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR="$PWD/target/x86-64-v3" \
  cargo build --release -p flm-testkit --bin flm-testkit
mkdir -p "$dir"
rm -f "$dir"/flm-edge "$dir"/flm-edge.gz "$dir"/flm-testkit
# Stripped, the CUDA binary is some 55 MB; compressed it leaves room under the 64 MiB.
strip -o "$dir/flm-edge" "$bin"
gzip -9 "$dir/flm-edge"
strip -o "$dir/flm-testkit" target/x86-64-v3/release/flm-testkit
cp tests/gpu/device-check.sh "$dir/"
rm -rf "$dir/lib"
mkdir -p "$dir/lib"
for lib in libasound.so.2 libgomp.so.1; do
  path=$(ldd "$bin" | awk -v l="$lib" '$1 == l { print $3 }')
  [ -n "$path" ] || { echo "device-prepare: $bin does not link $lib" >&2; exit 1; }
  cp -L "$path" "$dir/lib/$lib"
done
du -sh "$dir"/* | sed 's/^/device-prepare: /'
total=$(du -sm "$dir" | cut -f1)
[ "$total" -lt 56 ] || { echo "device-prepare: $dir is $total MiB, over the 56 MiB it may take" >&2; exit 1; }
echo "device-prepare: $dir ready ($total MiB, flm-edge for sm_$arch)"
echo "$dir"
