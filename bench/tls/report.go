package main

import (
	"fmt"
	"maps"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/benchenv"
	"github.com/godwit/godwit/bench/internal/summary"
)

// report renders the markdown report.
func report(s *settings, e *env, runs []run) string {
	var b strings.Builder
	b.WriteString("# godwit TLS benchmark: HTTP/1.1, HTTP/2 and HTTP/3, godwit and Caddy\n\n")
	header(&b, s, e)

	fmt.Fprintf(&b, "\n## Max throughput (%d requests in flight, %v per run)\n\n", s.conc, s.duration)
	b.WriteString("Median over rounds (min–max). req/s counts answers that passed the check (200, the body's length, " +
		"the protocol asked for). godwit ÷ Caddy is taken per round, then the median (min–max). " +
		"CPU µs/req is the proxy process's CPU time per request. errors: failed requests summed over rounds; a cell with errors is not a valid measurement.\n\n")
	var rows [][]string
	for _, size := range s.sizes {
		for _, proto := range s.protocols {
			rows = append(rows, maxRow(s, e, runs, proto, size))
		}
	}
	b.WriteString(summary.Table([]string{"protocol", "size", "godwit req/s", "godwit p50 / p99 ms", "Caddy req/s", "Caddy p50 / p99 ms",
		"req/s godwit ÷ Caddy", "CPU µs/req godwit / Caddy", "errors godwit / Caddy"}, rows))

	if len(s.latRate) > 0 {
		fmt.Fprintf(&b, "\n## Latency at a fixed rate (%v per run, at most %d in flight)\n\n", s.latDur, s.conc)
		b.WriteString("vegeta sends at the rate given, whatever the answers (open loop). Median over rounds of p50 and p99; " +
			"p99 godwit − Caddy is taken per round. When a proxy answers fewer than 95 % of the rate, it was saturated and its latency is mostly queueing (marked ⚠).\n\n")
		rows = rows[:0]
		for _, size := range s.sizes {
			rate := s.latRate[size]
			if rate == 0 {
				continue
			}
			for _, proto := range s.protocols {
				rows = append(rows, rateRow(s, e, runs, proto, size, rate))
			}
		}
		b.WriteString(summary.Table([]string{"protocol", "size", "rate req/s", "godwit answered req/s", "godwit p50 / p99 ms",
			"Caddy answered req/s", "Caddy p50 / p99 ms", "p99 godwit − Caddy ms", "errors godwit / Caddy"}, rows))
	}

	b.WriteString("\n## Goal check\n\n")
	goals(&b, s, e, runs)

	b.WriteString("\n## Cores\n\n")
	cores(&b, s, e, runs)

	if len(e.failed) > 0 || hasErrors(runs) {
		b.WriteString("\n## Failures and errors\n\n")
		keys := make([]cellKey, 0, len(e.failed))
		for k := range e.failed {
			keys = append(keys, k)
		}
		sortCells(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "- %s %s %s: the check before measuring failed, not measured: `%s`\n", label(k.target), protoName[k.proto], sizeLabel(k.size), e.failed[k])
		}
		for _, r := range runs {
			if r.res.errors > 0 {
				mode := "max"
				if r.rate > 0 {
					mode = fmt.Sprintf("%d req/s", r.rate)
				}
				fmt.Fprintf(&b, "- round %d, %s %s %s, %s: %d of %d requests failed: `%s`\n", r.round, label(r.cell.target), protoName[r.cell.proto], sizeLabel(r.cell.size), mode, r.res.errors, r.res.requests, strings.Join(r.res.errs, "`; `"))
			}
		}
	}

	b.WriteString("\n## Configs\n\n")
	for _, name := range []string{"godwit", "caddy"} {
		if c, ok := e.configs[name]; ok {
			lang := "toml"
			if name == "caddy" {
				lang = "json"
			}
			fmt.Fprintf(&b, "%s (paths are in the run's temp dir):\n\n```%s\n%s```\n\n", label(name), lang, c)
		}
	}
	return b.String()
}

