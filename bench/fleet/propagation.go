package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/godwit/godwit/bench/internal/summary"
)

// The propagation metric's sample names on /metrics.
const (
	propSum   = "godwit_gossip_state_propagation_seconds_sum"
	propCount = "godwit_gossip_state_propagation_seconds_count"
)

var propRegions = []string{"iad", "cdg", "nrt", "syd", "gru", "ams", "sin", "lax", "fra", "bom"}

// change is one measured machine state change.
type change struct {
	n              int
	machine, owner string
	target         string        // health the machine changed to
	ownerSeen      time.Duration // flip at the machine → the owner's /v1/machines shows it
	// Per receiving edge (not the owner): from the owner's /v1/machines
	// showing the change to the receiver's showing it (polled), and the
	// mean of godwit_gossip_state_propagation_seconds observed at the
	// receiver meanwhile (NaN when it observed nothing).
	poll, metric map[string]float64 // seconds
	metricN      map[string]float64 // observations at each receiver
	missing      []string           // receivers that never showed it
}

// poller polls one edge's /v1/machines every interval and keeps, per
// machine, when each health value was first seen after each change.
type poller struct {
	e        *edge
	mu       sync.Mutex
	last     map[string]string
	seen     []seenAt
	client   *http.Client
	interval time.Duration
}

type seenAt struct {
	id, health string
	at         time.Time
}

