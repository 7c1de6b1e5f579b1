#!/usr/bin/env bash
# fly-replay cost on one node: a request replayed once (source app -> target
# app) against the same request sent straight to the target, in one
# interleaved run, beside the peer: nginx with X-Accel-Redirect (the upstream
# answers with a URI, nginx re-sends the request to another upstream) against
# nginx proxying straight to the target. See bench/README.md. Usage (from anywhere):
#   bench/replay.sh                 # 5 rounds x 10 s per cell
#   QUICK=1 bench/replay.sh         # 1 round x 3 s (smoke test)
#   ROUNDS=9 CONNS="1 8 64" SIZES="64 4k" OUT=/tmp/r.md bench/replay.sh
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
OUT=${OUT:-$BENCH_DIR/replay-latest.md}
SCENARIOS=${SCENARIOS:-machine direct replayed cached nginx nginx-accel} # base order, rotated per round
SIZES=${SIZES:-64}
CONNS=${CONNS:-1 64}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0} # core for godwit and nginx
LOAD_CPU=${LOAD_CPU:-1}   # core for wrk and the backend

# Ports differ from run.sh's (18000, 18081-18083, 19090).
BACKEND_PORT=18100
GODWIT_PORT=18183
GODWIT_ADMIN_PORT=19190
NGINX_PORT=18181
CONFIG=bench/replay.toml             # its listen addresses must match the ports above
NGINX_CONFIG=bench/nginx-replay.conf # likewise

# scenario -> port, Host, path prefix, and the proxy whose CPU counts
declare -A S_PORT=([machine]=$BACKEND_PORT [direct]=$GODWIT_PORT [replayed]=$GODWIT_PORT [cached]=$GODWIT_PORT
	[nginx]=$NGINX_PORT [nginx-accel]=$NGINX_PORT)
declare -A S_HOST=([machine]=target.local [direct]=target.local [replayed]=src.local [cached]=src.local
	[nginx]=target.local [nginx-accel]=accel.local)
declare -A S_PREFIX=([machine]="" [direct]="" [replayed]="" [cached]=/c [nginx]="" [nginx-accel]="")
declare -A S_PROXY=([machine]="" [direct]=godwit [replayed]=godwit [cached]=godwit [nginx]=nginx [nginx-accel]=nginx)

LOG_TAG=replay
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

dur_s=${DURATION%s}
[[ $dur_s =~ ^[0-9]+$ && $dur_s -gt 0 ]] || die "DURATION must be whole seconds like 10s (got $DURATION)"
DURATION=${dur_s}s
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "ROUNDS must be a positive integer (got $ROUNDS)"
want_nginx=0
for s in $SCENARIOS; do
	[[ -n ${S_PORT[$s]:-} ]] || die "unknown scenario $s (known: machine direct replayed cached nginx nginx-accel)"
	[[ ${S_PROXY[$s]} == nginx ]] && want_nginx=1
done
for size in $SIZES; do [[ $size == 64 || $size == 4k ]] || die "unknown size $size (known: 64 4k)"; done
for c in $CONNS; do [[ $c =~ ^[0-9]+$ && $c -gt 0 ]] || die "CONNS must be positive integers (got $c)"; done
[[ $(nproc) -ge 2 ]] || log "WARNING: fewer than 2 CPUs; proxy and load share a core"

bench_init godwit-replay

url_of() { echo "http://127.0.0.1:${S_PORT[$1]}${S_PREFIX[$1]}$(path_of "$2")"; } # scenario size

