package gossip

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLoadCoalescing checks that a burst of band-only changes makes at most
// a few broadcasts, the last band still arriving, while a health change
// goes out at once.
func TestLoadCoalescing(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, nodes := memCluster(t, 2, nil, func(i int, c *Config) {
		c.LoadInterval = 500 * time.Millisecond
		if i == 0 {
			c.Registerer = reg
		}
	})
	owner, peer := nodes[0], nodes[1]
	published := func() int {
		return int(testutil.ToFloat64(owner.met.messages.WithLabelValues(kindLabelUpdate, resultPublished)))
	}

	m := machine("m1")
	owner.SetLocal([]Record{m})
	if got := published(); got != 1 {
		t.Fatalf("a new machine made %d broadcasts, want 1", got)
	}
	began := time.Now()
	for i := range 100 {
		m.Band = 1 + uint8(i%2) // 1, 2, 1, ... 2: the first goes out at once, the last must follow
		owner.SetLocal([]Record{m})
	}
	burst := time.Since(began)
	got := published() - 1
	if burst < owner.cfg.LoadInterval && got > 2 {
		t.Fatalf("100 band-only changes in %v made %d broadcasts at once, want at most 2", burst, got)
	}
	eventually(t, 5*time.Second, "the last band (coalesced) reaches the peer", func() error {
		if r, _ := remoteRecord(peer, owner.Name(), "m1"); r.Band != m.Band {
			return fmt.Errorf("band %d, want %d", r.Band, m.Band)
		}
		return nil
	})
	if got := published() - 1; got > 3 {
		t.Fatalf("100 band-only changes made %d broadcasts, want at most 3", got)
	}
	t.Logf("100 band-only changes in %v: %d broadcasts", burst.Round(time.Microsecond), published()-1)

	// A health change is not held back, even right after a band flush.
	before := published()
	m.Band = (m.Band + 1) % 3
	owner.SetLocal([]Record{m}) // band only: held or flushed
	m.Healthy = false
	owner.SetLocal([]Record{m})
	if got := published() - before; got < 1 || got > 2 {
		t.Fatalf("a band then a health change made %d broadcasts at once, want 1 or 2", got)
	}
	sent := time.Now()
	eventually(t, owner.cfg.LoadInterval, "the health change reaches the peer before the band interval", func() error {
		if r, _ := remoteRecord(peer, owner.Name(), "m1"); r.Healthy || r.Band != m.Band {
			return fmt.Errorf("peer has %+v", r)
		}
		return nil
	})
	t.Logf("health change arrived after %v", time.Since(sent).Round(time.Microsecond))
}

// TestSetLocalDiff checks what SetLocal publishes: nothing for an
// unchanged set, the changed record only, tombstones for removed ones.
func TestSetLocalDiff(t *testing.T) {
	tab := newTable("self", time.Minute)
	now := time.Unix(1000, 0)
	a, b := machine("a"), machine("b")
	pub, pending := tab.setLocal([]Record{a, b}, now)
	if len(pub) != 2 || pending {
		t.Fatalf("first set: published %d, pending %v; want 2, false", len(pub), pending)
	}
	if pub[0].Owner != "self" || pub[0].Version == 0 || pub[1].Version <= pub[0].Version || !pub[0].Updated.Equal(now) {
		t.Fatalf("published %+v", pub)
	}
	if pub, pending = tab.setLocal([]Record{a, b}, now); len(pub) != 0 || pending {
		t.Fatalf("same set again: published %v, pending %v; want nothing", pub, pending)
	}
	b.Band = 1
	if pub, pending = tab.setLocal([]Record{a, b}, now); len(pub) != 0 || !pending {
		t.Fatalf("band-only change: published %v, pending %v; want nothing, pending", pub, pending)
	}
	if pub = tab.flushBands(now); len(pub) != 1 || pub[0].ID != "b" || pub[0].Band != 1 {
		t.Fatalf("flush: %+v, want b at band 1", pub)
	}
	a.State = "stopped"
	pub, _ = tab.setLocal([]Record{a}, now)
	if len(pub) != 2 || pub[0].ID != "a" || pub[0].State != "stopped" || pub[1].ID != "b" || !pub[1].Deleted {
		t.Fatalf("change a, remove b: %+v; want a stopped, b's tombstone", pub)
	}
	if pub, _ = tab.setLocal([]Record{a, {App: "no id"}}, now); len(pub) != 0 {
		t.Fatalf("a record without ID: published %+v", pub)
	}
	// A re-added machine comes back with a newer version than its tombstone.
	pub, _ = tab.setLocal([]Record{a, b}, now)
	if len(pub) != 1 || pub[0].ID != "b" || pub[0].Deleted || pub[0].Version <= tab.own["a"].rec.Version {
		t.Fatalf("re-add b: %+v", pub)
	}
}

func TestCheckRecord(t *testing.T) {
	long := strings.Repeat("x", maxStringBytes+1)
	cases := []struct {
		name string
		mod  func(*Record)
		want string // "" for valid
	}{
		{"valid", func(*Record) {}, ""},
		{"no id", func(r *Record) { r.ID = "" }, "no ID"},
		{"long addr", func(r *Record) { r.Addr = long }, "1025 bytes"},
		{"long state", func(r *Record) { r.State = long }, "1025 bytes"},
		{"huge limit", func(r *Record) { r.Hard = math.MaxInt32 + 1 }, "32 bits"},
	}
	for _, c := range cases {
		r := machine("m")
		c.mod(&r)
		err := checkRecord(r)
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: checkRecord = %v, want %q", c.name, err, c.want)
		}
	}
	// What SetLocal refuses never reaches the table.
	n, _ := single(t, "edge-a", "iad")
	bad := machine("bad")
	bad.Addr = long
	n.SetLocal([]Record{machine("ok"), bad})
	n.mu.Lock()
	_, hasBad := n.tab.own["bad"]
	_, hasOK := n.tab.own["ok"]
	n.mu.Unlock()
	if hasBad || !hasOK {
		t.Errorf("after SetLocal with an invalid record: own has bad %v, ok %v; want false, true", hasBad, hasOK)
	}
}
