#!/usr/bin/env bash
# Measurement: what `flm-edge serve` holds in memory while it loads a model and after, on the
# CPU. Not run in CI (a full-size model is 4 to 9 GB; making one takes some 15 minutes).
#
#   tests/bench/load-memory.sh MODEL_DIR [CLIP.wav]
#
# The model files' page cache is emptied first (posix_fadvise DONTNEED on each, nothing else
# of the machine), then `serve` replays the clip (default: the first 2 s of the golden Mimi
# clip) with the model, every 100 ms sampled: the process's resident memory (anonymous, file
# pages, locked) from /proc/PID/status, and the files' pages in the page cache (fincore).
# It prints the peak during the load, the figures once loaded (after serve's "loaded" line,
# when serve has handed back the files' cached pages no mapping uses) and the model's size.
# A full-size model: tests/bench/convert-full.sh's checkpoint, converted with
#   flm-edge convert --lm LM --mimi MIMI --out MODEL_DIR --quant q3_k
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:?usage: tests/bench/load-memory.sh MODEL_DIR [CLIP.wav]}"
clip="${2:-}"
bin="${BIN:-target/release/flm-edge}"
work=$(mktemp -d)
trap 'rm -rf "$work"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
files=("$model/backbone.gguf" "$model/audio.gguf" "$model/mimi.gguf")
if [ -z "$clip" ]; then
  clip="$work/clip.wav"
  python3 - tests/golden/mimi/speech.wav "$clip" <<'PY'
import sys, wave
with wave.open(sys.argv[1]) as r, wave.open(sys.argv[2], "wb") as w:
    w.setparams(r.getparams())
    w.writeframes(r.readframes(2 * r.getframerate()))
PY
fi
cat >"$work/config.toml" <<'EOT'
[status]
metrics = ""
events = ""
log_interval_s = 3600
EOT
python3 - "${files[@]}" <<'PY'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
cached() { fincore --bytes --noheadings --output RES "${files[@]}" | awk '{ s += $1 } END { printf "%d", s / 1048576 }'; }
echo "model: $(du -cm "${files[@]}" | tail -1 | cut -f1) MiB in $model; cached before: $(cached) MiB"
"$bin" serve --config "$work/config.toml" --model "$model" --backend cpu \
  --input-wav "$clip" --output-wav "$work/out.wav" 2>"$work/serve.log" &
pid=$!
peak_rss=0 peak_cache=0 peak_sum=0 loaded=""
field() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$pid/status" 2>/dev/null || echo 0; }
while kill -0 "$pid" 2>/dev/null; do
  rss=$(field VmRSS) anon=$(field RssAnon) file=$(field RssFile) lck=$(field VmLck)
  cache=$(cached)
  ((rss > peak_rss)) && peak_rss=$rss
  ((cache > peak_cache)) && peak_cache=$cache
  # Memory the load takes: the process's anonymous pages plus the files' cached pages.
  ((anon + cache > peak_sum)) && peak_sum=$((anon + cache))
  if [ -z "$loaded" ] && grep -q 'loaded and warmed up' "$work/serve.log"; then
    sleep 0.5
    loaded="RSS $(field VmRSS) MiB (anonymous $(field RssAnon), file pages $(field RssFile), locked $(field VmLck)); the model files in the page cache: $(cached) MiB"
  fi
  sleep 0.1
done
wait "$pid" || { cat "$work/serve.log" >&2; echo "error: serve failed" >&2; exit 1; }
pid=""
grep -E 'backbone on|loaded and warmed up' "$work/serve.log" | sed 's/^/serve: /'
echo "peak during the load: RSS $peak_rss MiB; the files' cached pages $peak_cache MiB; anonymous + cached $peak_sum MiB"
echo "once loaded: $loaded"
echo "after serve ended: the files' cached pages $(cached) MiB"
