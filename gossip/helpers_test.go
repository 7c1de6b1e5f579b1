package gossip

import (
	"bytes"
	"cmp"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/godwit/godwit/gossip/gossiptest"
)

var debugLogs = flag.Bool("gossip.debug", false, "log the nodes' debug lines (memberlist's included) in tests")

// testLog returns a logger writing to t.Log until the test ends; lines
// logged later (memberlist's goroutines wind down after Shutdown) are
// dropped instead of failing the test run.
func testLog(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	level := slog.LevelInfo
	if *debugLogs {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// syncBuffer is a bytes.Buffer safe for concurrent writers, to capture logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// eventually polls cond until it returns nil, failing the test with its
// last error when timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// start starts a node and shuts it down when the test ends.
func start(t testing.TB, cfg Config) *Node {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	n, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() { n.Shutdown() })
	return n
}

// quick makes memberlist's failure detection and anti-entropy fast, for
// small clusters in tests.
func quick(mc *memberlist.Config) {
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 150 * time.Millisecond
	mc.PushPullInterval = 500 * time.Millisecond
	mc.TCPTimeout = 2 * time.Second
	mc.GossipToTheDeadTime = 2 * time.Second
}

// memCluster starts n nodes on a memNet (wrapped by p if not nil), named
// node-00.., each joining node-00, and waits until all see all alive.
func memCluster(t testing.TB, n int, p *gossiptest.Partition, mod func(i int, c *Config)) (*memNet, []*Node) {
	t.Helper()
	mn := newMemNet()
	log := testLog(t)
	nodes := make([]*Node, n)
	for i := range nodes {
		tr := mn.transport()
		var transport memberlist.Transport = tr
		if p != nil {
			transport = p.Wrap(tr, tr.addr)
		}
		cfg := Config{
			Name:      fmt.Sprintf("node-%02d", i),
			Region:    []string{"iad", "fra", "syd"}[i%3],
			Transport: transport,
			Log:       log,
		}
		if i > 0 {
			cfg.Join = []string{nodes[0].Addr()}
		}
		if mod != nil {
			mod(i, &cfg)
		}
		nodes[i] = start(t, cfg)
	}
	began := time.Now()
	waitMembers(t, nodes, 30*time.Second+time.Duration(n)*time.Second)
	t.Logf("%d nodes: all see all alive %v after the last start", n, time.Since(began).Round(time.Millisecond))
	return mn, nodes
}

// waitMembers waits until every node sees every node alive.
func waitMembers(t testing.TB, nodes []*Node, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "every node sees every node alive", func() error {
		short := 0
		var first error
		for _, n := range nodes {
			if a := aliveCount(n); a != len(nodes) {
				short++
				if first == nil {
					first = fmt.Errorf("%s sees %d alive members, want %d (missing: %s)", n.Name(), a, len(nodes), missing(n, nodes))
				}
			}
		}
		if first != nil {
			return fmt.Errorf("%d nodes short; %w", short, first)
		}
		return nil
	})
}

// missing describes the nodes n does not see alive: how n sees them, and
// how they see themselves.
func missing(n *Node, nodes []*Node) string {
	var out []string
	for _, o := range nodes {
		if m, ok := n.Member(o.Name()); !ok || m.State != StateAlive {
			self, _ := o.Member(o.Name())
			out = append(out, fmt.Sprintf("%s (%s here; %s itself, sees %d)", o.Name(), cmp.Or(m.State, "unknown"), self.State, aliveCount(o)))
		}
	}
	return strings.Join(out, ", ")
}

// aliveCount is the number of members n sees alive, itself included.
func aliveCount(n *Node) int { return int(n.alive.Load()) }

// view is what a node knows of the fleet's machines: the records it
// publishes and the remote ones, keyed by owner/ID, as comparable strings.
func view(n *Node) map[string]string {
	out := make(map[string]string)
	n.mu.Lock()
	for id, e := range n.tab.own {
		if !e.rec.Deleted {
			out[n.cfg.Name+"/"+id] = recordKey(e.rec)
		}
	}
	n.mu.Unlock()
	for _, r := range n.Remote() {
		out[r.Owner+"/"+r.ID] = recordKey(r)
	}
	return out
}

func recordKey(r Record) string {
	return fmt.Sprintf("v%d %s %s %s %s healthy=%v band=%d", r.Version, r.App, r.Region, r.Addr, r.State, r.Healthy, r.Band)
}

// published returns what the nodes publish of their own: the view every
// node must converge on.
func published(nodes []*Node) map[string]string {
	want := make(map[string]string)
	for _, n := range nodes {
		n.mu.Lock()
		for id, e := range n.tab.own {
			if !e.rec.Deleted {
				want[n.Name()+"/"+id] = recordKey(e.rec)
			}
		}
		n.mu.Unlock()
	}
	return want
}

// sameViews reports the first difference between the nodes' views.
func sameViews(nodes []*Node, want map[string]string) error {
	for _, n := range nodes {
		v := view(n)
		if !maps.Equal(v, want) {
			for _, k := range slices.Sorted(maps.Keys(want)) {
				if v[k] != want[k] {
					return fmt.Errorf("%s: %s is %q, want %q", n.Name(), k, v[k], want[k])
				}
			}
			for _, k := range slices.Sorted(maps.Keys(v)) {
				if _, ok := want[k]; !ok {
					return fmt.Errorf("%s: has %s (%q), not wanted", n.Name(), k, v[k])
				}
			}
		}
	}
	return nil
}

// remoteRecord returns n's remote record owner/id.
func remoteRecord(n *Node, owner, id string) (Record, bool) {
	for _, r := range n.Remote() {
		if r.Owner == owner && r.ID == id {
			return r, true
		}
	}
	return Record{}, false
}

// machine returns a started, healthy record with the given ID.
func machine(id string) Record {
	return Record{ID: id, App: "web", Addr: "10.0.0.1:" + id, State: "started", Healthy: true, Soft: 20, Hard: 25}
}

// discard is a logger for code that must not log to a finished test.
var discard = slog.New(slog.DiscardHandler)

// slogTo returns an Info-level text logger writing to w.
func slogTo(w *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}
