#!/usr/bin/env bash
# Benchmark harness: direct vs godwit vs nginx vs HAProxy in one interleaved run.
# See bench/README.md. Usage (from anywhere):
#   bench/run.sh                 # 5 rounds x 10 s per cell
#   QUICK=1 bench/run.sh         # 1 round x 3 s (smoke test)
#   ROUNDS=3 DURATION=5s TARGETS="direct nginx" OUT=/tmp/r.md bench/run.sh
# The markdown report goes to stdout and to $OUT; progress goes to stderr.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"

if [[ ${QUICK:-0} == 1 ]]; then
	ROUNDS=${ROUNDS:-1}
	DURATION=${DURATION:-3s}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
OUT=${OUT:-$BENCH_DIR/results-latest.md}
TARGETS=${TARGETS:-direct godwit nginx haproxy} # base order, rotated per round
SIZES=${SIZES:-64 4k}
CONNS=${CONNS:-64 8}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0} # core for the proxy under test
LOAD_CPU=${LOAD_CPU:-1}   # core for wrk and the backend

BACKEND_PORT=18000
declare -A PORT=([direct]=18000 [nginx]=18081 [haproxy]=18082 [godwit]=18083)
GODWIT_ADMIN_PORT=19090
HOST_HEADER="Host: bench.local"

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

dur_s=${DURATION%s}
[[ $dur_s =~ ^[0-9]+$ && $dur_s -gt 0 ]] || die "DURATION must be whole seconds like 10s (got $DURATION)"
DURATION=${dur_s}s
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "ROUNDS must be a positive integer (got $ROUNDS)"
for t in $TARGETS; do [[ -n ${PORT[$t]:-} ]] || die "unknown target $t (known: direct godwit nginx haproxy)"; done
[[ $(nproc) -ge 2 ]] || log "WARNING: fewer than 2 CPUs; proxy and load share a core"

bench_init godwit-bench

# ---------------------------------------------------------------- setup
need_tools wrk nginx haproxy taskset
for p in "${PORT[@]}" $GODWIT_ADMIN_PORT; do
	port_open "$p" && die "port $p on 127.0.0.1 is already in use; stop whatever listens there"
done

log "building backend"
go build -o "$TMP/backend" ./bench/backend || die "backend build failed"

want_godwit=0
for t in $TARGETS; do [[ $t == godwit ]] && want_godwit=1; done
if ((want_godwit)); then
	log "building godwit"
	if go build -o "$TMP/godwit" ./cmd/godwit >"$TMP/godwit-build.log" 2>&1; then
		:
	else
		log "SKIPPING godwit: 'go build ./cmd/godwit' failed:"
		head -20 "$TMP/godwit-build.log" | sed 's/^/    /' >&2
		TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | { grep -vx godwit || true; } | tr '\n' ' ')
	fi
fi

start backend "$LOAD_CPU" "$TMP/backend" -addr "127.0.0.1:$BACKEND_PORT"
wait_port backend $BACKEND_PORT || { cat "$TMP/backend.log" >&2; die "backend did not start"; }
{ probe $BACKEND_PORT /64 64 && probe $BACKEND_PORT /4k 4096; } || die "backend answers wrongly"

skip_target() { # name reason
	log "SKIPPING $1: $2"
	[[ -f $TMP/$1.log ]] && tail -20 "$TMP/$1.log" | sed 's/^/    /' >&2
	stop_proc "$1"
	TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | { grep -vx "$1" || true; } | tr '\n' ' ')
}

for t in $TARGETS; do
	case $t in
	direct) continue ;;
	nginx)
		mkdir -p "$TMP/nginx"
		start nginx "$PROXY_CPU" nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$BENCH_DIR/nginx.conf"
		;;
	haproxy)
		start haproxy "$PROXY_CPU" haproxy -db -f "$BENCH_DIR/haproxy.cfg"
		;;
	godwit)
		start godwit "$PROXY_CPU" "$TMP/godwit" run --config bench/godwit.toml
		;;
	esac
	if ! wait_port "$t" "${PORT[$t]}"; then
		skip_target "$t" "did not listen on 127.0.0.1:${PORT[$t]} within 10 s"
		continue
	fi
	if ! { probe "${PORT[$t]}" /64 64 && probe "${PORT[$t]}" /4k 4096; }; then
		skip_target "$t" "does not proxy GET /64 and /4k correctly"
		continue
	fi
