package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/benchenv"
	"github.com/godwit/godwit/bench/internal/child"
	"github.com/godwit/godwit/bench/internal/summary"
)

// bhRun is one load run of the backhaul benchmark.
type bhRun struct {
	round, conns int
	scenario     string // machine, direct-P, via-P
	res          loadResult
	cpuA, cpuB   float64 // µs per request of the accepting edge and the owner; NaN for machine
	cpuM         float64 // the backend's µs per request
	coreOther    float64 // % of the proxy core used by other processes
	loadBusy     float64 // % of the load core busy
	load1        string
}

// bhPair is the two edges of one protocol.
type bhPair struct {
	protocol   string
	a, b       *edge
	capA, capB *cpuCap // nil: no capped runs
}

// capSuffix marks a scenario run with each edge capped at cfg.edgeCap.
const capSuffix = "@cap"

func runBackhaul(ctx context.Context, cfg *config) (string, error) {
	backendBin := filepath.Join(tmpDir, "backend")
	if err := benchenv.Build(ctx, repoRoot, backendBin, "./bench/backend"); err != nil {
		return "", err
	}
	subnet, err := newSubnet()
	if err != nil {
		return "", err
	}
	backendAddr := subnet + "100:18000"
	backend, err := child.Start(child.Command(cfg.loadCPU, backendBin, "-addr", backendAddr), "backend", filepath.Join(tmpDir, "backend.log"), nil)
	if err != nil {
		return "", err
	}
	defer backend.Kill()
	if err := backend.WaitTCP(ctx, backendAddr, 10*time.Second); err != nil {
		return "", err
	}

	var pairs []bhPair
	for _, p := range cfg.protocols {
		logf("backhaul (%s): starting edge-a (iad, no machines) and edge-b (cdg, owns m-b = the backend), both on CPU %d", p, cfg.proxyCPU)
		f, err := startFleet(ctx, fleetSpec{tag: "bh-" + p, protocol: p, cpu: cfg.proxyCPU,
			edges: []edgeSpec{
				{name: "edge-a", region: "iad"},
				{name: "edge-b", region: "cdg", machines: map[string]string{"m-b": backendAddr}},
			}})
		if err != nil {
			return "", err
		}
		defer f.stop()
		pair := bhPair{protocol: p, a: f.byName["edge-a"], b: f.byName["edge-b"]}
		if err := waitUntil(ctx, 30*time.Second, "edge-a ("+p+") seeing m-b reachable", func() bool { return pair.a.allReachable([]string{"m-b"}) }); err != nil {
			return "", err
		}
		if cfg.edgeCap > 0 {
			var errA, errB error
			pair.capA, errA = newCPUCap("godwit-bench-"+p+"-a", pair.a.p.Pid())
			pair.capB, errB = newCPUCap("godwit-bench-"+p+"-b", pair.b.p.Pid())
			defer func() { pair.a.p.Stop(stopGrace); pair.b.p.Stop(stopGrace); pair.capA.remove(); pair.capB.remove() }()
			if err := errors.Join(errA, errB); err != nil {
				logf("WARNING: no capped runs: cannot give each edge a cgroup of its own: %v", err)
				cfg.edgeCap = 0
			}
		}
		pairs = append(pairs, pair)
	}

	// Checks before measuring: each path answers 200 with the 64-byte
	// body, and only the via path crosses the backhaul.
	var checks []string
	client := &http.Client{Timeout: 5 * time.Second}
	check := func(name, addr string, a *edge, wantBackhaul float64) error {
		metric := `godwit_backhaul_requests_total{region="cdg"}`
		before := 0.0
		if a != nil {
			if v, err := a.metrics(adminClient, metric); err == nil {
				before = v[metric]
			}
		}
		st, body, err := get(client, addr, "/64")
		if err != nil || st != 200 || len(body) != 64 {
			return fmt.Errorf("check %s: GET /64 via %s: %d, %d bytes, err %v; want 200 with 64 bytes", name, addr, st, len(body), err)
		}
		line := fmt.Sprintf("%s: GET /64 → %d, %d bytes", name, st, len(body))
		if a != nil {
			v, err := a.metrics(adminClient, metric)
			if wantBackhaul > 0 && err != nil {
				return fmt.Errorf("check %s: %v", name, err)
			}
			d := v[metric] - before
			if d != wantBackhaul {
				return fmt.Errorf("check %s: edge-a's %s went up by %v, want %v", name, metric, d, wantBackhaul)
			}
			line += fmt.Sprintf(", edge-a's backhaul requests +%v", d)
		}
		checks = append(checks, line)
		return nil
	}
	if err := check("machine", backendAddr, nil, 0); err != nil {
		return "", err
	}
	for _, p := range pairs {
		if err := check("direct-"+p.protocol, p.b.http, p.a, 0); err != nil {
			return "", err
		}
		if err := check("via-"+p.protocol, p.a.http, p.a, 1); err != nil {
			return "", err
		}
	}
	for _, c := range checks {
		logf("backhaul: check %s", c)
	}

	scenarios := []string{"machine"}
	for _, p := range pairs {
		scenarios = append(scenarios, "direct-"+p.protocol, "via-"+p.protocol)
	}
	maxC := slices.Max(cfg.conns)
	if cfg.edgeCap > 0 {
		for _, p := range pairs {
			scenarios = append(scenarios, "direct-"+p.protocol+capSuffix, "via-"+p.protocol+capSuffix)
		}
	}
	target := func(s string) (addr string, pair *bhPair) {
		s = strings.TrimSuffix(s, capSuffix)
		if s == "machine" {
			return backendAddr, nil
		}
		for i := range pairs {
			p := &pairs[i]
			switch s {
			case "direct-" + p.protocol:
				return p.b.http, p
			case "via-" + p.protocol:
				return p.a.http, p
			}
		}
		panic("unknown scenario " + s)
	}
	backendPid := backend.Pid()

	logf("backhaul: warm-up, %v per scenario at 64 connections", cfg.warmup)
	for _, s := range scenarios {
		if strings.HasSuffix(s, capSuffix) {
			continue
		}
		addr, _ := target(s)
		if _, out, err := runLoad(ctx, cfg, "http://"+addr+"/64", appHost, 64, cfg.warmup); err != nil {
			return "", fmt.Errorf("warm-up of %s: %v\n%s", s, err, out)
		}
	}

	var runs []bhRun
	capped := 0
	for _, s := range scenarios {
		if strings.HasSuffix(s, capSuffix) {
			capped++
		}
	}
	total := cfg.rounds * (len(cfg.conns)*(len(scenarios)-capped) + capped)
	logf("backhaul: measuring %d runs of %v (about %.0f min)", total, cfg.duration, math.Ceil(float64(total)*(cfg.duration.Seconds()+0.5)/60))
	k := 0
	for r := 1; r <= cfg.rounds; r++ {
		for _, c := range cfg.conns {
			for i := range scenarios {
				s := scenarios[(i+r-1)%len(scenarios)] // rotated every round
				isCapped := strings.HasSuffix(s, capSuffix)
				if isCapped && c != maxC {
					continue // capped runs measure throughput only
				}
				addr, pair := target(s)
				if isCapped {
					if err := errors.Join(pair.capA.set(cfg.edgeCap), pair.capB.set(cfg.edgeCap)); err != nil {
						return "", fmt.Errorf("cap the edges of %s: %w", s, err)
					}
				}
				var pids []int
				if pair != nil {
					pids = []int{pair.a.p.Pid(), pair.b.p.Pid()}
				}
				t0 := ticks(append(pids, backendPid))
				pb0, pt0 := benchenv.CoreTicks(cfg.proxyCPU)
				lb0, lt0 := benchenv.CoreTicks(cfg.loadCPU)
				res, out, err := runLoad(ctx, cfg, "http://"+addr+"/64", appHost, c, cfg.duration)
				if isCapped {
					if err := errors.Join(pair.capA.set(0), pair.capB.set(0)); err != nil {
						return "", fmt.Errorf("uncap the edges of %s: %w", s, err)
					}
				}
				if err != nil {
					return "", fmt.Errorf("%s, %d conns: %v\n%s", s, c, err, out)
				}
				t1 := ticks(append(pids, backendPid))
				pb1, pt1 := benchenv.CoreTicks(cfg.proxyCPU)
				lb1, lt1 := benchenv.CoreTicks(cfg.loadCPU)
				for _, pid := range append(pids, backendPid) {
					if t1[pid] < 0 {
						return "", fmt.Errorf("%s, %d conns: process %d died during the run (logs in %s)", s, c, pid, tmpDir)
					}
				}
				usPer := func(pid int) float64 {
					return float64(t1[pid]-t0[pid]) / benchenv.TicksPerSecond() * 1e6 / float64(res.Requests)
				}
				run := bhRun{round: r, conns: c, scenario: s, res: res, cpuA: math.NaN(), cpuB: math.NaN(), cpuM: usPer(backendPid)}
				ours := int64(0)
				if pair != nil {
					run.cpuA, run.cpuB = usPer(pids[0]), usPer(pids[1])
					ours = t1[pids[0]] - t0[pids[0]] + t1[pids[1]] - t0[pids[1]]
				}
				if pt1 > pt0 {
					run.coreOther = max(0, 100*float64(pb1-pb0-ours)/float64(pt1-pt0))
				}
				if lt1 > lt0 {
					run.loadBusy = 100 * float64(lb1-lb0) / float64(lt1-lt0)
				}
				run.load1 = strings.Fields(benchenv.LoadAvg())[0]
				runs = append(runs, run)
				k++
				logf("[%d/%d] round %d c=%d %s: %.0f req/s p50=%.3fms p99=%.3fms cpu A=%.1f B=%.1f machine=%.1f µs/req errors=%d others-on-CPU%d=%.0f%% CPU%d-busy=%.0f%%",
					k, total, r, c, s, res.RPS, res.P50, res.P99, run.cpuA, run.cpuB, run.cpuM, res.Errors, cfg.proxyCPU, run.coreOther, cfg.loadCPU, run.loadBusy)
				if res.Errors > 0 {
					logf("WARNING: %s c=%d: %d errors/non-2xx", s, c, res.Errors)
				}
			}
		}
	}
	writeTSV("backhaul", backhaulTSV(runs))
	return backhaulReport(cfg, scenarios, checks, runs), nil
}

