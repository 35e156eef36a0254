#!/usr/bin/env bash
# Measures Wuwei against mlx-lm on a borrowed GPU machine, in one command, from the bundle that
# bench/gpu/bundle.sh made here (.gpu/). On the GPU machine, from the repository root, with OUT
# set to the folder whose files come back:
#
#   bash bench/gpu/run.sh [BUNDLE_DIR]          (default: .gpu)
#
# The machine: x86_64, one NVIDIA GPU, Python 3.12 with numpy, transformers (tokenizers) and
# aiohttp and the NVIDIA CUDA 13 wheels in its site-packages; no network, no Rust.
# Writes $OUT/run.log, $OUT/results.json, $OUT/results.md (the table: bench/gpu/report.py puts
# it into docs/BENCHMARKS.md here) and the servers' logs. Every stage has a timeout inside
# TOTAL_S, and results.json is rewritten after each measurement, so a run cut short still
# brings back what it measured.
#
# Overrides (the CPU dry run, bench/gpu/dry_run.sh, uses them; leave them unset on the GPU):
#   PYTHON        the Python to use (default python3)
#   MLX_TREE_TAR  a .tar.xz of the MLX library tree to use instead of the bundle's
#   WUWEI_BIN     a wuwei binary to use instead of the bundle's
#   MODEL_ARGS    extra make_model.py arguments (e.g. a tiny model)
#   BENCH_ARGS    extra bench.py arguments
#   EXPECT_GPU    1: stop unless MLX's default device is a GPU (default: 1 when nvidia-smi exists)
#   TOTAL_S       the whole run's budget in seconds (default 440)
#   WORK          scratch folder (default /tmp/wuwei-gpu)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
B=$(cd "${1:-$HERE/../../.gpu}" 2>/dev/null && pwd) || { echo "no bundle at ${1:-.gpu}: run bench/gpu/bundle.sh" >&2; exit 2; }
: "${OUT:?OUT must be set: the folder the results go to}"
mkdir -p "$OUT"
W=${WORK:-/tmp/wuwei-gpu}
ST=$W/site
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-440}
if [ -z "${EXPECT_GPU:-}" ]; then
  if command -v nvidia-smi >/dev/null; then EXPECT_GPU=1; else EXPECT_GPU=0; fi
fi
START=$(date +%s)
export PYTHONUNBUFFERED=1

say() { echo "[run +$(($(date +%s) - START))s] $*"; }
left() { echo $((TOTAL_S - ($(date +%s) - START))); }
# Stage timeout: at most $1 seconds, and never past the budget.
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo $((l > 5 ? l : 5)); }
fatal() { # keeps results.json meaningful when the run stops early
  say "FATAL: $1"
  [ -f "$OUT/results.json" ] || printf '{"fatal": "%s", "errors": ["%s"]}\n' "$1" "$1" >"$OUT/results.json"
  return "${2:-2}"
}

