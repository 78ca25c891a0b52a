#!/usr/bin/env bash
# Builds flm-edge with ggml's CUDA backend on an NVIDIA Jetson, with JetPack's CUDA toolkit,
# then runs `flm-edge devices` and the GPU self-test. Run on the board, from the repository:
#
#   boards/jetson/build.sh              # build, then devices and selftest --backend cuda
#   boards/jetson/build.sh --deb        # the same, then the arm64 Debian package (boards/deb/build.sh)
#   boards/jetson/build.sh --dry-run    # print what it found, decided and would run; run nothing
#   CUDA_ARCH=87 boards/jetson/build.sh # when the board is not recognised
#
# What it needs, and says in one line each when missing:
# - JetPack 6 (L4T R36: Ubuntu 22.04, CUDA 12.x in /usr/local/cuda): `sudo apt install
#   nvidia-jetpack` brings CUDA. JetPack 5 (R35, CUDA 11.4) is too old for ggml's top-k on
#   the device (CUB, CUDA 11.7 or later): install NVIDIA's CUDA 12 for JetPack 5
#   (cuda-toolkit-12-2, with cuda-compat-12-2) and set CUDA_HOME=/usr/local/cuda-12.2; its
#   Ubuntu 20.04 has CMake 3.16, and ggml-cuda needs 3.18 (`pip3 install --user cmake`).
#   JetPack 7 (R38, CUDA 13, Ubuntu 24.04) works as JetPack 6; CUDA 13 builds no Xavier (sm_72).
# - Rust 1.91 or later from rustup (Ubuntu's rustc is older).
# - apt packages: cmake, clang, libclang-dev, libasound2-dev, pkg-config; installed here with
#   sudo when missing, nothing else.
#
# What it decides:
# - the GPU architecture from the board's model (/proc/device-tree/model): Orin (AGX, NX,
#   Nano) sm_87, Xavier sm_72, Thor sm_110; device code for that one only
#   (CMAKE_CUDA_ARCHITECTURES), checked against `nvcc --list-gpu-arch`;
# - parallel jobs from the memory free now: each compiler job (nvcc/cicc for ggml-cuda's
#   units, about 0.6 GB at the heaviest; rustc) gets 1 GiB, 1.5 GiB stay for the OS and the
#   link; llama-cpp-sys-2 would otherwise run one nvcc per core (CMAKE_BUILD_PARALLEL_LEVEL)
#   beside cargo's jobs. Below 3.5 GiB available it needs swap, and says how to add it;
# - cuBLAS, cuBLASLt and the CUDA runtime linked as JetPack's shared libraries (llama-cpp-sys-2
#   asks for the static archives: empty ones stand in, in the build folder), the driver from
#   JetPack as always;
# - GGML_CUDA_FA=OFF: flm-edge turns llama.cpp's flash attention off, so ggml's
#   flash-attention kernels would be dead code (about a quarter of the CUDA build time).
# The CMake options are those tests/gpu/cuda-build.sh checks on x86-64 without a GPU. The
# build takes some 30 to 60 minutes. Its last line is the path of the binary it built.
#
# For tests (a fake board): JETSON_MODEL_FILE (device-tree model), JETSON_MEMINFO
# (/proc/meminfo), JETSON_L4T_RELEASE (/etc/nv_tegra_release), JETSON_DPKG_DIR (dpkg's
# database folder), JETSON_CORES (nproc), CUDA_HOME.
set -euo pipefail
cd "$(dirname "$0")/../.."
dry=false
deb=false
for a in "$@"; do
  case "$a" in
    --dry-run) dry=true ;;
    --deb) deb=true ;;
    *) echo "error: boards/jetson/build.sh: unknown option '$a' (--dry-run, --deb)" >&2; exit 2 ;;
  esac
done
cuda="${CUDA_HOME:-/usr/local/cuda}"
model_file="${JETSON_MODEL_FILE:-/proc/device-tree/model}"
meminfo="${JETSON_MEMINFO:-/proc/meminfo}"
l4t_file="${JETSON_L4T_RELEASE:-/etc/nv_tegra_release}"
dpkg_dir="${JETSON_DPKG_DIR:-/var/lib/dpkg}"
cores="${JETSON_CORES:-$(nproc)}"
problems=()
need() { problems+=("$1"); }
say() { echo "jetson-build: $*"; }
# Runs a command, or prints it under --dry-run.
run() {
  if $dry; then
    echo "+ $*"
  else
    "$@"
  fi
}

