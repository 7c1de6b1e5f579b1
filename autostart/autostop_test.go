package autostart

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/routing"
)

// TestPlanStops: Fly's rule for one region's started machines, with
// godwit's limit per pass and the floor of min_machines_running.
func TestPlanStops(t *testing.T) {
	idle := func(ids ...string) []candidate {
		var out []candidate
		for _, id := range ids {
			out = append(out, candidate{id: id, soft: 10, stoppable: true})
		}
		return out
	}
	load := func(c []candidate, id string, n int) []candidate {
		for i := range c {
			if c[i].id == id {
				c[i].inflight = n
			}
		}
		return c
	}
	young := func(c []candidate, id string) []candidate {
		for i := range c {
			if c[i].id == id {
				c[i].stoppable = false
			}
		}
		return c
	}
	cases := []struct {
		name       string
		cands      []candidate
		floor, max int
		want       string // ids, comma-separated
	}{
		{"no machine", nil, 0, 0, ""},
		{"lone idle machine", idle("a"), 0, 0, "a"},
		{"lone machine with load", load(idle("a"), "a", 1), 0, 0, ""},
		{"lone idle machine at the minimum", idle("a"), 1, 0, ""},
		{"two idle: excess 1", idle("a", "b"), 0, 0, "a"},
		{"three idle: Fly's one per pass", idle("a", "b", "c"), 0, 0, "a"},
		{"three idle, up to 5 per pass: the excess, 2", idle("a", "b", "c"), 0, 5, "a,b"},
		{"ten idle, up to 3 per pass", idle("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"), 0, 3, "0,1,2"},
		{"three, one over soft: excess 1", load(idle("a", "b", "c"), "a", 10), 0, 5, "b"},
		{"three, two over soft: no excess", load(load(idle("a", "b", "c"), "a", 10), "b", 12), 0, 5, ""},
		{"three, all over soft", load(load(load(idle("a", "b", "c"), "a", 10), "b", 10), "c", 10), 0, 5, ""},
		{"least loaded first", load(load(idle("a", "b", "c", "d"), "a", 5), "c", 2), 0, 3, "b,d,c"},
		{"four idle, min 3", idle("a", "b", "c", "d"), 3, 5, "a"},
		{"four idle, min 4", idle("a", "b", "c", "d"), 4, 5, ""},
		{"min above the count", idle("a", "b"), 5, 5, ""},
		{"a machine just woken is not stopped", young(idle("a", "b", "c"), "a"), 0, 5, "b,c"},
		{"only unstoppable machines", young(young(idle("a", "b"), "a"), "b"), 0, 5, ""},
		{"no soft limit: any load is over it", []candidate{{id: "a", inflight: 1, stoppable: true}, {id: "b", stoppable: true}, {id: "c", stoppable: true}}, 0, 5, "b"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := strings.Join(planStops(c.cands, c.floor, c.max), ",")
			if got != c.want {
				t.Errorf("planStops: got [%s], want [%s]", got, c.want)
			}
		})
	}
}

// settle runs autostop passes until one changes nothing (at most 20), each
// after the stops of the one before have ended.
func settle(t *testing.T, m *Manager, tab *routing.Table, ids []string) {
	t.Helper()
	snapshot := func() string {
		var b strings.Builder
		for _, id := range ids {
			fmt.Fprintf(&b, "%s=%v ", id, tab.Machine(id).State())
		}
		return b.String()
	}
	for range 20 {
		before := snapshot()
		m.autostop()
		eventually(t, 5*time.Second, "the pass's stops to end", func() bool { return !m.busy() })
		if snapshot() == before {
			return
		}
	}
	t.Fatalf("autostop did not settle in 20 passes: %s", snapshot())
}

// busy reports whether an operation is under way on a machine.
func (m *Manager) busy() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rec := range m.machines {
		if rec.wake != nil || rec.stop != nil {
			return true
		}
	}
	return false
}