func (p *poller) run(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		ms, err := p.e.machines(p.client)
		at := time.Now()
		if err == nil {
			p.mu.Lock()
			for id, m := range ms {
				if p.last[id] != m.Health {
					p.last[id] = m.Health
					p.seen = append(p.seen, seenAt{id, m.Health, at})
				}
			}
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// firstSeen returns when the poller first saw id at health after since.
func (p *poller) firstSeen(id, health string, since time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.seen {
		if s.id == id && s.health == health && s.at.After(since) {
			return s.at, true
		}
	}
	return time.Time{}, false
}

// runPropagation starts cfg.edges edges, each owning one machine with a
// 100 ms health check, and flips machines' health at their owners in turn.
func runPropagation(ctx context.Context, cfg *config) (string, error) {
	n := cfg.edges
	if n < 2 || n > len(propRegions) {
		return "", fmt.Errorf("-edges %d: want 2 to %d", n, len(propRegions))
	}
	logf("propagation: starting %d edges (backhaul %s), one machine each", n, cfg.protocols[0])
	spec := fleetSpec{tag: "prop", protocol: cfg.protocols[0], cpu: -1,
		appExtra: "  [[app.http_service.checks]]\n  interval = \"100ms\"\n  timeout  = \"1s\"\n  path     = \"/health\"\n"}
	var machines []*machine
	defer func() {
		for _, m := range machines {
			m.close()
		}
	}()
	var ids []string
	for i := range n {
		r := propRegions[i]
		m, err := startMachine("m-" + r)
		if err != nil {
			return "", err
		}
		machines = append(machines, m)
		ids = append(ids, m.id)
		spec.edges = append(spec.edges, edgeSpec{name: "edge-" + r, region: r, machines: map[string]string{m.id: m.addr}})
	}
	f, err := startFleet(ctx, spec)
	if err != nil {
		return "", err
	}
	defer f.stop()
	converged := time.Now()
	for _, e := range f.edges {
		if err := waitUntil(ctx, 60*time.Second, e.name+" seeing every machine passing and reachable", func() bool { return e.allReachable(ids) }); err != nil {
			return "", err
		}
	}
	logf("propagation: every edge sees all %d machines after %v", n, time.Since(converged).Round(10*time.Millisecond))

	pctx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()
	pollers := map[string]*poller{}
	var wg sync.WaitGroup
	for _, e := range f.edges {
		p := &poller{e: e, last: map[string]string{}, interval: cfg.pollEvery,
			client: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}}
		pollers[e.name] = p
		wg.Go(func() { p.run(pctx) })
	}
	defer wg.Wait()
	defer stopPolling()
	time.Sleep(300 * time.Millisecond)

	var changes []change
	for i := range cfg.changes {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		owner := f.edges[i%n]
		m := machines[i%n]
		target := "failing"
		if !m.healthy.Load() {
			target = "passing"
		}
		c := change{n: i + 1, machine: m.id, owner: owner.name, target: target,
			poll: map[string]float64{}, metric: map[string]float64{}, metricN: map[string]float64{}}
		before := map[string]map[string]float64{}
		for _, e := range f.edges {
			if e != owner {
				v, err := e.metrics(adminClient, propSum, propCount)
				if err != nil {
					return "", err
				}
				before[e.name] = v
			}
		}
		flip := time.Now()
		m.healthy.Store(target == "passing")
		var ownerAt time.Time
		deadline := flip.Add(15 * time.Second)
		for {
			done := true
			if ownerAt.IsZero() {
				if at, ok := pollers[owner.name].firstSeen(m.id, target, flip); ok {
					ownerAt = at
				} else {
					done = false
				}
			}
			for _, e := range f.edges {
				if _, ok := pollers[e.name].firstSeen(m.id, target, flip); !ok {
					done = false
				}
			}
			if done || time.Now().After(deadline) {
				break
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
		if ownerAt.IsZero() {
			return "", fmt.Errorf("change %d: %s's /v1/machines never showed %s %s within 15s (its health check?)", c.n, owner.name, m.id, target)
		}
		c.ownerSeen = ownerAt.Sub(flip)
		for _, e := range f.edges {
			if e == owner {
				continue
			}
			at, ok := pollers[e.name].firstSeen(m.id, target, flip)
			if !ok {
				c.missing = append(c.missing, e.name)
				c.poll[e.name] = math.NaN()
			} else {
				c.poll[e.name] = at.Sub(ownerAt).Seconds()
			}
			after, err := e.metrics(adminClient, propSum, propCount)
			if err != nil {
				return "", err
			}
			dn := after[propCount] - before[e.name][propCount]
			c.metricN[e.name] = dn
			c.metric[e.name] = math.NaN()
			if dn > 0 {
				c.metric[e.name] = (after[propSum] - before[e.name][propSum]) / dn
			}
		}
		changes = append(changes, c)
		logf("propagation: change %d/%d: %s %s at %s: owner showed it after %v; slowest edge %s ms after the owner (polled), metric max %s ms%s",
			c.n, cfg.changes, m.id, target, owner.name, c.ownerSeen.Round(time.Millisecond),
			ms(maxOf(c.poll)), ms(maxOf(c.metric)), missingNote(c.missing))
		// Let gossip settle (retransmissions) before the next change.
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(cfg.changeGap):
		}
	}
	stopPolling()
	wg.Wait()
	writeTSV("propagation", propagationTSV(changes))
	return propagationReport(cfg, changes), nil
}

func missingNote(m []string) string {
	if len(m) == 0 {
		return ""
	}
	return "; never seen at " + strings.Join(m, ", ")
}

// maxOf returns the largest value of m, NaN if any is NaN (a receiver
// never saw the change) or m is empty.
func maxOf(m map[string]float64) float64 {
	out := math.NaN()
	for _, v := range m {
		if math.IsNaN(v) {
			return math.NaN()
		}
		if math.IsNaN(out) || v > out {
			out = v
		}
	}
	return out
}

func propagationTSV(changes []change) [][]string {
	rows := [][]string{{"change", "machine", "owner", "target", "owner_seen_s", "receiver", "poll_s", "metric_mean_s", "metric_n"}}
	for _, c := range changes {
		for r, v := range c.poll {
			rows = append(rows, []string{fmt.Sprint(c.n), c.machine, c.owner, c.target, fmt.Sprintf("%.4f", c.ownerSeen.Seconds()),
				r, fmt.Sprintf("%.4f", v), fmt.Sprintf("%.4f", c.metric[r]), fmt.Sprint(c.metricN[r])})
		}
	}
	return rows
}

func propagationReport(cfg *config, changes []change) string {
	var all, per, mAll, mPer, own []float64
	missing, multi := 0, 0
	for _, c := range changes {
		all = append(all, maxOf(c.poll))
		mAll = append(mAll, maxOf(c.metric))
		own = append(own, c.ownerSeen.Seconds())
		for r, v := range c.poll {
			per = append(per, v)
			mPer = append(mPer, c.metric[r])
			if c.metricN[r] > 1 {
				multi++
			}
		}
		missing += len(c.missing)
	}
	q := func(xs []float64) []string {
		f := summary.Finite(xs)
		if len(f) == 0 {
			return []string{"—", "—", "—", "0"}
		}
		return []string{ms(summary.Quantile(f, 0.5)), ms(summary.Quantile(f, 0.99)), ms(summary.Quantile(f, 1)), fmt.Sprint(len(f))}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## a. Propagation of a machine state change (%d edges)\n\n", cfg.edges)
	fmt.Fprintf(&b, "%d edges (processes, not pinned), each owning one machine (served by the bench) with a health check every 100 ms. "+
		"%d changes: the bench flips a machine's /health (fail, then pass again, owners in turn) and polls every edge's /v1/machines every %v. "+
		"Polled: from the moment the owner's /v1/machines shows the change to the moment each other edge's does "+
		"(the owner hands a change to gossip as soon as its routing table signals it). "+
		"Metric: godwit_gossip_state_propagation_seconds at each receiver (_sum and _count before and after the change: "+
		"the owner's clock at publication to arrival). "+
		"All edges = the slowest receiver of a change; per receiver = each (change, receiver) pair. p99 by nearest rank (with few samples, the largest).\n\n",
		cfg.edges, len(changes), cfg.pollEvery)
	b.WriteString(summary.Table([]string{"measure", "p50 ms", "p99 ms", "max ms", "samples"}, [][]string{
		append([]string{"polled, all edges"}, q(all)...),
		append([]string{"polled, per receiver"}, q(per)...),
		append([]string{"metric, all edges"}, q(mAll)...),
		append([]string{"metric, per receiver"}, q(mPer)...),
		append([]string{"(flip at the machine → its owner shows it: health check)"}, q(own)...),
	}))
	if missing > 0 {
		fmt.Fprintf(&b, "\n**%d (change, receiver) pairs never showed the change within 15 s.**\n", missing)
	}
	if multi > 0 {
		fmt.Fprintf(&b, "\n%d (change, receiver) pairs observed more than one record version (the metric row averages them).\n", multi)
	}
	return b.String()
}
