package main

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/godwit/godwit/bench/internal/summary"
)

// kill is one measured SIGKILL of an owner edge.
type kill struct {
	protocol string
	n        int
	victim   string // the killed edge
	primary  string // the machine the accepting edge used before
	other    string // the machine it should move to
	requests int
	failed   int
	failFrom time.Duration  // when the first failed request was sent, since the kill
	failTo   time.Duration  // when the last one was
	codes    map[string]int // failures by status, or "error"
	reroute  time.Duration  // kill → first answer from other; <0: none
	slowest  time.Duration  // the slowest request of the run
	stalls   int            // requests sent after the reroute that took over 100 ms
	dead     time.Duration  // kill → /v1/members at the accepting edge shows the victim dead; <0: not within 30 s
	rejoin   time.Duration  // restart → the accepting edge routes to primary again; <0: not within 30 s
}

// shot is one request of the failover load.
type shot struct {
	sent, took time.Duration // sent: since the kill
	status     int
	body       string
	err        error
}

const stallThreshold = 100 * time.Millisecond

// runFailover starts, per protocol, three edges: edge-iad accepts and
// owns nothing, edge-cdg owns m-cdg, edge-nrt owns m-nrt (simulated RTTs
// make cdg the nearer region, for the order and the backhaul's delay
// alike). It then SIGKILLs the owner of the machine edge-iad uses,
// cfg.kills times, restarting it in between.
func runFailover(ctx context.Context, cfg *config) (string, error) {
	var kills []kill
	for _, proto := range cfg.protocols {
		ks, err := failoverProtocol(ctx, cfg, proto)
		kills = append(kills, ks...)
		if err != nil {
			return "", err
		}
	}
	writeTSV("failover", failoverTSV(kills))
	return failoverReport(cfg, kills), nil
}

func failoverProtocol(ctx context.Context, cfg *config, proto string) ([]kill, error) {
	mc, err := startMachine("m-cdg")
	if err != nil {
		return nil, err
	}
	defer mc.close()
	mn, err := startMachine("m-nrt")
	if err != nil {
		return nil, err
	}
	defer mn.close()
	logf("failover (%s): starting edge-iad, edge-cdg (m-cdg), edge-nrt (m-nrt)", proto)
	f, err := startFleet(ctx, fleetSpec{tag: "fail-" + proto, protocol: proto, cpu: -1,
		simRTT: map[string]string{"cdg-iad": "4ms", "iad-nrt": "12ms", "cdg-nrt": "16ms"},
		edges: []edgeSpec{
			{name: "edge-iad", region: "iad"},
			{name: "edge-cdg", region: "cdg", machines: map[string]string{mc.id: mc.addr}},
			{name: "edge-nrt", region: "nrt", machines: map[string]string{mn.id: mn.addr}},
		}})
	if err != nil {
		return nil, err
	}
	defer f.stop()
	iad := f.byName["edge-iad"]
	owners := map[string]string{"m-cdg": "edge-cdg", "m-nrt": "edge-nrt"}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer client.CloseIdleConnections()

	var kills []kill
	for k := 1; k <= cfg.kills; k++ {
		if err := waitUntil(ctx, 30*time.Second, "edge-iad seeing m-cdg and m-nrt reachable", func() bool {
			return iad.allReachable([]string{"m-cdg", "m-nrt"})
		}); err != nil {
			return kills, err
		}
		if err := waitUntil(ctx, 30*time.Second, "edge-iad's RTTs to cdg and nrt measured", func() bool {
			return iad.hasRTT("cdg") && iad.hasRTT("nrt")
		}); err != nil {
			return kills, err
		}
		// The machine edge-iad routes to: the same one 10 times in a row.
		primary, streak := "", 0
		if err := waitUntil(ctx, 30*time.Second, "edge-iad routing steadily to one machine", func() bool {
			st, body, err := get(client, iad.http, "/")
			if err != nil || st != 200 {
				streak = 0
				return false
			}
			if body != primary {
				primary, streak = body, 0
			}
			streak++
			return streak >= 10
		}); err != nil {
			return kills, err
		}
		other := "m-nrt"
		if primary == "m-nrt" {
			other = "m-cdg"
			logf("failover (%s): NOTE edge-iad routes to m-nrt, not to the nearer m-cdg; killing its owner all the same", proto)
		}
		victim := f.byName[owners[primary]]
		kl := kill{protocol: proto, n: k, victim: victim.name, primary: primary, other: other, codes: map[string]int{}}

		// Requests every cfg.shotEvery, each on its own goroutine, from
		// 200 ms before the kill until 1 s after gossip declared the
		// victim dead (so the end of the passive hold is in the run too).
		var (
			mu    sync.Mutex
			shots []shot
			wg    sync.WaitGroup
			stop  = make(chan struct{})
			t0    = time.Now().Add(200 * time.Millisecond)
			killT time.Time
		)
		go func() {
			t := time.NewTicker(cfg.shotEvery)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case now := <-t.C:
					wg.Go(func() {
						st, body, err := get(client, iad.http, "/")
						took := time.Since(now)
						mu.Lock()
						shots = append(shots, shot{sent: now.Sub(t0), took: took, status: st, body: body, err: err})
						mu.Unlock()
					})
				}
			}
		}()
		time.Sleep(time.Until(t0))
		killT = time.Now()
		victim.p.Kill()
		deadline := killT.Add(30 * time.Second)
		kl.dead = -1
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if iad.memberState(adminClient, victim.name) == "dead" {
				kl.dead = time.Since(killT)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		// Offsets were taken from t0; make them relative to the kill.
		shift := killT.Sub(t0)
		for i := range shots {
			shots[i].sent -= shift
		}
		summarize(&kl, shots)
		if ctx.Err() != nil {
			return kills, ctx.Err()
		}

		// Restart the victim with the same config: how long until
		// edge-iad routes to its machine again.
		restart := time.Now()
		kl.rejoin = -1
		if err := victim.start(ctx); err != nil {
			return kills, err
		}
		if waitUntil(ctx, 30*time.Second, "edge-iad routing to "+primary+" again", func() bool {
			st, body, err := get(client, iad.http, "/")
			return err == nil && st == 200 && body == primary
		}) == nil {
			kl.rejoin = time.Since(restart)
		}
		kills = append(kills, kl)
		logf("failover (%s) %d/%d: killed %s: rerouted to %s after %s ms, %d of %d requests failed %v, slowest %s ms, %d stalls > 100 ms after the reroute; dead in /v1/members after %s ms; rejoined and routable %s ms after the restart",
			proto, k, cfg.kills, victim.name, other, msd(kl.reroute), kl.failed, kl.requests, codesString(kl.codes), msd(kl.slowest), kl.stalls, msd(kl.dead), msd(kl.rejoin))
	}
	return kills, nil
}

