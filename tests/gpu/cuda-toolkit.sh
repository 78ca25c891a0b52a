#!/usr/bin/env bash
# Sets up a CUDA 13 toolkit from NVIDIA's PyPI wheels in $FLM_EDGE_CACHE/cuda13 (default
# target/cuda13; no system change; a second run reuses it) and prints `export` lines for a `cuda` feature build against it:
#
#   eval "$(tests/gpu/cuda-toolkit.sh)"
#
# The wheels hold a complete compiler (nvcc, cicc, cudafe++, fatbinary, nvlink, ptxas, CCCL;
# cuobjdump comes from a later 13.x, the oldest on PyPI)
# but not everything a link against them needs; what is missing is made here:
# - unversioned `.so` links and a `lib64` link;
# - `libcuda.so.1`, the driver, which comes with the GPU's driver and never with a toolkit: a
#   stub in `stubs/` whose every `cu*` entry point returns CUDA_ERROR_STUB_LIBRARY, as
#   NVIDIA's own toolkit stub does. It serves the link, and a run on a machine without a GPU
#   (which must then answer `--backend cuda` in one line);
# - `libcublas_static.a` and `libcublasLt_static.a`, which llama-cpp-sys-2 asks to link: empty
#   archives, with cuBLAS linked as a shared library instead (`-lcublas -lcublasLt`).
# CUDA 13 targets sm_75 and later: Orin (sm_87) and data-center GPUs (sm_90), not Xavier.
# Binaries for a Jetson are built on the board with JetPack's toolkit (boards/jetson/build.sh).
set -euo pipefail
root="${FLM_EDGE_CACHE:-$(cd "$(dirname "$0")/../.." && pwd)/target}/cuda13"
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-culibos==13.0.85 nvidia-cuda-cuobjdump==13.2.51
)
tk="$root/py/nvidia/cu13"
stamp="$root/.ready-$(echo "${wheels[*]}" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  command -v python3 >/dev/null || { echo "error: python3 with pip is needed to fetch the CUDA wheels" >&2; exit 1; }
  mkdir -p "$root"
  echo "cuda-toolkit: installing ${#wheels[@]} NVIDIA wheels (about 525 MB) into $root" >&2
  python3 -m pip install -q --disable-pip-version-check --no-deps --no-compile --upgrade \
    --target "$root/py" "${wheels[@]}" >&2
  rm -f "$root"/.ready-*
  [ -x "$tk/bin/nvcc" ] || { echo "error: the CUDA wheels hold no nvcc at $tk/bin" >&2; exit 1; }
  # Unversioned names for the linker and CMake, and the lib64 CMake also searches.
  for so in "$tk"/lib/lib{cudart,cublas,cublasLt}.so.*; do
    base="${so##*/}"
    ln -sf "$base" "$tk/lib/${base%%.so.*}.so"
  done
  ln -sfn lib "$tk/lib64"
  # The driver stub: every CUresult entry point of cuda.h, after its _v2/_v3 macros.
  # Where CMake (CUDA::cuda_driver) and llama-cpp-sys-2 (`<dir>/lib64/stubs` of each
  # CUDA_LIBRARY_PATH entry) look for it: the toolkit's own `lib64/stubs`.
  mkdir -p "$tk/lib/stubs"
  ln -sfn py/nvidia/cu13/lib/stubs "$root/stubs"
  gcc -E -P -I"$tk/include" "$tk/include/cuda.h" \
    | tr '\n' ' ' | grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' \
    | sed -E 's/CUresult +(cu[A-Za-z0-9_]+) *\(/\1/' | sort -u \
    | awk 'BEGIN { print "/* Every entry point answers CUDA_ERROR_STUB_LIBRARY (34). */" }
           { printf "int %s(void) { return 34; }\n", $1 }' >"$root/stubs/libcuda-stub.c"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$root/stubs/libcuda.so.1" "$root/stubs/libcuda-stub.c"
  ln -sf libcuda.so.1 "$root/stubs/libcuda.so"
  # The static cuBLAS archives llama-cpp-sys-2 names, empty: cuBLAS comes shared.
  # llama-cpp-sys-2 searches `<dir>/lib64` of each CUDA_LIBRARY_PATH entry.
  mkdir -p "$root/link/lib64"
  for a in cublas_static cublasLt_static; do ar rc "$root/link/lib64/lib$a.a"; done
  touch "$stamp"
fi
triple="$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')"
cat <<EOT
export CUDA_TOOLKIT="$tk"
export CUDA_STUBS="$root/stubs"
export PATH="$tk/bin:\$PATH"
export CUDAToolkit_ROOT="$tk"
export CUDACXX="$tk/bin/nvcc"
export CMAKE_CUDA_COMPILER="$tk/bin/nvcc"
export CUDA_LIBRARY_PATH="$tk:$root/link"
export CUDA_LINK_RUSTFLAGS="-L native=$tk/lib -C link-arg=-lcublas -C link-arg=-lcublasLt"
export CARGO_TARGET_${triple}_RUSTFLAGS="\$CUDA_LINK_RUSTFLAGS"
EOT