# counters -> "replays hits" from godwit's /metrics: godwit_replays_total
# {outcome="replayed"} and godwit_replay_cache_requests_total{status="hit"},
# each summed over apps; hits is NaN while godwit has no such metric (no
# replay cache, or it has not been asked yet)
counters() {
	local m
	m=$(curl -sS --max-time 5 "http://127.0.0.1:$GODWIT_ADMIN_PORT/metrics") ||
		die "cannot read godwit's /metrics on 127.0.0.1:$GODWIT_ADMIN_PORT"
	awk '/^godwit_replays_total\{/ && /outcome="replayed"/ { r += $NF }
		/^godwit_replay_cache_requests_total\{/ { c = 1; if (/status="hit"/) h += $NF }
		END { printf "%.0f %s\n", r, (c ? sprintf("%.0f", h) : "NaN") }' <<<"$m"
}

# fetch url host [header] -> "status bytes"; response headers in $TMP/fetch.hdr
fetch() {
	local extra=()
	[[ -n ${3:-} ]] && extra=(-H "$3")
	curl -sS --max-time 10 -D "$TMP/fetch.hdr" -o "$TMP/fetch.body" -w '%{http_code} %{size_download}' \
		-H "Host: $2" "${extra[@]}" "$1" || echo "curl-failed 0"
}

has_header() { grep -qi "^$1: *$2" "$TMP/fetch.hdr"; } # name value-prefix

# accel_count -> how many X-Accel-Redirect answers the backend has sent
accel_count() {
	local n
	n=$(curl -sS --max-time 5 -H "Host: accel.local" "http://127.0.0.1:$BACKEND_PORT/_accel-redirects") ||
		die "cannot read the backend's X-Accel-Redirect count (Host accel.local /_accel-redirects)"
	[[ $n =~ ^[0-9]+$ ]] || die "the backend's X-Accel-Redirect count is not a number: $n"
	echo "$n"
}

# proxy_counts scenario -> "redirects hits" over which its replays/req is
# taken: godwit's counters for godwit and machine, for nginx the backend's
# X-Accel-Redirect answers (hits NaN)
proxy_counts() {
	if [[ ${S_PROXY[$1]} == nginx ]]; then echo "$(accel_count) NaN"; else counters; fi
}

# ---------------------------------------------------------------- setup
# nginx only when a scenario needs it (the default ones do), installed as run.sh does
tools=(wrk curl taskset)
((want_nginx)) && tools+=(nginx)
need_tools "${tools[@]}"
for p in $BACKEND_PORT $GODWIT_PORT $GODWIT_ADMIN_PORT $NGINX_PORT; do
	port_open "$p" && die "port $p on 127.0.0.1 is already in use; stop whatever listens there"
done

log "building backend"
go build -o "$TMP/backend" ./bench/backend || die "backend build failed"
if [[ -n ${GODWIT:-} ]]; then
	[[ -x $GODWIT ]] || die "GODWIT=$GODWIT is not an executable"
	log "using the prebuilt godwit $GODWIT"
	cp "$GODWIT" "$TMP/godwit"
else
	log "building godwit"
	go build -o "$TMP/godwit" ./cmd/godwit >"$TMP/godwit-build.log" 2>&1 ||
		die "'go build ./cmd/godwit' failed: $(head -20 "$TMP/godwit-build.log")"
fi
"$TMP/godwit" config check "$CONFIG" >"$TMP/config-check.log" 2>&1 ||
	die "godwit config check $CONFIG failed: $(cat "$TMP/config-check.log")"

start backend "$LOAD_CPU" "$TMP/backend" -addr "127.0.0.1:$BACKEND_PORT"
wait_port backend $BACKEND_PORT || { cat "$TMP/backend.log" >&2; die "backend did not start"; }
BACKEND_PIDS=$(descendants "${PID[backend]}")

# GOMAXPROCS=1 is what Go picks anyway under taskset -c 0; said explicitly.
start godwit "$PROXY_CPU" env GOMAXPROCS=1 "$TMP/godwit" run --config "$CONFIG"
{ wait_port godwit $GODWIT_PORT && wait_port godwit $GODWIT_ADMIN_PORT; } || {
	tail -20 "$TMP/godwit.log" >&2
	die "godwit did not listen on 127.0.0.1:$GODWIT_PORT and :$GODWIT_ADMIN_PORT within 10 s"
}
GODWIT_PIDS=$(descendants "${PID[godwit]}")

NGINX_PIDS=
if ((want_nginx)); then
	mkdir -p "$TMP/nginx"
	start nginx "$PROXY_CPU" nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$ROOT/$NGINX_CONFIG"
	wait_port nginx $NGINX_PORT || {
		tail -20 "$TMP/nginx.log" "$TMP/nginx/error.log" >&2 2>/dev/null || true
		die "nginx did not listen on 127.0.0.1:$NGINX_PORT within 10 s"
	}
	# Whose CPU counts: the master and its worker, as in run.sh (the worker is
	# forked once the port is open; wait for it).
	for ((i = 0; i < 50; i++)); do
		NGINX_PIDS=$(descendants "${PID[nginx]}")
		[[ $NGINX_PIDS == *" "* ]] && break
		sleep 0.1
	done
	[[ $NGINX_PIDS == *" "* ]] || die "nginx started no worker process"
fi

# ---------------------------------------------------------------- checks
# The backend itself: the source app answers fly-replay, a replayed request
# is served, the target is served, accel.local answers X-Accel-Redirect.
CHECKS=() # report lines
for size in $SIZES; do
	path=$(path_of "$size")
	want=$(bytes_of "$size")
	base="http://127.0.0.1:$BACKEND_PORT"
	res=$(fetch "$base$path" src.local)
	{ [[ $res == "204 0" ]] && has_header Fly-Replay "app=target"; } ||
		die "backend: src.local $path -> $res, want 204 with 'Fly-Replay: app=target': $(cat "$TMP/fetch.hdr")"
	res=$(fetch "$base/c$path" src.local)
	{ [[ $res == "204 0" ]] && has_header Fly-Replay-Cache "/c/\*" && has_header Fly-Replay-Cache-Ttl-Secs 3600; } ||
		die "backend: src.local /c$path -> $res, want 204 with Fly-Replay-Cache: /c/* and a TTL: $(cat "$TMP/fetch.hdr")"
	res=$(fetch "$base$path" src.local "Fly-Replay-Src: instance=s1;region=iad;t=1")
	[[ $res == "200 $want" ]] || die "backend: replayed src.local $path -> $res, want 200 $want"
	res=$(fetch "$base$path" target.local)
	[[ $res == "200 $want" ]] || die "backend: target.local $path -> $res, want 200 $want"
	res=$(fetch "$base$path" accel.local)
	{ [[ $res == "204 0" ]] && has_header X-Accel-Redirect "/t$path\s*$"; } ||
		die "backend: accel.local $path -> $res, want 204 with 'X-Accel-Redirect: /t$path': $(cat "$TMP/fetch.hdr")"
done
log "backend: src.local answers 204 + fly-replay (and fly-replay-cache under /c/), accel.local 204 + X-Accel-Redirect, replayed and target.local requests get their body"

# Each scenario through its proxy, with the replays (godwit) or X-Accel-Redirect
# answers (nginx) it caused.
for size in $SIZES; do
	want=$(bytes_of "$size")
	for s in $SCENARIOS; do
		url=$(url_of "$s" "$size")
		cnt=$(proxy_counts "$s"); read -r n0 _ <<<"$cnt"
		res=$(fetch "$url" "${S_HOST[$s]}")
		cnt=$(proxy_counts "$s"); read -r n1 h1 <<<"$cnt"
		read -r status bytes <<<"$res"
		counter="godwit_replays_total"
		[[ ${S_PROXY[$s]} == nginx ]] && counter="backend X-Accel-Redirect answers"
		line="$s: GET ${url#http://} Host ${S_HOST[$s]} -> $status, $bytes bytes, $counter +$((n1 - n0))"
		if [[ $s == cached ]]; then
			res2=$(fetch "$url" "${S_HOST[$s]}")
			cnt=$(counters); read -r n2 h2 <<<"$cnt"
			read -r status2 bytes2 <<<"$res2"
			line+="; again -> $status2, $bytes2 bytes, +$((n2 - n1))"
			[[ $h2 == NaN ]] || line+=", godwit_replay_cache_requests_total{status=\"hit\"} +$((h2 - ${h1/NaN/0}))"
			if [[ $status2 == 200 && $bytes2 == "$want" ]]; then
				if ((n2 == n1)); then line+=" (replay cache hit)"; else line+=" (replayed again: the replay cache is not in effect)"; fi
			fi
		fi
		log "check $line"
		CHECKS+=("$line")
		[[ $status == 200 && $bytes == "$want" ]] || {
			cat "$TMP/fetch.hdr" "$TMP/fetch.body" >&2
			die "$s: want 200 with a $want-byte body, got $status with $bytes bytes (logs: $TMP/godwit.log, $TMP/nginx/error.log)"
		}
		if [[ $s == cached && ! ($status2 == 200 && $bytes2 == "$want") ]]; then
			die "cached: the second request got $status2 with $bytes2 bytes, want 200 $want"
		fi
		case $s in
		direct) ((n1 == n0)) || die "direct: godwit_replays_total went up by $((n1 - n0)); a direct request must not be replayed" ;;
		replayed) ((n1 == n0 + 1)) || die "replayed: godwit_replays_total{outcome=\"replayed\"} went up by $((n1 - n0)), want 1 (is the metric still called that?)" ;;
		nginx) ((n1 == n0)) || die "nginx: the backend sent $((n1 - n0)) X-Accel-Redirect answers, want none" ;;
		# 200 with the body after exactly one X-Accel-Redirect answer: two backend requests
		nginx-accel) ((n1 == n0 + 1)) || die "nginx-accel: the backend sent $((n1 - n0)) X-Accel-Redirect answers, want 1" ;;
		esac
	done
