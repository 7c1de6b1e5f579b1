# shellcheck shell=bash disable=SC2034 # globals set here are used by the scripts that source this
# Functions shared by bench/run.sh and bench/replay.sh; sourced, never run.
# See bench/README.md.
#
# The caller sets, before using what needs them:
#   LOG_TAG          prefix of progress lines (default "bench")
#   PROXY_CPU        core of the proxy under test (core_ticks, measure)
#   LOAD_CPU         core of wrk and the backend (wrk_run)
#   BACKEND_PIDS     pids whose CPU counts as the backend's (measure)
# and bench_init creates TMP, PID, CPU_PIDS, STARTED and WRK_PID and installs
# the cleanup trap.

LOG_TAG=${LOG_TAG:-bench}

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$LOG_TAG" -1 "$*" >&2; }
die() {
	log "FATAL: $*"
	exit 1
}

# bench_init NAME: a temp dir /tmp/NAME.XXXXXX in TMP, the process tables,
# and the trap that stops every process we started on any exit.
bench_init() {
	TMP=$(mktemp -d "/tmp/$1.XXXXXX")
	declare -gA PID=()      # name -> pid of the process we started
	declare -gA CPU_PIDS=() # target -> pids whose CPU time counts (process + children)
	STARTED=()              # names, in start order
	WRK_PID=                # the running wrk (via timeout), if any
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

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

# ---------------------------------------------------------------- install
# need_tools COMMAND...: apt-get installs the packages of the missing commands
# (taskset comes with util-linux). Needs root only when something is missing.
need_tools() {
	local missing=() c pkg
	for c in "$@"; do
		command -v "$c" >/dev/null && continue
		case $c in
		taskset) missing+=(util-linux) ;;
		*) missing+=("$c") ;;
		esac
	done
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

