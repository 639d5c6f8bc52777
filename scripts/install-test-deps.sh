#!/usr/bin/env bash
# Installs what the test suite needs and the machine lacks. Idempotent: a
# second run installs nothing. Used by scripts/test.sh (and so by .ci/run).
set -euo pipefail

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Redis: the Redis store's tests start their own redis-server processes.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package redis-server)"
  apt_install redis-server
  # The package starts a system-wide server; the tests start their own.
  (service redis-server stop || true) >/dev/null 2>&1
fi

# The browser test (tests/browser/): Debian's Chromium, driven by
# playwright-core from npm (which never downloads a browser of its own).
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (Debian package chromium)"
  apt_install chromium
fi
# The Firebase Web SDK test (same directory): firebase-tools (its Auth
# emulator) and firebase (the Web SDK). All are kept in tests/browser/
# node_modules, installed again only when one is missing or the lock file
# changed since.
browser_tests="$(dirname "$0")/../tests/browser"
installed="$browser_tests/node_modules/.package-lock.json"
for package in playwright-core firebase firebase-tools; do
  if [ ! -d "$browser_tests/node_modules/$package" ] || [ "$browser_tests/package-lock.json" -nt "$installed" ]; then
    echo "installing the node tests' npm packages (tests/browser/package-lock.json)"
    (cd "$browser_tests" && npm ci --no-audit --no-fund)
    break
  fi
done

# The Firestore tests start Google's Firestore emulator (a jar run by java);
# it cannot be fetched from here, so say what to install.
jar=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
if [ ! -f "$jar" ] || ! command -v java >/dev/null 2>&1; then
  echo "The Firestore tests need Google's Firestore emulator ($jar) and java." >&2
  echo "Install the Debian package google-cloud-cli-firestore-emulator (it brings a JDK)." >&2
  exit 1
fi