main() {
  say "start on $(hostname), bundle $B, budget ${TOTAL_S}s"
  cat "$B/MANIFEST.json" 2>/dev/null
  rm -rf "$W" && mkdir -p "$W/models" "$ST"
  if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 | head -20; else say "no nvidia-smi"; fi
  $PY -c 'import sys; print("python", sys.version.split()[0], sys.executable)'

  # --- Python packages (mlx bindings, mlx-lm), then MLX's library tree over them -------------
  say "installing the wheels into $ST"
  timeout "$(cap 120)" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$ST" "$B"/wheels/*.whl || { fatal "pip install failed"; return; }
  export PYTHONPATH=$ST
  local tree=${MLX_TREE_TAR:-$B/mlx_tree.tar.xz}
  [ -f "$tree" ] || { fatal "no MLX library tree at $tree"; return; }
  say "unpacking $(basename "$tree")"
  timeout "$(cap 120)" $PY - "$tree" "$ST" <<'EOF' || { fatal "unpacking the MLX tree failed"; return; }
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as t:
    t.extractall(sys.argv[2], **({"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}))
EOF
  if [ -n "${WUWEI_BIN:-}" ]; then
    cp "$WUWEI_BIN" "$W/wuwei"
  else
    $PY -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$B/wuwei.xz" "$W/wuwei" || { fatal "unpacking wuwei failed"; return; }
  fi
  chmod +x "$W/wuwei"

  # --- libraries: libmlx, then every nvidia/*/lib of this Python (the CUDA 13 wheels) ---------
  local nv
  nv=$($PY - <<'EOF'
import os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(os.path.join(r, d, "lib") for r in roots for d in sorted(os.listdir(r))
               if os.path.isdir(os.path.join(r, d, "lib"))))
EOF
)
  export LD_LIBRARY_PATH="$ST/mlx/lib${nv:+:$nv}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  # MLX compiles some kernels at run time (NVRTC) and needs the CUDA headers: it looks next to
  # libmlx (site-packages/nvidia/cu13/include), then in CUDA_HOME/include, then
  # /usr/local/cuda/include. Here libmlx is not beside the NVIDIA wheels: name their headers.
  if [ -z "${CUDA_HOME:-}" ] && [ ! -f /usr/local/cuda/include/cuda_runtime.h ]; then
    local c
    for c in $(echo "$nv" | tr ':' '\n' | sed 's#/lib$##'); do
      if [ -f "$c/include/cuda_runtime.h" ]; then export CUDA_HOME=$c; break; fi
    done
  fi
  say "CUDA_HOME=${CUDA_HOME:-unset}"
  ldd "$W/wuwei" | grep -E "not found|libmlx|libcuda|libcublas|libnvrtc|libcudnn|openblas" || true
  "$W/wuwei" --version || { fatal "wuwei does not start" 3; return; }

  # --- MLX self-test: stops early when the carried libmlx does not run here -------------------
  say "MLX self-test (the first run compiles kernels)"
  local expect=""
  [ "$EXPECT_GPU" = 1 ] && expect=--expect-gpu
  timeout "$(cap 150)" $PY "$HERE/selftest.py" $expect || { fatal "MLX self-test failed (see above)" 3; return; }

  # --- the models, made here ------------------------------------------------------------------
  say "making the bf16 model"
  local params
  # shellcheck disable=SC2086
  params=$(timeout "$(cap 120)" $PY "$HERE/make_model.py" --out "$W/models/bf16" --tok "$B/tok" ${MODEL_ARGS:-}) ||
    { fatal "make_model.py failed" 4; return; }
  echo "$params"
  say "quantizing it to 4 bits with mlx_lm convert -q"
  timeout "$(cap 180)" $PY -m mlx_lm convert --hf-path "$W/models/bf16" --mlx-path "$W/models/q4" -q 2>&1 | tail -3
  [ -f "$W/models/q4/config.json" ] || { fatal "mlx_lm convert failed" 4; return; }
  # Only the 4-bit model is measured: the servers get a folder holding just it.
  mkdir -p "$W/serve" && mv "$W/models/q4" "$W/serve/q4" && rm -rf "$W/models/bf16"
  du -sh "$W/serve/q4"

  # --- measurements -----------------------------------------------------------------------------
  local budget=$(($(left) - 15))
  say "bench.py, budget ${budget}s"
  # shellcheck disable=SC2086
  timeout $((budget + 20)) $PY "$HERE/bench.py" --wuwei "$W/wuwei" --q4 "$W/serve/q4" --out-dir "$OUT" \
    --work "$W" --budget-s "$budget" --manifest "$B/MANIFEST.json" \
    --params "$(echo "$params" | grep -o '[0-9.]*B parameters' | head -1)" ${BENCH_ARGS:-}
  local st=$?
  say "bench.py exit $st"
  if [ "$st" != 0 ]; then # e.g. 124: stopped at the budget; the table says so
    $PY - "$OUT/results.json" "$st" <<'EOF'
import json, sys
p = sys.argv[1]
try:
    r = json.load(open(p))
except (OSError, ValueError):
    r = {"errors": []}
r.setdefault("errors", []).append(f"bench.py exit {sys.argv[2]}" + (" (stopped at the time budget)" if sys.argv[2] == "124" else ""))
json.dump(r, open(p, "w"), indent=1)
EOF
  fi
}

main 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
# Whatever came out, as a table, and the servers' logs.
[ -f "$OUT/results.json" ] && ${PYTHON:-python3} "$HERE/report.py" --render "$OUT/results.json" >"$OUT/results.md" 2>>"$OUT/run.log"
cp "${WORK:-/tmp/wuwei-gpu}"/server-*.log "$OUT/" 2>/dev/null
cat "$OUT/results.md" 2>/dev/null
echo "[run] done, exit $rc; files in OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
