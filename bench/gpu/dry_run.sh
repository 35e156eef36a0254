#!/usr/bin/env bash
# The GPU benchmark's dry run on this CPU machine: bench/gpu/run.sh end to end, from the real
# bundle (.gpu/: its wheels, tokenizer and manifest), with the two GPU-only pieces swapped for
# CPU ones — MLX's CPU library tree and a CPU build of wuwei — a tiny model and short runs.
# Everything but the GPU itself is exercised; run it whenever bench/gpu/ changes. The model is
# float32 and Wuwei keeps the 4-bit weights native, so both sides compute the same thing on
# this CPU and the agreement check must find every token equal (as on the GPU, bf16 for both).
#
#   bash bench/gpu/dry_run.sh            results in .gpu-dry/out/ (git-ignored)
#
# Needs: the bundle (bench/gpu/bundle.sh), python3.12 (the GPU machine's version; its venv with
# numpy, transformers and aiohttp is made here, as that machine has them), a CPU wuwei
# (CPU_WUWEI, default target/debug/wuwei from a CPU checkout's `cargo build`); its libmlx is the
# CPU tree packed for the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
D=$ROOT/.gpu-dry
BD=${BUNDLE_DIR:-$ROOT/.gpu}
CPU_WUWEI=${CPU_WUWEI:-$ROOT/target/debug/wuwei}
log() { printf '\033[1m[dry-run]\033[0m %s\n' "$*" >&2; }
[ -f "$BD/MANIFEST.json" ] || { log "no bundle at $BD: run bench/gpu/bundle.sh"; exit 1; }
[ -x "$CPU_WUWEI" ] || { log "no CPU wuwei at $CPU_WUWEI (set CPU_WUWEI)"; exit 1; }
lib=$(ldd "$CPU_WUWEI" | awk '/libmlx\.so/ {print $3}')
[ -f "$lib" ] || { log "$CPU_WUWEI does not resolve libmlx.so"; exit 1; }
if grep -q libcuda.so "$lib"; then log "$lib is a CUDA build: the dry run needs a CPU one"; exit 1; fi
mkdir -p "$D"

# The machine's Python: 3.12 with numpy, transformers (tokenizers) and aiohttp, no MLX.
if [ ! -x "$D/venv/bin/python" ]; then
  py=${PY312:-python3.12}
  if ! "$py" -c pass 2>/dev/null; then  # pyenv's shim refuses a version not selected
    py=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
  fi
  [ -n "$py" ] || { log "no python3.12 (set PY312)"; exit 1; }
  log "$py venv with numpy, transformers, aiohttp, jinja2 (torch brings it there)"
  "$py" -m venv "$D/venv"
  "$D/venv/bin/python" -m pip install -q --disable-pip-version-check numpy transformers aiohttp jinja2
fi

log "CPU MLX tree from $(dirname "$lib")"
site=$(dirname "$(dirname "$(dirname "$lib")")")
rm -rf "$D/tree" && mkdir -p "$D/tree/mlx/lib"
cp "$lib" "$D/tree/mlx/lib/"
for libs in "$site"/mlx_*.libs; do [ -d "$libs" ] && cp -r "$libs" "$D/tree/"; done
tar -C "$D/tree" -cf - . | xz -1 -T2 >"$D/mlx_cpu_tree.tar.xz"

rm -rf "$D/out"
log "bench/gpu/run.sh with a tiny model"
OUT=$D/out PYTHON=$D/venv/bin/python MLX_TREE_TAR=$D/mlx_cpu_tree.tar.xz WUWEI_BIN=$CPU_WUWEI \
  WORK=$D/work TOTAL_S=${TOTAL_S:-420} \
  MODEL_ARGS="--hidden 128 --layers 2 --heads 4 --kv-heads 2 --intermediate 256 --context 2048 --dtype float32" \
  BENCH_ARGS="--short-tokens 64 --long-tokens 400 --k-short 32 --k-long 16 --agree-prompt-tokens 32 \
--agree-tokens 16 --levels 1,4 --stream-tokens 16 --rounds 2 --reserve-serve 90 --step-timeout 60 \
--weights native ${DRY_BENCH_ARGS:-}" \
  bash bench/gpu/run.sh "$BD"
log "results: $D/out (results.json, results.md, run.log)"
