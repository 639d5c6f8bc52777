#!/usr/bin/env bash
# Runs the whole product on this machine: a redis-server, Google's Firestore
# emulator, and the demo server wired to both (Redis decides, Firestore keeps
# users/{uid}). Ctrl-C stops everything this script started.
#
#   bash scripts/full-stack.sh                      # demo on http://127.0.0.1:8080
#   bash scripts/full-stack.sh --refill-period 30s  # extra flags go to the demo
#
# Ports: REDIS_PORT (default 6380) and FIRESTORE_PORT (default 8086).
set -euo pipefail
cd "$(dirname "$0")/.."

redis_port=${REDIS_PORT:-6380}
firestore_port=${FIRESTORE_PORT:-8086}
emulator_jar=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar

command -v redis-server >/dev/null || bash scripts/install-test-deps.sh
if [ ! -f "$emulator_jar" ]; then
  echo "The Firestore emulator is missing: install the Debian package google-cloud-cli-firestore-emulator." >&2
  exit 1
fi

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping: ${pids[*]}"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

state=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$state" \
  >"$state/redis.log" 2>&1 &
pids+=($!)
java -cp "$emulator_jar" com.google.cloud.datastore.emulator.firestore.CloudFirestore start \
  --host=127.0.0.1 --port="$firestore_port" >"$state/firestore.log" 2>&1 &
pids+=($!)

echo "waiting for redis-server on 127.0.0.1:$redis_port and the Firestore emulator on 127.0.0.1:$firestore_port"
for _ in $(seq 600); do
  redis_ok=$(redis-cli -p "$redis_port" ping 2>/dev/null || true)
  firestore_ok=$(curl -sf "http://127.0.0.1:$firestore_port/" 2>/dev/null || true)
  [ "$redis_ok" = PONG ] && [ "$firestore_ok" = Ok ] && break
  sleep 0.1
done
if [ "$redis_ok" != PONG ] || [ "$firestore_ok" != Ok ]; then
  echo "the servers did not start; logs in $state" >&2
  exit 1
fi

cargo build --release --features redis,firestore --example demo
FIRESTORE_EMULATOR_HOST=127.0.0.1:$firestore_port target/release/examples/demo \
  --store redis --redis-url "redis://127.0.0.1:$redis_port" \
  --firestore-project tower-tickets-demo "$@" &
pids+=($!)
echo "Redis and Firestore logs: $state (Ctrl-C stops all)"
wait "${pids[-1]}"