// ticks reads the CPU ticks of pids; -1 for a process that is gone.
func ticks(pids []int) map[int]int64 {
	out := make(map[int]int64, len(pids))
	for _, p := range pids {
		t, err := benchenv.ProcessTicks(p)
		if err != nil {
			t = -1
		}
		out[p] = t
	}
	return out
}

func backhaulTSV(runs []bhRun) [][]string {
	rows := [][]string{{"round", "conns", "scenario", "rps", "p50_ms", "p99_ms", "requests", "errors", "edge_a_cpu_us_per_req", "edge_b_cpu_us_per_req", "backend_cpu_us_per_req", "proxy_core_other_pct", "load_core_busy_pct", "loadavg1"}}
	for _, r := range runs {
		rows = append(rows, []string{fmt.Sprint(r.round), fmt.Sprint(r.conns), r.scenario, fmt.Sprintf("%.1f", r.res.RPS),
			fmt.Sprintf("%.4f", r.res.P50), fmt.Sprintf("%.4f", r.res.P99), fmt.Sprint(r.res.Requests), fmt.Sprint(r.res.Errors),
			fmt.Sprintf("%.2f", r.cpuA), fmt.Sprintf("%.2f", r.cpuB), fmt.Sprintf("%.2f", r.cpuM), fmt.Sprintf("%.0f", r.coreOther), fmt.Sprintf("%.0f", r.loadBusy), r.load1})
	}
	return rows
}

