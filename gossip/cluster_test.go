package gossip

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/godwit/godwit/gossip/gossiptest"
)

// TestConvergence50 runs 50 nodes in memory: after updates from random
// nodes (new machines, changes, removals), every node holds the same view.
func TestConvergence50(t *testing.T) {
	if testing.Short() {
		t.Skip("50 nodes: skipped in -short")
	}
	_, nodes := memCluster(t, 50, nil, func(i int, c *Config) {
		c.PushPullInterval = time.Second // the join burst settles sooner
		c.Tune = func(mc *memberlist.Config) { mc.TCPTimeout = 2 * time.Second }
	})
	rng := rand.New(rand.NewPCG(1, 2))
	sets := make([][]Record, len(nodes))
	for round := range 30 {
		i := rng.IntN(len(nodes))
		set := sets[i]
		switch {
		case len(set) == 0 || rng.IntN(3) == 0:
			set = append(set, machine(fmt.Sprintf("m%d", round)))
		case rng.IntN(2) == 0:
			set = set[1:]
		default:
			set[0].Healthy = !set[0].Healthy
		}
		sets[i] = append([]Record(nil), set...)
		nodes[i].SetLocal(sets[i])
	}
	// Each node's own records are what it published; every node must
	// converge on all of them.
	want := published(nodes)
	began := time.Now()
	eventually(t, 30*time.Second, "50 nodes converge", func() error { return sameViews(nodes, want) })
	t.Logf("%d records, converged %v after the last update", len(want), time.Since(began).Round(time.Millisecond))
}

// TestPartitionHeals cuts a 10-node fleet in two: updates do not cross
// while the cut lasts, and once it heals every node converges (the sides
// find each other by reconnecting, then push/pull repairs what was
// missed).
func TestPartitionHeals(t *testing.T) {
	p := gossiptest.NewPartition()
	_, nodes := memCluster(t, 10, p, func(i int, c *Config) {
		c.Tune = quick
		c.ReconnectInterval = 200 * time.Millisecond
	})
	left, right := nodes[:5], nodes[5:]
	for i, n := range nodes {
		p.Assign(n.Addr(), i/5)
	}
	nodes[0].SetLocal([]Record{machine("before")})
	eventually(t, 10*time.Second, "the update before the cut reaches every node", func() error {
		for _, n := range nodes[1:] {
			if _, ok := remoteRecord(n, nodes[0].Name(), "before"); !ok {
				return fmt.Errorf("%s lacks it", n.Name())
			}
		}
		return nil
	})

	p.Set(true)
	nodes[1].SetLocal([]Record{machine("left-side")})
	nodes[6].SetLocal([]Record{machine("right-side")})
	changed := machine("before")
	changed.Healthy = false
	nodes[0].SetLocal([]Record{changed})
	sideHas := func(side []*Node, owner *Node, id string, healthy bool) error {
		for _, n := range side {
			if n == owner {
				continue
			}
			if r, ok := remoteRecord(n, owner.Name(), id); !ok || r.Healthy != healthy {
				return fmt.Errorf("%s: %s/%s = %+v, %v", n.Name(), owner.Name(), id, r, ok)
			}
		}
		return nil
	}
	eventually(t, 10*time.Second, "updates spread within each side", func() error {
		return errors.Join(sideHas(left, nodes[1], "left-side", true), sideHas(right, nodes[6], "right-side", true),
			sideHas(left, nodes[0], "before", false))
	})
	for _, n := range right {
		if _, ok := remoteRecord(n, nodes[1].Name(), "left-side"); ok {
			t.Fatalf("%s got left-side across the partition", n.Name())
		}
		if r, _ := remoteRecord(n, nodes[0].Name(), "before"); !r.Healthy {
			t.Fatalf("%s got the health change across the partition", n.Name())
		}
	}
	for _, n := range left {
		if _, ok := remoteRecord(n, nodes[6].Name(), "right-side"); ok {
			t.Fatalf("%s got right-side across the partition", n.Name())
		}
	}
	// Let each side declare the other dead, so that healing needs the
	// reconnect loop and not merely the next probe.
	eventually(t, 20*time.Second, "each side sees the other dead", func() error {
		for _, n := range nodes {
			if a := aliveCount(n); a != 5 {
				return fmt.Errorf("%s sees %d alive", n.Name(), a)
			}
		}
		return nil
	})

	p.Set(false)
	healed := time.Now()
	waitMembers(t, nodes, 30*time.Second)
	want := published(nodes)
	eventually(t, 30*time.Second, "views converge after healing", func() error {
		if err := sameViews(nodes, want); err != nil {
			return err
		}
		for _, n := range nodes {
			for _, r := range n.Remote() {
				if !r.Reachable {
					return fmt.Errorf("%s: %s/%s unreachable", n.Name(), r.Owner, r.ID)
				}
			}
		}
		return nil
	})
	t.Logf("healed and converged in %v", time.Since(healed).Round(time.Millisecond))
}
