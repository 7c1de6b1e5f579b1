package routing

import (
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

// TestLocalChanges: a change of this node's own machines other than load
// is signalled on LocalChanges, once however many came before the read;
// load and other nodes' machines are not.
func TestLocalChanges(t *testing.T) {
	apps := []config.App{testApp("app", 1, 2, "app.example")}
	local := []config.Machine{testMachine("m1", "app", "ams")}
	tab := NewTable("ams", apps, local)
	tab.SetRemote([]RemoteMachine{remote("r1", "ams", "edge-x", BelowSoft)})
	m1 := mustMachine(t, tab, "m1")
	r1 := mustMachine(t, tab, "r1")

	steps := []struct {
		name   string
		do     func()
		signal bool
	}{
		{"nothing yet", func() {}, false},
		{"health fails", func() { m1.SetHealthy(false) }, true},
		{"health fails again", func() { m1.SetHealthy(false) }, false},
		{"health passes", func() { m1.SetHealthy(true) }, true},
		{"stopped", func() { m1.SetStarted(false) }, true},
		{"started", func() { m1.SetStarted(true) }, true},
		{"started again", func() { m1.SetStarted(true) }, false},
		{"several flips, one signal", func() { m1.SetHealthy(false); m1.SetHealthy(true); m1.SetStarted(false) }, true},
		{"started after the read", func() { m1.SetStarted(true) }, true},
		{"load crosses both limits", func() {
			release := hold(m1, 2) // at hard
			release()
		}, false},
		{"pick and release", func() {
			m, err := mustApp(t, tab, "app").Pick()
			if err != nil {
				t.Fatalf("Pick: %v", err)
			}
			m.Release()
		}, false},
		{"remote machine refused", func() { r1.SetHealthy(false); r1.SetStarted(false); r1.SetRemoteBand(AtHard) }, false},
		{"remote set changes", func() {
			tab.SetRemote([]RemoteMachine{remote("r1", "ams", "edge-x", AboveSoft), remote("r2", "fra", "edge-y", BelowSoft)})
		}, false},
		{"region coordinates", func() { tab.SetRegionCoords(map[string][2]float64{"ams": {0, 0}}) }, false},
		{"region RTTs", func() { tab.SetRegionRTTs(map[string]time.Duration{"fra": time.Millisecond}) }, false},
		{"limits change", func() { tab.Update([]config.App{testApp("app", 5, 10, "app.example")}, local) }, true},
		{"machine added", func() {
			local = append(local, testMachine("m2", "app", "fra"))
			tab.Update(apps, local)
		}, true},
		{"new machine's health fails", func() { mustMachine(t, tab, "m2").SetHealthy(false) }, true},
		{"machine removed", func() { tab.Update(apps, local[:1]) }, true},
	}
	for _, s := range steps {
		s.do()
		got := false
		select {
		case <-tab.LocalChanges():
			got = true
		default:
		}
		if got != s.signal {
			t.Errorf("%s: LocalChanges signalled %v, want %v", s.name, got, s.signal)
		}
	}
}
