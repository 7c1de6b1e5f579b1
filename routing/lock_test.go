package routing

import (
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

// TestRequestPathIgnoresTableLock holds the lock that serialises the
// table's changes, as a change that never ends would: every call the
// request path makes still returns, and Probe blocks until the lock is
// released.
func TestRequestPathIgnoresTableLock(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 2, 4, "app.example")}, []config.Machine{testMachine("m1", "app", "ams")})
	tab.SetRemote([]RemoteMachine{remote("r1", "nrt", "edge-nrt", BelowSoft)})

	tab.mu.Lock()
	held := true
	defer func() {
		if held {
			tab.mu.Unlock()
		}
	}()
	calls := []struct {
		name string
		call func()
	}{
		{"AppForHost", func() { tab.AppForHost("APP.example:443") }},
		{"App", func() { tab.App("app") }},
		{"Machine", func() { tab.Machine("r1") }},
		{"Pick and Release", func() {
			if m, err := tab.App("app").Pick(); err == nil {
				m.Release()
			}
		}},
		{"MarkOwnerDown", func() { tab.MarkOwnerDown("edge-nrt", time.Millisecond) }},
		{"MarkOwnerUp", func() { tab.MarkOwnerUp("edge-nrt") }},
	}
	for _, c := range calls {
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.call()
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: still blocked after 5s with the table's lock held; want it to return (the request path takes no table lock)", c.name)
		}
	}

	probed := make(chan struct{})
	go func() {
		defer close(probed)
		tab.Probe()
	}()
	select {
	case <-probed:
		t.Fatal("Probe: returned with the table's lock held; want it to block until the lock is released")
	case <-time.After(20 * time.Millisecond):
	}
	tab.mu.Unlock()
	held = false
	select {
	case <-probed:
	case <-time.After(5 * time.Second):
		t.Fatal("Probe: still blocked 5s after the lock was released")
	}
}

// TestMarkOwnerDownUnknownOwner notes an owner the table has no machine
// of yet: its machines, once gossip reports them, start held down.
func TestMarkOwnerDownUnknownOwner(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 2, 4, "app.example")}, nil)
	tab.MarkOwnerDown("edge-nrt", time.Hour)
	tab.SetRemote([]RemoteMachine{remote("r1", "nrt", "edge-nrt", BelowSoft)})
	if m := tab.Machine("r1"); m == nil || m.Reachable() {
		t.Fatalf("r1 of an owner held down before it was known: got reachable %v, want a machine held out of routing", m != nil && m.Reachable())
	}
	tab.MarkOwnerUp("edge-nrt")
	if m := tab.Machine("r1"); !m.Reachable() {
		t.Fatal("r1 after MarkOwnerUp: got unreachable, want reachable")
	}
}
