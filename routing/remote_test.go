package routing

import (
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

func remote(id, region, owner string, band Band) RemoteMachine {
	return RemoteMachine{ID: id, App: "app", Region: region, Addr: "10.0.0.1:80", Owner: owner,
		Started: true, Healthy: true, Reachable: true, Soft: 2, Hard: 4, Band: band}
}

func TestRemoteMachines(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 2, 4, "app.example")}, []config.Machine{testMachine("m1", "app", "fra")})
	tab.SetRemote([]RemoteMachine{remote("r1", "ams", "edge-ams", BelowSoft), remote("m1", "ams", "edge-x", BelowSoft), remote("r2", "nrt", "edge-nrt", BelowSoft)})
	a := mustApp(t, tab, "app")

	if m := tab.Machine("m1"); m == nil || m.Remote() {
		t.Fatalf("m1: a remote record with this node's own id replaced the local machine")
	}
	if got := a.Regions(); len(got) != 3 || got[0] != "ams" || got[1] != "fra" || got[2] != "nrt" {
		t.Fatalf("regions: got %v, want [ams fra nrt]", got)
	}
	m, err := a.Pick()
	if err != nil || m.ID != "r1" || !m.Remote() || m.Owner != "edge-ams" {
		t.Fatalf("Pick: got %s, %v; want the remote machine in the local region", idOf(m), err)
	}
	m.Release()

	// The owner reports r1 at its hard limit: the pick moves on, in place.
	snap := tab.snap.Load()
	tab.SetRemote([]RemoteMachine{remote("r1", "ams", "edge-ams", AtHard), remote("r2", "nrt", "edge-nrt", BelowSoft)})
	if tab.snap.Load() != snap {
		t.Errorf("a band-only change rebuilt the routing snapshot, want the machines updated in place")
	}
	if m, _ := a.Pick(); m == nil || m.ID != "m1" {
		t.Fatalf("Pick with r1 at hard: got %s, want m1 (fra)", idOf(m))
	} else {
		m.Release()
	}

	// Passive detection: the backhaul to edge-ams failed.
	tab.SetRemote([]RemoteMachine{remote("r1", "ams", "edge-ams", BelowSoft), remote("r2", "nrt", "edge-nrt", BelowSoft)})
	tab.MarkOwnerDown("edge-ams", time.Hour)
	if m, _ := a.Pick(); m == nil || m.ID != "m1" {
		t.Fatalf("Pick with edge-ams held down: got %s, want m1", idOf(m))
	} else {
		m.Release()
	}
	tab.MarkOwnerUp("edge-ams")
	if m, _ := a.Pick(); m == nil || m.ID != "r1" {
		t.Fatalf("Pick after MarkOwnerUp: got %s, want r1", idOf(m))
	} else {
		m.Release()
	}

	// Gossip: the owner left.
	gone := remote("r1", "ams", "edge-ams", BelowSoft)
	gone.Reachable = false
	tab.SetRemote([]RemoteMachine{gone, remote("r2", "nrt", "edge-nrt", BelowSoft)})
	if m, _ := a.Pick(); m == nil || m.ID != "m1" {
		t.Fatalf("Pick with edge-ams gone: got %s, want m1", idOf(m))
	} else {
		m.Release()
	}

	// A removed remote machine leaves the table.
	tab.SetRemote(nil)
	if a = mustApp(t, tab, "app"); tab.Machine("r1") != nil || len(a.Machines()) != 1 {
		t.Errorf("after SetRemote(nil): app has %d machines, want only m1", len(a.Machines()))
	}
}

func TestRegionRTTOrder(t *testing.T) {
	tab := NewTable("iad", []config.App{testApp("app", 2, 4, "app.example")},
		[]config.Machine{testMachine("a", "app", "cdg"), testMachine("b", "app", "nrt"), testMachine("c", "app", "ord")})
	a := mustApp(t, tab, "app")
	if got := a.Regions(); got[0] != "ord" || got[1] != "cdg" || got[2] != "nrt" {
		t.Fatalf("static order from iad: got %v, want [ord cdg nrt]", got)
	}
	// Measured: nrt is nearer than the map says, ord farther.
	tab.SetRegionRTTs(map[string]time.Duration{"nrt": 5 * time.Millisecond, "ord": 90 * time.Millisecond})
	a = mustApp(t, tab, "app")
	if got := a.Regions(); got[0] != "nrt" || got[1] != "cdg" || got[2] != "ord" {
		t.Fatalf("order with RTTs (nrt 5ms, ord 90ms, cdg static ~%v): got %v, want [nrt cdg ord]", staticRTT(nil, "iad", "cdg"), got)
	}
	if d, measured := tab.RegionRTT("nrt"); d != 5*time.Millisecond || !measured {
		t.Errorf("RegionRTT(nrt) = %v, %v; want 5ms measured", d, measured)
	}
}

func TestRegionCoords(t *testing.T) {
	tab := NewTable("iad", []config.App{testApp("app", 2, 4, "app.example")},
		[]config.Machine{testMachine("a", "app", "cdg"), testMachine("b", "app", "xyz")})
	if got := mustApp(t, tab, "app").Regions(); got[0] != "cdg" {
		t.Fatalf("unknown region xyz: got %v, want it last", got)
	}
	tab.SetRegionCoords(map[string][2]float64{"xyz": {39, -77}}) // next to iad
	if got := mustApp(t, tab, "app").Regions(); got[0] != "xyz" {
		t.Fatalf("xyz placed next to iad: got %v, want it first", got)
	}
}
