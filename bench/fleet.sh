#!/usr/bin/env bash
# bench/fleet.sh: runs the fleet benchmark (bench/fleet, a Go program) with
# the environment variables of run.sh and replay.sh; any arguments are passed
# on as flags (go run ./bench/fleet -h lists them).
#
#   bench/fleet.sh                         # full run, about 15 min
#   QUICK=1 bench/fleet.sh                 # smoke test, about 1 min
#   GODWIT=/tmp/godwit-old bench/fleet.sh  # measure a prebuilt godwit
#   bench/fleet.sh -phases backhaul -rounds 9
#
# QUICK=1 (-quick), OUT (-out), GODWIT (-godwit), PROXY_CPU (-proxy-cpu),
# LOAD_CPU (-load-cpu), ROUNDS (-rounds), DURATION (-duration), KEEP_TMP=1
# (-keep-tmp).
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
[[ ${QUICK:-0} == 1 ]] && args+=(-quick)
[[ -n ${OUT:-} ]] && args+=(-out "$OUT")
[[ -n ${GODWIT:-} ]] && args+=(-godwit "$GODWIT")
[[ -n ${PROXY_CPU:-} ]] && args+=(-proxy-cpu "$PROXY_CPU")
[[ -n ${LOAD_CPU:-} ]] && args+=(-load-cpu "$LOAD_CPU")
[[ -n ${ROUNDS:-} ]] && args+=(-rounds "$ROUNDS")
[[ -n ${DURATION:-} ]] && args+=(-duration "$DURATION")
[[ ${KEEP_TMP:-0} == 1 ]] && args+=(-keep-tmp)

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/fleet" ./bench/fleet
# In the background plus wait, so that a signal to this script reaches the
# benchmark at once; it then stops every process it started.
"$dir/fleet" "${args[@]}" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
rc=0
while :; do
	wait "$pid" && rc=0 || rc=$?
	kill -0 "$pid" 2>/dev/null || break # still running: wait was cut by a signal
done
exit "$rc"