func header(b *strings.Builder, s *settings, e *env) {
	fmt.Fprintf(b, "- command: `go run ./bench/tls %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(b, "- date: %s; took %v\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), time.Since(e.started).Round(time.Second))
	if commit := benchenv.Commit(e.root); s.godwit != "" {
		fmt.Fprintf(b, "- godwit: prebuilt %s (tree at %s)\n", s.godwit, commit)
	} else {
		fmt.Fprintf(b, "- godwit: commit %s\n", commit)
	}
	switch {
	case e.caddyNote != "":
		fmt.Fprintf(b, "- **%s**\n", e.caddyNote)
	case e.caddyBin != "":
		how := fmt.Sprintf("go install …/cmd/caddy@%s, cached at %s", s.caddyVersion, e.caddyBin)
		if s.caddy != "" {
			how = "prebuilt " + e.caddyBin
		}
		fmt.Fprintf(b, "- Caddy: %s (%s)\n", e.caddyVer, how)
	}
	vegetaV, loadQUIC := "?", "?"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/tsenart/vegeta/v12":
				vegetaV = d.Version
			case "github.com/quic-go/quic-go":
				loadQUIC = d.Version
			}
		}
	}
	var q []string
	if e.godwitQUIC != "" {
		q = append(q, "godwit "+e.godwitQUIC)
	}
	if e.caddyQUIC != "" {
		q = append(q, "Caddy "+e.caddyQUIC)
	}
	quic := strings.Join(q, ", ")
	fmt.Fprintf(b, "- tools: %s; load: vegeta %s library, quic-go %s in the client; quic-go in the proxies: %s\n", benchenv.GoVersion(), vegetaV, loadQUIC, quic)
	fmt.Fprintf(b, "- machine: %d CPUs, %s, kernel %s; UDP buffers net.core.rmem_max %s, wmem_max %s (quic-go asks for 7.5 MB and warns when it gets less)\n",
		benchenv.CPUCount(), benchenv.CPUModel(), benchenv.Kernel(), sysctl("net/core/rmem_max"), sysctl("net/core/wmem_max"))
	pin := "not pinned"
	if e.pinned {
		pin = fmt.Sprintf("the proxies on CPU %d (taskset; GOMAXPROCS follows: 1), vegeta (GOMAXPROCS 1) and the backend on CPU %d", s.proxyCPU, s.loadCPU)
	}
	lat := "none"
	if len(s.latRate) > 0 {
		var l []string
		for _, size := range s.sizes {
			if r := s.latRate[size]; r > 0 {
				l = append(l, fmt.Sprintf("%s at %d req/s", sizeLabel(size), r))
			}
		}
		lat = strings.Join(l, ", ") + fmt.Sprintf(" for %v", s.latDur)
	}
	quick := ""
	if s.quick {
		quick = " (QUICK: a smoke test, not a measurement)"
	}
	order := make([]string, len(s.targets))
	for i, t := range s.targets {
		order[i] = label(t)
	}
	fmt.Fprintf(b, "- settings: rounds %d; max throughput %v per run with %d in flight, warm-up %v per cell; fixed-rate latency runs: %s; %s; proxy order %s in odd rounds, reversed in even ones%s\n",
		s.rounds, s.duration, s.conc, s.warmup, lat, pin, strings.Join(order, " then "), quick)
	fmt.Fprintf(b, "- load average (1/5/15 min) before: %s, after: %s (our own load is about 2; more is other work, which shows as noise)\n", e.loadBefore, e.loadAfter)
}

// series holds one target's runs of a cell in one mode, by round.
func series(runs []run, k cellKey, rate int) map[int]run {
	out := map[int]run{}
	for _, r := range runs {
		if r.cell == k && r.rate == rate {
			out[r.round] = r
		}
	}
	return out
}

func values(m map[int]run, f func(run) float64) []float64 {
	var out []float64
	for _, r := range slices.Sorted(maps.Keys(m)) {
		out = append(out, f(m[r]))
	}
	return out
}

// pairs returns f(godwit's run, Caddy's run) for every round that has
// both.
func pairs(g, c map[int]run, f func(g, c run) float64) []float64 {
	rounds := make([]int, 0, len(g))
	for r := range g {
		if _, ok := c[r]; ok {
			rounds = append(rounds, r)
		}
	}
	sort.Ints(rounds)
	out := make([]float64, 0, len(rounds))
	for _, r := range rounds {
		out = append(out, f(g[r], c[r]))
	}
	return out
}

func errorsOf(m map[int]run) uint64 {
	var n uint64
	for _, r := range m {
		n += r.res.errors
	}
	return n
}

// measured says what a target's cell shows when it has no runs: failed,
// not measured, or "".
func measured(s *settings, e *env, k cellKey) string {
	if _, bad := e.failed[k]; bad {
		return "**failed** (below)"
	}
	if !slices.Contains(s.targets, k.target) {
		return "not measured"
	}
	return ""
}