// startedByRegion lists the started machines among ids, by region.
func startedByRegion(tab *routing.Table, ids []string) string {
	by := map[string]int{}
	for _, id := range ids {
		if rm := tab.Machine(id); rm.Started() {
			by[rm.Region]++
		}
	}
	var out []string
	for r, n := range by {
		out = append(out, fmt.Sprintf("%s:%d", r, n))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestAutostopSettles: passes repeated until nothing changes leave the
// minimum where the scope says, keep loaded machines, and never touch
// another node's machines.
func TestAutostopSettles(t *testing.T) {
	local := []string{"a1", "a2", "a3", "f1", "f2"}
	cases := []struct {
		name   string
		policy AppPolicy
		hold   map[string]int // in-flight requests held on machines
		want   string         // started machines by region after settling
	}{
		{"autostop off", AppPolicy{}, nil, "ams:3 fra:2"},
		{"stop, no minimum: all stop", AppPolicy{Autostop: ModeStop}, nil, ""},
		{"suspend, no minimum: all suspended", AppPolicy{Autostop: ModeSuspend}, nil, ""},
		{"min 1, primary scope (Fly's)", AppPolicy{Autostop: ModeStop, MinRunning: 1, PrimaryRegion: "ams"}, nil, "ams:1"},
		{"min 1, region scope", AppPolicy{Autostop: ModeStop, MinRunning: 1, PrimaryRegion: "ams", Scope: ScopeRegion}, nil, "ams:1 fra:1"},
		{"min 2, primary fra", AppPolicy{Autostop: ModeStop, MinRunning: 2, PrimaryRegion: "fra"}, nil, "fra:2"},
		{"a loaded machine stays", AppPolicy{Autostop: ModeStop}, map[string]int{"a2": 1}, "ams:1"},
		{"two over soft keep a third", AppPolicy{Autostop: ModeStop, MaxPerPass: 5}, map[string]int{"a1": 2, "a2": 2}, "ams:3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			noLeaks(t)
			tab, specs := testSetup(t, 2,
				tmach{id: "a1", app: "app", region: "ams"}, tmach{id: "a2", app: "app", region: "ams"}, tmach{id: "a3", app: "app", region: "ams"},
				tmach{id: "f1", app: "app", region: "fra"}, tmach{id: "f2", app: "app", region: "fra"},
				tmach{id: "r1", app: "app", region: "ams", remote: "edge-x"})
			d := &fakeDriver{}
			m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, Apps: map[string]AppPolicy{"app": c.policy}})
			for id, n := range c.hold {
				release := holdSlots(tab.Machine(id), n)
				t.Cleanup(release)
			}
			settle(t, m, tab, local)
			if got := startedByRegion(tab, local); got != c.want {
				t.Errorf("started after settling: got %q, want %q", got, c.want)
			}
			if !tab.Machine("r1").Started() {
				t.Errorf("another node's machine: got %v, want still started", tab.Machine("r1").State())
			}
			for _, call := range d.Calls() {
				if strings.HasSuffix(call, " r1") {
					t.Errorf("driver call for another node's machine: %s", call)
				}
			}
			if c.policy.Autostop == ModeSuspend {
				for _, id := range local {
					if got := tab.Machine(id).State(); got != routing.StateSuspended {
						t.Errorf("%s: got %v, want suspended", id, got)
					}
				}
			}
		})
	}
}

func holdSlots(rm *routing.Machine, n int) (release func()) {
	for range n {
		rm.Acquire()
	}
	return func() {
		for range n {
			rm.Release()
		}
	}
}

// TestAutostopOnePass: one pass stops Fly's one machine per region, or up
// to MaxPerPass of the excess; another node's machine in the region does
// not count.
func TestAutostopOnePass(t *testing.T) {
	cases := []struct {
		name string
		max  int
		want string
	}{
		{"Fly's one per pass", 0, "ams:2 fra:1"},
		{"up to 5 per pass", 5, "ams:1 fra:1"},
	}
	local := []string{"a1", "a2", "a3", "f1", "f2"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			noLeaks(t)
			tab, specs := testSetup(t, 2,
				tmach{id: "a1", app: "app", region: "ams"}, tmach{id: "a2", app: "app", region: "ams"}, tmach{id: "a3", app: "app", region: "ams"},
				tmach{id: "f1", app: "app", region: "fra"}, tmach{id: "f2", app: "app", region: "fra"},
				tmach{id: "r1", app: "app", region: "ams", remote: "edge-x"})
			m := newTestManager(t, Options{Table: tab, Driver: &fakeDriver{}, Machines: specs,
				Apps: map[string]AppPolicy{"app": {Autostop: ModeStop, MaxPerPass: c.max}}})
			m.autostop()
			eventually(t, 5*time.Second, "the stops to end", func() bool { return !m.busy() })
			if got := startedByRegion(tab, local); got != c.want {
				t.Errorf("started after one pass: got %q, want %q", got, c.want)
			}
		})
	}
}

