package main

import (
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/benchenv"
	"github.com/godwit/godwit/bench/internal/child"
	"github.com/godwit/godwit/bench/internal/summary"
)

// goals are issue 5's: proxy overhead under these.
var goals = map[string]time.Duration{"cold": 10 * time.Millisecond, "resume": 5 * time.Millisecond}

type reportInfo struct {
	root, godwit, cfg     string
	argv                  []string
	loadBefore, loadAfter string
}

func msf(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

// kindStats is one row of the table.
type kindStats struct {
	kind                    string
	base, first, last, woke []time.Duration
	over                    []time.Duration // first − base p50, per round
	failed, sent, waited    int
	multiStart, restarted   int // rounds answered by more than one pid; resumes answered by a new pid
	failures                []string
}

func stats(kind string, base []time.Duration, rounds []roundResult, waiters int) kindStats {
	k := kindStats{kind: kind, base: base}
	b50 := summary.Quantile(base, 0.5)
	seen := map[string]bool{}
	for _, r := range rounds {
		k.first = append(k.first, r.first)
		k.last = append(k.last, r.last)
		k.woke = append(k.woke, r.woke)
		k.over = append(k.over, r.first-b50)
		k.failed += r.failed
		k.waited += r.waited
		k.sent += waiters
		if len(r.pids) > 1 {
			k.multiStart++
		}
		if r.restarted {
			k.restarted++
		}
		for _, f := range r.failures {
			if !seen[f] {
				seen[f] = true
				k.failures = append(k.failures, f)
			}
		}
	}
	return k
}

func report(s settings, r results, info reportInfo) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }

	p("# godwit wake overhead\n\n")
	p("%s, commit %s. Issue 5's benchmark: time to the first response of a burst of\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), benchenv.Commit(info.root))
	p("requests for a stopped (cold) or suspended (resume) machine, through godwit, minus\n")
	p("the app's own start-to-ready (resume-to-answer) time without godwit.\n\n")

	p("## Setup\n\n")
	p("- command: `%s`\n", strings.TrimSpace("go run ./bench/wake "+strings.Join(os.Args[1:], " ")))
	p("- machine: %s, %d CPUs (nproc), Linux %s; load average before %s, after %s\n", benchenv.CPUModel(), benchenv.CPUCount(), benchenv.Kernel(), info.loadBefore, info.loadAfter)
	if child.TasksetPath != "" && s.proxyCPU >= 0 {
		p("- pinning (taskset): godwit on CPU %d (GOMAXPROCS follows: 1); the bench (the waiters) and the test app on CPU %d, alone or started by godwit (the machine's command is `taskset -c %d testapp`, so taskset's exec is in both times)\n", s.proxyCPU, s.loadCPU, s.loadCPU)
	} else {
		p("- pinning: none (taskset missing or turned off)\n")
	}
	p("- godwit: `%s run --config godwit.toml` (config below); %s; %d rounds, each: the app alone cold, the app alone resumed, godwit cold, godwit resumed\n", shortPath(info.godwit, info.root), benchenv.GoVersion(), s.n)
	p("- app alone, cold: exec `testapp -listen-delay %v` with PORT set, GET / on a new connection every 0.5 ms until 200; exec to answer\n", s.listenDelay)
	p("- app alone, resume: a running app is SIGSTOPped (until /proc shows it stopped), %v later SIGCONT and one GET / on a new connection; SIGCONT to answer\n", s.settle)
	p("- godwit, machine running: the same %d requests through godwit to the started machine, first answer (the burst's own cost through godwit, no wake)\n", s.waiters)
	p("- through godwit: POST `/v1/apps/wake/machines/m1/stop` (cold) or `/start` then `/suspend` (resume) on the admin API, %v pause, then %d concurrent GET /pid (`Host: wake.bench`), released at one instant, each on its own kept-alive connection (opened in a warm-up); times from release to the first and to the last 200\n", s.settle, s.waiters)
	p("- overhead = first answer through godwit − the app alone's ready p50 (issue 5's definition), per round; p99 is nearest rank (with %d rounds, the %s)\n", s.n, ordinal(s.n-int(math.Ceil(0.99*float64(s.n)))+1))
	p("- godwit wait: per round the longest `Godwit-Woke` header of the answers (godwit's own measure of a request's wait for the wake); \"waited\" counts the answers that carry one (requests that arrived after the machine was up did not wait)\n\n")

	cold := stats("cold", r.baseCold, r.cold, s.waiters)
	resume := stats("resume", r.baseResume, r.resume, s.waiters)
	p("## Results (ms)\n\n")
	p("| kind | app alone ready p50 / p99 | godwit first answer p50 / p99 | last answer p50 / p99 | **overhead p50 / p99** | godwit wait p50 / p99 | waited | failed waiters |\n")
	p("|---|---|---|---|---|---|---|---|\n")
	for _, k := range []kindStats{cold, resume} {
		p("| %s | %s / %s | %s / %s | %s / %s | **%s / %s** | %s / %s | %d | %d / %d |\n", k.kind,
			msf(summary.Quantile(k.base, 0.5)), msf(summary.Quantile(k.base, 0.99)),
			msf(summary.Quantile(k.first, 0.5)), msf(summary.Quantile(k.first, 0.99)),
			msf(summary.Quantile(k.last, 0.5)), msf(summary.Quantile(k.last, 0.99)),
			msf(summary.Quantile(k.over, 0.5)), msf(summary.Quantile(k.over, 0.99)),
			msf(summary.Quantile(k.woke, 0.5)), msf(summary.Quantile(k.woke, 0.99)),
			k.waited, k.failed, k.sent)
	}
	p("\ngodwit with the machine running, the same burst: first answer p50 %s, p99 %s ms.\n", msf(summary.Quantile(r.warm, 0.5)), msf(summary.Quantile(r.warm, 0.99)))
	p("\n## Goal check\n\n")
	for _, k := range []kindStats{cold, resume} {
		goal := goals[k.kind]
		o50, o99 := summary.Quantile(k.over, 0.5), summary.Quantile(k.over, 0.99)
		verdict := "**met**"
		switch {
		case o50 >= goal:
			verdict = "**not met**"
		case o99 >= goal:
			verdict = "**met at p50, not at p99**"
		}
		fails := "zero failed waiters: **met**"
		if k.failed > 0 {
			fails = fmt.Sprintf("%d failed waiters: **not met** (%s)", k.failed, strings.Join(k.failures, "; "))
		}
		p("- %s: overhead p50 %s ms, p99 %s ms (goal < %v): %s; %s.", k.kind, msf(o50), msf(o99), goal, verdict, fails)
		p(" Rounds answered by more than one machine process: %d.", k.multiStart)
		if k.kind == "resume" {
			p(" Resumes answered by a new process (restarted, not resumed): %d.", k.restarted)
		}
		p("\n")
	}

	p("\n## Notes\n\n")
	p("- godwit's wait (the `Godwit-Woke` header) runs from a request's arrival to the machine's readiness: the driver's start, then readiness attempts 1 ms apart at first, slowing to a tenth of the time waited.\n")
	p("- \"machine running\" shows what %d requests at once cost through godwit without a wake (the bench's clients and the app share one core, godwit has the other): with many waiters, most of the overhead is that burst, not the wake.\n", s.waiters)
	p("- \"last answer\" is how long the slowest of the %d waiters took.\n", s.waiters)
	p("\n## Raw rounds (ms)\n\n")
	p("| round | alone cold | alone resume | godwit running | godwit cold first | last | wait | godwit resume first | last | wait |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range r.cold {
		p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", i+1, msf(r.baseCold[i]), msf(r.baseResume[i]), msf(r.warm[i]),
			msf(r.cold[i].first), msf(r.cold[i].last), msf(r.cold[i].woke),
			msf(r.resume[i].first), msf(r.resume[i].last), msf(r.resume[i].woke))
	}
	p("\n<details><summary>godwit.toml</summary>\n\n```toml\n%s```\n</details>\n", info.cfg)
	return b.String()
}

// ordinal names the k-th largest of a sample: "largest", "2nd largest".
func ordinal(k int) string {
	switch k {
	case 1:
		return "largest"
	case 2:
		return "2nd largest"
	case 3:
		return "3rd largest"
	}
	return fmt.Sprintf("%dth largest", k)
}

func shortPath(p, root string) string {
	if strings.HasPrefix(p, os.TempDir()) {
		return "godwit (built from this tree)"
	}
	return strings.TrimPrefix(p, root+"/")
}
