package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/routing"
)

// publishEdge is an edge run piecewise, so that a test sets how often its
// fleet publishes regardless of change: its routing table, health checker
// and fleet (gossip and backhaul) run, its proxy listeners do not.
type publishEdge struct {
	srv *Server
	cfg *config.Config
}

// startPublishEdge starts edge name of region, serving app web with the
// extra TOML (its app tables and [[machine]]s), its fleet publishing every
// every; everything stops when the test ends.
func startPublishEdge(t *testing.T, name, region string, every time.Duration, extra string) *publishEdge {
	t.Helper()
	toml := fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
http = "127.0.0.1:0"

[gossip]
bind = "127.0.0.1:0"

[backhaul]
listen = "127.0.0.1:0"

[[app]]
name  = "web"
hosts = ["web.example.com"]
`, name, region) + extra
	cfg, err := config.Parse([]byte(toml), name+".toml")
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
	f, err := newFleet(cfg, srv.table, srv.handler, log, reg, nil)
	if err != nil || f == nil {
		t.Fatalf("newFleet: got %v, %v; want a fleet", f, err)
	}
	f.publishEvery = every
	srv.mu.Lock()
	srv.fleet = f
	srv.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return f.run(ctx) })
	g.Go(func() error { return srv.health.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("%s: fleet or health checker: got error %v, want nil", name, err)
		}
		lw.stop()
	})
	return &publishEdge{srv: srv, cfg: cfg}
}

// remoteState describes machine id as edge p sees it.
func remoteState(p *testProxy, id string) string {
	m := p.srv.Table().Machine(id)
	if m == nil {
		return "missing"
	}
	return fmt.Sprintf("remote=%v reachable=%v healthy=%v started=%v band=%v", m.Remote(), m.Reachable(), m.Healthy(), m.Started(), m.Band())
}

// TestFleetPublishesChangesAtOnce: a change of a machine other than its
// load (its health, its existence) reaches another edge without waiting for
// the periodic publish. The owner's period here is an hour, so each change
// arrives only if it is published when it happens.
func TestFleetPublishesChangesAtOnce(t *testing.T) {
	m := startMachine(t, "m-cdg", nil, nil)
	checks := "[[app.http_service.checks]]\ninterval = \"50ms\"\ntimeout = \"1s\"\npath = \"" + checkPath + "\"\n"
	owner := startPublishEdge(t, "edge-cdg", "cdg", time.Hour, checks+ownedMachine("m-cdg", "cdg", m.addr))
	b := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")

	const healthy = "remote=true reachable=true healthy=true started=true band=below_soft"
	const failing = "remote=true reachable=true healthy=false started=true band=below_soft"
	steps := []struct {
		name   string
		change func()
		id     string
		want   string
	}{
		{"known at start", func() {}, "m-cdg", healthy},
		{"fails its checks", func() { m.healthy.Store(false) }, "m-cdg", failing},
		{"passes again", func() { m.healthy.Store(true) }, "m-cdg", healthy},
		{"machine added", func() {
			added := config.Machine{ID: "m-cdg-2", App: "web", Region: "cdg", Address: "127.0.0.1:9", State: config.StateStarted}
			owner.srv.Table().Update(owner.cfg.Apps, []config.Machine{owner.cfg.Machines[0], added})
		}, "m-cdg-2", healthy},
		{"machine stopped", func() { owner.srv.Table().Machine("m-cdg-2").SetStarted(false) },
			"m-cdg-2", "remote=true reachable=true healthy=true started=false band=below_soft"},
		{"machine removed", func() { owner.srv.Table().Update(owner.cfg.Apps, owner.cfg.Machines) }, "m-cdg-2", "missing"},
	}
	for _, s := range steps {
		s.change()
		eventually(t, 10*time.Second, fmt.Sprintf("%s: edge-iad sees %s as %q", s.name, s.id, s.want),
			func() bool { return remoteState(b, s.id) == s.want })
	}
}

// TestFleetPublishesLoad: load bands, which no change signal carries, are
// still published by the periodic publish.
func TestFleetPublishesLoad(t *testing.T) {
	limits := "[app.http_service.concurrency]\ntype = \"requests\"\nsoft_limit = 1\nhard_limit = 2\n"
	owner := startPublishEdge(t, "edge-cdg", "cdg", 20*time.Millisecond, limits+ownedMachine("m-cdg", "cdg", "127.0.0.1:9"))
	b := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), limits)
	routable(t, b, "m-cdg")
	m := owner.srv.Table().Machine("m-cdg")
	for _, want := range []routing.Band{routing.AboveSoft, routing.AtHard, routing.BelowSoft} {
		for m.Band() < want {
			m.Acquire()
		}
		for m.Band() > want {
			m.Release()
		}
		eventually(t, 10*time.Second, "edge-iad sees m-cdg "+want.String(), func() bool {
			r := b.srv.Table().Machine("m-cdg")
			return r != nil && r.Band() == want
		})
	}
}
