#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust unit and integration tests (parity with
# mlx-lm on real and random-weight models), then the end-to-end tests that drive the real
# daemon with the real model through the official client SDKs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export WUWEI_SETUP_TEST=1
bash scripts/setup.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The models the tests serve: the embedded default model as GGUF and converted by `wuwei convert`.
step "test models"
cargo build --bins
MODELS=$ROOT/.deps/test-models
mkdir -p "$MODELS"
ln -sfn "$ROOT/.deps/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODELS/SmolLM2-135M-Instruct/config.json" ] ||
  target/debug/wuwei convert "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/SmolLM2-135M-Instruct"

step "cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee .deps/cargo-test.log

step "end-to-end tests (pytest)"
export WUWEI_BIN=$ROOT/target/debug/wuwei WUWEI_TEST_MODELS=$MODELS
.venv/bin/python -m pytest -q tests/e2e

step "dashboard (vitest + headless Chromium against the real daemon)"
WUWEI_BIN="$ROOT/target/debug/wuwei" tests/ui/run.sh
