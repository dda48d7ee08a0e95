#!/usr/bin/env bash
# The published DC-AE architectures at real size (random weights, nothing downloaded) on a GPU
# backend, each against the CPU backend with the same weights and input: time, first call,
# largest difference, peak memory, and the device's largest tensor (which decides the weight
# splits and tiles). On this project's machines the GPU is lavapipe (software Vulkan, 128 MiB
# per tensor, ~35x slower than the CPU backend), so what passes there passes on every GPU.
#
#   scripts/real-size-check.sh                       # wgpu against cpu, the rows below
#   scripts/real-size-check.sh --backend cuda --dcae ./dcae
#   ROWS="f32c32-sana:decode:512:32MiB" scripts/real-size-check.sh   # one row, a 32 MiB cap
#
# A row is model:task:res[:cap]; cap sets DCAE_GPU_MAX_BINDING for the GPU run (the CPU
# reference runs without one). Output: a Markdown table on stdout, raw JSON and logs in --out.
set -uo pipefail

BACKEND=wgpu
DCAE="${CARGO_TARGET_DIR:-$HOME/.cache/dcae-studio/target}/release/dcae"
OUT=real-size-results
LIMIT=3600
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND="$2"; shift 2 ;;
    --dcae) DCAE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$DCAE" ] || { echo "no dcae binary at $DCAE: cargo build --release, or pass --dcae" >&2; exit 1; }
DEFAULT_ROWS="dc-ae-f32c32-in-1.0:encode:256 dc-ae-f32c32-in-1.0:decode:256
dc-ae-f64c128-in-1.0:encode:256 dc-ae-f64c128-in-1.0:decode:256
dc-ae-f128c512-in-1.0:encode:256 dc-ae-f128c512-in-1.0:decode:256
dc-ae-f32c32-sana-1.0:encode:256 dc-ae-f32c32-sana-1.0:decode:256
dc-ae-f32c32-sana-1.0:decode:512:32MiB"
ROWS="${ROWS:-$DEFAULT_ROWS}"
mkdir -p "$OUT"
field() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" <<< "$1" | head -n1; }

echo "| model | task | res | cap | $BACKEND time (first call) | cpu time | max abs diff / max abs | $BACKEND peak RSS | device |"
echo "|---|---|---|---|---|---|---|---|---|"
for row in $ROWS; do
  IFS=: read -r model task res cap <<< "$row"
  tag="$model-$task-$res${cap:+-$cap}"
  ref="$OUT/$model-$task-$res.cpu.safetensors"
  if [ ! -f "$ref" ]; then
    timeout "$LIMIT" "$DCAE" bench --backend cpu --model "$model" --task "$task" --res "$res" --runs 1 --json --output "$ref" \
      > "$OUT/$tag.cpu.json" 2> "$OUT/$tag.cpu.err"
  fi
  cpu=$(grep -m1 '^{' "$OUT/$tag.cpu.json" 2>/dev/null)
  env ${cap:+DCAE_GPU_MAX_BINDING=$cap} timeout "$LIMIT" "$DCAE" bench --backend "$BACKEND" --model "$model" --task "$task" --res "$res" \
    --runs 1 --json --compare "$ref" > "$OUT/$tag.$BACKEND.json" 2> "$OUT/$tag.$BACKEND.err"
  rc=$?
  gpu=$(grep -m1 '^{' "$OUT/$tag.$BACKEND.json" 2>/dev/null)
  if [ "$rc" != 0 ] || [ -z "$gpu" ]; then
    why=$(grep -m1 -E 'error|panicked' "$OUT/$tag.$BACKEND.err" | cut -c1-120)
    echo "| $model | $task | $res | ${cap:-device} | FAIL (rc $rc: $why) | | | | |"
    continue
  fi
  printf '| %s | %s | %s | %s | %.1f s (%.1f s) | %.2f s | %.1e / %.2f | %s MiB | %s |\n' "$model" "$task" "$res" "${cap:-device}" \
    "$(field "$gpu" median_s)" "$(field "$gpu" output_s)" "$(field "$cpu" median_s)" "$(field "$gpu" max_abs_diff)" "$(field "$gpu" max_abs_ref)" \
    "$(field "$gpu" peak_rss_mib | cut -d. -f1)" "$(sed -n 's/^backend: //p' "$OUT/$tag.$BACKEND.err" | head -n1)"
  grep -h "tiles\|split" "$OUT/$tag.$BACKEND.err" | sed 's/^/    /' >&2
done
