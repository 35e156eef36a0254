#!/usr/bin/env bash
# Checks the README's CUDA build on a fresh checkout: a clean clone of this repository's HEAD
# (commits only), `WUWEI_MLX_BACKEND=cuda ./scripts/setup.sh`, then the README's build command,
# with nothing set by hand; then what can be checked of the binary without a GPU. Not in CI:
# it downloads ~2.4 GB of NVIDIA wheels and compiles for ~10 minutes on 2 cores. Run it
# whenever scripts/setup.sh, .cargo/config.toml, engine/build.rs, patches/ or the MLX pin change.
#
#   scripts/check-cuda-build.sh [DIR]     (default: a new temporary folder; KEEP=1 keeps it)
#
# Checks: the build succeeds; the binary needs libmlx and not OpenBLAS; every library it needs
# resolves (the GPU driver's libcuda.so.1 from the system, or a stand-in built here when there
# is no driver); `wuwei --version` runs; the headers MLX's run-time kernel compiler (NVRTC)
# includes are where MLX looks for them; and, where there is no GPU, that a generation fails
# cleanly.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
T0=$(date +%s)
DIR=${1:-$(mktemp -d /tmp/wuwei-cuda-check.XXXXXX)}
log() { printf '\033[1m[check-cuda]\033[0m +%ss %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
FAILED=()
check() { # check NAME COMMAND...: runs it, records a failure, goes on
  local name=$1
  shift
  if "$@"; then log "ok: $name"; else log "FAILED: $name"; FAILED+=("$name"); fi
}

log "clean clone of $(git -C "$SRC" rev-parse --short HEAD) into $DIR/wuwei"
rm -rf "$DIR/wuwei" && mkdir -p "$DIR"
git clone -q "$SRC" "$DIR/wuwei"
cd "$DIR/wuwei"
# Nothing from the calling shell may stand in for what the checkout must provide.
unset CARGO_TARGET_DIR MLX_SYS_MLX_DIR CUDAToolkit_ROOT CUDA_HOME CUDA_PATH CMAKE_PREFIX_PATH \
  LIBCLANG_PATH CMAKE WUWEI_OPENBLAS LD_LIBRARY_PATH

log "WUWEI_MLX_BACKEND=cuda ./scripts/setup.sh"
WUWEI_MLX_BACKEND=cuda ./scripts/setup.sh
log "cargo build --release --bin wuwei"
cargo build --release --bin wuwei
BIN=$PWD/target/release/wuwei
log "built: $(du -h "$BIN" | cut -f1)"
SITE=$(dirname "$(readlink -f .deps/mlx)")

needed() { readelf -d "$BIN" | grep NEEDED; }
check "the binary needs libmlx" sh -c "readelf -d '$BIN' | grep -q 'NEEDED.*libmlx.so'"
check "no OpenBLAS in the CUDA build" sh -c "! readelf -d '$BIN' | grep -qi openblas"
needed

# libcuda.so.1 comes with the GPU driver. Without one, a stand-in exporting the driver
# functions libmlx calls (each failing with CUDA_ERROR_NO_DEVICE) lets the binary load.
STUB=""
if ! ldconfig -p | grep -q 'libcuda.so.1 '; then
  STUB=$DIR/stub
  mkdir -p "$STUB"
  nm -D --undefined-only "$SITE/mlx/lib/libmlx.so" | awk '$2 ~ /^cu[A-Z]/ {print "int " $2 "(void) { return 100; }"}' >"$STUB/cuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so.1" "$STUB/cuda.c"
  log "no GPU driver here: stand-in libcuda.so.1 with $(wc -l <"$STUB/cuda.c") functions"
fi
run() { LD_LIBRARY_PATH=${STUB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$@"; }
check "every library resolves" sh -c "! LD_LIBRARY_PATH='$STUB' ldd '$BIN' | grep 'not found'"
run ldd "$BIN" | grep -E 'libmlx|libcu|libnvrtc|libnccl|libcudnn' || true
check "wuwei --version" run "$BIN" --version
check "NVRTC headers next to libmlx (site-packages/nvidia/cu13/include)" \
  test -f "$SITE/nvidia/cu13/include/cuda_runtime.h" -a -f "$SITE/nvidia/cu13/include/crt/host_config.h" \
  -a -d "$SITE/mlx/include/cccl"
check "setup's toolkit tree for CMake (.deps/cuda)" \
  test -f .deps/cuda/version.json -a -e .deps/cuda/lib/libcudart.so -a -f .deps/cuda/include/cudnn.h

# Without a GPU there is no CPU fallback to run: MLX's CUDA build allocates every array through
# CUDA (unified memory), so loading the model fails. That failure must be an error message
# (MLX's "CUDA driver version is insufficient..."), not a crash or a hang.
if [ -n "$STUB" ]; then
  log "no GPU: a generation should fail cleanly"
  set +e
  out=$(run timeout 120 "$BIN" generate --model .deps/SmolLM2-135M-Instruct.Q4_1.gguf --prompt hi --max-tokens 4 2>&1)
  rc=$?
  set -e
  echo "$out" | grep -m2 -E '^Error|error' || echo "$out" | tail -5
  log "generate without a GPU: exit $rc"
  check "generation without a GPU ends with an error, not a crash or hang" test "$rc" -ge 1 -a "$rc" -lt 124
fi

log "$(( $(date +%s) - T0 ))s in all"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAIL: ${FAILED[*]} (the checkout is kept in $DIR/wuwei)"
  exit 1
fi
log "PASS: the CUDA build works from the README on a fresh checkout"
[ "${KEEP:-0}" = 1 ] || [ -n "${1:-}" ] || rm -rf "$DIR"
