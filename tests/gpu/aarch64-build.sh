#!/usr/bin/env bash
# The aarch64 check: cross-builds the CPU binary for aarch64-unknown-linux-gnu (a Jetson's
# CPU) on x86-64, then runs it under qemu-user:
#
#   tests/gpu/aarch64-build.sh            # as root (chroot); its last line is the binary's path
#   tests/gpu/aarch64-build.sh --prepare  # only the build root (CI makes it beside another build)
#
# 1. `flm-edge --version` and `flm-edge selftest --backend cpu` (STEPS steps, default 20);
# 2. a Mimi encode of the golden clip (tests/golden/mimi: the test kit's seed-1 Mimi, Kyutai's
#    codes): at least 99 % of the reference's codes, the test kit's weights bit-identical to
#    the golden ones;
# 3. the echo canceller's tests (the library's `echo::` unit tests and tests/echo_alloc.rs).
#
# Why a chroot: rustup cannot fetch the aarch64 standard library where only the package
# registries are reachable, and Debian 12's Rust is older than the workspace's 1.91. Debian
# 13 (trixie) with its backports has a current rustc, the aarch64 standard library
# (libstd-rust-dev:arm64), gcc-aarch64-linux-gnu, the arm64 ALSA headers (multiarch) and
# qemu-user. They go into a minimal Debian 13 root made with debootstrap in
# $FLM_EDGE_CACHE/aarch64-root (default target/; CI keeps it outside the clone), made once
# and reused while its package list is unchanged; the build folder and cargo's download
# cache live there too. Nothing of this machine's system is changed: the root is entered in
# a mount namespace of its own (unshare), whose /proc goes away with it.
#
# What a qemu run exercises and what it does not: llama-cpp-sys-2 builds ggml for plain
# armv8-a (NEON) whenever target-cpu is not `native`, so this runs ggml's baseline NEON
# kernels, not the dot-product (sdot/udot) and fp16-arithmetic ones a board's native build
# (Cortex-A78AE: armv8.2-a with dotprod and fp16) uses; it does exercise the aarch64 build and
# link, `char` signedness, ggml's ARM fallbacks, and the NEON code of rustfft, rubato and the
# echo canceller, which are the board's.
#
# A pass is recorded in tests/gpu/aarch64-build.verified (tests/gpu/inputs.sh aarch64: the
# digest of every input; the binary's sha256); CI runs the check when the digest differs.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
steps="${STEPS:-20}"
cache="${FLM_EDGE_CACHE:-$repo/target}"
root="$cache/aarch64-root"
triple=aarch64-unknown-linux-gnu
fail() { echo "aarch64-build: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "error: tests/gpu/aarch64-build.sh needs root (debootstrap, chroot): run it with sudo" >&2; exit 1; }
for tool in debootstrap unshare chroot; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found: apt-get install debootstrap util-linux coreutils" >&2; exit 1; }
done
t0=$(date +%s)

# --- The build root: Debian 13 with its backports' Rust -----------------------------------
# amd64: the compilers and tools; arm64 (multiarch): what the binary links and runs with.
host_pkgs=(ca-certificates rustc/trixie-backports cargo/trixie-backports gcc g++ gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
  cmake make clang libclang-dev pkgconf qemu-user)
arm_pkgs=(libstd-rust-dev:arm64/trixie-backports libasound2-dev:arm64 libgomp1:arm64 libstdc++6:arm64)
stamp="$root/.ready-$(echo "${host_pkgs[*]} ${arm_pkgs[*]}" | sha256sum | cut -c1-16)"
# The machine's own Debian archive (its apt sources), as .ci/install-deps finds it.
mirror=$(
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{ print $2 }'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
      sed -E 's/^deb (\[[^]]*\] )?//' | awk '{ print $1 }'
  } | grep -v -- '-security' | grep -m1 '/debian/*$' || true
)
in_root() {
  # A mount namespace of its own: the root's /proc is gone when the command ends.
  unshare --mount --fork sh -c 'mount -t proc proc "$1/proc" && shift && exec chroot "$@"' \
    sh "$root" "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/build \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
if [ ! -e "$stamp" ]; then
  [ -n "$mirror" ] || { echo "error: no Debian archive in apt's sources to make the Debian 13 build root from" >&2; exit 1; }
  echo "aarch64-build: making the Debian 13 build root in $root (debootstrap, $mirror)" >&2
  # Nothing stays mounted inside it outside a command's own namespace; a debootstrap cut
  # short may have left its /proc: unmounted before the root goes.
  awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
  ! awk -v r="$root/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts ||
    fail "something is still mounted under $root"
  rm -rf "$root"
  mkdir -p "$root"
  debootstrap --variant=minbase trixie "$root" "$mirror" >"$cache/aarch64-debootstrap.log" 2>&1 ||
    { tail -20 "$cache/aarch64-debootstrap.log" >&2; fail "debootstrap (log: $cache/aarch64-debootstrap.log)"; }
  cat >"$root/etc/apt/sources.list" <<EOT
deb $mirror trixie main
deb $mirror trixie-updates main
deb $mirror trixie-backports main
EOT
  # Rust from the backports (trixie's own is 1.85: `pkg/trixie-backports` below), everything
  # else from trixie.
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  in_root dpkg --add-architecture arm64
  in_root apt-get -qq update
  in_root apt-get install -y -qq --no-install-recommends "${host_pkgs[@]}" "${arm_pkgs[@]}" \
    >"$cache/aarch64-apt.log" 2>&1 ||
    { tail -20 "$cache/aarch64-apt.log" >&2; fail "apt-get install in the build root (log: $cache/aarch64-apt.log)"; }
  in_root apt-get clean
  touch "$stamp"
  echo "aarch64-build: build root ready ($(du -sm "$root" | cut -f1) MiB) in $(($(date +%s) - t0)) s" >&2
fi
[ "${1:-}" != --prepare ] || exit 0
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# Cargo in the root downloads crates as this machine does: with this machine's certificate
# authorities (its system bundle, and SSL_CERT_FILE where set).
cat /etc/ssl/certs/ca-certificates.crt ${SSL_CERT_FILE:+"$SSL_CERT_FILE"} >"$root/etc/ssl/host-ca.crt" 2>/dev/null || true
echo "aarch64-build: $(in_root rustc -V), $(in_root aarch64-linux-gnu-gcc --version | head -1), $(in_root qemu-aarch64 --version | head -1)"

# --- The sources: what git tracks (and new files it does not ignore), copied in -----------
# A file whose content changed is copied anew, with the time of the copy (cargo rebuilds what
# is newer than its last build; a copy that kept the file's own time could be older than a
# build of the previous content); files gone from the tree go from the copy too.
mkdir -p "$root/build/src" "$root/build/target" "$root/build/cargo"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\n' "$f"; done | sort >"$root/build/src.list"
(cd "$root/build/src" && find . -type f | sed 's|^\./||' | sort) |
  comm -13 "$root/build/src.list" - | while IFS= read -r f; do rm -f "$root/build/src/$f"; done
while IFS= read -r f; do
  if ! cmp -s "$f" "$root/build/src/$f"; then
    mkdir -p "$root/build/src/$(dirname "$f")"
    cp "$f" "$root/build/src/$f"
  fi
done <"$root/build/src.list"

# --- The cross build ----------------------------------------------------------------------
# RUSTFLAGS, even empty, replaces the repository's target-cpu=native (a cross build cannot use
# it): Rust code for baseline aarch64 (NEON), and llama-cpp-sys-2 then builds ggml for
# armv8-a. No target-cpu at all: llama-cpp-sys-2 hands one to gcc as -march, and gcc knows
# no `-march=generic`.
cross_env=(CARGO_HOME=/build/cargo CARGO_TARGET_DIR=/build/target CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt
  ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} ${https_proxy:+https_proxy=$https_proxy}
  RUSTFLAGS=
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
  AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
  "BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu=--target=aarch64-linux-gnu")
