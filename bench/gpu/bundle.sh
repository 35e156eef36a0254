#!/usr/bin/env bash
# Makes, here, the bundle bench/gpu/run.sh measures from on a borrowed GPU machine (which has
# no network and no Rust, and gets at most ~60 MiB copied to it): .gpu/ (git-ignored).
#
#   WUWEI_MLX_BACKEND=cuda ./scripts/setup.sh      # once: this checkout on MLX's CUDA backend
#   bash bench/gpu/bundle.sh
#
# .gpu/ then holds:
#   wuwei.xz          the release binary built against the mlx-cuda-13 wheel, stripped
#   mlx_tree.tar.xz   that wheel's libmlx (cubins for ARCHS only: fatbin_prune.py), its bundled
#                     libraries and headers (MLX's NVRTC kernels include cccl from them)
#   wheels/           mlx (the Python bindings, cp312) and mlx-lm, for the reference side
#   tok/              SmolLM2's tokenizer files (the random model made there uses them)
#   MANIFEST.json     what was built, from which commit
#
# Environment: ARCHS (SM architectures to keep, default "90": H100/H200), PY_VERSION (the GPU
# machine's Python, default 3.12), CARGO_TARGET_DIR (default target-cuda, so a CPU build's
# target/ stays as it is), BUNDLE_DIR (default .gpu), TOK_DIR (a folder with tokenizer.json).
# For the CPU dry run (bench/gpu/dry_run.sh): WUWEI_BIN packs that binary instead of building,
# MLX_SITE packs the MLX tree of that site-packages instead of .deps/mlx's.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BD=${BUNDLE_DIR:-$ROOT/.gpu}
ARCHS=${ARCHS:-90}
PY_VERSION=${PY_VERSION:-3.12}
MLX_VERSION=0.32.2
MLX_LM_VERSION=0.32.2
MAX_MIB=60
log() { printf '\033[1m[bundle]\033[0m %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

SITE=${MLX_SITE:-$(dirname "$(readlink -f .deps/mlx 2>/dev/null || echo /nonexistent/mlx)")}
[ -f "$SITE/mlx/lib/libmlx.so" ] || die "no MLX at $SITE: run WUWEI_MLX_BACKEND=cuda ./scripts/setup.sh first"
cuda=0
# The same test engine/build.rs makes: the CUDA wheel's CMake config turns its CUDA part on.
grep -A1 -E '^if\(ON\)' "$SITE/mlx/share/cmake/MLX/MLXConfig.cmake" 2>/dev/null | grep -q 'find_dependency(CUDAToolkit' && cuda=1
if [ -z "${WUWEI_BIN:-}" ] && [ "$cuda" != 1 ]; then
  die "$SITE/mlx is not MLX's CUDA build: run WUWEI_MLX_BACKEND=cuda ./scripts/setup.sh first"
fi

rm -rf "$BD" && mkdir -p "$BD/wheels" "$BD/tok"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# --- wuwei ----------------------------------------------------------------------------------
BIN=${WUWEI_BIN:-}
if [ -z "$BIN" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
  log "cargo build --release --bin wuwei (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  cargo build --release --bin wuwei
  BIN=$CARGO_TARGET_DIR/release/wuwei
fi
strip -o "$STAGE/wuwei" "$BIN"
xz -9 -T2 -c "$STAGE/wuwei" >"$BD/wuwei.xz"
log "wuwei: $(du -h "$BD/wuwei.xz" | cut -f1)"

# --- MLX's library tree ------------------------------------------------------------------------
mkdir -p "$STAGE/tree/mlx/lib"
log "libmlx: strip, keep the cubins of sm ${ARCHS}"
strip --strip-unneeded -o "$STAGE/libmlx.so" "$SITE/mlx/lib/libmlx.so"
# shellcheck disable=SC2086
python3 bench/gpu/fatbin_prune.py "$STAGE/libmlx.so" "$STAGE/tree/mlx/lib/libmlx.so" $ARCHS
[ -d "$SITE/mlx/include" ] && [ "$cuda" = 1 ] && cp -r "$SITE/mlx/include" "$STAGE/tree/mlx/"
for libs in "$SITE"/mlx_*.libs; do [ -d "$libs" ] && cp -r "$libs" "$STAGE/tree/"; done
log "xz of the MLX tree ($(du -sh "$STAGE/tree" | cut -f1))"
tar -C "$STAGE/tree" -cf - . | xz -9 -T2 >"$BD/mlx_tree.tar.xz"
log "mlx_tree.tar.xz: $(du -h "$BD/mlx_tree.tar.xz" | cut -f1)"

# --- wheels for the machine's Python ------------------------------------------------------------
log "pip download mlx==$MLX_VERSION (cp${PY_VERSION/./}) and mlx-lm==$MLX_LM_VERSION"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --platform manylinux_2_35_x86_64 -d "$BD/wheels" \
  "mlx==$MLX_VERSION" "mlx-lm==$MLX_LM_VERSION"

# --- tokenizer ----------------------------------------------------------------------------------
tok=""
for d in ${TOK_DIR:-} .deps/test-models/SmolLM2-135M-Instruct \
  "${XDG_DATA_HOME:-$HOME/.local/share}/wuwei/models/SmolLM2-135M-Instruct"; do
  [ -f "$d/tokenizer.json" ] && { tok=$d; break; }
done
if [ -z "$tok" ]; then
  # Convert the default model's GGUF with a wuwei that runs here (a CPU build: a CUDA build
  # needs the GPU driver to start).
  for b in target/debug/wuwei target/release/wuwei "${WUWEI_BIN:-}"; do
    if [ -x "$b" ] && "$b" convert .deps/SmolLM2-135M-Instruct.Q4_1.gguf "$STAGE/smollm2" >/dev/null 2>&1; then
      tok=$STAGE/smollm2
      break
    fi
  done
fi
[ -n "$tok" ] || die "no SmolLM2 tokenizer: set TOK_DIR, or run scripts/serve.sh or scripts/test.sh once (CPU build)"
log "tokenizer from $tok"
for f in "$tok"/tokenizer*.json "$tok"/special_tokens_map.json "$tok"/generation_config.json; do
  [ -f "$f" ] && cp "$f" "$BD/tok/"
done

# --- manifest and size --------------------------------------------------------------------------
python3 - "$BD/MANIFEST.json" <<EOF
import json, os, subprocess, sys, time
def git(*a):
    return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
files = {}
for d, _, fs in os.walk("$BD"):
    for f in fs:
        p = os.path.join(d, f)
        files[os.path.relpath(p, "$BD")] = os.path.getsize(p)
json.dump({"created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
           "describe": git("describe", "--always", "--dirty"),
           "mlx_backend": "cuda" if $cuda else "cpu", "archs": "$ARCHS", "python": "$PY_VERSION",
           "wuwei_bin": "${WUWEI_BIN:-built}", "files": files}, open(sys.argv[1], "w"), indent=1)
EOF
bytes=$(du -sb "$BD" | cut -f1)
log "bundle: $BD, $((bytes / 1048576)) MiB ($bytes bytes)"
[ "$bytes" -le $((MAX_MIB * 1048576)) ] || die "bundle over ${MAX_MIB} MiB"
log "on the GPU machine, from the repository root with OUT set: bash bench/gpu/run.sh (bench/gpu/README.md)"