done

# ---------------------------------------------------------------- machine info
ver() { "$@" 2>&1 | head -1 || true; }
{
	echo "# godwit fly-replay benchmark"
	echo
	machine_info
	echo "- $( ((want_nginx)) && ver nginx -v | sed 's/^nginx version: //; s/$/, /')$(ver wrk -v | awk '{print "wrk " $2}'), $(go version | awk '{print $3}')"
	[[ -z ${GODWIT:-} ]] || echo "- godwit binary: prebuilt $GODWIT (not built from this tree)"
	echo "- settings: ROUNDS=$ROUNDS DURATION=$DURATION, wrk -t1 --latency --timeout 10s; godwit ($CONFIG, GOMAXPROCS=1)$( ((want_nginx)) && echo " and nginx ($NGINX_CONFIG, one worker)") on CPU $PROXY_CPU, wrk + backend on CPU $LOAD_CPU (taskset)"
	echo "- scenarios: $SCENARIOS"
	echo "- load average (1/5/15 min) before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- checks before measuring (one curl each):"
	for l in "${CHECKS[@]}"; do echo "  - $l"; done
} >"$TMP/header.md"

# ---------------------------------------------------------------- measure
RAW=$TMP/raw.tsv
printf 'round\tsize\tconns\tscenario\trps\tp50_ms\tp99_ms\tcpu_us_per_req\trequests\terrors\tbackend_cpu_us_per_req\treplays_per_req\tloadavg1\tproxy_core_other_pct\tproxy_core_pct\tload_core_busy_pct\tcache_hits_per_req\n' >"$RAW"