# --- The board ----------------------------------------------------------------------------
board=$(tr -d '\0' <"$model_file" 2>/dev/null || echo "unknown board")
case "$board" in
  *Orin*) arch=87 ;;
  *Xavier*) arch=72 ;;
  *Thor*) arch=110 ;;
  *) arch="" ;;
esac
arch="${CUDA_ARCH:-$arch}"
[ -n "$arch" ] || need "'$board' ($model_file) is not a Jetson this script knows: set CUDA_ARCH (87 for Orin, 72 for Xavier, 110 for Thor)"
l4t=$(sed -nE 's/^# R([0-9]+) \(release\), REVISION: ([0-9.]+).*/\1.\2/p' "$l4t_file" 2>/dev/null || true)
case "${l4t%%.*}" in
  35) jetpack=5 ;;
  36) jetpack=6 ;;
  38) jetpack=7 ;;
  *) jetpack="" ;;
esac
say "board: $board; L4T ${l4t:-unknown}${jetpack:+ (JetPack $jetpack)}; GPU sm_${arch:-?}"

# --- Packages: what the build needs, nothing else -----------------------------------------
pkgs=(cmake clang libclang-dev libasound2-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query --admindir="$dpkg_dir" -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    run $sudo apt-get update -qq
    run $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    need "no apt-get: install ${missing[*]} with this system's package manager"
  fi
else
  say "packages: ${pkgs[*]} installed"
fi
# CMake 3.18 for ggml-cuda (JetPack 5's Ubuntu 20.04 has 3.16). Checked when it is there.
if command -v cmake >/dev/null && ! { $dry && [[ " ${missing[*]} " == *" cmake "* ]]; }; then
  cmake_version=$(cmake --version | sed -nE '1s/.* ([0-9]+\.[0-9]+)(\.[0-9]+)?.*/\1/p')
  printf '3.18\n%s\n' "$cmake_version" | sort -V -C ||
    need "CMake $cmake_version is older than the 3.18 ggml-cuda needs: pip3 install --user cmake (then ~/.local/bin first in PATH)"
fi

# --- Rust ---------------------------------------------------------------------------------
if command -v rustc >/dev/null && command -v cargo >/dev/null; then
  rust_version=$(rustc -V | sed -nE 's/^rustc ([0-9]+\.[0-9]+)(\.[0-9]+)?.*/\1/p')
  if printf '1.91\n%s\n' "$rust_version" | sort -V -C; then
    say "$(rustc -V)"
  else
    need "Rust $rust_version ($(command -v rustc)) is older than the 1.91 flm-edge needs: install rustup (curl --proto '=https' -sSf https://sh.rustup.rs | sh), then rustup update stable"
  fi
else
  need "no Rust (rustc, cargo): install rustup (curl --proto '=https' -sSf https://sh.rustup.rs | sh) and open a new shell; Ubuntu's rustc is too old"
fi

# --- CUDA: nvcc, its version, the architecture, the shared libraries ----------------------
nvcc="$cuda/bin/nvcc"
if [ -x "$nvcc" ]; then
  cuda_version=$("$nvcc" --version | sed -nE 's/.*release ([0-9]+\.[0-9]+).*/\1/p')
  say "nvcc $cuda_version ($nvcc)"
  if ! printf '12.0\n%s\n' "$cuda_version" | sort -V -C; then
    need "CUDA $cuda_version is too old (ggml's top-k on the device needs CUDA 11.7's CUB; this build is checked with 12 and 13): on JetPack 5 install NVIDIA's CUDA 12 for Jetson (sudo apt install cuda-toolkit-12-2 cuda-compat-12-2) and set CUDA_HOME=/usr/local/cuda-12.2"
  elif [ -n "$arch" ] && ! "$nvcc" --list-gpu-arch 2>/dev/null | grep -qx "compute_$arch"; then
    need "nvcc $cuda_version cannot build sm_$arch (CUDA 13 dropped Xavier's sm_72; Thor's sm_110 needs CUDA 13): use the CUDA of this board's JetPack"
  fi
  for lib in cudart cublas cublasLt; do
    [ -e "$cuda/lib64/lib$lib.so" ] ||
      need "no shared lib$lib.so in $cuda/lib64: install JetPack's CUDA libraries (sudo apt install nvidia-jetpack)"
  done
else
  need "no nvcc in $cuda/bin: install JetPack's CUDA toolkit (sudo apt install nvidia-jetpack) or set CUDA_HOME"
fi

# --- Memory: parallel jobs ----------------------------------------------------------------
kib() { awk -v k="$1:" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }' "$meminfo"; }
avail_mib=$(($(kib MemAvailable) / 1024))
swap_mib=$(($(kib SwapFree) / 1024))
jobs=$(((avail_mib - 1536) / 1024))
cmake_jobs=$((jobs - 1))
((cmake_jobs > cores)) && cmake_jobs=$cores
((cmake_jobs < 1)) && cmake_jobs=1
cargo_jobs=$((jobs - cmake_jobs))
((cargo_jobs > cores)) && cargo_jobs=$cores
((cargo_jobs < 1)) && cargo_jobs=1
say "memory: $avail_mib MiB available, $swap_mib MiB swap free, $cores cores: $cmake_jobs CUDA/C++ jobs (CMAKE_BUILD_PARALLEL_LEVEL), $cargo_jobs cargo jobs (CARGO_BUILD_JOBS)"
if ((avail_mib < 3584)); then
  if ((avail_mib + swap_mib < 5120)); then
    need "$avail_mib MiB of memory available and $swap_mib MiB of swap are too little for one compiler job beside cargo's and the link (5 GiB with swap): add swap (sudo fallocate -l 8G /swapfile && sudo chmod 600 /swapfile && sudo mkswap /swapfile && sudo swapon /swapfile) or close programs (a desktop session takes 1-2 GB)"
  else
    say "warning: $avail_mib MiB available: one job each, on swap when the heaviest units compile (slow, but it finishes)"
  fi
fi

# --- Disk ---------------------------------------------------------------------------------
free_mib=$(df -Pm . | awk 'NR == 2 { print $4 }')
((free_mib >= 4096)) || need "$free_mib MiB free on $(df -P . | awk 'NR == 2 { print $6 }'): the build needs some 4 GiB (target/)"

if ((${#problems[@]})); then
  for p in "${problems[@]}"; do echo "error: $p" >&2; done
  exit 1
fi

# --- The build ----------------------------------------------------------------------------
target="$PWD/target/jetson-sm$arch"
link="$target/cuda-link"
triple="$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')"
# The static archives llama-cpp-sys-2 names, empty: the shared libraries come after them.
run mkdir -p "$link/lib64"
for a in cudart_static cublas_static cublasLt_static culibos; do
  run ar rc "$link/lib64/lib$a.a"
done
export PATH="$cuda/bin:$PATH"
build_env=(
  CUDACXX="$nvcc" CMAKE_CUDA_COMPILER="$nvcc" CUDAToolkit_ROOT="$cuda"
  # llama-cpp-sys-2 searches `lib64` and `lib64/stubs` of each entry, in order: the empty
  # archives first, then JetPack's toolkit (the driver stub for the link).
  CUDA_LIBRARY_PATH="$link:$cuda"
  "CARGO_TARGET_${triple}_RUSTFLAGS=-L native=$cuda/lib64 -C link-arg=-lcudart -C link-arg=-lcublas -C link-arg=-lcublasLt -C link-arg=-Wl,-rpath,$cuda/lib64"
  CMAKE_CUDA_ARCHITECTURES="$arch" GGML_CUDA_FA=OFF
  CMAKE_BUILD_PARALLEL_LEVEL="$cmake_jobs" CARGO_BUILD_JOBS="$cargo_jobs"
  CARGO_TARGET_DIR="$target"
)
run env "${build_env[@]}" cargo build --release --locked --features cuda --bin flm-edge
bin="$target/release/flm-edge"
if ! $dry; then
  # What it links: JetPack's shared CUDA libraries, none missing.
  ldd "$bin" | grep -E 'cuda|cublas|not found' | sed 's/^/jetson-build: /'
  ! ldd "$bin" | grep -q 'not found' || { echo "error: $bin: a library is not found (above)" >&2; exit 1; }
fi
run "$bin" devices
run "$bin" selftest --backend cuda
if $deb; then
  run boards/deb/build.sh "$bin"
fi
echo "$bin"
