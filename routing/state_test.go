package routing

import (
	"errors"
	"testing"

	"github.com/godwit/godwit/config"
)

// TestStateNames: every state has the name the admin API shows, and
// ParseState reads it back.
func TestStateNames(t *testing.T) {
	want := map[State]string{StateStopped: "stopped", StateStarting: "starting", StateStarted: "started",
		StateStopping: "stopping", StateSuspended: "suspended", StateFailed: "failed"}
	for s, name := range want {
		if got := s.String(); got != name {
			t.Errorf("State(%d).String(): got %q, want %q", s, got, name)
		}
		if got, ok := ParseState(name); !ok || got != s {
			t.Errorf("ParseState(%q): got %v, %v, want %v, true", name, got, ok, s)
		}
	}
	if _, ok := ParseState("destroyed"); ok {
		t.Errorf("ParseState(destroyed): got ok, want false")
	}
}

// TestStateTransitions: only a started machine is picked; each change of a
// local machine's state is signalled; SetStarted keeps the states it does
// not own.
func TestStateTransitions(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 5, 10, "app.example")},
		[]config.Machine{testMachine("m1", "app", "ams")})
	m1 := mustMachine(t, tab, "m1")
	app := mustApp(t, tab, "app")
	drain := func() bool {
		select {
		case <-tab.LocalChanges():
			return true
		default:
			return false
		}
	}
	drain()
	steps := []struct {
		name     string
		do       func()
		want     State
		signal   bool
		pickable bool
	}{
		{"config's started", func() {}, StateStarted, false, true},
		{"stopping", func() { m1.SetState(StateStopping) }, StateStopping, true, false},
		{"stopping again", func() { m1.SetState(StateStopping) }, StateStopping, false, false},
		{"SetStarted(false) keeps stopping", func() { m1.SetStarted(false) }, StateStopping, false, false},
		{"suspended", func() { m1.SetState(StateSuspended) }, StateSuspended, true, false},
		{"SetStarted(false) keeps suspended", func() { m1.SetStarted(false) }, StateSuspended, false, false},
		{"starting", func() { m1.SetState(StateStarting) }, StateStarting, true, false},
		{"failed", func() { m1.SetState(StateFailed) }, StateFailed, true, false},
		{"started", func() { m1.SetState(StateStarted) }, StateStarted, true, true},
		{"SetStarted(false) stops a started one", func() { m1.SetStarted(false) }, StateStopped, true, false},
		{"SetStarted(true)", func() { m1.SetStarted(true) }, StateStarted, true, true},
	}
	for _, s := range steps {
		s.do()
		if got := m1.State(); got != s.want {
			t.Errorf("%s: got state %v, want %v", s.name, got, s.want)
		}
		if got := m1.Started(); got != (s.want == StateStarted) {
			t.Errorf("%s: got Started %v, want %v", s.name, got, s.want == StateStarted)
		}
		if got := drain(); got != s.signal {
			t.Errorf("%s: got signal %v, want %v", s.name, got, s.signal)
		}
		m, err := app.Pick()
		if got := err == nil; got != s.pickable {
			t.Errorf("%s: Pick got %v, %v, want picked %v", s.name, m, err, s.pickable)
		}
		if m != nil {
			m.Release()
		}
	}
}

// TestCordon: a stopping machine gets no new slot, by the pick or by
// TryAcquire, while the ones it holds finish; a forced instance is refused
// too.
func TestCordon(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 5, 10, "app.example")},
		[]config.Machine{testMachine("m1", "app", "ams"), testMachine("m2", "app", "ams")})
	m1, m2 := mustMachine(t, tab, "m1"), mustMachine(t, tab, "m2")
	app := mustApp(t, tab, "app")
	release := hold(m1, 2)
	m1.SetState(StateStopping)
	if !m1.Cordoned() {
		t.Fatalf("Cordoned: got false, want true")
	}
	for range 20 {
		m, err := app.Pick()
		if err != nil || m != m2 {
			t.Fatalf("Pick with m1 cordoned: got %v, %v, want m2", m, err)
		}
		m.Release()
	}
	if m1.TryAcquire() {
		t.Errorf("TryAcquire on a cordoned machine: got true, want false")
	}
	if _, _, err := app.PickWith(Constraints{Instance: "m1"}); !errors.Is(err, ErrInstanceUnavailable) {
		t.Errorf("forced instance m1 while cordoned: got %v, want ErrInstanceUnavailable", err)
	}
	if got := m1.Inflight(); got != 2 {
		t.Errorf("in flight on the cordoned machine: got %d, want the 2 held", got)
	}
	release()
	if got := m1.Inflight(); got != 0 {
		t.Errorf("in flight after the release: got %d, want 0", got)
	}
	m2.SetState(StateStopping)
	if _, err := app.Pick(); !errors.Is(err, ErrNoMachine) {
		t.Errorf("Pick with every machine cordoned: got %v, want ErrNoMachine", err)
	}
}