log "warmup ($WARMUP per scenario and size)"
for s in $SCENARIOS; do
	for size in $SIZES; do
		wrk_run "$(url_of "$s" "$size")" "Host: ${S_HOST[$s]}" "$WARMUP" 64 ||
			die "wrk warmup of $s failed: $(cat "$TMP/wrk.out")"
	done
done

read -r -a base <<<"$SCENARIOS"
n=${#base[@]}
total=$((ROUNDS * $(wc -w <<<"$SIZES") * $(wc -w <<<"$CONNS") * n))
cell=0
log "measuring: $total runs of $DURATION (about $((total * ${DURATION%s} / 60 + 1)) min)"
for ((r = 1; r <= ROUNDS; r++)); do
	for size in $SIZES; do
		for c in $CONNS; do
			order=()
			for ((i = 0; i < n; i++)); do order+=("${base[(i + r - 1) % n]}"); done
			for s in "${order[@]}"; do
				cell=$((cell + 1))
				case ${S_PROXY[$s]} in
				godwit) name=godwit pids=$GODWIT_PIDS ;;
				nginx) name=nginx pids=$NGINX_PIDS ;;
				*) name=backend pids="" ;; # machine: the proxies idle; their CPU is not this scenario's
				esac
				cnt=$(proxy_counts "$s"); read -r rep0 hit0 <<<"$cnt"
				measure "$name" "$pids" "$(url_of "$s" "$size")" "Host: ${S_HOST[$s]}" "$DURATION" "$c"
				cnt=$(proxy_counts "$s"); read -r rep1 hit1 <<<"$cnt"
				cp "$TMP/wrk.out" "$TMP/wrk-r$r-$size-c$c-$s.out"
				rpr=$(awk -v d=$((rep1 - rep0)) -v n="$M_REQS" 'BEGIN {printf "%.3f", d / n}')
				hpr=NaN
				[[ $hit1 == NaN ]] || hpr=$(awk -v d=$((hit1 - ${hit0/NaN/0})) -v n="$M_REQS" 'BEGIN {printf "%.3f", d / n}')
				own=$M_OWN
				[[ -n $pids ]] || own=NaN
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
					"$r" "$size" "$c" "$s" "$M_RPS" "$M_P50" "$M_P99" "$M_CPU" "$M_REQS" "$M_ERRS" "$M_BCPU" "$rpr" "$M_LOAD1" "$M_OTHER" "$own" "$M_LOADBUSY" "$hpr" >>"$RAW"
				((M_ERRS == 0)) || log "WARNING: $s size=$size c=$c: $M_ERRS errors/non-2xx"
				log "[$cell/$total] round $r size=$size c=$c $s: ${M_RPS} req/s p50=${M_P50}ms p99=${M_P99}ms cpu=${M_CPU}us/req replays/req=$rpr cache-hits/req=$hpr $name=${own}% others-on-CPU$PROXY_CPU=${M_OTHER}% CPU$LOAD_CPU-busy=${M_LOADBUSY}%"
			done
		done
	done
