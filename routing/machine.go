package routing

import (
	"sync/atomic"

	"github.com/godwit/godwit/config"
)

// Band is one of Fly's three load bands of a machine.
type Band uint8

// Load bands, best first.
const (
	BelowSoft Band = iota // eligible, preferred
	AboveSoft             // at or over soft_limit: used only when no machine in the region is below soft
	AtHard                // at hard_limit: no new request
)

func (b Band) String() string {
	switch b {
	case BelowSoft:
		return "below_soft"
	case AboveSoft:
		return "above_soft"
	default:
		return "at_hard"
	}
}

// Machine is the routing view of one app machine: its fixed identity and its
// live state. The live fields are atomics, read on every pick without locks.
// A Machine keeps its counters across table rebuilds (Table.Update reuses it
// by id), so a config reload does not forget requests in flight.
type Machine struct {
	ID     string
	App    string
	Region string
	Addr   string // host:port

	// Owner is the node that owns a remote machine (and enforces its
	// limits, runs its checks, wakes it); "" for this node's own machines.
	// A remote machine is reached through its owner over the backhaul.
	Owner string

	soft     atomic.Int32 // soft limit; 0 means every request is over soft
	hard     atomic.Int32 // hard limit; 0 means none
	inflight atomic.Int32 // slots held by this node's requests
	healthy  atomic.Bool
	// state is the machine's lifecycle State. Only StateStarted is
	// picked; StateStopping is the cordon: TryAcquire fails on it while
	// the requests already in flight drain.
	state atomic.Uint32
	// remoteBand is the load band the owner of a remote machine last
	// published (or AtHard once the owner refused a request for it). The
	// pick uses the higher of it and the band of this node's own requests.
	remoteBand atomic.Int32
	// owner is the shared reachability of a remote machine's owner; nil
	// for local machines.
	owner *ownerState

	queue *queue // the app's wait queue, shared by its machines
	// changed is the table's LocalChanges channel, for a machine of this
	// node (health and start flips are signalled on it); nil for a remote
	// machine.
	changed chan struct{}
}

func newMachine(c config.Machine, conc config.Concurrency, q *queue, changed chan struct{}) *Machine {
	m := &Machine{ID: c.ID, App: c.App, Region: c.Region, Addr: c.Address, queue: q, changed: changed}
	m.soft.Store(int32(conc.SoftLimit))
	m.hard.Store(int32(conc.HardLimit))
	m.healthy.Store(true)
	if c.State == config.StateStopped {
		m.state.Store(uint32(StateStopped))
	} else {
		m.state.Store(uint32(StateStarted))
	}
	return m
}

// Inflight is the number of slots currently held on the machine.
func (m *Machine) Inflight() int { return int(m.inflight.Load()) }

// SoftLimit and HardLimit return the machine's limits (0 hard means none).
func (m *Machine) SoftLimit() int { return int(m.soft.Load()) }
func (m *Machine) HardLimit() int { return int(m.hard.Load()) }

// Healthy reports whether the machine passes its health checks.
func (m *Machine) Healthy() bool { return m.healthy.Load() }

// Started reports whether the machine is running and takes new requests
// (its State is StateStarted). A stopping machine is still running but is
// not Started: it takes no new request.
func (m *Machine) Started() bool { return m.State() == StateStarted }

// State returns the machine's lifecycle state. A remote machine is
// StateStarted or StateStopped, as its owner publishes it.
func (m *Machine) State() State { return State(m.state.Load()) }

// Cordoned reports whether the machine is stopping: the pick skips it and
// TryAcquire fails on it while the requests already in flight finish.
func (m *Machine) Cordoned() bool { return m.State() == StateStopping }

// SetHealthy records a health transition. A machine that becomes healthy may
// take requests waiting in its app's queue. A transition of this node's own
// machine is signalled on the table's LocalChanges.
func (m *Machine) SetHealthy(ok bool) {
	if m.healthy.Swap(ok) != ok {
		m.flipped(ok)
	}
}

