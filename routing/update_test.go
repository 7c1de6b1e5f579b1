package routing

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/godwit/godwit/config"
)

func TestUpdateKeepsMachineState(t *testing.T) {
	apps := []config.App{testApp("app", 2, 4, "app.example")}
	ms := []config.Machine{testMachine("m1", "app", "ams"), testMachine("m2", "app", "ams"), testMachine("m3", "app", "fra")}
	tab := NewTable("ams", apps, ms)
	m1, m2, m3 := mustMachine(t, tab, "m1"), mustMachine(t, tab, "m2"), mustMachine(t, tab, "m3")
	hold(m1, 3)
	m2.SetHealthy(false)
	m3.SetStarted(false)

	apps = []config.App{testApp("app", 5, 10, "app.example", "new.example")}
	tab.Update(apps, ms)

	for _, c := range []struct {
		m                *Machine
		inflight         int
		healthy, started bool
		soft, hard       int
	}{
		{m1, 3, true, true, 5, 10},
		{m2, 0, false, true, 5, 10},
		{m3, 0, true, false, 5, 10},
	} {
		got := tab.Machine(c.m.ID)
		if got != c.m {
			t.Errorf("Machine(%s) after Update: got a new machine, want the same one", c.m.ID)
			continue
		}
		if got.Inflight() != c.inflight || got.Healthy() != c.healthy || got.Started() != c.started {
			t.Errorf("%s after Update: got inflight %d healthy %v started %v, want %d %v %v",
				got.ID, got.Inflight(), got.Healthy(), got.Started(), c.inflight, c.healthy, c.started)
		}
		if got.SoftLimit() != c.soft || got.HardLimit() != c.hard {
			t.Errorf("%s limits after Update: got soft %d hard %d, want %d %d",
				got.ID, got.SoftLimit(), got.HardLimit(), c.soft, c.hard)
		}
	}
	if a := tab.AppForHost("new.example"); a == nil || a.Name != "app" {
		t.Errorf("AppForHost(new.example) after Update: got %v, want app", a)
	}
	a := mustApp(t, tab, "app")
	if got := a.Machine("m1"); got != m1 {
		t.Errorf("App.Machine(m1) after Update: got %s, want the old machine", idOf(got))
	}
	// The new hard limit of 10 applies: m1 (the only usable machine in ams)
	// takes 7 more.
	for i := range 7 {
		m, err := a.Pick()
		if err != nil || m != m1 {
			t.Fatalf("Pick %d after raising the hard limit: got %s, %v, want m1", i+1, idOf(m), err)
		}
	}
	if m, err := a.Pick(); err != ErrAtCapacity {
		t.Errorf("Pick with m1 at its new hard limit (m2 unhealthy, m3 stopped): got %s, %v, want ErrAtCapacity", idOf(m), err)
	}
}

func TestUpdateAddsAndRemoves(t *testing.T) {
	apps := []config.App{testApp("app", 2, 4, "app.example"), testApp("gone", 2, 4, "gone.example")}
	tab := NewTable("ams", apps, []config.Machine{
		testMachine("keep", "app", "ams"), testMachine("drop", "app", "ams"), testMachine("moved", "app", "ams"),
		testMachine("g1", "gone", "ams"),
	})
	keep, drop, moved := mustMachine(t, tab, "keep"), mustMachine(t, tab, "drop"), mustMachine(t, tab, "moved")
	hold(moved, 1)

	movedCfg := testMachine("moved", "app", "ams")
	movedCfg.Address = "10.9.9.9:8080"
	tab.Update(apps[:1], []config.Machine{
		testMachine("keep", "app", "ams"), movedCfg, testMachine("added", "app", "fra"),
	})

	if got := tab.Machine("drop"); got != nil {
		t.Errorf("Machine(drop) after removal: got %s, want nil", idOf(got))
	}
	if got := tab.Machine("keep"); got != keep {
		t.Errorf("Machine(keep) after Update: got a new machine, want the same one")
	}
	if got := tab.Machine("moved"); got == moved || got == nil || got.Addr != "10.9.9.9:8080" || got.Inflight() != 0 {
		t.Errorf("Machine(moved) after an address change: got %s (same %v), want a new machine at 10.9.9.9:8080 with 0 in flight",
			idOf(got), got == moved)
	}
	if got := tab.Machine("added"); got == nil || got.Region != "fra" {
		t.Errorf("Machine(added): got %s, want a machine in fra", idOf(got))
	}
	if got := tab.App("gone"); got != nil {
		t.Errorf("App(gone) after removal: got %q, want nil", got.Name)
	}
	if got := tab.AppForHost("gone.example"); got != nil {
		t.Errorf("AppForHost(gone.example) after removal: got %q, want nil", got.Name)
	}
	if got := tab.Machine("g1"); got != nil {
		t.Errorf("Machine(g1) of a removed app: got %s, want nil", idOf(got))
	}
	a := mustApp(t, tab, "app")
	if got := len(a.Machines()); got != 3 {
		t.Errorf("app machines after Update: got %d, want 3", got)
	}
	for id := range pickCounts(t, a, 200) {
		if id == "drop" {
			t.Errorf("Pick after removal: got the removed machine drop")
		}
	}
	drop.Release() // harmless on a removed machine
	moved.Release()
	if got := moved.Inflight(); got != 0 {
		t.Errorf("replaced machine after Release: got %d in flight, want 0", got)
	}
}

func TestUpdateKeepsQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		apps := []config.App{testApp("app", 1, 1)}
		ms := []config.Machine{testMachine("m1", "app", "ams")}
		tab := NewTable("ams", apps, ms)
		m1 := mustMachine(t, tab, "m1")
		if !m1.TryAcquire() {
			t.Fatal("TryAcquire on an idle machine: got false, want true")
		}
		w1 := startWait(tab.App("app"), t.Context(), time.Minute, 10)
		w2 := startWait(tab.App("app"), t.Context(), time.Minute, 10)

		tab.Update(apps, ms) // same config
		a := mustApp(t, tab, "app")
		if got := a.QueueLen(); got != 2 {
			t.Fatalf("QueueLen after Update: got %d, want 2", got)
		}
		// Raising the hard limit hands the new slot to the oldest waiter.
		tab.Update([]config.App{testApp("app", 1, 2)}, ms)
		synctest.Wait()
		if r := w1.done(t); r.m != m1 || r.err != nil {
			t.Fatalf("first waiter after raising the hard limit: got %s, %v, want m1", idOf(r.m), r.err)
		}
		if got := a.QueueLen(); got != 1 {
			t.Errorf("QueueLen: got %d, want 1", got)
		}
		// Adding a machine hands its slot to the next.
		tab.Update([]config.App{testApp("app", 1, 2)}, append(ms, testMachine("m2", "app", "fra")))
		synctest.Wait()
		if r := w2.done(t); r.m == nil || r.m.ID != "m2" || r.err != nil {
			t.Fatalf("second waiter after adding m2: got %s, %v, want m2", idOf(r.m), r.err)
		}
		m1.Release()
		m1.Release()
		tab.Machine("m2").Release()
		checkIdle(t, mustApp(t, tab, "app"))
	})
}

// A machine removed from the table, or replaced after a change of address,
// still has requests in flight; their Release must not hand its slot to a
// waiter, who would then be sent to a machine that is no longer there.
func TestUpdateRemovedMachineGetsNoWaiter(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(mc config.Machine) []config.Machine
	}{
		{"removed", func(config.Machine) []config.Machine { return nil }},
		{"address changed", func(mc config.Machine) []config.Machine {
			mc.Address = "10.9.9.9:8080"
			return []config.Machine{mc}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				apps := []config.App{testApp("app", 1, 1)}
				keepCfg, oldCfg := testMachine("keep", "app", "ams"), testMachine("old", "app", "ams")
				tab := NewTable("ams", apps, []config.Machine{keepCfg, oldCfg})
				keep, old := mustMachine(t, tab, "keep"), mustMachine(t, tab, "old")
				releaseKeep, releaseOld := fill(t, keep), fill(t, old)
				w := startWait(mustApp(t, tab, "app"), t.Context(), time.Minute, 10)

				ms := append([]config.Machine{keepCfg}, tt.change(oldCfg)...)
				tab.Update(apps, ms)
				if cur := tab.Machine("old"); cur != nil {
					// The replacement is free: it takes the waiter.
					synctest.Wait()
					if r := w.done(t); r.m != cur {
						t.Fatalf("waiter after the replacement of old: got %s, want the replacement", idOf(r.m))
					}
					cur.Release()
					releaseOld()
					releaseKeep()
					return
				}
				releaseOld()
				synctest.Wait()
				if r, ok := w.poll(); ok {
					t.Fatalf("waiter after Release on the removed machine: got %s, %v, want still waiting", idOf(r.m), r.err)
				}
				releaseKeep()
				synctest.Wait()
				if r := w.done(t); r.m != keep || r.err != nil {
					t.Fatalf("waiter after Release on keep: got %s, %v, want keep", idOf(r.m), r.err)
				}
				keep.Release()
				checkIdle(t, mustApp(t, tab, "app"))
			})
		})
	}
}
