#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust unit and integration tests (parity with
# mlx-lm on real and random-weight models; the menu-bar app's logic, and its client and
# controller against the real daemon), then the end-to-end tests that drive the real
# daemon with the real model through the official client SDKs, the dashboard in Chromium,
# the menu-bar app under Xvfb, and a type check of the app's macOS-only code.
#
# The GPU configuration (activations in the checkpoint's dtype, quantized weights as stored)
# runs here on the CPU as well, against mlx-lm in the same dtype: bf16/fp16 checkpoints in
# engine/tests/arch_parity.rs, SmolLM2 in bf16 through the engine in
# engine/tests/half_precision.rs, and the daemon with WUWEI_ACTIVATIONS=checkpoint in
# tests/e2e/test_half_precision.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export WUWEI_SETUP_TEST=1
bash scripts/setup.sh
# shellcheck source=scripts/openblas-core.sh
source scripts/openblas-core.sh

# Each step says how long the run has taken so far (CI's time limit is the budget to watch).
step() { printf '\n\033[1m== %s\033[0m  (%dm%02ds in)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }
trap 'printf "\n== done or stopped after %dm%02ds\n" $((SECONDS / 60)) $((SECONDS % 60))' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

# Every proc macro builds unoptimized in the dev profile (Cargo.toml lists them by name: a new
# dependency's would quietly build at opt-level 2 and slow CI's clean build).
step "proc macros unoptimized"
.venv/bin/python scripts/check_proc_macros.py

# Clippy lints every workspace crate as it is built for the tests below, with warnings as
# errors: clippy-driver as the workspace's rustc wrapper, as `cargo clippy` itself runs it
# (CLIPPY_ARGS is how cargo-clippy hands it its flags). The builds below cover every target
# `cargo clippy --workspace --all-targets` checks (libraries, binaries, tests, examples). A
# separate `cargo clippy` pass type-checks every dependency once more, apart from the build:
# on a clean clone here (2 cores) the tests started 7 minutes sooner without it (25m04s ->
# 17m58s). A later plain `cargo build` rebuilds the workspace's own crates once: the wrapper
# is part of their fingerprint.
step "clippy as the build's rustc wrapper (warnings are errors)"
CLIPPY_DRIVER=$(command -v clippy-driver || echo "$(dirname "$(rustup which cargo)")/clippy-driver")
export RUSTC_WORKSPACE_WRAPPER=$CLIPPY_DRIVER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
"$CLIPPY_DRIVER" --version

# The dashboard's TypeScript types are generated from the admin API's Rust types: the
# checked-in file must be what they generate now.
step "ui/src/api-types.ts is what api/src/types.rs generates"
cargo test -p wuwei-api --lib typescript_types_are_current

# The models the tests serve: the embedded default model as GGUF and converted by `wuwei convert`.
# (This also builds target/debug/wuwei-app, which the app's tests below run.)
step "test models"
cargo build --bins
MODELS=$ROOT/.deps/test-models
mkdir -p "$MODELS"
ln -sfn "$ROOT/.deps/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODELS/SmolLM2-135M-Instruct/config.json" ] ||
  target/debug/wuwei convert "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/SmolLM2-135M-Instruct"

# The test binaries two at a time (scripts/test_lanes.py: most leave a core idle alone), then
# the doc tests; the whole output is also in .deps/cargo-test.log.
step "cargo test (two binaries at a time)"
cargo test --workspace --no-run --message-format=json-render-diagnostics |
  .venv/bin/python scripts/test_lanes.py --jobs 2 --log .deps/cargo-test.log
cargo test --workspace --doc

# The macOS-only code (login item, activation policy) is only ever type-checked here: objc2's
# build wants a C compiler for Apple targets, and the stand-in makes empty objects (nothing is
# linked). Clippy rather than check: the same cost, and the lints too. It checks the app's
# whole dependency tree for that target (3.6 min of both cores on a clean clone), so it runs
# in the background at the lowest priority while the tests below mostly wait (daemons
# starting, kill -9 lives, SSD writes, the CLIs' and the browser's start-up); nothing below
# runs cargo. Its output is in .deps/clippy-macos.log.
step "clippy of the app for aarch64-apple-darwin starts in the background"
CC_aarch64_apple_darwin="$ROOT/scripts/fake-apple-cc" AR_aarch64_apple_darwin=ar \
  nice -n 19 cargo clippy --target aarch64-apple-darwin -p wuwei-app -- -D warnings \
  >.deps/clippy-macos.log 2>&1 &
MACOS_CLIPPY=$!

# Two workers, a test file each at a time (module fixtures stay single): much of these tests'
# time is waiting — daemons starting, kill -9 lives, SSD writes, the CLIs' Node start-up — so
# two share CI's two cores well; with one BLAS thread per daemon, as OpenBLAS's spinning
# threads otherwise oversubscribe the cores (measured: 12.5 min one at a time, 9 min in two,
# 7.4 min in two with one BLAS thread each).
step "end-to-end tests (pytest, two workers)"
export WUWEI_BIN=$ROOT/target/debug/wuwei WUWEI_TEST_MODELS=$MODELS
OPENBLAS_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=12 tests/e2e

step "dashboard (vitest + headless Chromium against the real daemon)"
WUWEI_BIN="$ROOT/target/debug/wuwei" tests/ui/run.sh

step "menu-bar app under Xvfb (trayer as tray host; real daemon; screenshots in artifacts/app/)"
WUWEI_APP_BIN="$ROOT/target/debug/wuwei-app" .venv/bin/python -m pytest -q tests/app

step "clippy of the app for aarch64-apple-darwin (type-checks the macOS-only code)"
if ! wait "$MACOS_CLIPPY"; then
  cat .deps/clippy-macos.log
  exit 1
fi
tail -n 3 .deps/clippy-macos.log