done

# ---------------------------------------------------------------- report
# For each (size, conns, scenario): median and (min–max) over rounds. Ratios
# and differences to direct, to the nginx peer, and the replay overhead, are
# computed per round (same round, size and conns), then summarised the same way.
report() {
	awk -F'\t' -v scenarios="$SCENARIOS" -v sizes="$SIZES" -v conns="$CONNS" -v pcpu="$PROXY_CPU" -v lcpu="$LOAD_CPU" "$AWK_STATS"'
	function label(s) { return s == "64" ? "64 B" : "4 KiB" }
	function cl(c) { return c (c == 1 ? " conn" : " conns") }
	# pair(s, c, a, b, f, op): per round, field f of scenario a against b
	# (op "ratio": a / b, else a - b), as a list for stat/cellf
	function pair(s, c, a, b, f, op,   r, ka, kb, x, y, out) {
		ka = s SUBSEP c SUBSEP a; kb = s SUBSEP c SUBSEP b; out = ""
		for (r in R) {
			if (!((r, ka, f) in V) || !((r, kb, f) in V)) continue
			x = V[r, ka, f]; y = V[r, kb, f]
			if (x == "NaN" || y == "NaN") continue
			if (op == "ratio") { if (y > 0) out = out " " x / y } else out = out " " x - y
		}
		return out
	}
	# overhead(s): per round at 1 connection, p50 replayed - direct - machine
	function overhead(s,   r, kr, kd, km, out) {
		kr = s SUBSEP 1 SUBSEP "replayed"; kd = s SUBSEP 1 SUBSEP "direct"; km = s SUBSEP 1 SUBSEP "machine"; out = ""
		for (r in R) if ((r, kr, "p50") in V && (r, kd, "p50") in V && (r, km, "p50") in V)
			out = out " " V[r, kr, "p50"] - V[r, kd, "p50"] - V[r, km, "p50"]
		return out
	}
	function has(s, c, t) { return (s SUBSEP c SUBSEP t SUBSEP "rps") in L }
	function med(list) { return stat(list) ? MED : "NaN" }
	NR == 1 { next }
	{
		r = $1; k = $2 SUBSEP $3 SUBSEP $4
		add(k SUBSEP "rps", $5); add(k SUBSEP "p50", $6); add(k SUBSEP "p99", $7); add(k SUBSEP "cpu", $8)
		add(k SUBSEP "bcpu", $11); add(k SUBSEP "rpr", $12); add(k SUBSEP "own", $15); add(k SUBSEP "lbusy", $16); add(k SUBSEP "hpr", $17)
		E[k] += $10
		V[r, k, "rps"] = $5; V[r, k, "p50"] = $6; V[r, k, "cpu"] = $8
		R[r] = 1
	}
	END {
		nt = split(scenarios, T, " "); ns = split(sizes, S, " "); nc = split(conns, C, " ")
		cmax = 0; one = 0
		for (ci = 1; ci <= nc; ci++) { if (C[ci] + 0 > cmax) cmax = C[ci] + 0; if (C[ci] == 1) one = 1 }
		print "| body | conns | scenario | req/s | req/s ÷ direct | p50 ms | p50 − direct ms | p99 ms | proxy CPU µs/req | backend CPU µs/req | replays/req | errors |"
		print "|---|---|---|---|---|---|---|---|---|---|---|---|"
		for (si = 1; si <= ns; si++) for (ci = 1; ci <= nc; ci++) for (ti = 1; ti <= nt; ti++) {
			s = S[si]; c = C[ci]; t = T[ti]; k = s SUBSEP c SUBSEP t
			rr = ""; pd = ""
			if (t != "direct") { rr = pair(s, c, t, "direct", "rps", "ratio"); pd = pair(s, c, t, "direct", "p50", "diff") }
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", label(s), c, t,
				cellf(L[k SUBSEP "rps"], "%.0f"), cellf(rr, "%.2f"),
				cellf(L[k SUBSEP "p50"], "%.3f"), cellf(pd, "%+.3f"), cellf(L[k SUBSEP "p99"], "%.3f"),
				cellf(L[k SUBSEP "cpu"], "%.1f"), cellf(L[k SUBSEP "bcpu"], "%.1f"),
				(t == "machine" ? "—" : cellf(L[k SUBSEP "rpr"], "%.2f")), E[k]
		}
		print ""
		print "Goal check, and the nginx peer beside it (per-round differences and ratios, then median (min–max) over rounds):"
		print ""
		for (si = 1; si <= ns; si++) {
			s = S[si]
			# 1. one replay over the source machine time, at 1 connection
			if (!one) printf "- %s: replay overhead needs CONNS to include 1\n", label(s)
			else if (has(s, 1, "replayed") && has(s, 1, "direct") && has(s, 1, "machine")) {
				o = overhead(s); stat(o); m = MED
				printf "- %s, 1 conn: replay overhead at p50 = p50(replayed) − p50(direct) − p50(machine) = %s ms (goal < 0.300): %s (p50 medians: replayed %.3f, direct %.3f, machine %.3f ms)\n",
					label(s), cellf(o, "%.3f"), (m < 0.3 ? "met" : "NOT met"),
					med(L[s SUBSEP 1 SUBSEP "replayed" SUBSEP "p50"]), med(L[s SUBSEP 1 SUBSEP "direct" SUBSEP "p50"]), med(L[s SUBSEP 1 SUBSEP "machine" SUBSEP "p50"])
			} else printf "- %s: replay overhead needs the scenarios machine, direct and replayed\n", label(s)
			# 2. a replay-cache hit against a direct request
			for (ci = 1; ci <= nc; ci++) {
				c = C[ci]
				if (!has(s, c, "cached") || !has(s, c, "direct")) continue
				pr = pair(s, c, "cached", "direct", "p50", "ratio"); if (!stat(pr)) continue; pm = MED; pmin = MIN
				rr = pair(s, c, "cached", "direct", "rps", "ratio"); if (!stat(rr)) continue; rm = MED; rmax = MAX
				cr = pair(s, c, "cached", "direct", "cpu", "ratio")
				rpr = med(L[s SUBSEP c SUBSEP "cached" SUBSEP "rpr"])
				hits = L[s SUBSEP c SUBSEP "cached" SUBSEP "hpr"]
				hits = (hits == "") ? "" : sprintf("; cache hits/req %.2f", med(hits))
				if (rpr > 0.5) verdict = sprintf("not a cache hit: %.2f replays per request%s, the replay cache is not in effect (this row measured replays)", rpr, hits)
				else verdict = (((pm <= 1.05 || pmin <= 1) && (rm >= 0.95 || rmax >= 1)) ? "met" : "NOT met") sprintf(" (replays/req %.2f%s)", rpr, hits)
				printf "- %s, %s: cached ÷ direct p50 %s, req/s %s, godwit CPU %s (goal: the same within noise): %s\n",
					label(s), cl(c), cellf(pr, "%.2f"), cellf(rr, "%.2f"), cellf(cr, "%.2f"), verdict
			}
			# 3. replayed throughput against direct, at the most connections
			if (cmax > 1 && has(s, cmax, "replayed") && has(s, cmax, "direct")) {
				rr = pair(s, cmax, "replayed", "direct", "rps", "ratio"); stat(rr); m = MED
				lb = med(L[s SUBSEP cmax SUBSEP "replayed" SUBSEP "lbusy"])
				printf "- %s, %s: replayed ÷ direct req/s %s (goal ≥ 0.80): %s (median busy: godwit %.0f%% of CPU %s in replayed runs, %.0f%% in direct; CPU %s, wrk + backend, %.0f%% and %.0f%%)\n",
					label(s), cl(cmax), cellf(rr, "%.2f"), (m >= 0.8 ? "met" : "NOT met"),
					med(L[s SUBSEP cmax SUBSEP "replayed" SUBSEP "own"]), pcpu, med(L[s SUBSEP cmax SUBSEP "direct" SUBSEP "own"]),
					lcpu, lb, med(L[s SUBSEP cmax SUBSEP "direct" SUBSEP "lbusy"])
				# what godwit alone would allow: requests per CPU second, replayed against direct
				cr = pair(s, cmax, "direct", "replayed", "cpu", "ratio")
				if (stat(cr)) printf "- %s, %s: godwit-bound estimate, direct ÷ replayed godwit CPU µs/req: %s (the req/s ratio if godwit'"'"'s core were the only limit)%s\n",
					label(s), cl(cmax), cellf(cr, "%.2f"),
					(lb >= 90 ? sprintf("; CPU %s was %.0f%% busy in the replayed runs, so their req/s is bounded by wrk + backend (two machine requests each), not by godwit", lcpu, lb) : "")
			}
			# 4. the peer, beside it: nginx X-Accel-Redirect against nginx direct,
			# and godwit against nginx, at every connection count (no goal)
			for (ci = 1; ci <= nc; ci++) {
				c = C[ci]
				if (!has(s, c, "nginx-accel") || !has(s, c, "nginx")) continue
				g = has(s, c, "replayed") && has(s, c, "direct")
				rr = pair(s, c, "nginx-accel", "nginx", "rps", "ratio")
				printf "- %s, %s: nginx: X-Accel-Redirect ÷ nginx direct req/s %s%s (median busy: nginx %.0f%% of CPU %s in nginx-accel runs, %.0f%% in nginx; CPU %s, wrk + backend, %.0f%% and %.0f%%)\n",
					label(s), cl(c), cellf(rr, "%.2f"),
					(g ? "; godwit replayed ÷ direct " cellf(pair(s, c, "replayed", "direct", "rps", "ratio"), "%.2f") : ""),
					med(L[s SUBSEP c SUBSEP "nginx-accel" SUBSEP "own"]), pcpu, med(L[s SUBSEP c SUBSEP "nginx" SUBSEP "own"]),
					lcpu, med(L[s SUBSEP c SUBSEP "nginx-accel" SUBSEP "lbusy"]), med(L[s SUBSEP c SUBSEP "nginx" SUBSEP "lbusy"])
				cr = pair(s, c, "nginx-accel", "nginx", "cpu", "ratio")
				printf "- %s, %s: CPU µs/req nginx-accel ÷ nginx %s%s\n", label(s), cl(c), cellf(cr, "%.2f"),
					(g ? "; godwit replayed ÷ direct " cellf(pair(s, c, "replayed", "direct", "cpu", "ratio"), "%.2f") : "")
				if (!g) continue
				cr = pair(s, c, "replayed", "nginx-accel", "cpu", "ratio")
				printf "- %s, %s: CPU µs/req godwit replayed ÷ nginx-accel %s (godwit direct ÷ nginx %s; medians: replayed %.1f, nginx-accel %.1f, direct %.1f, nginx %.1f µs/req)\n",
					label(s), cl(c), cellf(cr, "%.2f"), cellf(pair(s, c, "direct", "nginx", "cpu", "ratio"), "%.2f"),
					med(L[s SUBSEP c SUBSEP "replayed" SUBSEP "cpu"]), med(L[s SUBSEP c SUBSEP "nginx-accel" SUBSEP "cpu"]),
					med(L[s SUBSEP c SUBSEP "direct" SUBSEP "cpu"]), med(L[s SUBSEP c SUBSEP "nginx" SUBSEP "cpu"])
			}
			# what one replay costs godwit in CPU, and one X-Accel-Redirect nginx (no goal)
			for (ci = 1; ci <= nc; ci++) {
				c = C[ci]
				nd = ""
				if (has(s, c, "nginx-accel") && has(s, c, "nginx") && stat(d = pair(s, c, "nginx-accel", "nginx", "cpu", "diff")))
					nd = sprintf("nginx CPU of one X-Accel-Redirect, nginx-accel − nginx: %s µs/req", cellf(d, "%+.1f"))
				gd = ""
				if (has(s, c, "replayed") && has(s, c, "direct") && stat(d = pair(s, c, "replayed", "direct", "cpu", "diff")))
					gd = sprintf("godwit CPU of one replay, replayed − direct: %s µs/req", cellf(d, "%+.1f"))
				if (gd != "" || nd != "") printf "- %s, %s: %s%s%s (no goal)\n", label(s), cl(c), gd, (gd != "" && nd != "" ? "; " : ""), nd
			}
		}
	}' "$RAW"
}

