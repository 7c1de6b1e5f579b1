// Package edgetest runs godwit edges (proxy.Server) inside a test process:
// it starts one from its TOML on loopback, keeps its log to show when the
// test fails, stops it when the test ends, and waits, polling against a
// deadline, until a fleet of them has formed.
//
// It is imported only by tests; no godwit binary links it. It does not
// write configs (each test's TOML is its own) nor run edges as child
// processes (cmd/godwit's child_test.go does that). Tests inside package
// proxy cannot use it: it imports proxy.
package edgetest

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/proxy"
)

// Log is an io.Writer that keeps what is written to it, safe for use by
// many goroutines. The zero value is an empty log ready for use.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p to the log; it never fails.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Edge is one proxy.Server that Start runs until the end of its test.
type Edge struct {
	Name   string
	Server *proxy.Server
	Log    *Log // the server's log, text lines of Options.LogLevel and above
}

// Options are what differs between the edges of different tests. The
// zero value logs at slog.LevelInfo and gives each edge a registry of its
// own.
type Options struct {
	// LogLevel is the least level written to the edge's Log.
	LogLevel slog.Level
	// Registry receives the edge's metrics; nil means a new
	// prometheus.Registry for this edge alone.
	Registry *prometheus.Registry
}

// gossipTimeout is how long Start waits for an edge's gossip to be up.
const gossipTimeout = 15 * time.Second

// stopTimeout is how long an edge's Run may take to return once the test
// has ended.
const stopTimeout = time.Minute

// Start parses toml (named name+".toml" in errors), builds the edge with
// proxy.New, binds its listeners and runs it in a goroutine; when the
// config has [gossip] bind, Start returns once the edge's gossip is up.
// Any failure ends the test (t.Fatalf). At the test's cleanup the edge is
// stopped and Start's goroutine waited for: the test fails if Run returned
// an error or did not return within a minute, and a failed test logs the
// edge's Log.
func Start(t testing.TB, name, toml string, opts Options) *Edge {
	t.Helper()
	cfg, err := config.Parse([]byte(toml), name+".toml")
	if err != nil {
		t.Fatalf("config of %s: %v", name, err)
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	e := &Edge{Name: name, Log: &Log{}}
	log := slog.New(slog.NewTextHandler(e.Log, &slog.HandlerOptions{Level: opts.LogLevel}))
	e.Server, err = proxy.New(cfg, log, reg)
	if err != nil {
		t.Fatalf("proxy.New(%s): %v", name, err)
	}
	if err := e.Server.Listen(); err != nil {
		t.Fatalf("%s: Listen: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Server.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run: got %v, want nil", name, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("%s: Run did not return within %v of its context ending", name, stopTimeout)
		}
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, e.Log)
		}
	})
	if cfg.Gossip.Bind != "" {
		Poll(t, gossipTimeout, name+" gossiping", func() bool { return e.Server.GossipAddr() != "" })
	}
	return e
}

// pollInterval is how often Poll tries its condition.
const pollInterval = 10 * time.Millisecond

// Poll calls cond every 10 ms until it holds, ending the test with
// "what: still not true after d" when it does not within d. It blocks the
// calling goroutine, which must be the test's.
func Poll(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v", what, d)
		}
		<-tick.C
	}
}

// WaitReachable polls, for at most d, until srv's routing table has
// machine id as another edge's (learnt through gossip) and reachable over
// the backhaul, and ends the test if it does not.
func WaitReachable(t testing.TB, srv *proxy.Server, id string, d time.Duration) {
	t.Helper()
	Poll(t, d, "machine "+id+" of another edge known and reachable", func() bool {
		m := srv.Table().Machine(id)
		return m != nil && m.Remote() && m.Reachable()
	})
}
