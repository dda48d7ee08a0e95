#!/usr/bin/env bash
# Parity and speed of a prebuilt `dcae` on the GPU backends, as ONE table, within a time budget
# (8 minutes by default), for a machine with an NVIDIA GPU on which nothing can be built or
# downloaded. It needs only bash, coreutils and the bundle that scripts/make-gpu-bundle.sh
# makes (the stripped binary + the golden fixtures); see scripts/README.md.
#
#   ./gpu-check.sh                          # in the bundle folder: CUDA and wgpu, full sizes
#   scripts/gpu-check.sh --quick --backends cpu,wgpu   # here: tiny sizes, to test the script
#
# Options:
#   --backends LIST   comma-separated, of cuda, wgpu, cpu        [cuda,wgpu]
#   --quick           tiny sizes and 1 timed run, for machines without a GPU
#   --budget SECONDS  wall time for everything, split evenly between the backends
#                     [480; 1800 with --quick]
#   --runs N          timed runs per row (after one warm-up)     [3; 1 with --quick]
#   --dcae PATH       the binary     [./dcae or ./dcae.gz beside this script, else the cargo
#                     debug build]
#   --fixtures DIR    golden data    [./fixtures beside this script, else tests/fixtures]
#   --out DIR         raw JSON lines and each step's stderr       [gpu-check-results]
#
# Each step runs under `timeout`, so a hang costs one cell (TIMEOUT), and the script keeps
# going after failures (FAIL, with the reason in --out). Timing rows use random weights at the
# real model sizes (`dcae bench`, nothing is downloaded); parity rows run `dcae parity`, the
# golden checks of tests/it with their tolerances.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
BACKENDS="cuda,wgpu"
QUICK=0
BUDGET=""
RUNS=""
DCAE=""
FIXTURES=""
OUT="gpu-check-results"
while [ $# -gt 0 ]; do
  case "$1" in
    --backends) BACKENDS="$2"; shift 2 ;;
    --backends=*) BACKENDS="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --budget=*) BUDGET="${1#*=}"; shift ;;
    --runs) RUNS="$2"; shift 2 ;;
    --runs=*) RUNS="${1#*=}"; shift ;;
    --dcae) DCAE="$2"; shift 2 ;;
    --dcae=*) DCAE="${1#*=}"; shift ;;
    --fixtures) FIXTURES="$2"; shift 2 ;;
    --fixtures=*) FIXTURES="${1#*=}"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$RUNS" ] || RUNS=$([ "$QUICK" = 1 ] && echo 1 || echo 3)
[ -n "$BUDGET" ] || BUDGET=$([ "$QUICK" = 1 ] && echo 1800 || echo 480)

# The binary and the fixtures: the bundle's, else this checkout's. The bundle carries the
# binary gzipped (scripts/make-gpu-bundle.sh); it is unpacked outside the bundle, which may be
# read-only.
if [ -z "$DCAE" ]; then
  if [ -x "$HERE/dcae" ]; then DCAE="$HERE/dcae"
  elif [ -f "$HERE/dcae.gz" ]; then
    DCAE="${TMPDIR:-/tmp}/dcae-gpu-check/dcae"
    mkdir -p "$(dirname "$DCAE")" && gzip -dc "$HERE/dcae.gz" > "$DCAE" && chmod +x "$DCAE" \
      || { echo "cannot unpack $HERE/dcae.gz into $DCAE" >&2; exit 1; }
  else DCAE="${CARGO_TARGET_DIR:-$HOME/.cache/dcae-studio/target}/debug/dcae"; fi
fi
if [ -z "$FIXTURES" ]; then
  if [ -d "$HERE/fixtures" ]; then FIXTURES="$HERE/fixtures"; else FIXTURES="$HERE/../tests/fixtures"; fi
