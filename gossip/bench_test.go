package gossip

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

var (
	big         = flag.Bool("gossip.big", false, "run TestPropagationBig: a fleet of -gossip.nodes nodes in memory (minutes)")
	bigNodes    = flag.Int("gossip.nodes", 200, "TestPropagationBig: fleet size")
	bigUpdates  = flag.Int("gossip.updates", 30, "TestPropagationBig: machine changes measured, each from a random node")
	bigInterval = flag.Duration("gossip.interval", 0, "TestPropagationBig: GossipInterval (0: DefaultGossipInterval)")
	bigFanout   = flag.Int("gossip.fanout", 0, "TestPropagationBig: GossipNodes (0: DefaultGossipNodes)")
	bigProfile  = flag.String("gossip.cpuprofile", "", "TestPropagationBig: write a CPU profile of the broadcasting phase to this file")
)

// arrivals records when each node stored each record version.
type arrivals struct {
	mu sync.Mutex
	at map[string]map[string]time.Time // owner/id/version → node → time
}

func (a *arrivals) add(node string, r Record) {
	k := fmt.Sprintf("%s/%s/%d", r.Owner, r.ID, r.Version)
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.at[k]
	if m == nil {
		m = make(map[string]time.Time)
		a.at[k] = m
	}
	if _, ok := m[node]; !ok {
		m[node] = now
	}
}

// times returns the arrival delays after t0 of version k.
func (a *arrivals) times(k string, t0 time.Time) []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []time.Duration
	for _, at := range a.at[k] {
		out = append(out, at.Sub(t0))
	}
	return out
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// TestPropagationBig is the fleet's propagation benchmark: -gossip.nodes
// nodes (200) in one process on the in-memory network with the default
// tuning, -gossip.updates (30) machine changes each from a random node,
// one at a time; for each, the time until every other node stored it.
// It reports p50/p99 of that, the per-node delay, and the process's CPU
// while idle and while broadcasting. Run it with
//
//	go test ./gossip -run TestPropagationBig -gossip.big -v
func TestPropagationBig(t *testing.T) {
	if !*big || testing.Short() {
		t.Skip("the fleet benchmark runs with -gossip.big (and not in -short)")
	}
	arr := &arrivals{at: make(map[string]map[string]time.Time)}
	formed := time.Now()
	_, nodes := memCluster(t, *bigNodes, nil, func(i int, c *Config) {
		c.Log = discard
		c.GossipInterval, c.GossipNodes = *bigInterval, *bigFanout
		name := c.Name
		c.hooks = &hooks{applied: func(r Record) { arr.add(name, r) }}
		c.Tune = func(mc *memberlist.Config) { mc.TCPTimeout = 5 * time.Second }
		if i > 0 {
			// Pace the starts: 200 joins within the same second on 2
			// cores starve every node's failure detector at once (a
			// storm of false suspicions no real fleet, one node per
			// machine, sees).
			time.Sleep(25 * time.Millisecond)
			// Join a random earlier node, not all the first (node j's
			// memNet address is 127.0.0.1:j+1).
			c.Join = []string{fmt.Sprintf("127.0.0.1:%d", 1+rand.IntN(i))}
		}
	})
	cfg := nodes[0].cfg
	t.Logf("%d nodes formed in %v; GossipInterval %v, GossipNodes %d, PushPullInterval %v",
		len(nodes), time.Since(formed).Round(time.Millisecond), cfg.GossipInterval, cfg.GossipNodes, cfg.PushPullInterval)

	time.Sleep(5 * time.Second) // let the joins' gossip die out (a pause, not a wait for a condition)
	idleFrom, idleCPU := time.Now(), cpuTime()
	time.Sleep(5 * time.Second) // the measured idle period
	idle := float64(cpuTime()-idleCPU) / float64(time.Since(idleFrom))

	rng := rand.New(rand.NewPCG(7, 7))
	sets := make([][]Record, len(nodes))
	var all, perNode []time.Duration
	var missedByGossip int
	if *bigProfile != "" {
		f, err := os.Create(*bigProfile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	busyFrom, busyCPU := time.Now(), cpuTime()
	for u := range *bigUpdates {
		i := rng.IntN(len(nodes))
		sets[i] = append(sets[i], machine(fmt.Sprintf("u%d", u)))
		t0 := time.Now()
		nodes[i].SetLocal(sets[i])
		nodes[i].mu.Lock()
		v := nodes[i].tab.own[fmt.Sprintf("u%d", u)].rec.Version
		nodes[i].mu.Unlock()
		k := fmt.Sprintf("%s/u%d/%d", nodes[i].Name(), u, v)
		eventually(t, 60*time.Second, "update "+k+" reaches every node", func() error {
			if got := len(arr.times(k, t0)); got < len(nodes)-1 {
				return fmt.Errorf("%d of %d nodes", got, len(nodes)-1)
			}
			return nil
		})
		ds := arr.times(k, t0)
		worst := slices.Max(ds)
		if worst > 3*time.Second {
			missedByGossip++ // delivered by anti-entropy
		}
		all = append(all, worst)
		perNode = append(perNode, ds...)
	}
	busy := float64(cpuTime()-busyCPU) / float64(time.Since(busyFrom))

	t.Logf("propagation of one machine change to all %d nodes, %d updates: p50 %v, p99 %v, max %v; per node p50 %v, p99 %v",
		len(nodes), len(all), percentile(all, .5).Round(time.Millisecond), percentile(all, .99).Round(time.Millisecond),
		slices.Max(all).Round(time.Millisecond), percentile(perNode, .5).Round(time.Millisecond), percentile(perNode, .99).Round(time.Millisecond))
	t.Logf("CPU of the whole process (%d nodes, 2 cores = 200%%): idle %.0f%% of a core, broadcasting %.0f%%; updates gossip missed (anti-entropy delivered): %d",
		len(nodes), 100*idle, 100*busy, missedByGossip)
	if p99 := percentile(all, .99); p99 >= time.Second {
		t.Errorf("p99 %v, goal under 1s", p99)
	}
}