// summarize fills kl's figures from the requests of one kill.
func summarize(kl *kill, shots []shot) {
	sort.Slice(shots, func(i, j int) bool { return shots[i].sent < shots[j].sent })
	kl.requests = len(shots)
	kl.reroute = -1
	for _, s := range shots {
		kl.slowest = max(kl.slowest, s.took)
		if s.err != nil || s.status != 200 {
			kl.failed++
			if kl.failed == 1 {
				kl.failFrom = s.sent
			}
			kl.failTo = s.sent
			key := fmt.Sprint(s.status)
			if s.err != nil {
				key = "error"
				if strings.Contains(s.err.Error(), "Timeout") {
					key = "timeout"
				}
			}
			kl.codes[key]++
			continue
		}
		if s.body == kl.other {
			if done := s.sent + s.took; kl.reroute < 0 || done < kl.reroute {
				kl.reroute = done
			}
		}
	}
	if kl.reroute >= 0 {
		for _, s := range shots {
			if s.sent > kl.reroute && s.took > stallThreshold {
				kl.stalls++
			}
		}
	}
}

// msd formats a duration in ms, "—" when negative (did not happen).
func msd(d time.Duration) string {
	if d < 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond))
}

func failoverTSV(kills []kill) [][]string {
	rows := [][]string{{"protocol", "kill", "victim", "primary", "other", "requests", "failed", "fail_from_ms", "fail_to_ms", "failures", "reroute_ms", "slowest_ms", "stalls_after_reroute", "dead_ms", "rejoin_ms"}}
	for _, k := range kills {
		rows = append(rows, []string{k.protocol, fmt.Sprint(k.n), k.victim, k.primary, k.other, fmt.Sprint(k.requests), fmt.Sprint(k.failed),
			signedMs(k.failFrom), signedMs(k.failTo), codesString(k.codes), msd(k.reroute), msd(k.slowest), fmt.Sprint(k.stalls), msd(k.dead), msd(k.rejoin)})
	}
	return rows
}

