package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/gossip"
	"github.com/godwit/godwit/gossip/gossiptest"
)

// startPartitionEdge starts an edge of a test fleet (edgeConfig) whose
// gossip runs on real loopback sockets wrapped by p, with failure detection
// and reconnection quickened for a test. It returns once the edge serves;
// its gossip address is in p's group.
func startPartitionEdge(t *testing.T, p *gossiptest.Partition, group int, name, region, join, extra string) *testProxy {
	t.Helper()
	cfg, err := config.Parse([]byte(edgeConfig("", name, region, join, extra)), name+".toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatalf("gossip transport: %v", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(nt.GetAutoBindPort())
	p.Assign(addr, group)
	lw := &testLogWriter{t: t}
	logger := slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	srv, err := New(cfg, logger, reg)
	if err != nil {
		nt.Shutdown()
		t.Fatalf("New: %v", err)
	}
	srv.testGossip = func(c *gossip.Config) {
		c.Transport = p.Wrap(nt, addr) // memberlist shuts it down with the node
		c.ReconnectInterval = 200 * time.Millisecond
		c.Tune = func(mc *memberlist.Config) {
			mc.ProbeInterval = 200 * time.Millisecond
			mc.ProbeTimeout = 150 * time.Millisecond
			mc.PushPullInterval = 500 * time.Millisecond
			mc.TCPTimeout = 2 * time.Second
			mc.GossipToTheDeadTime = 2 * time.Second
		}
	}
	if err := srv.Listen(); err != nil {
		nt.Shutdown()
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testProxy{srv: srv, cfg: cfg, reg: reg, httpAddr: srv.Addr("http"), adminAddr: srv.Addr("admin"),
		cancel: cancel, done: make(chan error, 1)}
	go func() { tp.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		if err := tp.stop(t); err != nil {
			t.Errorf("%s: Run: got error %v, want nil", name, err)
		}
		lw.stop()
	})
	eventually(t, 10*time.Second, name+" joined its fleet", func() bool { return srv.GossipAddr() == addr })
	return tp
}

// chaosCounts counts the requests of a chaos test by outcome. Every
// request is exactly one of: ok (answered by a machine), coded (a 5xx
// with a Godwit-Error header: a clean failure), hung (hit the client's
// timeout) or lost (anything else).
type chaosCounts struct{ sent, ok, coded, hung, lost atomic.Int64 }

func (c *chaosCounts) String() string {
	return fmt.Sprintf("sent %d, succeeded %d, failed with a code %d, hung %d, lost %d",
		c.sent.Load(), c.ok.Load(), c.coded.Load(), c.hung.Load(), c.lost.Load())
}

// TestChaosGossipPartition runs three in-process edges whose gossip goes
// through a fault-injecting transport (real loopback sockets), with steady
// POSTs from several clients to all of them. It cuts the fleet in two —
// edge-iad, which owns no machine, alone against edge-cdg and edge-nrt,
// which own one each — until each side sees the other dead, then heals it.
// The backhaul is not cut: only what gossip says changes. Every request
// must be answered or fail with a code, none hang nor be lost; after the
// heal every edge must see both machines routable again within a bound.
func TestChaosGossipPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("a fleet of three edges, partitioned and healed")
	}
	p := gossiptest.NewPartition()
	mCDG := startMachine(t, "m-cdg", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "m-cdg")
	}, nil)
	mNRT := startMachine(t, "m-nrt", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "m-nrt")
	}, nil)
	iad := startPartitionEdge(t, p, 0, "edge-iad", "iad", "", "")
	cdg := startPartitionEdge(t, p, 1, "edge-cdg", "cdg", iad.srv.GossipAddr(), ownedMachine("m-cdg", "cdg", mCDG.addr))
	nrt := startPartitionEdge(t, p, 1, "edge-nrt", "nrt", iad.srv.GossipAddr(), ownedMachine("m-nrt", "nrt", mNRT.addr))
	edges := []*testProxy{iad, cdg, nrt}
	// converged: every edge routes to both machines.
	converged := func() bool {
		for _, e := range edges {
			for _, id := range []string{"m-cdg", "m-nrt"} {
				m := e.srv.Table().Machine(id)
				if m == nil || !m.Reachable() || !m.Healthy() || !m.Started() {
					return false
				}
			}
		}
		return true
	}
	eventually(t, 15*time.Second, "every edge routing to m-cdg and m-nrt", converged)

	// The load: clients each send to the edges in turn, one request at a
	// time, on kept-alive connections. POSTs, so that net/http's transport
	// does not hide a broken exchange by resending it.
	const hangBound = 5 * time.Second
	var (
		total  chaosCounts
		phase  atomic.Pointer[chaosCounts]
		mu     sync.Mutex
		errs   []string
		wg     sync.WaitGroup
		stop   = make(chan struct{})
		phases []string
		codes  = map[string]int{} // Godwit-Error codes of the coded failures; under mu
	)
	phase.Store(new(chaosCounts))
	for i := range 6 {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: hangBound}
			for n := i; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				e := edges[n%len(edges)]
				ph := phase.Load()
				total.sent.Add(1)
				ph.sent.Add(1)
				req, _ := http.NewRequest("POST", e.url("/"), strings.NewReader("x"))
				req.Host = webHost
				r := do(client, req)
				var to interface{ Timeout() bool }
				switch {
				case r.err == nil && r.status == 200 && strings.HasPrefix(r.body, "m-"):
					total.ok.Add(1)
					ph.ok.Add(1)
					continue
				case r.err == nil && r.status >= 500 && r.header.Get("Godwit-Error") != "":
					total.coded.Add(1)
					ph.coded.Add(1)
					mu.Lock()
					codes[r.header.Get("Godwit-Error")]++
					mu.Unlock()
					continue
				case errors.As(r.err, &to) && to.Timeout():
					total.hung.Add(1)
					ph.hung.Add(1)
				default:
					total.lost.Add(1)
					ph.lost.Add(1)
				}
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s at %s: %d %q %q err=%v", time.Now().Format("15:04:05.000"), e.srv.cfg.Node.Name,
					r.status, r.header.Get("Godwit-Error"), strings.TrimSpace(r.body), r.err))
				mu.Unlock()
			}
		})
	}
	// endPhase logs the counts of the phase that ends and starts the next.
	endPhase := func(name string) {
		old := phase.Swap(new(chaosCounts))
		phases = append(phases, fmt.Sprintf("%-28s %v", name+":", old))
	}
	waitOK := func(n int64) {
		target := total.ok.Load() + n
		eventually(t, 30*time.Second, fmt.Sprintf("%d more answered requests", n), func() bool { return total.ok.Load() >= target })
	}

	waitOK(200)
	endPhase("steady")

	p.Set(true)
	cut := time.Now()
	memberState := func(e *testProxy, name string) string {
		for _, m := range e.srv.Members() {
			if m.Name == name {
				return m.State
			}
		}
		return "absent"
	}
	eventually(t, 20*time.Second, "each side of the cut sees the other dead", func() bool {
		return memberState(iad, "edge-cdg") == "dead" && memberState(iad, "edge-nrt") == "dead" &&
			memberState(cdg, "edge-iad") == "dead" && memberState(nrt, "edge-iad") == "dead"
	})
	t.Logf("each side saw the other dead %v after the cut", time.Since(cut).Round(time.Millisecond))
	// The cut lasts a while with each side's view settled.
	hold := total.sent.Load() + 200
	eventually(t, 20*time.Second, "200 more requests sent during the cut", func() bool { return total.sent.Load() >= hold })
	endPhase("partitioned")

	p.Set(false)
	healed := time.Now()
	eventually(t, 20*time.Second, "every edge routing to m-cdg and m-nrt after the heal", func() bool {
		return converged() && memberState(iad, "edge-cdg") == "alive" && memberState(iad, "edge-nrt") == "alive" &&
			memberState(cdg, "edge-iad") == "alive" && memberState(nrt, "edge-iad") == "alive"
	})
	t.Logf("converged %v after the heal", time.Since(healed).Round(time.Millisecond))
	// Once converged, every edge answers again.
	coded := total.coded.Load()
	waitOK(300)
	endPhase("healed")
	close(stop)
	wg.Wait()
	if late := total.coded.Load() - coded; late > 0 {
		t.Errorf("%d requests failed with a code after the fleet converged again, want 0", late)
	}

	t.Logf("gossip partition and heal, requests per phase:\n  %s\n  %-28s %v; failed by code: %v", strings.Join(phases, "\n  "), "total:", &total, codes)
	if total.hung.Load() > 0 || total.lost.Load() > 0 {
		n := min(len(errs), 10)
		t.Errorf("%d requests hung (bound %v) and %d were lost, want 0 and 0; the first %d:\n  %s",
			total.hung.Load(), hangBound, total.lost.Load(), n, strings.Join(errs[:n], "\n  "))
	}
}