cargo_in_root() { in_root "${cross_env[@]}" sh -c 'cd /build/src && exec cargo "$@"' cargo "$@"; }
t1=$(date +%s)
cargo_in_root build --release --locked --target "$triple" -p flm-edge --bin flm-edge -p flm-testkit --bin flm-testkit 2>&1 |
  grep -vE '^\s+(Compiling|Downloaded|Downloading) ' >&2 || fail "cargo build --target $triple"
# The echo canceller's tests: the library's unit tests and tests/echo_alloc.rs.
# The test executables among cargo's artifacts (not the binary the integration test runs).
tests=$(cargo_in_root test --release --locked --target "$triple" -p flm-edge --lib --test echo_alloc --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])') || fail "cargo test --no-run --target $triple"
[ "$(wc -w <<<"$tests")" = 2 ] || fail "expected two test executables (the library's, echo_alloc), got: $tests"
echo "aarch64-build: cross build in $(($(date +%s) - t1)) s"
# The digest CI compares covers every file of ours the binary was built from.
tests/gpu/inputs.sh --covers aarch64 "$root/build/target/$triple/release/flm-edge.d" /build/src ||
  fail "tests/gpu/inputs.sh aarch64 misses inputs of the binary"
out="/build/target/$triple/release"
bin="$root$out/flm-edge"
file -b "$bin" 2>/dev/null | sed 's/^/aarch64-build: /' || true

