package gossip

import (
	"math"
	"testing"
	"time"
)

// rec returns a record of owner at version v, updated at now.
func rec(owner, id string, v uint64, now time.Time) Record {
	r := machine(id)
	r.Owner, r.Version, r.Updated = owner, v, now
	return r
}

func TestTableVersionOrder(t *testing.T) {
	now := time.Unix(1000, 0)
	tab := newTable("self", time.Minute)
	tab.memberUp("o")
	steps := []struct {
		name          string
		r             Record
		newer, change bool
		wantVersion   uint64
	}{
		{"first copy", rec("o", "m", 5, now), true, true, 5},
		{"same version again", rec("o", "m", 5, now), false, false, 5},
		{"older version", rec("o", "m", 4, now), false, false, 5},
		{"newer version", rec("o", "m", 9, now), true, true, 9},
		{"tombstone", func() Record { r := rec("o", "m", 10, now); r.Deleted = true; return r }(), true, true, 10},
		{"older live copy after the tombstone", rec("o", "m", 9, now), false, false, 10},
	}
	for _, s := range steps {
		newer, changed, pub := tab.apply(s.r, now)
		got := tab.owners["o"].recs["m"].rec.Version
		if newer != s.newer || changed != s.change || len(pub) != 0 || got != s.wantVersion {
			t.Errorf("%s: newer %v, changed %v, published %v, version %d; want %v, %v, none, %d",
				s.name, newer, changed, pub, got, s.newer, s.change, s.wantVersion)
		}
	}
	if got := tab.remote(); len(got) != 0 {
		t.Errorf("remote() after the tombstone = %+v, want none", got)
	}
}

// TestTableDeadOwner checks that a dead owner's records turn unreachable,
// are dropped after the TTL, and are not resurrected by stale copies until
// the owner is back.
func TestTableDeadOwner(t *testing.T) {
	ttl := time.Minute
	t0 := time.Unix(1000, 0)
	tab := newTable("self", ttl)
	tab.memberUp("o")
	tab.apply(rec("o", "m", 5, t0), t0)
	if r := tab.remote(); len(r) != 1 || !r[0].Reachable {
		t.Fatalf("live owner: remote() = %+v, want m reachable", r)
	}
	if !tab.memberDown("o", t0) {
		t.Error("memberDown of an owner with records reported no change")
	}
	if r := tab.remote(); len(r) != 1 || r[0].Reachable {
		t.Fatalf("dead owner: remote() = %+v, want m unreachable", r)
	}
	if tab.sweep(t0.Add(ttl - time.Second)) {
		t.Error("sweep before the TTL changed something")
	}
	if !tab.sweep(t0.Add(ttl)) || len(tab.remote()) != 0 {
		t.Fatalf("after the TTL: remote() = %+v, want none", tab.remote())
	}
	// A stale copy relayed by a peer that still has it is refused...
	if newer, _, _ := tab.apply(rec("o", "m", 5, t0), t0.Add(ttl)); newer {
		t.Fatal("a dead owner's dropped record came back from a stale copy")
	}
	// ...but a newer version (the owner restarted) is kept, unreachable
	// until the owner is a member again.
	t1 := t0.Add(ttl + time.Second)
	if newer, _, _ := tab.apply(rec("o", "m", 6, t1), t1); !newer {
		t.Fatal("a restarted owner's newer record was refused")
	}
	if r := tab.remote(); len(r) != 1 || r[0].Reachable {
		t.Fatalf("before the owner rejoins: %+v, want m unreachable", r)
	}
	if !tab.memberUp("o") {
		t.Error("memberUp of an owner with records reported no change")
	}
	if r := tab.remote(); len(r) != 1 || !r[0].Reachable || r[0].Version != 6 {
		t.Fatalf("after the owner rejoined: %+v, want m v6 reachable", r)
	}
	// Floors are forgotten after floorTTL.
	tab.memberDown("o", t1)
	tab.sweep(t1.Add(ttl))
	if tab.owners["o"] == nil || tab.owners["o"].floor != 6 {
		t.Fatalf("owner after drop: %+v, want floor 6", tab.owners["o"])
	}
	tab.sweep(t1.Add(ttl + tab.floorTTL))
	if o := tab.owners["o"]; o != nil {
		t.Fatalf("owner after floorTTL: %+v, want forgotten", o)
	}
}

// TestTableOwnerUnknown: records of an owner not (yet) known as a member
// are unreachable and dropped after the TTL unless it shows up.
func TestTableOwnerUnknown(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tab := newTable("self", time.Minute)
	tab.apply(rec("new", "m", 5, t0), t0)
	if r := tab.remote(); len(r) != 1 || r[0].Reachable {
		t.Fatalf("remote() = %+v, want m unreachable", r)
	}
	tab.memberUp("new")
	tab.sweep(t0.Add(time.Hour))
	if r := tab.remote(); len(r) != 1 || !r[0].Reachable {
		t.Fatalf("after the owner joined: %+v, want m reachable, kept", r)
	}
}

