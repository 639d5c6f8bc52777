#!/usr/bin/env bash
# What one decision costs Redis, script by script, on 100,000 users picked
# at random: the naive peer (benches/lua/naive.lua, one call per decision),
# the ticket layer's charge script with one decision per call (batching
# off) and with BATCH decisions per call (batching on), each as a script
# (EVALSHA) and as the function the store loads on Redis 7 (FCALL; see
# src/store/redis/library.rs), and floors of a batched decision:
# benches/lua/batch_floor.lua, the one read and the one write of the
# layer's key layout, nothing else; batch_strings.lua, one MGET and one
# MSET per call on a layout of strings (MSET drops the keys' expiry);
# batch_strings.lua keepttl, the same strings with one SET ... KEEPTTL per
# decision (the floor of any layout that keeps each user's expiry); and
# batch_record.lua, a user's whole state as one such string.
#
# Each is sent by redis-benchmark (pipelined, 4 connections) to a
# redis-server of its own on a free 127.0.0.1 port; every user exists
# before the first round, except in the new users' rows: each decision
# there is a user's first (a new hash, its expiry set). Per script: INFO commandstats µs per call and
# redis-server's CPU time (/proc) per decision, ROUNDS interleaved rounds,
# then medians. docs/benchmarks.md ("The Redis decision") records results.
#
#   bash benches/redis_decision.sh            # about 3 min
#   ROUNDS=5 BATCH=26 bash benches/redis_decision.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-16}
USERS=100000
# Decisions per round and script.
DECISIONS=${DECISIONS:-200000}

lua=src/store/redis/lua
dir=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
while redis-cli -p "$port" ping >/dev/null 2>&1; do port=$(( port + 1 )); done
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$dir" --pidfile "$dir/redis.pid" --daemonize yes >/dev/null
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do :; done
pid=$(cat "$dir/redis.pid")
cli() { redis-cli -p "$port" "$@"; }

# The charge script as the store builds it (scripts.rs): Redis holding the
# truth, the shared functions, the charge.
{ echo "local REDIS_HOLDS_THE_TRUTH = true"; cat "$lua/common.lua"
  echo "local CHARGE_PLANS = nil"; cat "$lua/charge.lua"; } > "$dir/charge.lua"
# The same charge as the store loads it where Redis has functions
# (library.rs): the shared functions and the charge's defined once, the
# charge's call per call, its plan read once.
{ echo "#!lua name=tower_tickets_bench"; echo "local KEYS, ARGV"
  echo "local CHARGE_PLANS = {known = {}, count = 0}"; echo "local REDIS_HOLDS_THE_TRUTH = true"; cat "$lua/common.lua"
  sed '$d' "$lua/charge.lua" # its last line, the call, runs per call
  echo "redis.register_function('tower_tickets_bench_charge', function(keys, args)"
  echo "KEYS, ARGV = keys, args"; echo "return charge_call()"; echo "end)"; } > "$dir/library.lua"
cli function load replace "$(cat "$dir/library.lua")" >/dev/null
load() { cli script load "$(cat "$1")"; }
naive=$(load benches/lua/naive.lua)
charge=$(load "$dir/charge.lua")
floor=$(load benches/lua/batch_floor.lua)
strings=$(load benches/lua/batch_strings.lua)
record=$(load benches/lua/batch_record.lua)

# A kind of capacity 10^9 refilled daily; decisions as the store sends
# them: the plan (idempotency TTL, the spec, one shape: one key, idle TTL
# 3 days, the kind), then the call's decisions as one run: its length,
# their shape, time ('' = Redis TIME) and amount.
plan='86400000 1 upload 1000000000 1000000000 R 86400000 1 1 259200000 1 1'
# The arguments of a call of `n` decisions of script $1, keys `pattern`.
call() {
  local script=$1 n=$2 pattern=$3 keys=() args=()
  for ((i = 0; i < n; i++)); do keys+=("$pattern"); done
  case $script in
    naive) args=(EVALSHA "$naive" 1 "${keys[@]}" 1 1000000000 86400000) ;;
    charge | function)
      if [[ $script == charge ]]; then args=(EVALSHA "$charge"); else args=(FCALL tower_tickets_bench_charge); fi
      args+=("$n" "${keys[@]}" "$plan" "$n" 1 '' 1) ;;
    floor) args=(EVALSHA "$floor" "$n" "${keys[@]}") ;;
    strings) args=(EVALSHA "$strings" "$n" "${keys[@]}") ;;
    one_write) args=(EVALSHA "$strings" "$n" "${keys[@]}" keepttl) ;;
    record) args=(EVALSHA "$record" "$n" "${keys[@]}") ;;
  esac
  printf '%s\n' "${args[@]}"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
