#!/usr/bin/env bash
# Two builds of flm-edge side by side on one device, in one sitting: `bench step` and
# `bench mimi` of each, alternated ROUNDS times (so that a busy machine slows both alike),
# then the median of each stage over the rounds' medians, and each build's counter lines.
# For a change's before and after (e.g. two commits built into two target folders) on the
# CPU or on a GPU backend. Not run in CI.
#
#   tests/bench/builds-compare.sh BEFORE_BIN AFTER_BIN MODEL_DIR [BACKEND]
#
# ROUNDS (default 3), STEPS (default 30) and FRAMES (default 20) set the lengths. For Mesa's
# lavapipe: GGML_VK_VISIBLE_DEVICES=0 VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
# and BACKEND=vulkan.
set -euo pipefail
before="${1:?usage: builds-compare.sh BEFORE_BIN AFTER_BIN MODEL_DIR [BACKEND]}"
after="${2:?usage: builds-compare.sh BEFORE_BIN AFTER_BIN MODEL_DIR [BACKEND]}"
model="${3:?usage: builds-compare.sh BEFORE_BIN AFTER_BIN MODEL_DIR [BACKEND]}"
backend="${4:-cpu}"
rounds="${ROUNDS:-3}"
steps="${STEPS:-30}"
frames="${FRAMES:-20}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
  for side in before after; do
    bin=$before
    [ "$side" = after ] && bin=$after
    "$bin" bench step --model "$model" --backend "$backend" --steps "$steps" \
      >"$work/$side.step.$r" 2>/dev/null
    "$bin" bench mimi --model "$model" --backend "$backend" --frames "$frames" \
      >"$work/$side.mimi.$r" 2>/dev/null
  done
done
# The median over the rounds of a row's median ("  NAME  median X ms ...").
median_of() { # side kind row
  grep -h "^ *$3 .*median" "$work/$1.$2".* | sed -E 's/.*median +([0-9.]+) ms.*/\1/' |
    sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'
}
printf '%-22s %12s %12s   (ms, median of %s rounds on %s)\n' stage before after "$rounds" "$backend"
for row in embed backbone depth sampling total; do
  printf '%-22s %12s %12s\n' "step: $row" "$(median_of before step "$row")" "$(median_of after step "$row")"
done
for row in encode decode; do
  printf '%-22s %12s %12s\n' "mimi: $row" "$(median_of before mimi "$row")" "$(median_of after mimi "$row")"
done
for side in before after; do
  echo "$side:"
  grep -h -E "graph computes|llama_decode per step" "$work/$side.step.1" "$work/$side.mimi.1" | sed 's/^ */  /'
done
