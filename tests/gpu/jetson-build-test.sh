#!/usr/bin/env bash
# The decisions of boards/jetson/build.sh, on fake boards (`--dry-run`: it prints what it
# found, decided and would run): a device-tree model file, an L4T release file, a meminfo,
# a dpkg database, a core count, and as CUDA root the CUDA 13 toolkit that
# tests/gpu/cuda-toolkit.sh unpacks (a real nvcc that answers --version and
# --list-gpu-arch), or a fake nvcc for an old CUDA. Closes with "N passed, M failed".
#
#   tests/gpu/jetson-build-test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(tests/gpu/cuda-toolkit.sh)"
script=boards/jetson/build.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() {
  echo "FAIL $1"
  sed 's/^/     | /' "$work/out"
  failed=$((failed + 1))
}

# A fake board: model, L4T release, memory (MiB available, MiB of swap free), cores, and the
# packages dpkg lists as installed.
board() {
  local dir="$work/$1" model=$2 l4t=$3 avail=$4 swap=$5 cores=$6
  shift 6
  mkdir -p "$dir/dpkg"
  printf '%s\0' "$model" >"$dir/model"
  echo "# R${l4t%%.*} (release), REVISION: ${l4t#*.}, GCID: 1, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025" >"$dir/l4t"
  printf 'MemTotal: %d kB\nMemFree: %d kB\nMemAvailable: %d kB\nSwapTotal: %d kB\nSwapFree: %d kB\n' \
    $((avail * 1400)) $((avail * 512)) $((avail * 1024)) $((swap * 1024)) $((swap * 1024)) >"$dir/meminfo"
  : >"$dir/dpkg/status"
  for p in "$@"; do
    printf 'Package: %s\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n\n' "$p" >>"$dir/dpkg/status"
  done
  echo "$cores" >"$dir/cores"
}
# Runs the script's dry run on a fake board; its output in $work/out, its status in $rc.
dry() {
  local dir="$work/$1"
  shift
  set +e
  env JETSON_MODEL_FILE="$dir/model" JETSON_L4T_RELEASE="$dir/l4t" JETSON_MEMINFO="$dir/meminfo" \
    JETSON_DPKG_DIR="$dir/dpkg" JETSON_CORES="$(cat "$dir/cores")" CUDA_HOME="$CUDA_TOOLKIT" "$@" \
    "$script" --dry-run "${extra[@]}" >"$work/out" 2>&1
  rc=$?
  set -e
}
has() { grep -qF -- "$1" "$work/out"; }
errors() { grep -c '^error: ' "$work/out" || true; }
extra=()
all_pkgs=(cmake clang libclang-dev libasound2-dev pkg-config)

# An 8 GB Orin Nano on JetPack 6, fresh: cmake and pkg-config there, the rest to install.
board nano "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super" 36.4.3 5800 3700 6 cmake pkg-config
dry nano
if [ "$rc" -eq 0 ] && has "GPU sm_87" && has "(JetPack 6)" &&
  has "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-dev libasound2-dev" &&
  ! grep -E 'apt-get install.*(cmake|pkg-config)' "$work/out" >/dev/null &&
  has "3 CUDA/C++ jobs (CMAKE_BUILD_PARALLEL_LEVEL), 1 cargo jobs" &&
  has "CMAKE_BUILD_PARALLEL_LEVEL=3 CARGO_BUILD_JOBS=1" && has "CMAKE_CUDA_ARCHITECTURES=87 GGML_CUDA_FA=OFF" &&
  has "CUDA_LIBRARY_PATH=$PWD/target/jetson-sm87/cuda-link:$CUDA_TOOLKIT" &&
  has "-C link-arg=-lcudart -C link-arg=-lcublas -C link-arg=-lcublasLt" &&
  has "+ ar rc $PWD/target/jetson-sm87/cuda-link/lib64/libcublas_static.a" &&
  has "cargo build --release --locked --features cuda --bin flm-edge" &&
  has "+ $PWD/target/jetson-sm87/release/flm-edge devices" &&
  has "+ $PWD/target/jetson-sm87/release/flm-edge selftest --backend cuda" &&
  [ "$(tail -1 "$work/out")" = "$PWD/target/jetson-sm87/release/flm-edge" ]; then
  ok "Orin Nano 8 GB, JetPack 6: sm_87, three packages to install, 3 + 1 jobs, shared cuBLAS, devices and selftest"
else
  bad "Orin Nano 8 GB, JetPack 6 (exit $rc)"
fi

# An AGX Orin 64 GB with every package: nothing to install, jobs up to the cores.
board agx "Jetson AGX Orin Developer Kit" 36.4.0 58000 0 12 "${all_pkgs[@]}"
dry agx
if [ "$rc" -eq 0 ] && has "packages: ${all_pkgs[*]} installed" && ! has "apt-get" &&
  has "12 CUDA/C++ jobs (CMAKE_BUILD_PARALLEL_LEVEL), 12 cargo jobs"; then
  ok "AGX Orin 64 GB: nothing to install, 12 + 12 jobs"
else
  bad "AGX Orin 64 GB (exit $rc)"
fi

# --deb: the package after the self-test, the binary's path still last.
extra=(--deb)
dry agx
extra=()
if [ "$rc" -eq 0 ] && has "+ boards/deb/build.sh $PWD/target/jetson-sm87/release/flm-edge" &&
  [ "$(tail -1 "$work/out")" = "$PWD/target/jetson-sm87/release/flm-edge" ]; then
  ok "--deb makes the package from the binary it built"
else
  bad "--deb (exit $rc)"
fi