func failoverReport(cfg *config, kills []kill) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## b. Failure detection of a killed edge\n\n")
	fmt.Fprintf(&b, "Per backhaul protocol, three edges (processes, not pinned): edge-iad accepts and owns nothing, edge-cdg owns m-cdg, edge-nrt owns m-nrt; "+
		"backhaul.simulated_rtt cdg-iad 4ms, iad-nrt 12ms, cdg-nrt 16ms makes cdg the nearer region. "+
		"The bench sends GET / to edge-iad every %v (each request on its own, 5 s client timeout), SIGKILLs the owner of the machine edge-iad answers from, "+
		"and keeps sending until 1 s after edge-iad's /v1/members shows the owner dead; then restarts the owner with the same config. %d kills per protocol.\n\n"+
		"Reroute: kill → first answer from the other machine. Failed: requests answered with an error (or none), and when they were sent (ms after the kill). "+
		"Stalls: requests sent after the reroute that took over 100 ms (the owner tried again when its passive hold ran out). "+
		"Dead: kill → /v1/members at edge-iad shows the owner dead (memberlist's failure detector). Rejoin: restart → edge-iad answers from the owner's machine again. "+
		"Medians (min–max) over kills.\n\n", cfg.shotEvery, cfg.kills)
	var rows [][]string
	for _, p := range cfg.protocols {
		var rr, failed, slow, stalls, dead, rejoin, reqs []float64
		codes := map[string]int{}
		var spans []string
		for _, k := range kills {
			if k.protocol != p {
				continue
			}
			rr = append(rr, durMs(k.reroute))
			failed = append(failed, float64(k.failed))
			reqs = append(reqs, float64(k.requests))
			slow = append(slow, durMs(k.slowest))
			stalls = append(stalls, float64(k.stalls))
			dead = append(dead, durMs(k.dead))
			rejoin = append(rejoin, durMs(k.rejoin))
			for c, n := range k.codes {
				codes[c] += n
			}
			if k.failed > 0 {
				spans = append(spans, signedMs(k.failFrom)+"…"+signedMs(k.failTo))
			}
		}
		if len(rr) == 0 {
			continue
		}
		span := "—"
		if len(spans) > 0 {
			span = strings.Join(spans, ", ")
		}
		rows = append(rows, []string{p, fmt.Sprint(len(rr)), summary.Cell(rr, "%.0f"), summary.Cell(failed, "%.0f") + " of " + summary.Cell(reqs, "%.0f"),
			codesString(codes), span, summary.Cell(slow, "%.0f"), summary.Cell(stalls, "%.0f"), summary.Cell(dead, "%.0f"), summary.Cell(rejoin, "%.0f")})
	}
	b.WriteString(summary.Table([]string{"backhaul", "kills", "reroute ms", "failed requests", "failures by status", "failed requests sent at (ms after the kill)", "slowest request ms", "stalls after reroute", "dead in /v1/members ms", "rejoin ms"}, rows))
	b.WriteString("\nGoal check (reroute within 2 s, no request hanging past 5 s):\n\n")
	for _, p := range cfg.protocols {
		var rr, slow []float64
		none := 0
		for _, k := range kills {
			if k.protocol != p {
				continue
			}
			if k.reroute < 0 {
				none++
			}
			rr = append(rr, durMs(k.reroute))
			slow = append(slow, durMs(k.slowest))
		}
		if len(rr) == 0 {
			continue
		}
		_, worst := minMax(summary.Finite(rr))
		_, slowest := minMax(summary.Finite(slow))
		fmt.Fprintf(&b, "- %s: reroute %s ms, worst %.0f ms (goal ≤ 2000 in every kill): %s; slowest request %.0f ms (bound 5000): %s\n",
			p, summary.Cell(rr, "%.0f"), worst, verdict(none == 0 && worst <= 2000), slowest, verdict(slowest < 5000))
	}
	return b.String()
}

// durMs is d in milliseconds, NaN when negative (did not happen).
// signedMs formats d in whole milliseconds, negative before the kill (no
// "-0").
func signedMs(d time.Duration) string {
	v := math.Round(float64(d) / float64(time.Millisecond))
	if v == 0 {
		v = 0 // not -0
	}
	return fmt.Sprintf("%.0f", v)
}

// codesString formats failures by status: "502×145 timeout×2", "—" for none.
func codesString(m map[string]int) string {
	if len(m) == 0 {
		return "—"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func durMs(d time.Duration) float64 {
	if d < 0 {
		return math.NaN()
	}
	return float64(d) / float64(time.Millisecond)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
