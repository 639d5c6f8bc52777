#!/usr/bin/env bash
# Runs the whole test suite: unit, integration (against real servers the
# tests start themselves) and doc tests, with every feature. Installs what is
# missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo test --all-features --locked "$@"

# The node tests (tests/browser/), reusing the demo that cargo test just
# built: the demo's page in headless Chromium (screenshots and logs in
# target/browser-screenshots/), and the Firebase Web SDK against the Auth and
# Firestore emulators (logs in target/firebase-web-sdk/).
(cd tests/browser && node --test)