func maxRow(s *settings, e *env, runs []run, proto, size string) []string {
	gk, ck := cellKey{"godwit", proto, size}, cellKey{"caddy", proto, size}
	g, c := series(runs, gk, 0), series(runs, ck, 0)
	rps := func(k cellKey, m map[int]run) (string, string) {
		if len(m) == 0 {
			if why := measured(s, e, k); why != "" {
				return why, "—"
			}
			return "—", "—"
		}
		return summary.Cell(values(m, func(r run) float64 { return r.res.rps }), "%.0f"),
			fmt.Sprintf("%.2f / %.2f", summary.Median(values(m, func(r run) float64 { return r.res.p50 })), summary.Median(values(m, func(r run) float64 { return r.res.p99 })))
	}
	grps, glat := rps(gk, g)
	crps, clat := rps(ck, c)
	ratio := summary.Cell(pairs(g, c, func(g, c run) float64 { return g.res.rps / c.res.rps }), "%.2f")
	cpu := fmt.Sprintf("%s / %s", cellMed(values(g, func(r run) float64 { return r.cpuUs }), "%.0f"), cellMed(values(c, func(r run) float64 { return r.cpuUs }), "%.0f"))
	errs := fmt.Sprintf("%s / %s", errCount(g), errCount(c))
	return []string{protoName[proto], sizeLabel(size), grps, glat, crps, clat, ratio, cpu, errs}
}

func rateRow(s *settings, e *env, runs []run, proto, size string, rate int) []string {
	gk, ck := cellKey{"godwit", proto, size}, cellKey{"caddy", proto, size}
	g, c := series(runs, gk, rate), series(runs, ck, rate)
	one := func(k cellKey, m map[int]run) (string, string) {
		if len(m) == 0 {
			if why := measured(s, e, k); why != "" {
				return why, "—"
			}
			return "—", "—"
		}
		ans := values(m, func(r run) float64 { return r.res.rps })
		a := summary.Cell(ans, "%.0f")
		if summary.Median(ans) < 0.95*float64(rate) {
			a += " ⚠"
		}
		return a, fmt.Sprintf("%.2f / %.2f", summary.Median(values(m, func(r run) float64 { return r.res.p50 })), summary.Median(values(m, func(r run) float64 { return r.res.p99 })))
	}
	ga, glat := one(gk, g)
	ca, clat := one(ck, c)
	d := summary.Cell(pairs(g, c, func(g, c run) float64 { return g.res.p99 - c.res.p99 }), "%+.2f")
	return []string{protoName[proto], sizeLabel(size), fmt.Sprint(rate), ga, glat, ca, clat, d, fmt.Sprintf("%s / %s", errCount(g), errCount(c))}
}

func errCount(m map[int]run) string {
	if len(m) == 0 {
		return "—"
	}
	return fmt.Sprint(errorsOf(m))
}

// goals writes the goal check: godwit's HTTP/3 req/s at least Caddy's
// HTTP/3, its HTTP/2 at least Caddy's HTTP/2, at every size.
func goals(b *strings.Builder, s *settings, e *env, runs []run) {
	b.WriteString("Goal: godwit's HTTP/3 throughput at least Caddy's HTTP/3, and its HTTP/2 at least Caddy's HTTP/2 (max-throughput req/s, " +
		"godwit ÷ Caddy per round, median ≥ 1.00, no errors).\n\n")
	var met, notMet, none int
	for _, proto := range []string{"h3", "h2"} {
		if !slices.Contains(s.protocols, proto) {
			continue
		}
		for _, size := range s.sizes {
			gk, ck := cellKey{"godwit", proto, size}, cellKey{"caddy", proto, size}
			g, c := series(runs, gk, 0), series(runs, ck, 0)
			line := fmt.Sprintf("- %s, %s: ", protoName[proto], sizeLabel(size))
			switch {
			case e.failed[gk] != "":
				line += fmt.Sprintf("**not met**: godwit's %s failed its check: `%s`", protoName[proto], e.failed[gk])
				notMet++
			case len(g) == 0:
				line += "godwit not measured"
				none++
			case e.failed[ck] != "":
				line += fmt.Sprintf("no comparison: Caddy's %s failed its check: `%s`", protoName[proto], e.failed[ck])
				none++
			case len(c) == 0:
				line += "no comparison: Caddy not measured"
				none++
			default:
				ratios := pairs(g, c, func(g, c run) float64 { return g.res.rps / c.res.rps })
				cpu := pairs(g, c, func(g, c run) float64 { return g.cpuUs / c.cpuUs })
				verdict := "**met**"
				switch {
				case errorsOf(g)+errorsOf(c) > 0:
					verdict = "**not valid** (errors)"
					none++
				case summary.Median(ratios) < 1:
					verdict = "**not met**"
					notMet++
				default:
					met++
				}
				line += fmt.Sprintf("godwit ÷ Caddy req/s %s: %s (godwit %s req/s, Caddy %s; CPU µs/req godwit ÷ Caddy %s)",
					summary.Cell(ratios, "%.2f"), verdict, cellMed(values(g, func(r run) float64 { return r.res.rps }), "%.0f"),
					cellMed(values(c, func(r run) float64 { return r.res.rps }), "%.0f"), summary.Cell(cpu, "%.2f"))
			}
			b.WriteString(line + "\n")
		}
	}
	switch {
	case notMet > 0:
		fmt.Fprintf(b, "\nGoal **not met** in %d of %d cells.\n", notMet, met+notMet+none)
	case met > 0 && none == 0:
		b.WriteString("\nGoal **met** in every cell.\n")
	case met > 0:
		fmt.Fprintf(b, "\nGoal met in the %d cells compared; %d not compared.\n", met, none)
	default:
		b.WriteString("\nGoal **not checked**: no cell had both proxies measured without errors.\n")
	}
}