{
	cat "$TMP/header.md"
	echo "- load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg) (our own load is about 2; more means other work shared the cores)"
	other_summary "$RAW" 14
	echo
	echo "Scenarios: machine = wrk straight to the backend (Host target.local), the upstream time of one"
	echo "machine; direct = via godwit to app target; replayed = via godwit to app src, whose machine"
	echo "answers fly-replay: app=target, then target's machine serves it (two machine requests);"
	echo "cached = like replayed on /c/…, whose fly-replay also asks for the replay cache, so after"
	echo "the first request godwit should go straight to target (replays/req near 0 when it does)."
	if ((want_nginx)); then
		echo "The peer ($NGINX_CONFIG): nginx = via nginx to the backend with Host target.local;"
		echo "nginx-accel = via nginx with Host accel.local, which the backend answers with 204 and"
		echo "X-Accel-Redirect: /t/…, and nginx re-sends the request to the backend as target.local"
		echo "(two backend requests, like replayed)."
	fi
	echo
	echo "Medians over rounds, (min–max) when more than one round. Ratios and differences to direct"
	echo "(godwit's, for every row) are taken per round, then summarised. proxy CPU µs/req is the"
	echo "proxy's user+sys time (/proc/PID/stat) over the run divided by the requests wrk completed:"
	echo "godwit's for direct, replayed and cached, nginx's (master + worker) for nginx and nginx-accel,"
	echo "— for machine, where the proxies idle; backend CPU µs/req likewise for the backend (both"
	echo "machines). replays/req: the rise over the run, divided by wrk's requests, of"
	echo "godwit_replays_total{outcome=\"replayed\"} for godwit's scenarios, and of the backend's"
	echo "X-Accel-Redirect answers for nginx's."
	echo
	report
} >"$TMP/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$TMP/report.md" "$OUT"
cp "$RAW" "${OUT%.md}.tsv"
cat "$TMP/report.md"
log "report written to $OUT (raw data: ${OUT%.md}.tsv)"