fi
if ! "$DCAE" --version >/dev/null 2>"${TMPDIR:-/tmp}/dcae-start.err"; then
  echo "cannot start $DCAE:" >&2; cat "${TMPDIR:-/tmp}/dcae-start.err" >&2
  echo "build the bundle with scripts/make-gpu-bundle.sh, or pass --dcae PATH" >&2
  exit 1
fi
[ -d "$FIXTURES" ] || { echo "no fixtures folder $FIXTURES: pass --fixtures DIR" >&2; exit 1; }
mkdir -p "$OUT"
START=$(date +%s)
rm -f "$OUT/bench.jsonl"

# NVRTC (CUDA's runtime compiler) often sits outside the loader's path: in a CUDA toolkit's
# lib64 or in a Python wheel (nvidia/cuda_nvrtc/lib). Look in the usual places once.
if [[ ",$BACKENDS," == *",cuda,"* ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
           /opt/conda/lib /usr/lib/x86_64-linux-gnu \
           $(ls -d /usr/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib /usr/local/lib/python3*/*-packages/nvidia/cuda_nvrtc/lib \
                   "$HOME"/.local/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib /opt/conda/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null); do
    if compgen -G "$d/libnvrtc.so*" >/dev/null; then
      # cudarc asks for libnvrtc.so or libnvrtc.so.<major>; a wheel may only hold libnvrtc.so.12.
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "using NVRTC from $d" >&2
      break
    fi
  done
fi

# f16 exists when `dcae bench` has a --precision option (issue 11, item 4); it covers the
# DC-AE rows and checks (the other models compute in f32).
HAS_F16=0
"$DCAE" bench --help 2>/dev/null | grep -q -- '--precision' && HAS_F16=1

# The rows: label | bench arguments (quick arguments after '||'). Sizes follow the issue.
if [ "$QUICK" = 1 ]; then
  S1=64; S2=128; TOK=16; STEPS=2; FWD1=256; FWD2=512; T2I=256
else
  S1=512; S2=1024; TOK=300; STEPS=30; FWD1=512; FWD2=1024; T2I=1024
fi
# Labels are ASCII: printf pads by bytes, and the table must line up in any locale.
ROWS=(
  "DC-AE f32c32 encode ${S1}px|--model dc-ae-f32c32-in-1.0 --task encode --res $S1"
  "DC-AE f32c32 decode ${S1}px|--model dc-ae-f32c32-in-1.0 --task decode --res $S1"
  "DC-AE f32c32 encode ${S2}px|--model dc-ae-f32c32-in-1.0 --task encode --res $S2"
  "DC-AE f32c32 decode ${S2}px|--model dc-ae-f32c32-in-1.0 --task decode --res $S2"
  "DC-AE f64c128 encode ${S1}px|--model dc-ae-f64c128-in-1.0 --task encode --res $S1"
  "DC-AE f64c128 decode ${S1}px|--model dc-ae-f64c128-in-1.0 --task decode --res $S1"
  "DC-AE f64c128 encode ${S2}px|--model dc-ae-f64c128-in-1.0 --task encode --res $S2"
  "DC-AE f64c128 decode ${S2}px|--model dc-ae-f64c128-in-1.0 --task decode --res $S2"
  "UViT-H 512px ${STEPS}-step generate|--model dc-ae-f64c128-in-1.0-uvit-h-in-512px --task generate --res 512 --steps $STEPS --runs 1"
  "DiT-XL forward 512px (guided pair)|--model dc-ae-f32c32-in-1.0-dit-xl-in-512px --task forward --res 512 --batch 2"
  "USiT-H forward 512px (guided pair)|--model dc-ae-f32c32-in-1.0-usit-h-in-512px --task forward --res 512 --batch 2"
  "Sana-600M forward ${FWD1}px|--model Sana_600M_512px_diffusers --task forward --res $FWD1"
  "Sana-600M forward ${FWD2}px|--model Sana_600M_1024px_diffusers --task forward --res $FWD2"
  "Gemma-2-2B encode ${TOK} tok|--model Sana_600M_512px_diffusers --task text-encode --tokens $TOK"
  "Sprint 0.6B t2i ${T2I}px 2 steps|--model Sana_Sprint_0.6B_1024px_diffusers --task t2i --res $T2I --runs 1"
)
# Per-step limits in seconds: the first call on a backend compiles (and autotunes) its kernels.
# Quick mode is for 2-core machines without a GPU, where a software Vulkan driver compiles each
# shader on the CPU (the parity checks alone take ~5 min on lavapipe there).
if [ "$QUICK" = 1 ]; then T_PARITY=480; T_ROW=90; T_HEAVY=120; else T_PARITY=90; T_ROW=60; T_HEAVY=90; fi

IFS=',' read -r -a BK <<< "$BACKENDS"
PER_BACKEND=$(( BUDGET / ${#BK[@]} ))

# A JSON number field of a one-line object (serde_json's compact output), or empty.
field() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" <<< "$1" | head -n1; }
sfield() { sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" <<< "$1" | head -n1; }
fmt_s() { awk -v s="$1" 'BEGIN { if (s < 10) printf "%.3f s", s; else printf "%.1f s", s }'; }
fmt_mib() { awk -v m="$1" 'BEGIN { printf "%.0f", m }'; }

# Runs "$@" under a limit that never passes the backend's deadline. Sets RC (124 = timed out;
# 125 = not started, no time left).
run_step() {
  local limit=$1 log=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt 10 ]; then RC=125; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout -k 5 "$limit" "$@" > "$log.out" 2> "$log.err"
  RC=$?
}

declare -A CELL     # CELL[backend|row|col]
declare -A DEVICE   # what each backend ran on
PARITY_NAMES=()
FAILURES=()         # the first error line of each failed step

for b in "${BK[@]}"; do
  DEADLINE=$(( $(date +%s) + PER_BACKEND ))
  dev_missing=""
  # Parity first: it is quick, and it tells whether the backend starts at all.
  run_step "$T_PARITY" "$OUT/$b-parity" "$DCAE" parity --backend "$b" --json --fixtures "$FIXTURES"
  if [ "$RC" = 125 ]; then
    dev_missing="SKIP (no time)"
  elif grep -q "could be opened\|not built in" "$OUT/$b-parity.err"; then
    # The backend does not start on this machine: one reason, every cell n/a.
    dev_missing="n/a"
    CELL[$b|parity|f32]="n/a"
    DEVICE[$b]="not available: $(grep -m1 "error:" "$OUT/$b-parity.err" | sed 's/^error: //')"
  else
    DEVICE[$b]=$(sed -n 's/^backend: //p' "$OUT/$b-parity.err" | head -n1)
    while IFS= read -r line; do
      name=$(sfield "$line" check)
      [ -n "$name" ] || continue
      [[ " ${PARITY_NAMES[*]-} " == *" $name "* ]] || PARITY_NAMES+=("$name")
      if grep -q '"pass":true' <<< "$line"; then verdict=PASS; else verdict=FAIL; fi
      err=$(field "$line" max_abs_err)
      if [ -n "$err" ]; then CELL[$b|$name|f32]="$(awk -v e="$err" 'BEGIN { printf "%.1e", e }') $verdict"
      else CELL[$b|$name|f32]="$verdict (error)"; fi
    done < "$OUT/$b-parity.out"
    [ "$RC" = 124 ] && CELL[$b|parity|f32]="TIMEOUT"
    [ "$RC" != 0 ] && [ "$RC" != 124 ] && [ ! -s "$OUT/$b-parity.out" ] && CELL[$b|parity|f32]="FAIL (see $OUT/$b-parity.err)"
    if [ "$HAS_F16" = 1 ]; then
      # The autoencoder checks again in f16 (their names end in " (f16)"), and the text
      # encoder in bf16 where the backend has it (" (bf16)"; elsewhere it runs in f32 again and
      # is not recorded here).
      run_step "$T_PARITY" "$OUT/$b-parity16" "$DCAE" parity --backend "$b" --precision f16 --only ae-,sana-tiny --json --fixtures "$FIXTURES"
      while IFS= read -r line; do
        name=$(sfield "$line" check)
        case "$name" in *" (f16)"|*" (bf16)") ;; *) continue ;; esac
        name="${name% (f16)}"; name="${name% (bf16)}"
        [ -n "$name" ] || continue
        if grep -q '"pass":true' <<< "$line"; then verdict=PASS; else verdict=FAIL; fi
        err=$(field "$line" max_abs_err)
        if [ -n "$err" ]; then CELL[$b|$name|f16]="$(awk -v e="$err" 'BEGIN { printf "%.1e", e }') $verdict"
        else CELL[$b|$name|f16]="$verdict ($(sfield "$line" error | cut -c1-40))"; fi
      done < "$OUT/$b-parity16.out"
      [ "$RC" = 124 ] && CELL[$b|parity|f16]="TIMEOUT"
    fi
  fi

  for i in "${!ROWS[@]}"; do
    label="${ROWS[$i]%%|*}"; args="${ROWS[$i]#*|}"
    for dt in f32 f16; do
      key="$b|$label|$dt"
      if [ -n "$dev_missing" ]; then CELL[$key]="$dev_missing"; continue; fi
      if [ "$dt" = f16 ] && [ "$HAS_F16" = 0 ]; then CELL[$key]="n/a (not built)"; continue; fi
      # f16 runs the autoencoders and the fp16-trained SANA 1.0 in f16, the bf16-trained text
      # encoder and Sprint in bf16 where the backend has it (the cell says what ran); the
      # UViT is f32 only.
      if [ "$dt" = f16 ] && [[ "$label" == UViT* ]]; then CELL[$key]="n/a (f32 only)"; continue; fi
      extra=(); [ "$dt" = f16 ] && extra=(--precision f16)
      limit=$T_ROW; [[ "$label" == *generate* || "$label" == *t2i* || "$label" == Gemma* ]] && limit=$T_HEAVY
      # A row that sets its own --runs (the one-shot generations) keeps it.
      [[ "$args" == *"--runs "* ]] || extra+=(--runs "$RUNS")
      # shellcheck disable=SC2086  # $args is a list of words on purpose
      run_step "$limit" "$OUT/$b-row$i-$dt" "$DCAE" bench --backend "$b" $args "${extra[@]}" --json
      line=$(grep -m1 '^{' "$OUT/$b-row$i-$dt.out" 2>/dev/null)
      case "$RC" in
        0)
          t=$(field "$line" median_s)
          use=$(field "$line" gpu_in_use_mib); res=$(field "$line" gpu_reserved_mib); rss=$(field "$line" peak_rss_mib)
          if [ -n "$res" ]; then mem="$(fmt_mib "$use")/$(fmt_mib "$res") MiB"
          elif [ -n "$rss" ]; then mem="RSS $(fmt_mib "$rss") MiB"
          else mem="?"; fi
          if [ -n "$t" ]; then CELL[$key]="$(fmt_s "$t"), $mem"; else CELL[$key]="FAIL (no result)"; fi
          # The text encoder's precision beside the SANA rows' f16 cells (bf16, or f32 without it).
          if [ "$dt" = f16 ] && [[ "$label" != DC-AE* ]]; then CELL[$key]+=" $(sfield "$line" dtype)"; fi ;;
        124|137)
          # A panic on a runtime's device thread leaves the main thread waiting: say so.
          if grep -q "panicked at" "$OUT/$b-row$i-$dt.err"; then
            CELL[$key]="FAIL (panic, hung)"
            FAILURES+=("$b, $label, $dt: $(grep -m1 -A1 'panicked at' "$OUT/$b-row$i-$dt.err" | tail -n1 | cut -c1-160)")
          else CELL[$key]="TIMEOUT (${limit}s)"; fi ;;
        125) CELL[$key]="SKIP (no time)" ;;
        *) CELL[$key]="FAIL (rc $RC)"
           FAILURES+=("$b, $label, $dt: $(grep -m1 -E 'error|panicked' "$OUT/$b-row$i-$dt.err" | cut -c1-160)") ;;
      esac
      # Keep the row's JSON with the others, whatever happened.
      [ -n "$line" ] && echo "$line" >> "$OUT/bench.jsonl"
    done
  done
done

# ONE table: a row per measurement, per backend an f32 and an f16 column.
W0=36; W=26
printf '\n%-*s' $W0 "dcae gpu-check ($([ "$QUICK" = 1 ] && echo quick || echo full), runs=$RUNS)"
for b in "${BK[@]}"; do printf ' | %-*s | %-*s' $W "$b f32" $W "$b f16"; done; echo
printf '%s' "$(printf '%*s' $W0 '' | tr ' ' '-')"
for b in "${BK[@]}"; do printf -- '-|-%s-|-%s' "$(printf '%*s' $W '' | tr ' ' '-')" "$(printf '%*s' $W '' | tr ' ' '-')"; done; echo
for i in "${!ROWS[@]}"; do
  label="${ROWS[$i]%%|*}"
  printf '%-*s' $W0 "$label"
  for b in "${BK[@]}"; do printf ' | %-*s | %-*s' $W "${CELL[$b|$label|f32]-}" $W "${CELL[$b|$label|f16]-}"; done; echo
done
for name in "${PARITY_NAMES[@]}"; do
  printf '%-*s' $W0 "parity $name"
  for b in "${BK[@]}"; do
    f16="n/a (not built)"
    if [ "$HAS_F16" = 1 ]; then
      if [[ "$name" == ae-* ]]; then f16="${CELL[$b|$name|f16]:-${CELL[$b|parity|f16]:-not run}}"
      elif [[ "$name" == sana-tiny* ]]; then f16="${CELL[$b|$name|f16]:-${CELL[$b|parity|f16]:-n/a (no 16-bit type here)}}"
      else f16="n/a (f32 only)"; fi
    fi
    printf ' | %-*s | %-*s' $W "${CELL[$b|$name|f32]:-${CELL[$b|parity|f32]:--}}" $W "$f16"
  done; echo
done
for b in "${BK[@]}"; do
  case "${CELL[$b|parity|f32]-}" in ""|n/a) ;; *) echo "parity on $b: ${CELL[$b|parity|f32]}" ;; esac
done
echo
echo "cells: median time of $RUNS run(s) after a warm-up, then GPU MiB in use after the runs / reserved by the allocator (its high-water mark), or the process's peak RSS on the CPU"
echo "parity: max |error| against the golden and PASS/FAIL at the tests' tolerances (1e-4; 1e-3 for the 30-step trajectory; the f16 autoencoder checks at dcae parity's F16 tolerance, the bf16 text encoder at its BF16 tolerance)"
for b in "${BK[@]}"; do echo "$b: ${DEVICE[$b]-?}"; done
for f in "${FAILURES[@]}"; do echo "failed: $f"; done
# The real-size rows of issue 19 (each GPU backend against the CPU with the same random
# weights and input; the device's largest tensor decides the weight splits and tiles), when
# the script that runs them is beside this one and time is left.
if [ -x "$HERE/real-size-check.sh" ] && [ "$QUICK" = 0 ]; then
  for b in "${BK[@]}"; do
    [ "$b" = cpu ] && continue
    case "${DEVICE[$b]-}" in "not available"*|"") continue ;; esac
    echo
    echo "real size on $b (largest difference from the CPU backend; placement: autoencoder on $b):"
    timeout -k 5 600 "$HERE/real-size-check.sh" --backend "$b" --dcae "$DCAE" --out "$OUT/real-size" --limit 240 2>>"$OUT/real-size.err"
  done
fi
echo "total $(( $(date +%s) - START )) s; raw results in $OUT/ (bench.jsonl, *-parity.out, each step's .err)"
