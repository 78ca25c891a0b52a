#!/usr/bin/env bash
# Makes the Debian package of flm-edge from a built binary, for the machine's architecture
# (arm64 on a Jetson: boards/jetson/build.sh --deb; amd64 on a PC):
#
#   boards/deb/build.sh [BINARY] [OUT_DIR]   # default target/release/flm-edge, target/deb
#
# Its last line is the package's path. The package holds:
# - /usr/bin/flm-edge;
# - the service, /lib/systemd/system/flm-edge.service (boards/systemd), installed but neither
#   enabled nor started: it needs a model first (README: "Installed as a package");
# - /etc/flm-edge/config.toml, every key of boards/flm-edge.toml commented out (the defaults
#   and the board profile apply until a line is uncommented), and /etc/default/flm-edge
#   (FLM_EDGE_OPTS: the board profile, e.g. `--board jetson-orin-nano`); both are conffiles,
#   which dpkg keeps, edited, when the package is removed, and asks about on upgrade;
# - the board profiles and the documented configuration under /usr/share/flm-edge/boards;
# - the licenses and notices of the code built into the binary (`flm-edge licenses`) as
#   /usr/share/doc/flm-edge/copyright;
# - the system user `flm-edge` (home /var/lib/flm-edge, where the model goes), made by the
#   postinst in the groups `audio` (ALSA) and `video` (a Jetson's GPU nodes).
# Depends: the packages that own the shared libraries the binary needs (dpkg -S), besides
# adduser; a library no package owns (a CUDA toolkit outside dpkg) is named and left out.
# Needs only dpkg-deb (the dpkg package), no debhelper.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-target/release/flm-edge}"
out="${2:-target/deb}"
[ -x "$bin" ] || { echo "error: $bin: no such binary (build it first: cargo build --release)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb not found: this needs a Debian or Ubuntu system (the dpkg package)" >&2; exit 1; }
arch=$(dpkg --print-architecture)
version=$("$bin" --version | awk '{ print $2 }')
[ -n "$version" ] || { echo "error: $bin --version printed no version" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg="$work/flm-edge"

install -D -m 0755 "$bin" "$pkg/usr/bin/flm-edge"
install -D -m 0644 boards/systemd/flm-edge.service "$pkg/lib/systemd/system/flm-edge.service"
for f in boards/*.toml; do
  install -D -m 0644 "$f" "$pkg/usr/share/flm-edge/boards/${f#boards/}"
done
# The configuration file: every key commented out, its documentation kept.
mkdir -p "$pkg/etc/flm-edge" "$pkg/etc/default"
{
  cat <<'EOT'
# flm-edge serve's configuration. Every key below is commented out: the built-in defaults
# apply, under the board profile named in /etc/default/flm-edge. Uncomment a line (and the
# [table] line above it) to change it; `sudo systemctl restart flm-edge` applies it, and
# `sudo systemctl reload flm-edge` applies what can change while running.
# The full documentation: /usr/share/flm-edge/boards/flm-edge.toml.

EOT
  sed -n '/^# flm-edge serve: every configuration key/,$p' boards/flm-edge.toml | sed '1,3d' |
    sed -E 's/^([A-Za-z_]+ *=|\[)/# \1/'
} >"$pkg/etc/flm-edge/config.toml"
cat >"$pkg/etc/default/flm-edge" <<'EOT'
# Options of `flm-edge serve` for the service (flm-edge.service), besides --config: the board
# profile (boards: jetson-agx-orin, jetson-orin-nx, jetson-orin-nano, x86-dev), e.g.
#   FLM_EDGE_OPTS="--board jetson-orin-nano"
FLM_EDGE_OPTS=""
EOT
install -D -m 0644 README.md "$pkg/usr/share/doc/flm-edge/README.md"
# The licenses and notices of the code built into the binary (`flm-edge licenses`), where
# Debian keeps a package's.
"$bin" licenses >"$pkg/usr/share/doc/flm-edge/copyright"

# Depends: the owners of the shared libraries the binary needs.
deps=(adduser)
while read -r lib path; do
  owner=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1 || true)
  [ -n "$owner" ] || owner=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1 || true)
  if [ -n "$owner" ]; then
    deps+=("$owner")
  else
    echo "deb: $lib ($path) belongs to no package: left out of Depends" >&2
  fi
done < <(ldd "$pkg/usr/bin/flm-edge" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
unresolved=$(ldd "$pkg/usr/bin/flm-edge" | awk '/not found/ { print $1 }' | grep -vx 'libcuda.so.1' || true)
[ -z "$unresolved" ] || { echo "error: $bin needs libraries this machine lacks: $unresolved" >&2; exit 1; }
depends=$(printf '%s\n' "${deps[@]}" | sort -u | paste -sd, | sed 's/,/, /g')

mkdir -p "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<EOT
Package: flm-edge
Version: $version
Architecture: $arch
Maintainer: flm-edge developers <flm-edge@localhost>
Section: sound
Priority: optional
Depends: $depends
Installed-Size: $(du -sk "$pkg" | cut -f1)
Description: FLM-Audio full-duplex voice appliance
 Runs FLM-Audio, a full-duplex spoken dialog model, on an edge board: it
 listens and speaks through ALSA at the same time, every 80 ms, on ggml
 (CPU, or CUDA on NVIDIA Jetson). Ships the flm-edge binary, its systemd
 service and the board profiles.
EOT
printf '/etc/flm-edge/config.toml\n/etc/default/flm-edge\n' >"$pkg/DEBIAN/conffiles"
cat >"$pkg/DEBIAN/postinst" <<'EOT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd flm-edge >/dev/null; then
    adduser --quiet --system --group --home /var/lib/flm-edge --no-create-home flm-edge
  fi
  for g in audio video; do
    if getent group "$g" >/dev/null; then adduser --quiet flm-edge "$g"; fi
  done
  install -d -o flm-edge -g flm-edge -m 0750 /var/lib/flm-edge
  if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; fi
  if [ -z "$2" ]; then
    echo "flm-edge: put a converted model in /var/lib/flm-edge/model, set the board in /etc/default/flm-edge, then: sudo systemctl enable --now flm-edge"
  fi
fi
EOT
cat >"$pkg/DEBIAN/prerm" <<'EOT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop flm-edge.service >/dev/null 2>&1 || true
fi
EOT
cat >"$pkg/DEBIAN/postrm" <<'EOT'
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
  if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; fi
fi
if [ "$1" = purge ]; then
  # The enablement links, if it was enabled; the model and the user stay (they are the
  # owner's: /var/lib/flm-edge holds the model).
  rm -f /etc/systemd/system/multi-user.target.wants/flm-edge.service
fi
EOT
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/flm-edge_${version}_$arch.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$pkg" "$deb" >/dev/null
echo "deb: $(du -h "$deb" | cut -f1) $deb: Depends: $depends" >&2
readlink -f "$deb"
