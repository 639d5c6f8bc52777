#!/usr/bin/env bash
# Runs the whole test suite: unit, integration (against real servers the
# tests start themselves) and doc tests, with every feature. Installs what is
# missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo test --all-features --locked "$@"

# The demo's page in headless Chromium (tests/browser/): reuses the demo that
# cargo test just built; screenshots and logs in target/browser-screenshots/.
(cd tests/browser && node --test)