# A 4 GB board without swap: one line saying how to add swap, nothing built.
board small "NVIDIA Jetson Orin Nano Developer Kit" 36.3.0 2600 0 6 "${all_pkgs[@]}"
dry small
if [ "$rc" -eq 1 ] && [ "$(errors)" = 1 ] && has "sudo fallocate -l 8G /swapfile" && ! has "cargo build"; then
  ok "2.6 GB available, no swap: one line naming the swap to add"
else
  bad "2.6 GB available, no swap (exit $rc)"
fi
# The same board with 4 GB of swap: it builds, one job each, with a warning.
board small-swap "NVIDIA Jetson Orin Nano Developer Kit" 36.3.0 2600 4096 6 "${all_pkgs[@]}"
dry small-swap
if [ "$rc" -eq 0 ] && has "1 CUDA/C++ jobs (CMAKE_BUILD_PARALLEL_LEVEL), 1 cargo jobs" && has "warning: 2600 MiB available"; then
  ok "2.6 GB available with 4 GB of swap: 1 + 1 jobs, a warning"
else
  bad "2.6 GB available with 4 GB of swap (exit $rc)"
fi

# A Xavier with CUDA 13: its nvcc cannot build sm_72.
board xavier "NVIDIA Jetson Xavier NX Developer Kit" 35.4.1 6000 0 6 "${all_pkgs[@]}"
dry xavier
if [ "$rc" -eq 1 ] && [ "$(errors)" = 1 ] && has "GPU sm_72" && has "(JetPack 5)" && has "cannot build sm_72"; then
  ok "Xavier with CUDA 13: one line, sm_72 not built by this nvcc"
else
  bad "Xavier with CUDA 13 (exit $rc)"
fi

# A board it does not know: one line asking for CUDA_ARCH; with it, it goes on.
board other "Raspberry Pi 5 Model B Rev 1.0" 36.4.3 6000 0 4 "${all_pkgs[@]}"
dry other
if [ "$rc" -eq 1 ] && [ "$(errors)" = 1 ] && has "set CUDA_ARCH"; then
  ok "an unknown board: one line naming CUDA_ARCH"
else
  bad "an unknown board (exit $rc)"
fi
dry other CUDA_ARCH=87
if [ "$rc" -eq 0 ] && has "CMAKE_CUDA_ARCHITECTURES=87"; then
  ok "an unknown board with CUDA_ARCH=87"
else
  bad "an unknown board with CUDA_ARCH=87 (exit $rc)"
fi

# JetPack 5's CUDA 11.4 (a fake nvcc): one line naming CUDA 12 for JetPack 5.
mkdir -p "$work/cuda11/bin" "$work/cuda11/lib64"
cat >"$work/cuda11/bin/nvcc" <<'EOT'
#!/bin/sh
case "$1" in
  --version) printf 'nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 11.4, V11.4.315\n' ;;
  --list-gpu-arch) printf 'compute_72\ncompute_87\n' ;;
esac
EOT
chmod +x "$work/cuda11/bin/nvcc"
for l in cudart cublas cublasLt; do : >"$work/cuda11/lib64/lib$l.so"; done
board jp5 "NVIDIA Jetson AGX Orin Developer Kit" 35.5.0 28000 0 12 "${all_pkgs[@]}"
dry jp5 CUDA_HOME="$work/cuda11"
if [ "$rc" -eq 1 ] && [ "$(errors)" = 1 ] && has "CUDA 11.4 is too old" && has "cuda-toolkit-12-2"; then
  ok "JetPack 5's CUDA 11.4: one line naming CUDA 12 for JetPack 5"
else
  bad "JetPack 5's CUDA 11.4 (exit $rc)"
fi

# No nvcc, an old rustc, little memory: three lines, one per missing precondition.
mkdir -p "$work/fakebin" "$work/nocuda"
printf '#!/bin/sh\necho "rustc 1.75.0 (82e1608df 2023-12-21)"\n' >"$work/fakebin/rustc"
printf '#!/bin/sh\nexit 0\n' >"$work/fakebin/cargo"
chmod +x "$work/fakebin/rustc" "$work/fakebin/cargo"
dry small CUDA_HOME="$work/nocuda" PATH="$work/fakebin:$PATH"
if [ "$rc" -eq 1 ] && [ "$(errors)" = 3 ] && has "no nvcc in $work/nocuda/bin" &&
  has "Rust 1.75 ($work/fakebin/rustc) is older than the 1.91" && has "rustup" && has "/swapfile"; then
  ok "three missing preconditions: three lines, each naming what to install"
else
  bad "three missing preconditions (exit $rc)"
fi

# A fresh board has no Rust at all.
mkdir -p "$work/norust"
for t in bash env sed awk grep tr sort id dpkg-query nproc df cat tail head mkdir ar printf; do
  p=$(command -v "$t") && ln -sf "$p" "$work/norust/$t"
done
dry agx PATH="$work/norust"
if [ "$rc" -eq 1 ] && [ "$(errors)" = 1 ] && has "no Rust (rustc, cargo): install rustup"; then
  ok "no Rust: one line naming rustup"
else
  bad "no Rust (exit $rc)"
fi

# It names no dependency of CI alone (the browser, Vulkan, the Python clients, CI's script).
if ! grep -inE 'chromium|vulkan|glslc|spirv|mesa|playwright|scipy|numpy|sphn|websockets|pyroomacoustics|install-deps|pyclient' "$script" >"$work/out"; then
  ok "the script names no dependency of CI alone"
else
  bad "the script names a dependency of CI alone"
fi

echo "jetson-build-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