// SetStarted records a start or stop of the machine, signalled like
// SetHealthy's transitions: true sets StateStarted, false turns a started
// machine into StateStopped and leaves any other state as it is.
func (m *Machine) SetStarted(ok bool) {
	if ok {
		m.SetState(StateStarted)
		return
	}
	if m.state.CompareAndSwap(uint32(StateStarted), uint32(StateStopped)) {
		m.flipped(false)
	}
}

// SetState records a lifecycle transition (the autostart manager's). A
// change of this node's own machine is signalled on the table's
// LocalChanges, so gossip publishes it; a machine now started may take
// queued requests. Entering StateStopping cordons the machine: from then
// on TryAcquire fails on it, so once its in-flight count is seen at zero
// no new request can reach it.
func (m *Machine) SetState(s State) {
	if State(m.state.Swap(uint32(s))) != s {
		m.flipped(s == StateStarted)
	}
}

// flipped follows a change of health or started state: a machine now up may
// take queued requests, and a change of this node's own machine is
// signalled.
func (m *Machine) flipped(up bool) {
	if up {
		m.queue.kick(m)
	}
	signal(m.changed)
}

// signal sends on a LocalChanges channel without blocking: a signal already
// pending stands for this one too. A nil channel is not signalled.
func signal(ch chan struct{}) {
	if ch == nil {
		return
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

// usable reports whether the machine may be picked at all (ignoring load):
// started, healthy and, for a remote machine, with its owner reachable.
func (m *Machine) usable() bool {
	return m.State() == StateStarted && m.healthy.Load() && (m.owner == nil || m.owner.reachable())
}

// Remote reports whether the machine is owned by another node.
func (m *Machine) Remote() bool { return m.Owner != "" }

// Reachable reports whether a remote machine's owner is reachable (always
// true for a local machine).
func (m *Machine) Reachable() bool { return m.owner == nil || m.owner.reachable() }

// SetRemoteBand records the load band a remote machine's owner reports: its
// gossip, or a refusal at the hard limit (AtHard), so this node stops
// sending there until the owner says otherwise.
func (m *Machine) SetRemoteBand(b Band) {
	if m.remoteBand.Swap(int32(b)) > int32(b) {
		m.queue.kick(m) // lighter now: queued requests may fit
	}
}

// band returns the machine's load band for an in-flight count n.
func (m *Machine) band(n int32) Band {
	if h := m.hard.Load(); h > 0 && n >= h {
		return AtHard
	}
	if n >= m.soft.Load() {
		return AboveSoft
	}
	return BelowSoft
}

// Band returns the machine's current load band: for a remote machine the
// higher of its owner's report and this node's own requests.
func (m *Machine) Band() Band {
	b := m.band(m.inflight.Load())
	if m.owner != nil {
		b = max(b, Band(m.remoteBand.Load()))
	}
	return b
}

// TryAcquire takes a concurrency slot unless the machine is at its hard
// limit or cordoned (stopping). It never lets the in-flight count exceed
// the hard limit.
func (m *Machine) TryAcquire() bool {
	for {
		n := m.inflight.Load()
		if h := m.hard.Load(); h > 0 && n >= h {
			return false
		}
		if m.inflight.CompareAndSwap(n, n+1) {
			break
		}
	}
	// The state is read after the slot is taken, and a stop sets the state
	// before it reads the in-flight count: either the stop sees this slot
	// and waits for it, or this sees the cordon and gives the slot back.
	if m.State() == StateStopping {
		m.inflight.Add(-1)
		return false
	}
	return true
}

// Acquire takes a slot whatever the limit says. It is for requests that
// must reach this very machine (a later issue's forced instance); the pick
// never uses it.
func (m *Machine) Acquire() { m.inflight.Add(1) }

// Release returns a slot taken by a pick, TryAcquire or Acquire, and hands
// it to the oldest waiter of the app's queue if there is one.
func (m *Machine) Release() {
	m.inflight.Add(-1)
	m.queue.kick(m)
}