# probe port path size [host-header] -> 0 if GET returns 200 with a body of
# exactly size bytes; the header defaults to $HOST_HEADER
probe() {
	local port=$1 path=$2 want=$3 host=${4:-$HOST_HEADER} resp status body
	resp=$(
		exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
		printf 'GET %s HTTP/1.1\r\n%s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
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

# machine_info: the report's first header lines (date, commit, machine).
machine_info() {
	local root
	root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- godwit commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
}

# ---------------------------------------------------------------- wrk runs
# wrk_run url host-header duration conns -> wrk's output in $TMP/wrk.out; the
# exit status is wrk's (or timeout's).
wrk_run() {
	local url=$1 host=$2 d=$3 c=$4
	# In the background plus wait, so that a signal to this script is handled at once.
	# --timeout 10s: a stalled request shows in the latency instead of vanishing as an error.
	timeout $((${d%s} + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"$d" --latency --timeout 10s \
		-H "$host" "$url" >"$TMP/wrk.out" 2>&1 &
	WRK_PID=$!
	local rc=0
	wait "$WRK_PID" || rc=$?
	WRK_PID=
	return "$rc"
}

# measure name "cpu-pids" url host-header duration conns: one wrk run, with
# the CPU time of cpu-pids ("" for none) and of $BACKEND_PIDS around it. Sets
#   M_RPS M_REQS M_P50 M_P99 (ms) M_ERRS (socket errors + non-2xx/3xx)
#   M_CPU M_BCPU (µs per request; M_CPU is NaN without cpu-pids)
#   M_LOAD1 (1-minute load average after the run)
#   M_OTHER (% of $PROXY_CPU used by anything but cpu-pids during the run)
#   M_OWN (% of one core that cpu-pids used), M_LOADBUSY (% of $LOAD_CPU busy)
# and dies if wrk fails, its output cannot be parsed or a process died.
measure() {
	local name=$1 pids=$2 url=$3 host=$4 d=$5 c=$6
	local cpu0 cpu1 bcpu0 bcpu1 core0 core1 lcore0 lcore1 res
	# shellcheck disable=SC2086 # lists of pids
	cpu0=$( [[ -n $pids ]] && cpu_ticks $pids || echo 0)
	# shellcheck disable=SC2086
	bcpu0=$(cpu_ticks $BACKEND_PIDS)
	core0=$(core_ticks "$PROXY_CPU")
	lcore0=$(core_ticks "$LOAD_CPU")
	wrk_run "$url" "$host" "$d" "$c" || die "wrk against $name failed: $(cat "$TMP/wrk.out")"
	cpu1=0
	if [[ -n $pids ]]; then
		# shellcheck disable=SC2086
		cpu1=$(cpu_ticks $pids) || die "$name died during the run (see $TMP/$name.log)"
	fi
	# shellcheck disable=SC2086
	bcpu1=$(cpu_ticks $BACKEND_PIDS) || die "backend died during the run"
	core1=$(core_ticks "$PROXY_CPU")
	lcore1=$(core_ticks "$LOAD_CPU")
	res=$(<"$TMP/wrk.out")
	M_RPS=$(awk '/^Requests\/sec:/ {print $2}' <<<"$res")
	M_REQS=$(awk '/ requests in / {print $1}' <<<"$res")
	M_P50=$(awk '$1 == "50%" {print $2}' <<<"$res")
	M_P99=$(awk '$1 == "99%" {print $2}' <<<"$res")
	M_ERRS=$(awk '/Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
		/Non-2xx or 3xx responses:/ {e += $NF} END {print e + 0}' <<<"$res")
	[[ -n $M_RPS && -n $M_REQS && -n $M_P50 && -n $M_P99 && $M_REQS -gt 0 ]] ||
		die "cannot parse wrk output for $name: $res"
	M_P50=$(to_ms "$M_P50")
	M_P99=$(to_ms "$M_P99")
	if [[ -n $pids ]]; then
		M_CPU=$(awk -v d=$((cpu1 - cpu0)) -v hz="$clk_tck" -v n="$M_REQS" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')
	else
		M_CPU=NaN
	fi
	M_BCPU=$(awk -v d=$((bcpu1 - bcpu0)) -v hz="$clk_tck" -v n="$M_REQS" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')
	read -r M_LOAD1 _ </proc/loadavg
	# Share of the proxy's core used by anything but the proxy during the run.
	M_OTHER=$(awk -v a="$core0" -v b="$core1" -v p=$((cpu1 - cpu0)) 'BEGIN {
		split(a, x, " "); split(b, y, " "); t = y[2] - x[2]
		o = (t > 0) ? 100 * (y[1] - x[1] - p) / t : 0; if (o < 0) o = 0; printf "%.0f", o }')
	read -r M_OWN M_LOADBUSY < <(awk -v a="$core0" -v b="$core1" -v la="$lcore0" -v lb="$lcore1" -v p=$((cpu1 - cpu0)) 'BEGIN {
		split(a, x, " "); split(b, y, " "); t = y[2] - x[2]
		split(la, lx, " "); split(lb, ly, " "); lt = ly[2] - lx[2]
		printf "%.0f %.0f\n", (t > 0) ? 100 * p / t : 0, (lt > 0) ? 100 * (ly[1] - lx[1]) / lt : 0 }')
}

# ---------------------------------------------------------------- report
# other_summary raw.tsv column: the report line on how much of $PROXY_CPU
# other processes used while runs were measured (column: M_OTHER's, 1-based).
other_summary() {
	awk -F'\t' -v core="$PROXY_CPU" -v col="$2" 'NR > 1 { n++; s += $col; if ($col > m) m = $col; if ($col > 10) b++ }
		END { if (n) printf "- CPU %s used by other processes while a run was measured: mean %.0f%%, max %.0f%%; %d of %d runs above 10%%%s\n", core, s / n, m, b, n, (b ? " (noisy: trust the ratios and CPU µs/req, not absolute req/s or p99)" : "") }' "$1"
}

# AWK_STATS: awk functions for the reports, to prepend to a program.
#   stat(list) sets MED, MIN, MAX from a space-separated list of numbers and
#   returns its length; cellf(list, fmt) formats "median (min–max)", or "—"
#   for an empty list; add(k, v) appends v to L[k] unless it is NaN or "".
# shellcheck disable=SC2016 # awk code, not shell
AWK_STATS='
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
'