// TestTableTombstoneExpiry: tombstones live ttl from their Updated time;
// an expired one is not stored but still removes an older copy.
func TestTableTombstoneExpiry(t *testing.T) {
	ttl := time.Minute
	t0 := time.Unix(1000, 0)
	tab := newTable("self", ttl)
	tab.memberUp("o")
	tab.apply(rec("o", "m", 5, t0), t0)
	ts := rec("o", "m", 6, t0)
	ts.Deleted = true
	newer, changed, _ := tab.apply(ts, t0.Add(ttl))
	if newer || !changed || len(tab.remote()) != 0 {
		t.Fatalf("expired tombstone: newer %v, changed %v, remote %+v; want false, true, none", newer, changed, tab.remote())
	}
	if _, ok := tab.owners["o"].recs["m"]; ok {
		t.Fatal("expired tombstone stored")
	}
	tab.apply(rec("o", "n", 7, t0), t0)
	ts = rec("o", "n", 8, t0)
	ts.Deleted = true
	tab.apply(ts, t0)
	tab.sweep(t0.Add(ttl - time.Nanosecond))
	if _, ok := tab.owners["o"].recs["n"]; !ok {
		t.Fatal("tombstone swept before its TTL")
	}
	tab.sweep(t0.Add(ttl))
	if _, ok := tab.owners["o"].recs["n"]; ok {
		t.Fatal("tombstone kept after its TTL")
	}
}

// TestTableOwnRecords: a node adopts what its previous run published
// until its first SetLocal, and then answers stray copies with what it
// wants.
func TestTableOwnRecords(t *testing.T) {
	t0 := time.Unix(1000, 0)
	old := rec("self", "m", uint64(t0.Add(2*time.Minute).UnixNano()), t0) // previous run, clock ahead

	tab := newTable("self", time.Minute)
	if newer, _, pub := tab.apply(old, t0); newer || len(pub) != 0 {
		t.Fatalf("own record before SetLocal: newer %v, published %v; want adopted silently", newer, pub)
	}
	if tab.own["m"].rec.Version != old.Version || len(tab.remote()) != 0 {
		t.Fatalf("own: %+v, remote %+v; want m adopted as own", tab.own, tab.remote())
	}
	// The first SetLocal withdraws it with a version above the adopted one.
	pub, _ := tab.setLocal([]Record{machine("n")}, t0)
	if len(pub) != 2 || !pub[1].Deleted || pub[1].ID != "m" || pub[1].Version <= old.Version || pub[0].Version <= old.Version {
		t.Fatalf("first SetLocal after adoption published %+v; want n, and m's tombstone above v%d", pub, old.Version)
	}

	// After SetLocal, a stray live copy of a withdrawn record is answered
	// with a tombstone, and one of a wanted record with a newer version.
	tab = newTable("self", time.Minute)
	tab.setLocal([]Record{machine("n")}, t0)
	_, _, pub = tab.apply(old, t0)
	if len(pub) != 1 || pub[0].ID != "m" || !pub[0].Deleted || pub[0].Version <= old.Version {
		t.Fatalf("stray copy of a withdrawn record answered with %+v, want a newer tombstone", pub)
	}
	stray := rec("self", "n", old.Version+10, t0)
	stray.State = "stopped"
	_, _, pub = tab.apply(stray, t0)
	if len(pub) != 1 || pub[0].ID != "n" || pub[0].State != "started" || pub[0].Version <= stray.Version {
		t.Fatalf("stray newer copy of a wanted record answered with %+v, want n started above v%d", pub, stray.Version)
	}
	// Older or equal copies of its own records change nothing.
	if _, _, pub = tab.apply(rec("self", "n", 1, t0), t0); len(pub) != 0 {
		t.Fatalf("older own copy answered with %+v", pub)
	}
}

func TestTableTickMonotonic(t *testing.T) {
	tab := newTable("self", time.Minute)
	now := time.Unix(1000, 0)
	prev := uint64(0)
	for i := range 5 {
		v := tab.tick(now.Add(-time.Duration(i) * time.Second)) // a clock going back
		if v <= prev {
			t.Fatalf("tick %d = %d after %d", i, v, prev)
		}
		prev = v
	}
}

// TestTableFutureRefused checks the MaxClockSkew bound: a copy claiming a
// version or time further ahead is refused, so it can neither pin another
// owner's record nor this node's clock; within the bound it is a copy like
// any other.
func TestTableFutureRefused(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	v := uint64(now.UnixNano())
	tab := newTable("self", time.Minute)
	tab.memberUp("o")
	if newer, _, _ := tab.apply(rec("o", "m", v, now), now); !newer {
		t.Fatal("the first copy was not stored")
	}
	skew := uint64(MaxClockSkew)
	for _, c := range []struct {
		name string
		r    Record
	}{
		{"version at 2^64-1", rec("o", "m", math.MaxUint64, now)},
		{"version just past the bound", rec("o", "m", v+skew+1, now)},
		{"Updated past the bound", rec("o", "m", v+1, now.Add(MaxClockSkew+time.Second))},
	} {
		if newer, changed, pub := tab.apply(c.r, now); newer || changed || len(pub) != 0 {
			t.Errorf("%s: newer %v, changed %v, published %v; want refused", c.name, newer, changed, pub)
		}
		if got := tab.owners["o"].recs["m"].rec.Version; got != v {
			t.Errorf("%s: stored version %d, want %d (unchanged)", c.name, got, v)
		}
	}
	// The owner's next change still wins.
	if newer, _, _ := tab.apply(rec("o", "m", v+1, now), now); !newer {
		t.Error("the owner's next version after the refused copies was not stored")
	}
	// At the bound a copy is taken.
	if newer, _, _ := tab.apply(rec("o", "m", v+skew, now), now); !newer {
		t.Error("a version exactly MaxClockSkew ahead was refused")
	}

	// A copy of its own record at 2^64-1 leaves this node's clock alone.
	tab.setLocal([]Record{machine("a")}, now)
	if _, _, pub := tab.apply(rec("self", "a", math.MaxUint64, now), now); len(pub) != 0 {
		t.Errorf("own record at 2^64-1 answered with %+v, want refused", pub)
	}
	if next := tab.tick(now); next >= v+skew {
		t.Errorf("clock after the refused copy ticks to %d, want about now (%d)", next, v)
	}
}
