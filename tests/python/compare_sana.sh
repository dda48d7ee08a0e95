#!/usr/bin/env bash
# SANA at the real sizes with random weights: `dcae bench` (burn) and bench_sana_torch.py
# (transformers + diffusers) back to back, PAIRS interleaved pairs per case, same thread count;
# prints each pair's median times, their ratio burn / PyTorch and both peak RSS.
# Usage: tests/python/compare_sana.sh [PYTHON] [DCAE] [PAIRS]
set -euo pipefail
PY=${1:-/tmp/dcae-torch/bin/python}
DCAE=${2:-target/debug/dcae}
PAIRS=${3:-2}
THREADS=${THREADS:-$(nproc)}
here=$(dirname "$0")
# model task res runs [extra args]
cases=(
  "Sana_600M_512px_diffusers text-encode 512 2"
  "Sana_600M_512px_diffusers forward 512 3"
  "Sana_600M_1024px_diffusers forward 1024 2"
  "Sana_600M_512px_diffusers t2i 512 1"
  "Sana_Sprint_0.6B_1024px_diffusers t2i 1024 1"
)
[ -n "${ONLY:-}" ] && cases=("${cases[@]:$ONLY:1}")
field() { "$PY" -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get('$1'))" "$2"; }
printf '%-34s %-12s %5s %10s %10s %7s %10s %10s\n' model task res burn_s torch_s ratio burn_MiB torch_MiB
for c in "${cases[@]}"; do
  read -r model task res runs <<<"$c"
  for _ in $(seq "$PAIRS"); do
    b=$("$DCAE" bench --backend cpu --model "$model" --task "$task" --res "$res" --runs "$runs" --json | tail -1)
    t=$("$PY" "$here/bench_sana_torch.py" --model "$model" --task "$task" --res "$res" --runs "$runs" --threads "$THREADS" | tail -1)
    bs=$(field median_s "$b"); ts=$(field median_s "$t")
    printf '%-34s %-12s %5s %10.3f %10.3f %7.2f %10.0f %10.0f\n' "$model" "$task" "$res" "$bs" "$ts" "$("$PY" -c "print($bs/$ts)")" "$(field peak_rss_mib "$b")" "$(field peak_rss_mib "$t")"
    echo "  burn:  $b" >&2
    echo "  torch: $t" >&2
  done
done