// TestAutostopSpareJustWoken: a machine woken less than a stop interval ago
// is not stopped; once the interval has passed it is.
func TestAutostopSpareJustWoken(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	serveAfter(t, specs[0].Addr, 0)
	clk := newClock()
	m := newTestManager(t, Options{Table: tab, Driver: &fakeDriver{}, Machines: specs, Now: clk.Now,
		StopInterval: time.Minute, Apps: map[string]AppPolicy{"app": {Autostop: ModeStop}}})
	if err := m.Wake(context.Background(), "m1"); err != nil {
		t.Fatalf("Wake: %v", err)
	}
	clk.Advance(59 * time.Second)
	settle(t, m, tab, []string{"m1"})
	if !tab.Machine("m1").Started() {
		t.Fatalf("59s after its wake: got %v, want started", tab.Machine("m1").State())
	}
	clk.Advance(time.Second)
	settle(t, m, tab, []string{"m1"})
	if got := tab.Machine("m1").State(); got != routing.StateStopped {
		t.Errorf("a stop interval after its wake: got %v, want stopped", got)
	}
}

// TestRun: the loop runs passes every StopInterval until its context ends.
func TestRun(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"}, tmach{id: "m2", app: "app", region: "ams"})
	m := newTestManager(t, Options{Table: tab, Driver: &fakeDriver{}, Machines: specs, StopInterval: 20 * time.Millisecond,
		Apps: map[string]AppPolicy{"app": {Autostop: ModeStop}}, Registerer: prometheus.NewRegistry()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	eventually(t, 5*time.Second, "both idle machines stopped", func() bool {
		return tab.Machine("m1").State() == routing.StateStopped && tab.Machine("m2").State() == routing.StateStopped
	})
	if got := counter(t, m.met.stops.WithLabelValues("stop")); got != 2 {
		t.Errorf("stops_total{stop}: got %v, want 2", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run still running 2s after its context ended")
	}
}

// TestAutostartOnSoft: with every started machine over its soft limit, one
// stopped machine of the nearest region starts in the background, once
// however many requests ask; below the soft limit nothing starts.
func TestAutostartOnSoft(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 1,
		tmach{id: "m1", app: "app", region: "ams"},
		tmach{id: "far", app: "app", region: "syd", stopped: true},
		tmach{id: "near", app: "app", region: "ams", stopped: true},
		tmach{id: "r1", app: "app", region: "fra", remote: "edge-x"})
	gate := make(chan struct{})
	d := &fakeDriver{start: func(ctx context.Context, s *Spec) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		serveAfter(t, s.Addr, 0)
		return nil
	}}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, Registerer: prometheus.NewRegistry()})

	if m.AutostartOnSoft("app") {
		t.Fatalf("AutostartOnSoft with machines below soft: got true, want false")
	}
	release := holdSlots(tab.Machine("m1"), 1)
	defer release()
	if m.AutostartOnSoft("app") {
		t.Fatalf("AutostartOnSoft with another node's machine below soft: got true, want false")
	}
	tab.Machine("r1").SetRemoteBand(routing.AboveSoft)

	const n = 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	trues := 0
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m.AutostartOnSoft("app") {
				mu.Lock()
				trues++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if trues != 1 {
		t.Errorf("AutostartOnSoft: got true %d times, want once", trues)
	}
	close(gate)
	eventually(t, 5*time.Second, "the nearest stopped machine started", func() bool { return tab.Machine("near").Started() })
	if got := strings.Join(d.Calls(), ","); got != "start near" {
		t.Errorf("driver calls: got %s, want one start of near", got)
	}
	if got := counter(t, m.met.wakes.WithLabelValues(outcomeOK)); got != 1 {
		t.Errorf("wakes_total{ok}: got %v, want 1", got)
	}
	// near is below soft now: nothing more to start.
	if m.AutostartOnSoft("app") {
		t.Errorf("AutostartOnSoft with near started and idle: got true, want false")
	}
}