// cores writes how busy the proxies' core and the load core were in the
// max-throughput runs, and when the load core was the limit.
func cores(b *strings.Builder, s *settings, e *env, runs []run) {
	if !e.pinned {
		b.WriteString("Not pinned: the proxies, vegeta and the backend shared every core.\n")
		return
	}
	fmt.Fprintf(b, "Max-throughput runs, median (min–max) over runs. CPU %d runs the proxy measured (the other proxy idles there); CPU %d runs vegeta and the backend.\n\n", s.proxyCPU, s.loadCPU)
	var proxyBound, loadBound, disturbed, total int
	for _, name := range s.targets {
		var own, core, load []float64
		for _, r := range runs {
			if r.rate != 0 || r.cell.target != name {
				continue
			}
			own, core, load = append(own, r.proxyBusy), append(core, r.coreBusy), append(load, r.loadBusy)
			total++
			switch {
			case r.proxyBusy >= 90:
				proxyBound++
			case r.loadBusy >= 95 && r.coreBusy < 90:
				loadBound++
			}
			if r.coreBusy-r.proxyBusy >= 20 {
				disturbed++
			}
		}
		fmt.Fprintf(b, "- %s runs: %s's share of CPU %d %s %%, CPU %d busy (anyone) %s %%, CPU %d busy %s %%\n",
			label(name), label(name), s.proxyCPU, summary.Cell(own, "%.0f"), s.proxyCPU, summary.Cell(core, "%.0f"), s.loadCPU, summary.Cell(load, "%.0f"))
	}
	fmt.Fprintf(b, "- proxy-bound runs (the proxy used ≥ 90 %% of its core): %d of %d; these compare the proxies' throughput.\n", proxyBound, total)
	fmt.Fprintf(b, "- load-bound runs (CPU %d ≥ 95 %% busy while CPU %d was < 90 %%): %d of %d. There the load generator set the pace, and req/s ÷ Caddy "+
		"understates the difference between the proxies; CPU µs/req still compares them.\n", s.loadCPU, s.proxyCPU, loadBound, total)
	fmt.Fprintf(b, "- disturbed runs (other processes took ≥ 20 %% of CPU %d): %d of %d. Their req/s says more about the machine than the proxy; "+
		"CPU µs/req is less affected. Take figures from a run where this is 0.\n", s.proxyCPU, disturbed, total)
}

func hasErrors(runs []run) bool {
	for _, r := range runs {
		if r.res.errors > 0 {
			return true
		}
	}
	return false
}

func sortCells(ks []cellKey) {
	sort.Slice(ks, func(i, j int) bool {
		a, b := ks[i], ks[j]
		if a.size != b.size {
			return a.size > b.size // "small" before "1m"
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		return a.target > b.target // godwit before caddy
	})
}

// runsTSV is the raw data: one line per run.
func runsTSV(runs []run) string {
	var b strings.Builder
	b.WriteString("round\ttarget\tprotocol\tsize\trate\trps\tsent_rps\tp50_ms\tp99_ms\trequests\terrors\tproxy_cpu_us_per_req\tproxy_pct_of_core\tproxy_core_busy_pct\tload_core_busy_pct\tloadavg1\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "%d\t%s\t%s\t%s\t%d\t%.1f\t%.1f\t%.3f\t%.3f\t%d\t%d\t%.1f\t%.0f\t%.0f\t%.0f\t%s\n",
			r.round, r.cell.target, r.cell.proto, r.cell.size, r.rate, r.res.rps, r.res.rate, r.res.p50, r.res.p99,
			r.res.requests, r.res.errors, r.cpuUs, r.proxyBusy, r.coreBusy, r.loadBusy, r.load1)
	}
	return b.String()
}

func sysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// cellMed formats the median alone; "—" for none.
func cellMed(xs []float64, format string) string {
	if len(summary.Finite(xs)) == 0 {
		return "—"
	}
	return fmt.Sprintf(format, summary.Median(xs))
}
