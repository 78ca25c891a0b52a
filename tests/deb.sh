#!/usr/bin/env bash
# The Debian package on this machine (root; CI): makes it from a built binary
# (boards/deb/build.sh), installs it with dpkg -i, verifies the installed unit with
# systemd-analyze, asks the installed binary for --version, checks the service's user and its
# groups, edits the configuration, removes the package (dpkg -r) and checks that only the
# edited configuration stays, then purges it. Closes with "N passed, M failed".
#
#   tests/deb.sh [BINARY]      # default target/release/flm-edge
#
# A system user `flm-edge` that this test made is deleted at the end; one that was there
# before is left. Refuses to run where flm-edge is already installed as a package.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/flm-edge}"
[ "$(id -u)" -eq 0 ] || { echo "error: tests/deb.sh installs a package: run it as root" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "error: systemd-analyze not found: apt-get install systemd (.ci/install-deps does)" >&2; exit 1; }
if dpkg-query -W -f='${Status}' flm-edge 2>/dev/null | grep -q 'installed'; then
  echo "error: flm-edge is installed as a package here already: tests/deb.sh would replace it" >&2
  exit 1
fi
user_before=false
getent passwd flm-edge >/dev/null && user_before=true
out=$(mktemp -d)
cleanup() {
  dpkg -P flm-edge >/dev/null 2>&1 || true
  $user_before || { getent passwd flm-edge >/dev/null && deluser --quiet --system flm-edge >/dev/null 2>&1; } || true
  getent group flm-edge >/dev/null && ! $user_before && delgroup --quiet --system flm-edge >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
passed=0
failed=0
check() {
  local name=$1
  shift
  if "$@" >"$out/log" 2>&1; then
    echo "ok   $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    sed 's/^/     | /' "$out/log"
    failed=$((failed + 1))
  fi
}

t0=$(date +%s)
deb=$(boards/deb/build.sh "$bin" "$out" | tail -1)
echo "deb: $deb made in $(($(date +%s) - t0)) s ($(du -h "$deb" | cut -f1))"
check "the package holds the binary, the unit, the configuration and the profiles" \
  sh -c "dpkg-deb -c '$deb' | grep -q ' ./usr/bin/flm-edge$' &&
    dpkg-deb -c '$deb' | grep -q ' ./lib/systemd/system/flm-edge.service$' &&
    dpkg-deb -c '$deb' | grep -q ' ./etc/flm-edge/config.toml$' &&
    dpkg-deb -c '$deb' | grep -q ' ./usr/share/flm-edge/boards/jetson-orin-nano.toml$' &&
    dpkg-deb -I '$deb' conffiles | grep -qx /etc/flm-edge/config.toml"
check "the package holds the notices of the code built into the binary" \
  sh -c "dpkg-deb --fsys-tarfile '$deb' | tar -xO ./usr/share/doc/flm-edge/copyright >'$out/copyright' &&
    grep -q 'The WebRTC Project Authors' '$out/copyright' && grep -q 'Xiph.Org' '$out/copyright' &&
    grep -q 'The ggml authors' '$out/copyright' && grep -q '^sonora-aec3 0.2.0: BSD-3-Clause' '$out/copyright'"
check "dpkg -i installs it" dpkg -i "$deb"
check "the installed unit verifies (systemd-analyze verify)" \
  sh -c 'err=$(systemd-analyze verify /lib/systemd/system/flm-edge.service 2>&1) && [ -z "$err" ] || { echo "$err"; false; }'
check "the installed binary answers --version" sh -c '/usr/bin/flm-edge --version | grep -q "^flm-edge [0-9]"'
check "the service's system user is in the audio group" \
  sh -c 'id -nG flm-edge | tr " " "\n" | grep -qx audio && [ "$(getent passwd flm-edge | cut -d: -f6)" = /var/lib/flm-edge ]'
check "every key of the installed configuration is commented out (the defaults and the profile apply)" \
  sh -c '! grep -qE "^[^#[:space:]]" /etc/flm-edge/config.toml'
# The owner's edit, then a removal: the edited configuration stays.
echo 'backend = "cpu"  # edited' >>/etc/flm-edge/config.toml
check "dpkg -r removes it" dpkg -r flm-edge
check "removed: no binary, no unit; the edited configuration kept" \
  sh -c '[ ! -e /usr/bin/flm-edge ] && [ ! -e /lib/systemd/system/flm-edge.service ] &&
    grep -q "# edited" /etc/flm-edge/config.toml &&
    dpkg-query -W -f="\${Status}" flm-edge | grep -q "deinstall ok config-files"'
check "dpkg -P purges the configuration" \
  sh -c 'dpkg -P flm-edge && [ ! -e /etc/flm-edge/config.toml ] && ! dpkg-query -W flm-edge 2>/dev/null | grep -q .'
echo "deb-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
