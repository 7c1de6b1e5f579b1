package gossip

import (
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type countHandler struct {
	mu sync.Mutex
	m  map[string]int
}

func (h *countHandler) Enabled(_ any, l slog.Level) bool { return true }

var stagger = flag.Duration("stagger", 0, "")

func TestZZFormation(t *testing.T) {
	cpu0 := cpuTime()
	t0 := time.Now()
	if !*big {
		t.Skip()
	}
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mn := newMemNet()
	nodes := make([]*Node, *bigNodes)
	for i := range nodes {
		tr := mn.transport()
		cfg := Config{Name: fmt.Sprintf("node-%02d", i), Region: "iad", Transport: tr, Log: log, GossipInterval: *bigInterval, GossipNodes: *bigFanout}
		time.Sleep(*stagger)
		if i > 0 {
			cfg.Join = []string{nodes[0].Addr()}
		}
		nodes[i] = start(t, cfg)
	}
	for s := 0; s < 60; s++ {
		time.Sleep(2 * time.Second)
		min, max := 1000, 0
		for _, n := range nodes {
			a := aliveCount(n)
			if a < min {
				min = a
			}
			if a > max {
				max = a
			}
		}
		out := buf.String()
		t.Logf("cpu %.0f%% ", 100*float64(cpuTime()-cpu0)/float64(time.Since(t0)))
		cpu0, t0 = cpuTime(), time.Now()
		t.Logf("t=%ds alive min %d max %d; dead events %d, suspect %d, refute %d, queue-full %d, failed %d", 2*s+2, min, max,
			strings.Count(out, "member dead"), strings.Count(out, "Suspect"), strings.Count(out, "Refuting"),
			strings.Count(out, "queue full"), strings.Count(out, "as failed"))
		if min == len(nodes) {
			break
		}
	}
	out := buf.String()
	lines := strings.Split(out, "\n")
	seen := map[string]int{}
	for _, l := range lines {
		if i := strings.Index(l, "msg="); i >= 0 {
			m := l[i:]
			if len(m) > 60 {
				m = m[:60]
			}
			seen[m]++
		}
	}
	for m, c := range seen {
		if c > 50 && !strings.Contains(m, "member alive") && !strings.Contains(m, "Marking") {
			t.Logf("%6d %s", c, m)
		}
	}
}