func backhaulReport(cfg *config, scenarios, checks []string, runs []bhRun) string {
	// V[round][conns][scenario]
	type key struct {
		r, c int
		s    string
	}
	V := map[key]bhRun{}
	for _, r := range runs {
		V[key{r.round, r.conns, r.scenario}] = r
	}
	col := func(c int, s string, f func(bhRun) float64) []float64 {
		var out []float64
		for r := 1; r <= cfg.rounds; r++ {
			if v, ok := V[key{r, c, s}]; ok {
				out = append(out, f(v))
			}
		}
		return out
	}
	// pair: per round, f(a) op f(b)
	pair := func(c int, a, b string, f func(bhRun) float64, ratio bool) []float64 {
		var out []float64
		for r := 1; r <= cfg.rounds; r++ {
			va, ok1 := V[key{r, c, a}]
			vb, ok2 := V[key{r, c, b}]
			if !ok1 || !ok2 {
				continue
			}
			if ratio {
				out = append(out, f(va)/f(vb))
			} else {
				out = append(out, f(va)-f(vb))
			}
		}
		return out
	}
	rps := func(r bhRun) float64 { return r.res.RPS }
	p50 := func(r bhRun) float64 { return r.res.P50 }
	p99 := func(r bhRun) float64 { return r.res.P99 }
	cpuA := func(r bhRun) float64 { return r.cpuA }
	cpuB := func(r bhRun) float64 { return r.cpuB }
	cpuAB := func(r bhRun) float64 { return r.cpuA + r.cpuB }
	cpuM := func(r bhRun) float64 { return r.cpuM }
	errs := func(c int, s string) int64 {
		var n int64
		for r := 1; r <= cfg.rounds; r++ {
			n += V[key{r, c, s}].res.Errors
		}
		return n
	}
	protoOf := func(s string) string { _, p, _ := strings.Cut(s, "-"); return p }

	var b strings.Builder
	fmt.Fprintf(&b, "## c. Backhaul cost\n\n")
	fmt.Fprintf(&b, "Per protocol, two edges: edge-a (iad, no machines) and edge-b (cdg, owning m-b, which is bench/backend answering GET /64 with 64 bytes). "+
		"The edges of every protocol run at once, all pinned to CPU %d (GOMAXPROCS follows the affinity: 1); %s and the backend on CPU %d. "+
		"Scenarios marked @cap run only at the most connections, with each edge of the pair in a cgroup of its own capped at -edge-cap of a core: "+
		"each edge then has a capacity of its own, equal for all, as edges on separate machines have, and the throughput ratio measures what the backhaul costs the busier edge. "+
		"Scenarios: machine = load → backend; direct-P = load → edge-b → machine (edge-b's own machine); via-P = load → edge-a → backhaul P → edge-b → machine. "+
		"Every cell is measured once per round, the order rotated each round; ratios and differences are taken per round against direct of the same protocol, then median (min–max). "+
		"CPU µs/req: each edge's user+sys time (/proc/PID/stat) over the run divided by the requests completed.\n\n",
		cfg.proxyCPU, loadName(cfg), cfg.loadCPU)
	b.WriteString("Checks before measuring (one request each):\n\n")
	for _, c := range checks {
		b.WriteString("- " + c + "\n")
	}
	b.WriteString("\n")
	var rows [][]string
	for _, c := range cfg.conns {
		for _, s := range scenarios {
			if strings.HasSuffix(s, capSuffix) && c != slices.Max(cfg.conns) {
				continue
			}
			direct := "direct-" + protoOf(s)
			rr, pd := "—", "—"
			if strings.HasPrefix(s, "via-") {
				rr = summary.Cell(pair(c, s, direct, rps, true), "%.2f")
				pd = summary.Cell(pair(c, s, direct, p50, false), "%+.3f")
			}
			a, bb := summary.Cell(col(c, s, cpuA), "%.1f"), summary.Cell(col(c, s, cpuB), "%.1f")
			if s == "machine" {
				a, bb = "—", "—"
			}
			rows = append(rows, []string{fmt.Sprint(c), s, summary.Cell(col(c, s, rps), "%.0f"), rr, summary.Cell(col(c, s, p50), "%.3f"), pd,
				summary.Cell(col(c, s, p99), "%.3f"), a, bb, summary.Cell(col(c, s, cpuM), "%.1f"), fmt.Sprint(errs(c, s))})
		}
	}
	b.WriteString(summary.Table([]string{"conns", "scenario", "req/s", "req/s ÷ direct", "p50 ms", "p50 − direct ms", "p99 ms", "edge-a CPU µs/req", "edge-b CPU µs/req", "backend CPU µs/req", "errors"}, rows))

	minC, maxC := cfg.conns[0], cfg.conns[0]
	for _, c := range cfg.conns {
		minC, maxC = min(minC, c), max(maxC, c)
	}
	b.WriteString("\nGoal check (goals: under 0.2 ms added at p50, at least 0.7x the throughput), per round then median (min–max):\n\n")
	for _, p := range cfg.protocols {
		via, direct := "via-"+p, "direct-"+p
		d := pair(minC, via, direct, p50, false)
		fmt.Fprintf(&b, "- %s, %d conn: added latency at p50 = p50(via) − p50(direct) = %s ms (goal < 0.200): %s (p50 medians: via %.3f, direct %.3f, machine %.3f ms)\n",
			p, minC, summary.Cell(d, "%.3f"), verdict(summary.Median(d) < 0.2), summary.Median(col(minC, via, p50)), summary.Median(col(minC, direct, p50)), summary.Median(col(minC, "machine", p50)))
		if maxC == minC {
			continue
		}
		r := pair(maxC, via, direct, rps, true)
		fmt.Fprintf(&b, "- %s, %d conns: via ÷ direct req/s = %s (goal ≥ 0.70): %s (medians %.0f and %.0f req/s; CPU %d busy: edge-a + edge-b %.0f + %.0f µs/req in via, edge-b %.0f µs/req in direct; CPU %d %.0f%% busy in via runs)\n",
			p, maxC, summary.Cell(r, "%.2f"), verdict(summary.Median(r) >= 0.7), summary.Median(col(maxC, via, rps)), summary.Median(col(maxC, direct, rps)), cfg.proxyCPU,
			summary.Median(col(maxC, via, cpuA)), summary.Median(col(maxC, via, cpuB)), summary.Median(col(maxC, direct, cpuB)),
			cfg.loadCPU, summary.Median(col(maxC, via, func(r bhRun) float64 { return r.loadBusy })))
		// Both edges share one core here; on separate machines each has
		// its own, and the busier one bounds the throughput.
		var own, same []float64
		for r := 1; r <= cfg.rounds; r++ {
			vd, ok1 := V[key{r, maxC, direct}]
			vv, ok2 := V[key{r, maxC, via}]
			if !ok1 || !ok2 {
				continue
			}
			own = append(own, vd.cpuB/max(vv.cpuA, vv.cpuB))
			same = append(same, vd.cpuB/(vv.cpuA+vv.cpuB))
		}
		fmt.Fprintf(&b, "- %s, %d conns: godwit-bound estimates from CPU µs/req: each edge on a core of its own (as in a real fleet) direct(edge-b) ÷ max(edge-a, edge-b in via) = %s; both edges on one core (this run) direct ÷ (edge-a + edge-b) = %s\n",
			p, maxC, summary.Cell(own, "%.2f"), summary.Cell(same, "%.2f"))
		if cfg.edgeCap > 0 {
			viaC, directC := via+capSuffix, direct+capSuffix
			r := pair(maxC, viaC, directC, rps, true)
			fmt.Fprintf(&b, "- %s, %d conns, each edge capped at %.2f core (a capacity of its own, as on separate machines): via ÷ direct req/s = %s (goal ≥ 0.70): %s (medians %.0f and %.0f req/s; edge-a + edge-b %.0f + %.0f µs/req in via, edge-b %.0f µs/req in direct)\n",
				p, maxC, cfg.edgeCap, summary.Cell(r, "%.2f"), verdict(summary.Median(r) >= 0.7), summary.Median(col(maxC, viaC, rps)), summary.Median(col(maxC, directC, rps)),
				summary.Median(col(maxC, viaC, cpuA)), summary.Median(col(maxC, viaC, cpuB)), summary.Median(col(maxC, directC, cpuB)))
		}
	}
	if len(cfg.protocols) >= 2 {
		p := cfg.protocols[0]
		for _, q := range cfg.protocols[1:] {
			b.WriteString("\n" + p + " against " + q + " (no goal; per round, then median (min–max)):\n\n")
			for _, c := range cfg.conns {
				fmt.Fprintf(&b, "- %d conns: via-%s ÷ via-%s req/s %s; p50 via-%s − via-%s %s ms; p99 via-%s − via-%s %s ms; CPU (edge-a + edge-b) via-%s ÷ via-%s %s (medians %.1f and %.1f µs/req)\n",
					c, p, q, summary.Cell(pair(c, "via-"+p, "via-"+q, rps, true), "%.2f"),
					p, q, summary.Cell(pair(c, "via-"+p, "via-"+q, p50, false), "%+.3f"),
					p, q, summary.Cell(pair(c, "via-"+p, "via-"+q, p99, false), "%+.3f"),
					p, q, summary.Cell(pair(c, "via-"+p, "via-"+q, cpuAB, true), "%.2f"),
					summary.Median(col(c, "via-"+p, cpuAB)), summary.Median(col(c, "via-"+q, cpuAB)))
			}
		}
	}
	return b.String()
}

func loadName(cfg *config) string {
	if cfg.load == "wrk" {
		return "wrk (-t1, --latency, --timeout 10s)"
	}
	return "the bench's Go load loop"
}