ticks_per_sec=$(getconf CLK_TCK)

# Runs `decisions` decisions of script $1, `n` per call, on keys `pattern`
# picked among `range` users; prints 'µs per call, µs per decision
# (commandstats), CPU µs per decision'.
run() {
  local script=$1 n=$2 pattern=$3 decisions=$4 range=${5:-$USERS}
  mapfile -t args < <(call "$script" "$n" "$pattern")
  cli config resetstat >/dev/null
  local before; before=$(cpu_ticks)
  redis-benchmark -p "$port" -q -P 16 -c 4 -r "$range" -n $(( decisions / n )) "${args[@]}" >/dev/null
  local after; after=$(cpu_ticks)
  local usec
  usec=$(cli info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\(evalsha\|fcall\):.*usec_per_call=\([0-9.]*\).*/\2/p')
  awk -v u="$usec" -v n="$n" -v t=$(( after - before )) -v hz="$ticks_per_sec" -v d="$decisions" \
    'BEGIN { printf "%.2f %.2f %.2f\n", u, u / n, t * 1e6 / hz / d }'
}

# A path: script, decisions per call, key pattern, then 'new' for a user
# never seen before at each decision (a fresh prefix each round, users
# picked among 10^9).
paths=("naive 1 u{__rand_int__}" "charge 1 t{__rand_int__}:t" "function 1 f{__rand_int__}:t"
  "charge $BATCH t{__rand_int__}:t" "function $BATCH f{__rand_int__}:t"
  "floor $BATCH t{__rand_int__}:t" "strings $BATCH s{__rand_int__}"
  "one_write $BATCH w{__rand_int__}" "record $BATCH q{__rand_int__}"
  "naive 1 u{__rand_int__} new" "function 1 f{__rand_int__}:t new"
  "function $BATCH f{__rand_int__}:t new")
echo "Redis decisions, $USERS users at random, redis-benchmark -P 16 -c 4, $ROUNDS rounds of" \
  "$DECISIONS decisions per script; $(redis-server --version | cut -d' ' -f1-3)." \
  "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
for path in "${paths[@]}"; do
  read -r script n pattern new <<<"$path"
  [[ -z $new ]] && run "$script" "$n" "$pattern" $(( USERS * 4 )) >/dev/null # every user exists
done
declare -A results
for ((round = 1; round <= ROUNDS; round++)); do
  for path in "${paths[@]}"; do
    read -r script n pattern new <<<"$path"
    if [[ -n $new ]]; then
      results[$path]+="$(run "$script" "$n" "new$round$pattern" "$DECISIONS" 1000000000);"
    else
      results[$path]+="$(run "$script" "$n" "$pattern" "$DECISIONS");"
    fi
  done
done
median() { tr ';' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
column() { tr ';' '\n' | sed '/^$/d' | cut -d' ' -f"$1" | tr '\n' ';'; }
naive_cpu=$(echo "${results[${paths[0]}]}" | column 3 | median)
echo
echo "Medians of $ROUNDS rounds:"
echo
echo "| script | decisions per call | µs per call | µs per decision | CPU µs per decision | CPU vs naive |"
echo "|---|---|---|---|---|---|"
new_naive_cpu=$(echo "${results[naive 1 u{__rand_int__} new]}" | column 3 | median)
for path in "${paths[@]}"; do
  read -r script n _ new <<<"$path"
  r=${results[$path]}
  cpu=$(echo "$r" | column 3 | median)
  reference=$naive_cpu
  [[ -n $new ]] && script="$script, new users" && reference=$new_naive_cpu
  printf '| %s | %s | %s | %s | %s | %.2f |\n' "$script" "$n" "$(echo "$r" | column 1 | median)" \
    "$(echo "$r" | column 2 | median)" "$cpu" "$(awk -v a="$cpu" -v b="$reference" 'BEGIN { print a / b }')"
done
echo
echo "(New users' rows are held against the naive script's on new users.)"
echo
echo "CPU µs per decision by round:"
for path in "${paths[@]}"; do
  read -r script n _ new <<<"$path"
  echo "- $script${new:+, new users}, $n per call: $(echo "${results[$path]}" | column 3 | tr ';' ' ')"
done
echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)."
