#!/usr/bin/env bash
# fuzz.sh runs every native fuzz target of the module, one after the other,
# and reports per target the fuzzing time, the CPU time (user+sys of go test
# and its fuzz workers, build included), execs, new corpus entries and
# failures, as a markdown table on stdout and in bench/fuzz-latest.md.
#
#   scripts/fuzz.sh [-t 60s] [-p parallel] [-o out.md] [pattern]
#
# -o names the table's file (default bench/fuzz-latest.md), so that two
# runs at once do not write the same file.
# pattern (an extended regexp) selects targets by "pkg.FuzzName", e.g.
# 'gossip' or 'FuzzParse'. A crasher is kept by Go in the package's
# testdata/fuzz/<FuzzName>/: its path is reported; make it a regression seed
# (it already is one: go test runs it) and fix the bug. New interesting
# inputs stay in Go's cache ($(go env GOCACHE)/fuzz), not in the tree.
set -euo pipefail

fuzztime=60s
parallel=1 # the project machine is shared: one fuzz worker
out=bench/fuzz-latest.md
while getopts "t:p:o:h" opt; do
	case $opt in
	t) fuzztime=$OPTARG ;;
	p) parallel=$OPTARG ;;
	o) out=$OPTARG ;;
	*) sed -n '2,15p' "$0" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
pattern=${1:-.}

cd "$(dirname "$0")/.."
module=$(go list -m)
cache=$(go env GOCACHE)/fuzz
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

count() { # files in a directory, 0 if none
	if [ -d "$1" ]; then find "$1" -type f | wc -l | tr -d ' '; else echo 0; fi
}

targets=$(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . |
	sed -E 's#^\./(.*)/[^/]*_test\.go:func (Fuzz.*)$#\1 \2#' | sort -u |
	while read -r pkg name; do
		if printf '%s.%s\n' "$pkg" "$name" | grep -Eq -- "$pattern"; then echo "$pkg $name"; fi
	done)
if [ -z "$targets" ]; then
	echo "fuzz.sh: no fuzz target matches $pattern" >&2
	exit 1
fi

failed=0
rows=()
while read -r pkg name; do
	seeds="$pkg/testdata/fuzz/$name"
	cached="$cache/$module/$pkg/$name"
	seeds0=$(count "$seeds")
	cached0=$(count "$cached")
	log="$logdir/$(echo "$pkg" | tr / _).$name.log"
	echo "fuzz.sh: $pkg $name for $fuzztime" >&2
	TIMEFORMAT='%R %U %S'
	status=PASS
	{ time go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -parallel "$parallel" "./$pkg" >"$log" 2>&1; } 2>"$logdir/time" || status=FAIL
	read -r real user sys <"$logdir/time"
	cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')
	last=$(grep -E '^fuzz: elapsed' "$log" | tail -1 || true)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	rate=$(awk -v n="${execs:-0}" -v t="$fuzztime" 'BEGIN { s = t + 0; if (t ~ /m$/) s *= 60; if (s > 0 && n > 0) printf "%d", n / s; else print "?" }')
	total=$(sed -nE 's/.*\(total: ([0-9]+)\).*/\1/p' <<<"$last")
	newc=$(($(count "$cached") - cached0))
	finding=none
	if [ "$status" = FAIL ]; then
		failed=1
		crasher=$(sed -nE 's/.*Failing input written to (testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | head -1)
		if [ -n "$crasher" ]; then
			finding="**crash**: $pkg/$crasher"
		else
			finding="**failed** (no crasher; see the log): $(grep -m1 -E -- '--- FAIL|panic:|FAIL' "$log" | tr '|' '/' || true)"
		fi
		cp "$log" "bench/fuzz-$(echo "$pkg" | tr / _)-$name.log"
	elif [ "$(count "$seeds")" != "$seeds0" ]; then
		finding="new file in $seeds"
	fi
	rows+=("| $pkg | $name | $fuzztime | ${real}s | ${cpu}s | ${execs:-?} | ${rate:-?} | $newc | ${total:-?} | $finding |")
done <<<"$targets"

{
	echo "Fuzzing run $(date -u +%Y-%m-%dT%H:%MZ), $(go env GOVERSION), $(nproc) cores, -parallel $parallel, commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')."
	echo
	echo "| package | target | fuzz time | wall | CPU (user+sys) | execs | execs/s | new corpus | corpus total | findings |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	printf '%s\n' "${rows[@]}"
} | tee "$out"
exit $failed
