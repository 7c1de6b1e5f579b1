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

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "FATAL: $*"
	exit 1
}

dur_s=${DURATION%s}
[[ $dur_s =~ ^[0-9]+$ && $dur_s -gt 0 ]] || die "DURATION must be whole seconds like 10s (got $DURATION)"
DURATION=${dur_s}s
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "ROUNDS must be a positive integer (got $ROUNDS)"
for t in $TARGETS; do [[ -n ${PORT[$t]:-} ]] || die "unknown target $t (known: direct godwit nginx haproxy)"; done
[[ $(nproc) -ge 2 ]] || log "WARNING: fewer than 2 CPUs; proxy and load share a core"

TMP=$(mktemp -d /tmp/godwit-bench.XXXXXX)
declare -A PID=()      # name -> pid of the process we started
declare -A CPU_PIDS=() # target -> pids whose CPU time counts (process + children)
STARTED=()             # names, in start order
WRK_PID=               # the running wrk (via timeout), if any

# ---------------------------------------------------------------- cleanup
descendants() { # pid -> pid and all its descendants (scans /proc for ppid)
	local root=$1 f s pp p
	local -A kids=()
	for f in /proc/[0-9]*/stat; do
		{ s=$(<"$f"); } 2>/dev/null || continue
		s=${s##*) }
		read -r _ pp _ <<<"$s"
		p=${f#/proc/}
		p=${p%/stat}
		kids[$pp]+="$p "
	done
	local queue=("$root") out=()
	while ((${#queue[@]})); do
		p=${queue[0]}
		queue=("${queue[@]:1}")
		out+=("$p")
		for s in ${kids[$p]:-}; do queue+=("$s"); done
	done
	echo "${out[@]}"
}

stop_proc() { # name
	local name=$1 pid=${PID[$1]:-} all p i
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		all=$(descendants "$pid")
		# shellcheck disable=SC2086 # a list of pids
		kill -TERM $all 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			local alive=0
			for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
			((alive)) || break
			sleep 0.1
		done
		# shellcheck disable=SC2086
		kill -KILL $all 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	unset "PID[$name]"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local i
	if [[ -n ${WRK_PID:-} ]]; then
		kill -TERM "$WRK_PID" 2>/dev/null || true
		wait "$WRK_PID" 2>/dev/null || true
	fi
	for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_proc "${STARTED[i]}"; done
	if [[ ${KEEP_TMP:-0} == 1 || $rc -ne 0 ]]; then
		log "logs kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- install
install_tools() {
	local missing=() pkg
	command -v wrk >/dev/null || missing+=(wrk)
	command -v nginx >/dev/null || missing+=(nginx)
	command -v haproxy >/dev/null || missing+=(haproxy)
	command -v taskset >/dev/null || missing+=(util-linux)
	((${#missing[@]})) || return 0
	log "installing from Debian: ${missing[*]}"
	[[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >"$TMP/apt.log" 2>&1 ||
		die "apt-get update failed (see $TMP/apt.log)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
		>>"$TMP/apt.log" 2>&1 || die "apt-get install failed (see $TMP/apt.log)"
	# The packages may have started (and enabled) system services: stop them,
	# they would add noise and are not what we measure.
	for pkg in "${missing[@]}"; do
		[[ $pkg == nginx || $pkg == haproxy ]] || continue
		if [[ -d /run/systemd/system ]]; then
			systemctl disable --now "$pkg" >/dev/null 2>&1 || true
		else
			service "$pkg" stop >/dev/null 2>&1 || true
		fi
		if pgrep -x "$pkg" >/dev/null; then
			log "WARNING: a system $pkg is still running: $(pgrep -ax "$pkg" | head -3 | tr '\n' ';')"
		fi
	done
}

# ---------------------------------------------------------------- helpers
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port -> 0 when open, 1 if the process died or 10 s passed
	local name=$1 port=$2 i
	for ((i = 0; i < 100; i++)); do
		port_open "$port" && return 0
		kill -0 "${PID[$name]}" 2>/dev/null || return 1
		sleep 0.1 # poll interval, not synchronization
	done
	return 1
}

# probe port path size -> 0 if GET returns 200 with a body of exactly size bytes
probe() {
	local port=$1 path=$2 want=$3 resp status body
	resp=$(
		exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
		printf 'GET %s HTTP/1.1\r\n%s\r\nConnection: close\r\n\r\n' "$path" "$HOST_HEADER" >&3
		timeout 5 cat <&3
	) 2>/dev/null || return 1
	status=${resp%%$'\r'*}
	body=${resp#*$'\r\n\r\n'}
	[[ $status == "HTTP/1.1 200"* && ${#body} -eq $want ]] && return 0
	log "probe :$port$path -> '${status:0:60}', body ${#body} bytes (want 200, $want)"
	return 1
}

start() { # name core cmd... ; output goes to $TMP/name.log
	local name=$1 core=$2
	shift 2
	taskset -c "$core" "$@" >"$TMP/$name.log" 2>&1 &
	PID[$name]=$!
	STARTED+=("$name")
}

clk_tck=$(getconf CLK_TCK)
cpu_ticks() { # pids... -> summed utime+stime in clock ticks
	local p s f total=0
	for p in "$@"; do
		s=$(<"/proc/$p/stat") || return 1
		s=${s##*) }
		read -r -a f <<<"$s"
		# after "comm) ": f[0] is field 3 (state); utime is field 14, stime 15
		total=$((total + f[11] + f[12]))
	done
	echo "$total"
}

# core_ticks N -> "busy total" clock ticks of CPU N from /proc/stat, where busy is
# user+nice+system+irq+softirq+steal (steal: time the hypervisor gave elsewhere)
core_ticks() {
	local -a l
	while read -r -a l; do
		if [[ ${l[0]} == "cpu$1" ]]; then
			echo "$((l[1] + l[2] + l[3] + l[6] + l[7] + l[8])) $((l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7] + l[8]))"
			return 0
		fi
	done </proc/stat
	return 1
}

path_of() { [[ $1 == 64 ]] && echo /64 || echo /4k; }
bytes_of() { [[ $1 == 64 ]] && echo 64 || echo 4096; }

# to_ms "1.23ms" -> 1.23 (wrk prints us, ms, s, m, h)
to_ms() {
	awk -v v="$1" 'BEGIN {
		n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
		f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
		if (f < 0 || n == "") { print "NaN"; exit }
		printf "%.4f\n", n * f
	}'
}

# ---------------------------------------------------------------- setup
install_tools
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
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- godwit commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
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
	local t=$1 size=$2 c=$3 d=$4
	# In the background plus wait, so that a signal to this script is handled at once.
	# --timeout 10s: a stalled request shows in the latency instead of vanishing as an error.
	timeout $((${d%s} + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"$d" --latency --timeout 10s \
		-H "$HOST_HEADER" "http://127.0.0.1:${PORT[$t]}$(path_of "$size")" >"$TMP/wrk.out" 2>&1 &
	WRK_PID=$!
	local rc=0
	wait "$WRK_PID" || rc=$?
	WRK_PID=
	return "$rc"
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
				pids=${CPU_PIDS[$t]}
				# shellcheck disable=SC2086
				cpu0=$( [[ -n $pids ]] && cpu_ticks $pids || echo 0)
				# shellcheck disable=SC2086
				bcpu0=$(cpu_ticks $BACKEND_PIDS)
				core0=$(core_ticks "$PROXY_CPU")
				run_wrk "$t" "$size" "$c" "$DURATION" || die "wrk against $t failed: $(cat "$TMP/wrk.out")"
				cpu1=0
				if [[ -n $pids ]]; then
					# shellcheck disable=SC2086
					cpu1=$(cpu_ticks $pids) || die "$t died during the run (see $TMP/$t.log)"
				fi
				# shellcheck disable=SC2086
				bcpu1=$(cpu_ticks $BACKEND_PIDS) || die "backend died during the run"
				core1=$(core_ticks "$PROXY_CPU")
				cp "$TMP/wrk.out" "$TMP/wrk-r$r-$size-c$c-$t.out"
				res=$(<"$TMP/wrk.out")
				rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$res")
				reqs=$(awk '/ requests in / {print $1}' <<<"$res")
				p50=$(awk '$1 == "50%" {print $2}' <<<"$res")
				p99=$(awk '$1 == "99%" {print $2}' <<<"$res")
				errs=$(awk '/Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
					/Non-2xx or 3xx responses:/ {e += $NF} END {print e + 0}' <<<"$res")
				[[ -n $rps && -n $reqs && -n $p50 && -n $p99 && $reqs -gt 0 ]] ||
					die "cannot parse wrk output for $t: $res"
				p50=$(to_ms "$p50")
				p99=$(to_ms "$p99")
				if [[ -n $pids ]]; then
					cpu=$(awk -v d=$((cpu1 - cpu0)) -v hz="$clk_tck" -v n="$reqs" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')
				else
					cpu=NaN
				fi
				bcpu=$(awk -v d=$((bcpu1 - bcpu0)) -v hz="$clk_tck" -v n="$reqs" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')
				read -r load1 _ </proc/loadavg
				# Share of the proxy's core used by anything but the proxy during the run.
				other=$(awk -v a="$core0" -v b="$core1" -v p=$((cpu1 - cpu0)) 'BEGIN {
					split(a, x, " "); split(b, y, " "); t = y[2] - x[2]
					o = (t > 0) ? 100 * (y[1] - x[1] - p) / t : 0; if (o < 0) o = 0; printf "%.0f", o }')
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
					"$r" "$size" "$c" "$t" "$rps" "$p50" "$p99" "$cpu" "$reqs" "$errs" "$bcpu" "$load1" "$other" >>"$RAW"
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
	awk -F'\t' -v targets="$TARGETS" -v sizes="$SIZES" -v conns="$CONNS" '
	function sortn(a, n,   i, j, v) { for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v } }
	# stat(list) sets MED, MIN, MAX from a space-separated list of numbers; returns count
	function stat(list,   a, n, m) {
		n = split(list, a, " "); if (n == 0) return 0
		sortn(a, n); MIN = a[1]; MAX = a[n]
		m = int((n + 1) / 2); MED = (n % 2) ? a[m] : (a[m] + a[m + 1]) / 2
		return n
	}
	function cellf(list, fmt,   n) {
		n = stat(list); if (n == 0) return "—"
		if (n == 1) return sprintf(fmt, MED)
		return sprintf(fmt " (" fmt "–" fmt ")", MED, MIN, MAX)
	}
	function add(k, v) { if (v != "NaN" && v != "") L[k] = L[k] " " v }
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
	awk -F'\t' -v core="$PROXY_CPU" 'NR > 1 { n++; s += $13; if ($13 > m) m = $13; if ($13 > 10) b++ }
		END { if (n) printf "- CPU %s used by other processes while a run was measured: mean %.0f%%, max %.0f%%; %d of %d runs above 10%%%s\n", core, s / n, m, b, n, (b ? " (noisy: trust the ratios and CPU µs/req, not absolute req/s or p99)" : "") }' "$RAW"
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
