#!/usr/bin/env bash
# Builds flm-edge with ggml's CUDA backend on a Jetson, with JetPack's CUDA toolkit, then runs
# the GPU self-test. Run on the board itself, from the repository:
#
#   boards/jetson/build.sh                 # Orin (AGX, NX, Nano): sm_87; Xavier: sm_72
#   CUDA_ARCH=87 boards/jetson/build.sh    # when the board is not recognised
#
# Needs JetPack 6 (CUDA 12.x in /usr/local/cuda; `sudo apt install nvidia-jetpack` brings
# it), Rust (rustup), cmake, clang and the ALSA headers (.ci/install-deps installs them). The
# build takes some 30 to 60 minutes on the board's cores. The binary links CUDA's runtime
# and cuBLAS statically, so it needs only the driver that JetPack installs.
#
# The CMake options are those `tests/gpu/cuda-build.sh` checks on x86-64 without a GPU:
# - CMAKE_CUDA_ARCHITECTURES: device code for this board's GPU only;
# - GGML_CUDA_FA=OFF: flm-edge turns llama.cpp's flash attention off, so ggml's
#   flash-attention kernels would be dead code (about a quarter of the CUDA build time).
# Its last line is the path of the binary it built.
set -euo pipefail
cd "$(dirname "$0")/../.."
cuda="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -x "$cuda/bin/nvcc" ]; then
  echo "error: no nvcc in $cuda/bin: install JetPack's CUDA toolkit (sudo apt install nvidia-jetpack) or set CUDA_HOME" >&2
  exit 1
fi
board=$(tr -d '\0' </proc/device-tree/model 2>/dev/null || echo "unknown board")
case "$board" in
  *Orin*) arch=87 ;;
  *Xavier*) arch=72 ;;
  *) arch="" ;;
esac
arch="${CUDA_ARCH:-$arch}"
if [ -z "$arch" ]; then
  echo "error: '$board' is not a Jetson this script knows: set CUDA_ARCH (87 for Orin, 72 for Xavier)" >&2
  exit 1
fi
echo "jetson-build: $board, sm_$arch, $("$cuda/bin/nvcc" --version | tail -1)"
.ci/install-deps
export PATH="$cuda/bin:$PATH"
export CUDACXX="$cuda/bin/nvcc" CMAKE_CUDA_COMPILER="$cuda/bin/nvcc" CUDAToolkit_ROOT="$cuda"
# llama-cpp-sys-2 links cudart_static, cublas_static, cublasLt_static and culibos from
# `lib64` and the driver stub from `lib64/stubs` of each entry.
export CUDA_LIBRARY_PATH="$cuda"
export CMAKE_CUDA_ARCHITECTURES="$arch" GGML_CUDA_FA=OFF
export CARGO_TARGET_DIR="$PWD/target/jetson-sm$arch"
cargo build --release --features cuda --bin flm-edge
bin="$CARGO_TARGET_DIR/release/flm-edge"
"$bin" devices | sed -n '/compute devices/,$p'
"$bin" selftest --backend cuda
echo "$bin"
