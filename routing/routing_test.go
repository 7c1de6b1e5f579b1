package routing

import (
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/godwit/godwit/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testApp returns an app config with the given limits.
func testApp(name string, soft, hard int, hosts ...string) config.App {
	return config.App{
		Name:          name,
		Hosts:         hosts,
		Org:           "personal",
		PrimaryRegion: "ams",
		HTTPService: config.HTTPService{Concurrency: config.Concurrency{
			Type: config.ConcurrencyRequests, SoftLimit: soft, HardLimit: hard,
		}},
	}
}

// testMachine returns a started machine config.
func testMachine(id, app, region string) config.Machine {
	return config.Machine{ID: id, App: app, Region: region,
		Address: id + ".internal:8080", State: config.StateStarted}
}

// stopped returns mc in the stopped state.
func stopped(mc config.Machine) config.Machine {
	mc.State = config.StateStopped
	return mc
}

// mustMachine returns the table's machine id or fails the test.
func mustMachine(t testing.TB, tab *Table, id string) *Machine {
	t.Helper()
	m := tab.Machine(id)
	if m == nil {
		t.Fatalf("Machine(%q): got nil, want a machine", id)
	}
	return m
}

// mustApp returns the table's app name or fails the test.
func mustApp(t testing.TB, tab *Table, name string) *App {
	t.Helper()
	a := tab.App(name)
	if a == nil {
		t.Fatalf("App(%q): got nil, want an app", name)
	}
	return a
}

// hold takes n slots on m regardless of its limits and returns a function
// that gives them back.
func hold(m *Machine, n int) (release func()) {
	for range n {
		m.Acquire()
	}
	return func() {
		for range n {
			m.Release()
		}
	}
}

// fill takes every free slot on m (it must have a hard limit) and returns a
// function that gives them back.
func fill(t testing.TB, m *Machine) (release func()) {
	t.Helper()
	if m.HardLimit() == 0 {
		t.Fatalf("fill(%s): machine has no hard limit", m.ID)
	}
	n := 0
	for m.TryAcquire() {
		n++
	}
	return func() {
		for range n {
			m.Release()
		}
	}
}

// pickCounts picks and releases n times and counts the machines picked.
func pickCounts(t testing.TB, a *App, n int, exclude ...*Machine) map[string]int {
	t.Helper()
	counts := make(map[string]int)
	for range n {
		m, err := a.Pick(exclude...)
		if err != nil {
			t.Fatalf("Pick: got error %v, want a machine", err)
		}
		counts[m.ID]++
		m.Release()
	}
	return counts
}

// checkIdle fails the test unless no slot is held on any machine of a and
// nobody waits in its queue.
func checkIdle(t testing.TB, a *App) {
	t.Helper()
	for _, m := range a.Machines() {
		if got := m.Inflight(); got != 0 {
			t.Errorf("machine %s: got %d in flight, want 0", m.ID, got)
		}
	}
	if got := a.QueueLen(); got != 0 {
		t.Errorf("app %s: got queue length %d, want 0", a.Name, got)
	}
}

// idOf names m in failure messages ("<nil>" for none).
func idOf(m *Machine) string {
	if m == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s(%s)", m.ID, m.Region)
}