done
[[ -n ${TARGETS// /} ]] || die "no target left to measure"

# Whose CPU counts: the proxy process and its children (nginx's worker).
for t in $TARGETS; do
	if [[ $t == direct ]]; then CPU_PIDS[$t]=""; else CPU_PIDS[$t]=$(descendants "${PID[$t]}"); fi
done
BACKEND_PIDS=$(descendants "${PID[backend]}")

# ---------------------------------------------------------------- machine info
ver() { "$@" 2>&1 | head -1 || true; }
{
	echo "# godwit benchmark"
	echo
	machine_info
	echo "- $(ver nginx -v | sed 's/^nginx version: //'), $(ver haproxy -v | awk '{print "HAProxy " $3}'), $(ver wrk -v | awk '{print "wrk " $2}'), $(go version | awk '{print $3}')"
	echo "- settings: ROUNDS=$ROUNDS DURATION=$DURATION, wrk -t1 --latency --timeout 10s -H '$HOST_HEADER'; proxy on CPU $PROXY_CPU, wrk + backend on CPU $LOAD_CPU (taskset)"
	echo "- targets: $TARGETS"
	echo "- load average (1/5/15 min) before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$TMP/header.md"

# ---------------------------------------------------------------- measure
RAW=$TMP/raw.tsv
printf 'round\tsize\tconns\ttarget\trps\tp50_ms\tp99_ms\tcpu_us_per_req\trequests\terrors\tbackend_cpu_us_per_req\tloadavg1\tproxy_core_other_pct\n' >"$RAW"

# run_wrk target size conns duration -> wrk output in $TMP/wrk.out
run_wrk() {
	wrk_run "http://127.0.0.1:${PORT[$1]}$(path_of "$2")" "$HOST_HEADER" "$4" "$3"
}

log "warmup ($WARMUP per target and size)"
for t in $TARGETS; do
	for size in $SIZES; do run_wrk "$t" "$size" 64 "$WARMUP" || die "wrk warmup against $t failed: $(cat "$TMP/wrk.out")"; done
done

read -r -a base <<<"$TARGETS"
n=${#base[@]}
total=$((ROUNDS * $(wc -w <<<"$SIZES") * $(wc -w <<<"$CONNS") * n))
cell=0
log "measuring: $total runs of $DURATION (about $((total * ${DURATION%s} / 60 + 1)) min)"
for ((r = 1; r <= ROUNDS; r++)); do
	for size in $SIZES; do
		for c in $CONNS; do
			order=()
			for ((i = 0; i < n; i++)); do order+=("${base[(i + r - 1) % n]}"); done
			for t in "${order[@]}"; do
				cell=$((cell + 1))
				measure "$t" "${CPU_PIDS[$t]}" "http://127.0.0.1:${PORT[$t]}$(path_of "$size")" "$HOST_HEADER" "$DURATION" "$c"
				cp "$TMP/wrk.out" "$TMP/wrk-r$r-$size-c$c-$t.out"
				rps=$M_RPS p50=$M_P50 p99=$M_P99 cpu=$M_CPU errs=$M_ERRS other=$M_OTHER
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
					"$r" "$size" "$c" "$t" "$rps" "$p50" "$p99" "$cpu" "$M_REQS" "$errs" "$M_BCPU" "$M_LOAD1" "$other" >>"$RAW"
				((errs == 0)) || log "WARNING: $t size=$size c=$c: $errs errors/non-2xx"
				log "[$cell/$total] round $r size=$size c=$c $t: ${rps} req/s p50=${p50}ms p99=${p99}ms cpu=${cpu}us/req others-on-CPU$PROXY_CPU=${other}%"
			done
		done
	done
done

# ---------------------------------------------------------------- report
# For each (size, conns, target): median and min-max over rounds of req/s,
# p50, p99, CPU us/req; ratios to nginx are paired per round (same round,
# size and conns), then median and min-max of those ratios are shown.
report() {
	awk -F'\t' -v targets="$TARGETS" -v sizes="$SIZES" -v conns="$CONNS" "$AWK_STATS"'
	NR == 1 { next }
	{
		r = $1; k = $2 SUBSEP $3 SUBSEP $4
		add(k SUBSEP "rps", $5); add(k SUBSEP "p50", $6); add(k SUBSEP "p99", $7); add(k SUBSEP "cpu", $8)
		E[k] += $10
		V[r, k, "rps"] = $5; V[r, k, "p99"] = $7; V[r, k, "cpu"] = $8
		R[r] = 1
	}
	END {
		nt = split(targets, T, " "); ns = split(sizes, S, " "); nc = split(conns, C, " ")
		print "| body | conns | target | req/s | req/s ÷ nginx | p50 ms | p99 ms | p99 − nginx ms | CPU µs/req | CPU ÷ nginx | errors |"
		print "|---|---|---|---|---|---|---|---|---|---|---|"
		for (si = 1; si <= ns; si++) for (ci = 1; ci <= nc; ci++) for (ti = 1; ti <= nt; ti++) {
			s = S[si]; c = C[ci]; t = T[ti]; k = s SUBSEP c SUBSEP t; nk = s SUBSEP c SUBSEP "nginx"
			rr = ""; pd = ""; cr = ""
			for (r in R) {
				if ((r, k, "rps") in V && (r, nk, "rps") in V) {
					if (V[r, nk, "rps"] > 0) rr = rr " " V[r, k, "rps"] / V[r, nk, "rps"]
					pd = pd " " V[r, k, "p99"] - V[r, nk, "p99"]
					if (V[r, k, "cpu"] != "NaN" && V[r, nk, "cpu"] > 0) cr = cr " " V[r, k, "cpu"] / V[r, nk, "cpu"]
				}
			}
			if (t == "nginx") { rr = ""; pd = ""; cr = "" }
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", (s == "64" ? "64 B" : "4 KiB"), c, t,
				cellf(L[k SUBSEP "rps"], "%.0f"), cellf(rr, "%.2f"),
				cellf(L[k SUBSEP "p50"], "%.3f"), cellf(L[k SUBSEP "p99"], "%.3f"), cellf(pd, "%+.3f"),
				cellf(L[k SUBSEP "cpu"], "%.1f"), cellf(cr, "%.2f"), E[k]
			if (t == "godwit") {
				if (stat(cr)) G = G sprintf("- %s body, %s conns: CPU ÷ nginx median %.2f (goal ≤ 2.00): %s\n", (s == "64" ? "64 B" : "4 KiB"), c, MED, (MED <= 2 ? "met" : "NOT met"))
				if (c == 8 && stat(pd)) G = G sprintf("- %s body, 8 conns: p99 − nginx median %+.3f ms (goal ≤ +0.500): %s\n", (s == "64" ? "64 B" : "4 KiB"), MED, (MED <= 0.5 ? "met" : "NOT met"))
			}
		}
		if (G != "") { print ""; print "Goal check (godwit vs nginx, medians of per-round ratios/differences):"; print ""; printf "%s", G }
	}' "$RAW"
}

{
	cat "$TMP/header.md"
	echo "- load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg) (our own load is about 2; more means other work shared the cores)"
	other_summary "$RAW" 13
	echo
	echo "Medians over rounds, (min–max) when more than one round. Ratios and p99 differences are"
	echo "taken per round against nginx in the same round, then summarised. CPU µs/req is the proxy"
	echo "process's user+sys time (with children, from /proc/PID/stat) over the run divided by the"
	echo "requests wrk completed; — where there is no proxy (direct) or no nginx to compare with."
	echo
	report
} >"$TMP/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$TMP/report.md" "$OUT"
cp "$RAW" "${OUT%.md}.tsv"
cat "$TMP/report.md"
log "report written to $OUT (raw data: ${OUT%.md}.tsv)"
