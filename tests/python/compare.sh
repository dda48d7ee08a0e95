#!/usr/bin/env bash
# Runs each benchmark case with `dcae bench` (burn) and bench_torch.py (PyTorch) back to back, on
# the same machine and thread count, and prints the ratio burn / PyTorch of the median times.
# Usage: tests/python/compare.sh [PYTHON] [DCAE] [RUNS]   (cases below; edit to taste)
set -euo pipefail
PY=${1:-/tmp/dcae-torch/bin/python}
DCAE=${2:-target/release/dcae}
RUNS=${3:-3}
THREADS=${THREADS:-$(nproc)}
here=$(dirname "$0")
cases=(
  "dc-ae-f32c32-in-1.0 encode 256"
  "dc-ae-f32c32-in-1.0 decode 256"
  "dc-ae-f64c128-in-1.0 encode 256"
  "dc-ae-f64c128-in-1.0 decode 256"
)
[ -n "${EXTRA_CASES:-}" ] && IFS=';' read -ra extra <<<"$EXTRA_CASES" && cases+=("${extra[@]}")
printf '%-24s %-8s %5s %10s %10s %7s\n' model task res burn_s torch_s ratio
for c in "${cases[@]}"; do
  read -r model task res <<<"$c"
  steps=()
  [ "$task" = generate ] && steps=(--steps "${STEPS:-30}")
  b=$("$DCAE" bench --backend cpu --model "$model" --task "$task" --res "$res" --runs "$RUNS" "${steps[@]}" --json | tail -1)
  t=$("$PY" "$here/bench_torch.py" --model "$model" --task "$task" --res "$res" --runs "$RUNS" --threads "$THREADS" "${steps[@]}" | tail -1)
  bs=$(echo "$b" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["median_s"])')
  ts=$(echo "$t" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["median_s"])')
  printf '%-24s %-8s %5s %10.3f %10.3f %7.2f\n' "$model" "$task" "$res" "$bs" "$ts" "$("$PY" -c "print($bs/$ts)")"
  echo "  burn:  $b" >&2
  echo "  torch: $t" >&2
done
