#!/usr/bin/env bash
# Builds the folder that scripts/gpu-check.sh needs on a GPU machine where nothing can be built
# or downloaded: a stripped, gzipped `dcae` (CUDA + wgpu: the default features), the fixtures the
# parity checks read, and the check script itself. Everything stays under 64 MiB, the most a
# device run can carry. Run it here, from the repository:
#
#   scripts/make-gpu-bundle.sh            # -> gpu-bundle/ (ignored through .git/info/exclude)
#   scripts/make-gpu-bundle.sh --no-build # reuse the dcae binary already built
#
# The binary is the debug profile the tests use (dependencies at opt-level 3, the crate at the
# level given below): a release build of burn + cubecl costs ~40 min on 2 cores, and the GPU
# kernels (the hot path there) are compiled at run time either way.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=gpu-bundle
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --out=*) OUT="${arg#--out=}" ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dcae-studio/target}"
BIN="$CARGO_TARGET_DIR/debug/dcae"
if [ "$BUILD" = 1 ]; then
  # The same profile flags as the test builds, so the dependencies are not rebuilt.
  nice -n 10 cargo build --locked \
    --config 'profile.dev.package.dcae-studio.opt-level=1' \
    --config 'profile.dev.package.dcae-studio.codegen-units=16' \
    --bin dcae
fi
[ -x "$BIN" ] || { echo "no $BIN: build it first (drop --no-build)" >&2; exit 1; }
if ! "$BIN" parity --help >/dev/null 2>&1; then
  echo "$BIN has no \`parity\` command: rebuild it from this checkout" >&2; exit 1
fi
# The bundle must run CUDA: a binary built without the `cuda` feature would only skip it there.
if ! grep -q 'libnvrtc.so' "$BIN"; then
  echo "$BIN was built without the cuda feature: rebuild it with the default features (they include cuda)" >&2; exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT/fixtures"
# Stripped (debug info is most of the 370 MB) and gzipped: 56 MB stripped would leave too little
# room beside the working tree that a device run carries too; gpu-check.sh unpacks it.
strip -o "$OUT/dcae" "$BIN"
stripped=$(stat -c %s "$OUT/dcae")
gzip -9 "$OUT/dcae"
cp scripts/gpu-check.sh scripts/real-size-check.sh "$OUT/"

# Only what `dcae parity` reads (src/cli/parity.rs): the tiny models and their goldens.
copy() { mkdir -p "$OUT/fixtures/$(dirname "$1")"; cp "tests/fixtures/$1" "$OUT/fixtures/$1"; }
for case in ae-tiny-in ae-tiny-sana uvit-tiny; do
  for f in config.json model.safetensors expected.safetensors; do copy "$case/$f"; done
done
copy sana-tiny/expected.safetensors
for t in transformer sprint/transformer; do
  for f in config.json diffusion_pytorch_model.safetensors; do copy "sana-tiny/$t/$f"; done
done
for f in config.json model.safetensors; do copy "sana-tiny/text_encoder/$f"; done
git rev-parse HEAD > "$OUT/COMMIT" 2>/dev/null || true

# Keep the bundle out of `git status` without touching the shared .gitignore.
exclude="$(git rev-parse --git-path info/exclude 2>/dev/null || true)"
if [ -n "$exclude" ] && ! grep -qx "/$OUT/" "$exclude" 2>/dev/null; then
  mkdir -p "$(dirname "$exclude")" && echo "/$OUT/" >> "$exclude"
fi

mib() { echo "$(( ($1 + 1048575) / 1048576 )) MiB"; }
total=$(du -sb "$OUT" | cut -f1)
echo "dcae: $(mib "$(stat -c %s "$BIN")") unstripped, $(mib "$stripped") stripped, $(mib "$(stat -c %s "$OUT/dcae.gz")") gzipped"
echo "$OUT: $(mib "$total") in all ($total bytes)"
if [ "$total" -ge $((64 * 1048576)) ]; then
  echo "the bundle is over 64 MiB: a device run cannot carry it" >&2; exit 1
fi
