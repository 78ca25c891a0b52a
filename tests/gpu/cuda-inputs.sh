#!/usr/bin/env bash
# Prints the digest of what the CUDA build depends on: our ggml compute (kernels/), the
# backbone's llama.cpp wrapper, the manifests and lock file, the build settings, and the
# check's own scripts. tests/gpu/cuda-build.sh records it in tests/gpu/cuda-build.verified
# when it passes; CI runs the check again whenever the digest differs from that record.
set -euo pipefail
cd "$(dirname "$0")/../.."
git ls-files -z kernels Cargo.toml Cargo.lock .cargo src/backbone.rs \
  tests/gpu/cuda-toolkit.sh tests/gpu/cuda-build.sh tests/gpu/cuda-inputs.sh |
  sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64
