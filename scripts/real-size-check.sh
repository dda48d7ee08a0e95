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
# A row is model:task:res[:cap[:steps]]; cap sets DCAE_GPU_MAX_BINDING for both runs (the CPU
# backend follows it in its tiling, so both sides tile alike). A generate row is a guided UViT run of `steps` (default STEPS,
# 2) from the seeded noise, a t2i row a SANA / Sprint run (Gemma-2 included); each decoded
# where the placement puts the autoencoder (VAE_DEVICE: auto, gpu, cpu). Output: a Markdown
# table on stdout, raw JSON and logs in --out.
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
dc-ae-f32c32-sana-1.0:decode:512:32MiB
dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k:generate:512
Sana_600M_512px_diffusers:t2i:512::2
Sana_Sprint_0.6B_1024px_diffusers:t2i:512::1"
ROWS="${ROWS:-$DEFAULT_ROWS}"
mkdir -p "$OUT"
STEPS="${STEPS:-2}"
# Timed runs on the GPU after the compared one (RUNS=0: that first call only; t2i and
# generate rows are one run whatever RUNS says).
RUNS="${RUNS:-0}"
VAE_DEVICE="${VAE_DEVICE:-auto}"
field() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" <<< "$1" | head -n1; }

echo "| model | task | res | cap | $BACKEND time (first call) | cpu time | max abs diff / max abs | $BACKEND peak RSS | placement | device |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for row in $ROWS; do
  IFS=: read -r model task res cap steps <<< "$row"
  tag="$model-$task-$res${cap:+-$cap}"
  extra=""
  case "$task" in generate|t2i) extra="--steps ${steps:-$STEPS} --vae-device $VAE_DEVICE" ;; esac
  # The GPU side first, its output kept; then the CPU backend under the same tensor limit (the
  # row's cap, else the one the GPU device reported), compared with it. The CPU backend follows
  # the limit in its own decisions, so both sides tile alike: a tiled decode differs from an
  # untiled one by design (each tile's attention sees only its tile; with random weights by
  # up to ~0.8 at 512², stop 24's Sprint row), which is not what this table measures.
  out="$OUT/$tag.$BACKEND.safetensors"
  env ${cap:+DCAE_GPU_MAX_BINDING=$cap} timeout "$LIMIT" "$DCAE" bench --backend "$BACKEND" --model "$model" --task "$task" --res "$res" \
    --runs "$RUNS" --json --output "$out" $extra > "$OUT/$tag.$BACKEND.json" 2> "$OUT/$tag.$BACKEND.err"
  rc=$?
  gpu=$(grep -m1 '^{' "$OUT/$tag.$BACKEND.json" 2>/dev/null)
  if [ "$rc" != 0 ] || [ -z "$gpu" ]; then
    why=$(grep -m1 -E 'error|panicked' "$OUT/$tag.$BACKEND.err" | cut -c1-120)
    echo "| $model | $task | $res | ${cap:-device} | FAIL (rc $rc: $why) | | | | | |"
    continue
  fi
  # An autoencoder the placement put on the CPU decoded under no GPU limit: neither does the
  # reference then (stop 25's Sana-600M row tiled only on the reference side, and differed by 0.9).
  where=$(sed -n 's/.*"placement":"\([^"]*\)".*/\1/p' <<< "$gpu")
  case "$where" in
    *"autoencoder on the CPU"*) limit="$cap" ;;
    *) limit="${cap:-$(field "$gpu" max_tensor_bytes)}" ;;
  esac
  env ${limit:+DCAE_GPU_MAX_BINDING=$limit} timeout "$LIMIT" "$DCAE" bench --backend cpu --model "$model" --task "$task" --res "$res" --runs 1 --json --compare "$out" $extra \
    > "$OUT/$tag.cpu.json" 2> "$OUT/$tag.cpu.err"
  cpu=$(grep -m1 '^{' "$OUT/$tag.cpu.json" 2>/dev/null)
  printf '| %s | %s | %s | %s | %.1f s (%.1f s) | %.2f s | %.1e / %.2f | %s MiB | %s | %s |\n' "$model" "$task" "$res" "${cap:-device}" \
    "$(field "$gpu" median_s)" "$(field "$gpu" output_s)" "$(field "$cpu" median_s)" "$(field "$cpu" max_abs_diff)" "$(field "$cpu" max_abs_ref)" \
    "$(field "$gpu" peak_rss_mib | cut -d. -f1)" "${where:-everything on $BACKEND}" "$(sed -n 's/^backend: //p' "$OUT/$tag.$BACKEND.err" | head -n1)"
  grep -h "tiled\|split" "$OUT/$tag.$BACKEND.err" | sed 's/^/    /' >&2
done
