#!/usr/bin/env bash
# Builds the dashboard (ui/), runs its unit tests, then drives it in headless Debian Chromium
# against the real daemon and test model (tests/ui/dashboard.test.mjs).
# Screenshots and the daemon's log land in artifacts/ui/.
#
#   tests/ui/run.sh                      # builds target/debug/wuwei if WUWEI_BIN is unset
#   WUWEI_BIN=/path/to/wuwei tests/ui/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  # Playwright cannot download browsers here; Debian's chromium is the one we drive.
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

(cd ui && npm ci --no-audit --no-fund && npm test && npm run build)
(cd tests/ui && npm ci --no-audit --no-fund)

if [ -z "${WUWEI_BIN:-}" ]; then
  cargo build --bin wuwei
fi

node --test --test-reporter=spec tests/ui/dashboard.test.mjs
