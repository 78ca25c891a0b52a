#!/usr/bin/env bash
# Soak test of `flm-edge serve`: a long conversation at real-time pace, checking for deadline
# misses, timeline drift and memory growth. Not run in CI.
#
#   tests/bench/soak.sh MODEL_DIR [MINUTES] [WORK]
#
# The user's voice is the golden speech clip looped to MINUTES. The clip is replayed through
# the real-time scheduler (--input-wav --realtime): the same threads, queues and deadline
# monitor as with ALSA devices. Resident memory is sampled every 30 s. To drive the ALSA
# devices instead:
#   ALSA=pipes  alsa-lib `file` PCMs (48 kHz mono s16, slave `null`) over two named pipes
#               whose far ends tests/bench/alsa_clock.py feeds and drains at 48 kHz by the
#               clock, 20 ms at a time: the whole ALSA path at a real pace, no hardware.
#   ALSA=aloop  snd-aloop (modprobe snd-aloop): the clip is played into Loopback,0 with
#               aplay while serve captures Loopback,1 and plays to Loopback,0 subdevice 1.
# Other settings, from the environment:
#   LOAD=N      N busy processes (each a CPU-bound loop) beside serve for the whole soak: a
#               robot's other software taking cores from the model.
#   THREADS=N, NICE=N, LATENCY=N   the keys threads, compute_nice, schedule.latency_frames.
#   ECHO=aec3   audio.echo_cancel (ALSA=pipes or aloop): the canceller's cost in the soak.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="$1"; minutes="${2:-10}"; work="${3:-target/soak}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"  # absolute: the ALSA configuration names its pipes by path
python3 - "$minutes" "$work/user.wav" <<'PY'
import sys, wave
minutes, out = float(sys.argv[1]), sys.argv[2]
w = wave.open("tests/golden/mimi/speech.wav"); x = w.readframes(w.getnframes())
n = int(24000 * 60 * minutes) * 2
y = (x * (n // len(x) + 1))[:n]
o = wave.open(out, "wb"); o.setnchannels(1); o.setsampwidth(2); o.setframerate(24000); o.writeframes(y); o.close()
PY
cat > "$work/soak.toml" <<TOML
threads = ${THREADS:-0}
compute_nice = ${NICE:-0}
[schedule]
latency_frames = ${LATENCY:-2}
[status]
metrics = "127.0.0.1:19466"
events = ""
log_interval_s = 60
TOML
busy=()
for _ in $(seq 1 "${LOAD:-0}"); do
  python3 -c "while True: pass" &
  busy+=($!)
done
trap '[ ${#busy[@]} -eq 0 ] || kill "${busy[@]}" 2>/dev/null || true' EXIT
if [ "${ALSA:-}" = pipes ]; then
  rm -f "$work/capture.pipe" "$work/playback.pipe" "$work/reply.raw"
  mkfifo "$work/capture.pipe" "$work/playback.pipe"
  mkdir -p "$work/xdg/alsa"
  cat > "$work/xdg/alsa/asoundrc" <<ALSA
pcm.soak_capture { type file slave.pcm "null" file "/dev/null" infile "$work/capture.pipe" format "raw" }
pcm.soak_playback { type file slave.pcm "null" file "$work/playback.pipe" format "raw" }
ALSA
  cat >> "$work/soak.toml" <<TOML
[audio]
capture = "soak_capture"
playback = "soak_playback"
rate = 48000
echo_cancel = "${ECHO:-off}"
TOML
  python3 tests/bench/alsa_clock.py 48000 "$work/user.wav" "$work/capture.pipe" \
    "$work/playback.pipe" "$work/reply.raw" &
  clock=$!
  XDG_CONFIG_HOME="$work/xdg" target/release/flm-edge serve --config "$work/soak.toml" \
    --model "$model" 2> "$work/serve.log" &
  pid=$!
  # The clip's length at the card's pace, then a clean stop (SIGTERM) while audio flows.
  ( sleep "$(python3 -c "print($minutes * 60 + 3)")"; kill -TERM "$pid"; sleep 2; kill -TERM "$clock" ) &
elif [ "${ALSA:-}" = aloop ]; then
  cat >> "$work/soak.toml" <<TOML
[audio]
capture = "plughw:CARD=Loopback,DEV=1,SUBDEV=0"
playback = "plughw:CARD=Loopback,DEV=0,SUBDEV=1"
echo_cancel = "${ECHO:-off}"
TOML
  target/release/flm-edge serve --config "$work/soak.toml" --model "$model" 2> "$work/serve.log" &
  pid=$!
  aplay -q -D plughw:CARD=Loopback,DEV=0,SUBDEV=0 "$work/user.wav"
  kill -TERM "$pid"
else
  target/release/flm-edge serve --config "$work/soak.toml" --model "$model" \
    --input-wav "$work/user.wav" --output-wav "$work/reply.wav" --realtime 2> "$work/serve.log" &
  pid=$!
fi
: > "$work/rss.log"
while kill -0 "$pid" 2>/dev/null; do
  awk -v t="$SECONDS" '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {if (a) print t, a, f}' \
    "/proc/$pid/status" >> "$work/rss.log" 2>/dev/null || true
  curl -s 127.0.0.1:19466/metrics > "$work/metrics.txt" 2>/dev/null || true
  sleep 30
done
wait "$pid" && rc=0 || rc=$?; echo "serve exited with status $rc"
tail -4 "$work/serve.log"
echo "resident memory (s, anonymous KiB, mapped-file KiB):"; cat "$work/rss.log"
exit "$rc"
