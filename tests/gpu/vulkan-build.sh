#!/usr/bin/env bash
# Builds `flm-edge --features vulkan` (ggml's Vulkan backend) in its own target dir,
# target/vulkan, after .ci/install-deps (Vulkan loader, glslc, SPIR-V headers, Mesa's
# lavapipe, and where the system's Vulkan headers are too old for the pinned ggml-vulkan,
# Debian 13's in target/vulkan-sdk), then checks that the binary sees lavapipe as Vulkan0.
# Its last line is the path of the binary.
#
#   tests/gpu/vulkan-build.sh
#
# To run on lavapipe (Mesa's software Vulkan driver, on the CPU), set
#   GGML_VK_VISIBLE_DEVICES=0    ggml-vulkan skips CPU-type devices unless this is set
#   VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json   only lavapipe's driver
# The build itself runs without GGML_VK_* added: llama-cpp-sys-2 passes every GGML_*
# variable of the build's environment to CMake and rebuilds llama.cpp when one changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
.ci/install-deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/vulkan}"
if [ -d target/vulkan-sdk/include ]; then
  export VULKAN_SDK="$PWD/target/vulkan-sdk"
fi
t0=$(date +%s)
cargo build --release --features vulkan --bin flm-edge
bin="$CARGO_TARGET_DIR/release/flm-edge"
echo "vulkan-build: built in $(($(date +%s) - t0)) s (VULKAN_SDK=${VULKAN_SDK:-system})"

lavapipe=(GGML_VK_VISIBLE_DEVICES=0 VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json)
devices=$(env "${lavapipe[@]}" "$bin" devices 2>&1) || {
  echo "$devices" >&2
  echo "vulkan-build: FAIL: flm-edge devices" >&2
  exit 1
}
devices=$(sed -n '/^compute devices/,$p' <<<"$devices")
sed 's/^/  /' <<<"$devices"
grep -q "Vulkan0" <<<"$devices" || {
  echo "vulkan-build: FAIL: no Vulkan0 on lavapipe" >&2
  exit 1
}
echo "vulkan-build: run on lavapipe with: ${lavapipe[*]}"
echo "$bin"
