package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
)

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// watchdogGauges returns the watchdog's gauges in reg by name and loop.
func watchdogGauges(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "godwit_watchdog_") {
			continue
		}
		out[mf.GetName()] = map[string]float64{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "loop" {
					out[mf.GetName()][l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// TestWatchdogCheck drives the watchdog's checks with a made-up clock:
// each kind of loop becomes stuck after stuckAfter without progress, is
// logged once per episode and reported in /healthz's words and the
// gauges, and recovers when it moves again.
func TestWatchdogCheck(t *testing.T) {
	const stuckAfter = 5 * time.Second
	type step struct {
		do        func(t *testing.T, l *watchedLoop) // before the check; nil: nothing
		after     time.Duration                      // since the previous check
		wantStuck bool
	}
	release := make(chan struct{}) // of the probe of "a held lock"
	beat := func(_ *testing.T, l *watchedLoop) { l.beat() }
	enter := func(_ *testing.T, l *watchedLoop) { l.enter() }
	exit := func(_ *testing.T, l *watchedLoop) { l.exit() }
	tests := []struct {
		name    string
		turning bool
		probe   func()
		steps   []step
		// wantLogs are the Error and Info lines the episode logs.
		wantErrors, wantInfos int
	}{
		{
			name: "turning loop that beats", turning: true,
			steps: []step{
				{do: beat, after: 3 * time.Second},
				{do: beat, after: 3 * time.Second},
				{do: beat, after: 4 * time.Second},
			},
		},
		{
			name: "turning loop that stops beating", turning: true,
			steps: []step{
				{do: beat, after: time.Second},
				{after: 4 * time.Second},
				{after: time.Second, wantStuck: true},
				{after: 10 * time.Second, wantStuck: true},
				{do: beat, after: time.Second},
			},
			wantErrors: 1, wantInfos: 1,
		},
		{
			name: "idle work is not stuck",
			steps: []step{
				{after: 10 * time.Second},
				{after: 10 * time.Second},
			},
		},
		{
			name: "work that keeps ending",
			steps: []step{
				{do: func(_ *testing.T, l *watchedLoop) { l.enter(); l.exit(); l.enter() }, after: 3 * time.Second},
				{do: func(_ *testing.T, l *watchedLoop) { l.exit(); l.enter() }, after: 3 * time.Second},
				{do: func(_ *testing.T, l *watchedLoop) { l.exit(); l.enter() }, after: 4 * time.Second},
				{do: exit, after: 10 * time.Second},
			},
		},
		{
			name: "work that never ends",
			steps: []step{
				{do: enter, after: time.Second},
				{do: enter, after: 3 * time.Second}, // a second caller piles up
				{after: 2 * time.Second, wantStuck: true},
				{do: exit, after: time.Second},
				{do: exit, after: time.Second},
			},
			wantErrors: 1, wantInfos: 1,
		},
		{
			name:  "a held lock",
			probe: func() { <-release },
			steps: []step{
				{after: time.Second}, // idle: the first probe starts
				{after: 4 * time.Second},
				{after: time.Second, wantStuck: true},
				{do: func(t *testing.T, l *watchedLoop) {
					close(release)
					eventually(t, 5*time.Second, "the probe ends once the lock is free", func() bool { return l.busy.Load() == 0 })
				}, after: time.Second},
			},
			wantErrors: 1, wantInfos: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			reg := prometheus.NewRegistry()
			w := newWatchdog(slog.New(slog.NewTextHandler(&logs, nil)), reg)
			w.stuckAfter = stuckAfter
			defer w.probes.Wait()
			l := &watchedLoop{name: "test", turning: tc.turning}
			w.loops = append(w.loops, l)
			w.watch(l, tc.probe)
			now := w.epoch
			for i, s := range tc.steps {
				if s.do != nil {
					s.do(t, l)
				}
				now = now.Add(s.after)
				w.check(now)
				if got := l.stuck.Load(); got != s.wantStuck {
					t.Fatalf("step %d: stuck %v, want %v", i, got, s.wantStuck)
				}
				got := watchdogGauges(t, reg)["godwit_watchdog_stuck"]["test"]
				if want := map[bool]float64{false: 0, true: 1}[s.wantStuck]; got != want {
					t.Errorf("step %d: godwit_watchdog_stuck{loop=\"test\"} = %v, want %v", i, got, want)
				}
				if st := w.stuck(); s.wantStuck != (len(st) == 1 && strings.HasPrefix(st[0], "test for ")) {
					t.Errorf("step %d: stuck() = %q, want \"test for <duration>\" only while stuck", i, st)
				}
			}
			if got := logs.count("level=ERROR msg=\"watchdog: loop stuck"); got != tc.wantErrors {
				t.Errorf("Error lines: got %d, want %d (once per episode)\n%s", got, tc.wantErrors, logs.buf.String())
			}
			if got := logs.count("level=INFO msg=\"watchdog: loop moving again\""); got != tc.wantInfos {
				t.Errorf("Info lines: got %d, want %d\n%s", got, tc.wantInfos, logs.buf.String())
			}
		})
	}
}

// TestWatchdogReportsOnlyWatchedLoops: a loop that does not run (the
// fleet's, without gossip) has no series.
func TestWatchdogReportsOnlyWatchedLoops(t *testing.T) {
	p := startProxy(t, "")
	eventually(t, 5*time.Second, "the watchdog's series", func() bool {
		return len(watchdogGauges(t, p.reg)["godwit_watchdog_stuck"]) > 0
	})
	got := watchdogGauges(t, p.reg)
	for _, name := range []string{"godwit_watchdog_stuck", "godwit_watchdog_last_progress_seconds"} {
		loops := got[name]
		for _, want := range []string{"routing", "health", "autostop"} {
			if _, ok := loops[want]; !ok {
				t.Errorf("%s: no series for loop %s; got %v", name, want, loops)
			}
		}
		if _, ok := loops["fleet"]; ok {
			t.Errorf("%s: a series for loop fleet on a node without gossip; want none", name)
		}
	}
	if r := getHealthz(t, p); r.status != 200 || r.body != "ok\n" {
		t.Errorf("/healthz: got %d %q, want 200 \"ok\\n\"", r.status, r.body)
	}
}

// startWatchedEdge starts an edge of a test fleet (as startEdge) whose
// watchdog checks every 20ms and calls a loop stuck after 400ms, with
// Server.testFleetSync set to hook.
func startWatchedEdge(t *testing.T, name, region, join, extra string, hook func()) *testProxy {
	t.Helper()
	cfg, err := config.Parse([]byte(edgeConfig("", name, region, join, extra)), name+".toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	lw := &testLogWriter{t: t}
	log := slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	srv, err := New(cfg, log, reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv.watch.every, srv.watch.stuckAfter = 20*time.Millisecond, 400*time.Millisecond
	srv.testFleetSync = hook
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &testProxy{srv: srv, cfg: cfg, reg: reg, httpAddr: srv.Addr("http"), adminAddr: srv.Addr("admin"),
		cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		if err := p.stop(t); err != nil {
			t.Errorf("%s: Run: got error %v, want nil", name, err)
		}
		lw.stop()
	})
	eventually(t, 10*time.Second, name+" joined its fleet", func() bool { return srv.GossipAddr() != "" })
	return p
}

// getHealthz returns the admin listener's answer to GET /healthz.
func getHealthz(t *testing.T, p *testProxy) result {
	t.Helper()
	resp, err := adminClient.Get("http://" + p.adminAddr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

// TestWatchdogStuckFleet injects a stuck consumer of gossip: the edge's
// fleet sync blocks. /healthz turns 503 naming the loop and the gauge 1;
// meanwhile requests are still served from the last routing snapshot
// (through another edge's machine), and gossip keeps exchanging: a new
// peer and its machine reach the gossip layer, though not the routing
// table. Released, the edge applies what it missed and is healthy again.
func TestWatchdogStuckFleet(t *testing.T) {
	nrt := startMachine(t, "m-nrt", nil, nil)
	ord := startMachine(t, "m-ord", nil, nil)
	b := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m-nrt", "nrt", nrt.addr))

	var block atomic.Pointer[chan struct{}]
	a := startWatchedEdge(t, "edge-iad", "iad", b.srv.GossipAddr(), "", func() {
		if ch := block.Load(); ch != nil {
			<-*ch
		}
	})
	stuck := make(chan struct{})
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(stuck) }) }
	t.Cleanup(release) // before a stops: its fleet loop must be able to end

	routable(t, a, "m-nrt")
	c := newClient(t)
	eventually(t, 5*time.Second, "/healthz 200 before the injection", func() bool {
		r := getHealthz(t, a)
		return r.status == 200 && r.body == "ok\n"
	})

	block.Store(&stuck)
	// A new edge joins: the membership change makes edge-iad sync, which
	// blocks.
	startEdge(t, "edge-ord", "ord", b.srv.GossipAddr(), ownedMachine("m-ord", "ord", ord.addr))

	eventually(t, 5*time.Second, "/healthz 503 naming the fleet loop", func() bool {
		r := getHealthz(t, a)
		return r.status == http.StatusServiceUnavailable && strings.HasPrefix(r.body, "stuck: fleet for ")
	})
	g := watchdogGauges(t, a.reg)
	if g["godwit_watchdog_stuck"]["fleet"] != 1 || g["godwit_watchdog_stuck"]["routing"] != 0 {
		t.Errorf("godwit_watchdog_stuck: got %v, want fleet 1 and routing 0 (the table's lock is free)", g["godwit_watchdog_stuck"])
	}
	if age := g["godwit_watchdog_last_progress_seconds"]["fleet"]; age < 0.4 {
		t.Errorf("godwit_watchdog_last_progress_seconds{loop=\"fleet\"}: got %v, want at least the 0.4s threshold", age)
	}
	if m := a.metrics(t); !strings.Contains(m, `godwit_watchdog_stuck{loop="fleet"} 1`) {
		t.Errorf("/metrics: no godwit_watchdog_stuck{loop=\"fleet\"} 1 in\n%s", m)
	}

	// The request path does not wait for the stuck loop.
	for i := range 3 {
		r := a.get(t, c, webHost, "/")
		if r.err != nil || r.status != 200 || r.header.Get("X-Machine") != "m-nrt" {
			t.Fatalf("request %d while the fleet loop is stuck: got %d %q (X-Machine %q, err %v), want 200 from m-nrt",
				i, r.status, r.body, r.header.Get("X-Machine"), r.err)
		}
	}
	// Gossip keeps exchanging: edge-ord's machine reaches edge-iad's
	// gossip node, not its routing table.
	a.srv.mu.Lock()
	f := a.srv.fleet
	a.srv.mu.Unlock()
	eventually(t, 10*time.Second, "m-ord in edge-iad's gossip state", func() bool {
		for _, r := range f.node.Remote() {
			if r.ID == "m-ord" && r.Reachable {
				return true
			}
		}
		return false
	})
	if m := a.srv.Table().Machine("m-ord"); m != nil {
		t.Fatal("m-ord is in edge-iad's routing table while its fleet sync is blocked; want it applied only after")
	}
	if r := getHealthz(t, a); r.status != http.StatusServiceUnavailable {
		t.Errorf("/healthz while still stuck: got %d %q, want 503", r.status, r.body)
	}

	release()
	routable(t, a, "m-ord")
	eventually(t, 5*time.Second, "/healthz 200 after the release", func() bool {
		r := getHealthz(t, a)
		return r.status == 200 && r.body == "ok\n"
	})
	if got := watchdogGauges(t, a.reg)["godwit_watchdog_stuck"]["fleet"]; got != 0 {
		t.Errorf("godwit_watchdog_stuck{loop=\"fleet\"} after the release: got %v, want 0", got)
	}
}
