#!/usr/bin/env bash
# prometheus-demo.sh: `godwit demo` watched by a real Prometheus, on
# loopback, by hand (rules/demo_test.go does the same as a test).
#
# It runs the demo on free ports, writes a Prometheus config that scrapes
# every edge's /metrics (the URLs the demo prints) and loads
# rules/godwit.rules.yml, starts Prometheus with a throwaway storage
# directory, and prints the demo's lines to try and the Prometheus URL.
# Ctrl-C stops both (the demo drains its edges) and removes the files.
#
# Usage: scripts/prometheus-demo.sh [godwit demo flags, e.g. -edges 2 -v]
#
# Environment:
#   GODWIT      the godwit binary (default: built from this checkout, else godwit on PATH)
#   PROMETHEUS  the prometheus binary (default: prometheus on PATH; Debian: apt-get install prometheus)
#   PROM_ADDR   Prometheus's listen address (default 127.0.0.1:9099)
#   DEMO_HTTP   the demo's -http (default 127.0.0.1:0: free ports)
#   DEMO_ADMIN  the demo's -admin (default 127.0.0.1:0: free ports)
#   INTERVAL    scrape and rule evaluation interval (default 5s)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rules=$root/rules/godwit.rules.yml
prom_addr=${PROM_ADDR:-127.0.0.1:9099}
interval=${INTERVAL:-5s}

die() { echo "prometheus-demo: $*" >&2; exit 1; }

prometheus=${PROMETHEUS:-$(command -v prometheus || true)}
[ -n "$prometheus" ] || die "prometheus not found (Debian: apt-get install prometheus; or set PROMETHEUS)"
[ -f "$rules" ] || die "$rules not found"
command -v curl >/dev/null || die "curl not found"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/godwit-prometheus-demo.XXXXXX")
demo_pid='' prom_pid=''
stop() {
	trap - INT TERM
	# One signal each: a second SIGINT would stop the demo without its drain.
	if [ -n "$prom_pid" ]; then kill -TERM "$prom_pid" 2>/dev/null || true; fi
	if [ -n "$demo_pid" ]; then kill -INT "$demo_pid" 2>/dev/null || true; fi
	if [ -n "$prom_pid" ]; then wait "$prom_pid" 2>/dev/null || true; fi
	if [ -n "$demo_pid" ]; then wait "$demo_pid" 2>/dev/null || true; fi
}
trap 'stop; rm -rf "$tmp"' EXIT
trap 'echo; echo "prometheus-demo: stopping the demo and Prometheus" >&2; exit 0' INT TERM

godwit=${GODWIT:-}
if [ -z "$godwit" ]; then
	if [ -f "$root/go.mod" ] && [ -d "$root/cmd/godwit" ] && command -v go >/dev/null; then
		echo "prometheus-demo: building godwit from $root" >&2
		(cd "$root" && go build -o "$tmp/godwit" ./cmd/godwit)
		godwit=$tmp/godwit
	else
		godwit=$(command -v godwit || true)
		[ -n "$godwit" ] || die "godwit not found (set GODWIT)"
	fi
fi

# Job control: each child in a process group of its own, so that Ctrl-C
# reaches only this script, which then signals each child once.
set -m

"$godwit" demo -http "${DEMO_HTTP:-127.0.0.1:0}" -admin "${DEMO_ADMIN:-127.0.0.1:0}" "$@" >"$tmp/demo.out" &
demo_pid=$!

# The demo prints its block, ending with the Ctrl-C line, once every edge
# knows every machine.
deadline=$((SECONDS + 30))
until grep -q '^Ctrl-C stops it' "$tmp/demo.out" 2>/dev/null; do
	kill -0 "$demo_pid" 2>/dev/null || { demo_pid=; cat "$tmp/demo.out"; die "godwit demo exited before it was ready"; }
	[ "$SECONDS" -lt "$deadline" ] || { cat "$tmp/demo.out"; die "godwit demo not ready within 30 s"; }
	sleep 0.1
done

# Its edges' lines: NAME REGION http://HOST:PORT metrics http://HOST:PORT/metrics
targets=$(awk '$1 ~ /^edge-/ && $4 == "metrics" { t = $5; sub("^http://", "", t); sub("/metrics$", "", t); printf "%s\"%s\"", (n++ ? ", " : ""), t }' "$tmp/demo.out")
[ -n "$targets" ] || { cat "$tmp/demo.out"; die "no metrics URL in godwit demo's output"; }

cat >"$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: $interval
  evaluation_interval: $interval
rule_files:
  - "$rules"
scrape_configs:
  - job_name: godwit
    static_configs:
      - targets: [$targets]
YAML

"$prometheus" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
	--web.listen-address="$prom_addr" >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!

deadline=$((SECONDS + 30))
until curl -fs "http://$prom_addr/-/ready" >/dev/null 2>&1; do
	kill -0 "$prom_pid" 2>/dev/null || { prom_pid=; tail -20 "$tmp/prometheus.log" >&2; die "prometheus exited (is $prom_addr free? set PROM_ADDR)"; }
	[ "$SECONDS" -lt "$deadline" ] || { tail -20 "$tmp/prometheus.log" >&2; die "prometheus not ready within 30 s"; }
	sleep 0.2
done

cat "$tmp/demo.out"
cat <<MSG

Prometheus: http://$prom_addr  (scraping [$targets] every $interval, with $rules)
  targets   http://$prom_addr/targets
  rules     http://$prom_addr/rules
  queries through the API, once the lines above have sent some traffic:
  curl -sG http://$prom_addr/api/v1/query --data-urlencode 'query=godwit_gossip_members{state="alive"}'
  curl -sG http://$prom_addr/api/v1/query --data-urlencode 'query=godwit_replays_total'
  curl -sG http://$prom_addr/api/v1/query --data-urlencode 'query=app:godwit_requests:rate5m'

Ctrl-C stops the demo and Prometheus.
MSG

# Until Ctrl-C, or until either stops on its own.
wait -n "$demo_pid" "$prom_pid" || true
echo "prometheus-demo: the demo or Prometheus stopped on its own; stopping the other" >&2
