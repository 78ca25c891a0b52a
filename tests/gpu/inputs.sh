#!/usr/bin/env bash
# What a checked binary is built from, and its digest:
#
#   tests/gpu/inputs.sh cuda|aarch64           # the digest (64 hex digits)
#   tests/gpu/inputs.sh --paths cuda|aarch64   # the files it covers, one a line
#
# Every file of the repository that goes into flm-edge: the manifests, lock file and build
# settings, the binary's own sources (src/, with the page it serves), our ggml compute
# (kernels/), the converter (conversion/), the test kit the self-test is built on
# (tests/testkit/ and the tokenizer it embeds), the board profiles the binary holds; then
# what the check itself runs and compares against: its scripts and, for aarch64, the golden
# Mimi files and the echo canceller's test. A check whose record holds this digest checked
# these very files; CI runs it again when the digest differs. The build scripts check, after
# building, that every file of the repository in the binary's dependency list (cargo's .d
# file) is covered here (tests/gpu/inputs.sh --covers).
set -euo pipefail
cd "$(dirname "$0")/../.."
paths=false
if [ "${1:-}" = --paths ]; then
  paths=true
  shift
fi
if [ "${1:-}" = --covers ]; then
  # --covers NAME DEPFILE [ROOT]: every repository file DEPFILE names (under ROOT, where
  # the build saw the repository; default here) is among NAME's inputs.
  shift
  name=$1 dep=$2
  root=${3:-$(pwd -P)}
  covered=$("$0" --paths "$name")
  # A .d file: "target: dep dep ..." with spaces in names escaped as "\ ".
  missing=$(sed -e 's/\\ /\x01/g' "$dep" | tr ' ' '\n' | sed -e 's/\x01/ /g' -e 's/:$//' |
    grep "^$root/" | sed "s|^$root/||" | grep -v '^target/' |
    while IFS= read -r f; do realpath -ms --relative-to=/r "/r/$f"; done | sort -u |
    grep -vxF -f <(echo "$covered") || true)
  if [ -n "$missing" ]; then
    echo "inputs: files in $dep that tests/gpu/inputs.sh $name does not cover:" >&2
    sed 's/^/  /' <<<"$missing" >&2
    exit 1
  fi
  exit 0
fi
name="${1:?usage: tests/gpu/inputs.sh [--paths] cuda|aarch64}"
common=(Cargo.toml Cargo.lock .cargo src kernels conversion tests/testkit tests/data/qwen2-tokenizer
  boards/flm-edge.toml boards/jetson-agx-orin.toml boards/jetson-orin-nano.toml boards/jetson-orin-nx.toml
  boards/x86-dev.toml licenses tests/gpu/inputs.sh)
case "$name" in
  cuda) own=(tests/gpu/cuda-toolkit.sh tests/gpu/cuda-build.sh) ;;
  aarch64) own=(tests/gpu/aarch64-build.sh tests/golden/mimi tests/echo_alloc.rs) ;;
  *) echo "error: tests/gpu/inputs.sh: unknown check '$name' (cuda, aarch64)" >&2; exit 1 ;;
esac
if $paths; then
  git ls-files "${common[@]}" "${own[@]}" | sort
else
  git ls-files -z "${common[@]}" "${own[@]}" | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64
fi