# --- Under qemu ---------------------------------------------------------------------------
# libc, libstdc++, libgomp and libasound of arm64 are in the root (multiarch): qemu-aarch64
# finds the aarch64 loader at /lib/ld-linux-aarch64.so.1 as a board would.
qemu() { in_root sh -c 'cd /build/src && exec qemu-aarch64 "$@"' qemu "$@"; }
qemu "$out/flm-edge" --version | sed 's/^/aarch64-build: /'

t2=$(date +%s)
qemu "$out/flm-edge" selftest --backend cpu --steps "$steps" --threads 2 2>&1 | tee "$cache/aarch64-selftest.log" |
  sed 's/^/  /'
grep -q '^selftest: all .* checks passed' "$cache/aarch64-selftest.log" || fail "selftest --backend cpu under qemu"
echo "aarch64-build: selftest under qemu in $(($(date +%s) - t2)) s"

t2=$(date +%s)
rm -rf "$root/build/mimi"
mkdir -p "$root/build/mimi"
qemu "$out/flm-testkit" mimi --seed 1 --out /build/mimi/mimi.safetensors >/dev/null
qemu "$out/flm-testkit" lm --size tiny --seed 1 --out /build/mimi/lm >/dev/null
want=$(sed -n 's/.*"weights_sha256": *"\([0-9a-f]*\)".*/\1/p' tests/golden/mimi/meta.json)
got=$(sha256sum "$root/build/mimi/mimi.safetensors" | cut -c1-64)
[ "$got" = "$want" ] || fail "the test kit's seed-1 Mimi differs on aarch64 (sha256 $got, golden $want)"
qemu "$out/flm-edge" convert --lm /build/mimi/lm --mimi /build/mimi/mimi.safetensors --out /build/mimi/model \
  --quant f32 >/dev/null
qemu "$out/flm-edge" mimi encode --model /build/mimi/model --input tests/golden/mimi/speech.wav \
  --output /build/mimi/codes.npy --backend cpu --threads 2 >/dev/null
# Both files are int32 [8, frames], numpy's format; the encode also codes the clip's last
# partial frame (padded), which the reference leaves out: the reference's frames compare.
equal=$(python3 - "$root/build/mimi/codes.npy" tests/golden/mimi/codes.npy <<'PY'
import ast, struct, sys
def codes(path):
    b = open(path, "rb").read()
    assert b[:6] == b"\x93NUMPY", path
    n, start = (struct.unpack("<H", b[8:10])[0], 10) if b[6] == 1 else (struct.unpack("<I", b[8:12])[0], 12)
    header = ast.literal_eval(b[start:start + n].decode())
    assert header["descr"] == "<i4" and not header["fortran_order"], (path, header)
    rows, frames = header["shape"]
    data = struct.unpack("<%di" % (rows * frames), b[start + n:start + n + 4 * rows * frames])
    return [data[r * frames:(r + 1) * frames] for r in range(rows)]
got, want = codes(sys.argv[1]), codes(sys.argv[2])
assert len(got) == len(want) == 8 and len(got[0]) >= len(want[0]), (len(got), len(got[0]), len(want[0]))
print(sum(a == b for g, w in zip(got, want) for a, b in zip(g, w)), sum(len(w) for w in want))
PY
) || fail "Mimi codes under qemu: cannot compare with tests/golden/mimi/codes.npy"
read -r same total <<<"$equal"
pct=$(awk -v s="$same" -v t="$total" 'BEGIN { printf "%.2f", 100 * s / t }')
echo "aarch64-build: Mimi encode of the golden clip under qemu: $same of $total codes equal the reference ($pct %, bound 99 %) in $(($(date +%s) - t2)) s"
awk -v s="$same" -v t="$total" 'BEGIN { exit !(s >= 0.99 * t) }' || fail "Mimi codes: $pct % < 99 %"

t2=$(date +%s)
for t in $tests; do
  name=${t##*/}
  args=()
  case "$name" in flm_edge-*) args=(echo::) ;; esac
  qemu "$t" --test-threads 2 "${args[@]}" 2>&1 | tee "$cache/aarch64-$name.log" | grep -E '^test |^test result' | sed 's/^/  /'
  grep -q '^test result: ok\. [1-9]' "$cache/aarch64-$name.log" || fail "$name under qemu"
done
echo "aarch64-build: echo canceller's tests under qemu in $(($(date +%s) - t2)) s"

echo "aarch64-build: total $(($(date +%s) - t0)) s"
digest=$(tests/gpu/inputs.sh aarch64)
echo "$digest $(sha256sum "$bin" | cut -c1-64) aarch64 passed" >tests/gpu/aarch64-build.verified
echo "$bin"
