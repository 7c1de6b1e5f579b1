package routing

import (
	"maps"
	"sort"
	"sync/atomic"
	"time"
)

// RemoteMachine is a machine another node owns, as gossip reports it: plain
// data, so routing knows nothing of how it arrived.
type RemoteMachine struct {
	ID, App, Region, Addr string
	Owner                 string // the owner node's name
	Started, Healthy      bool
	// State is the owner's lifecycle state of the machine (starting,
	// suspended, failed...); Started set means StateStarted whatever it says.
	State      State
	Reachable  bool // the owner is a live member
	Soft, Hard int
	Band       Band // as the owner last published it
}

// ownerState is what this node knows of an owner's reachability, shared by
// all of that owner's machines: gossip says whether it is a live member,
// and the request path holds it down for a while after the backhaul to it
// failed (passive detection, long before gossip declares a node dead).
type ownerState struct {
	member    atomic.Bool
	downUntil atomic.Int64 // unix nanoseconds; 0: not held down
}

func (o *ownerState) reachable() bool {
	if !o.member.Load() {
		return false
	}
	d := o.downUntil.Load()
	return d == 0 || time.Now().UnixNano() >= d
}

// ownerState returns the state of an owner, created on first use. Called
// with t.mu held.
func (t *Table) ownerState(name string) *ownerState {
	if o := t.owner(name); o != nil {
		return o
	}
	old := *t.owners.Load()
	owners := make(map[string]*ownerState, len(old)+1)
	maps.Copy(owners, old)
	o := &ownerState{}
	o.member.Store(true)
	owners[name] = o
	t.owners.Store(&owners)
	return o
}

// owner returns the state of an owner, nil if none was created yet. It
// takes no lock.
func (t *Table) owner(name string) *ownerState { return (*t.owners.Load())[name] }

// sameRemote reports whether m is the remote machine rm describes, so its
// record (and this node's in-flight count on it) carries over.
func (m *Machine) sameRemote(rm RemoteMachine) bool {
	return m.owner != nil && m.App == rm.App && m.Owner == rm.Owner && m.Addr == rm.Addr && m.Region == rm.Region
}

// setRemote applies the live part of a gossip record.
func (m *Machine) setRemote(rm RemoteMachine) {
	m.soft.Store(int32(rm.Soft))
	m.hard.Store(int32(rm.Hard))
	m.remoteBand.Store(int32(rm.Band))
	m.healthy.Store(rm.Healthy)
	st := rm.State
	if rm.Started {
		st = StateStarted
	} else if st == StateStarted {
		st = StateStopped
	}
	m.state.Store(uint32(st))
	m.owner.member.Store(rm.Reachable)
}

// SetRemote replaces the machines other nodes own. When only their live
// state changed (band, health, started, reachability: the common case, as
// load moves) the machines are updated in place and the routing snapshot is
// kept; a machine added, removed or moved rebuilds it. Remote machines of
// apps this node does not serve, and ids this node owns itself, are
// ignored.
func (t *Table) SetRemote(machines []RemoteMachine) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.remote = append(t.remote[:0:0], machines...)
	if s := t.snap.Load(); s != nil && t.sameRemoteSet(s, machines) {
		for _, rm := range machines {
			m := s.machines[rm.ID]
			if m == nil || m.owner == nil {
				continue
			}
			before := m.Band()
			wasUsable := m.usable()
			m.setRemote(rm)
			if (m.usable() && !wasUsable) || m.Band() < before {
				m.queue.kick(m)
			}
		}
		return
	}
	t.rebuild()
}

// sameRemoteSet reports whether s already holds exactly these remote
// machines, each unchanged in identity (app, owner, address, region).
func (t *Table) sameRemoteSet(s *snapshot, machines []RemoteMachine) bool {
	n := 0
	for _, m := range s.machines {
		if m.owner != nil {
			n++
		}
	}
	counted := 0
	for _, rm := range machines {
		m := s.machines[rm.ID]
		if m == nil {
			if a := s.apps[rm.App]; a == nil {
				continue // ignored either way
			}
			return false
		}
		if m.owner == nil {
			continue // this node's own id: ignored
		}
		if !m.sameRemote(rm) {
			return false
		}
		counted++
	}
	return counted == n
}

// MarkOwnerDown holds every machine of owner out of the pick for d: the
// backhaul to it failed, so requests go elsewhere at once instead of
// waiting for gossip to declare it dead. A later MarkOwnerUp (a request
// through it succeeded) ends the hold early. The request path calls it:
// it takes no lock for an owner the table has machines of (the table's
// lock is taken only to note an owner it never heard of).
func (t *Table) MarkOwnerDown(owner string, d time.Duration) {
	o := t.owner(owner)
	if o == nil {
		t.mu.Lock()
		o = t.ownerState(owner)
		t.mu.Unlock()
	}
	o.downUntil.Store(time.Now().Add(d).UnixNano())
}

// MarkOwnerUp ends a MarkOwnerDown hold. It takes no lock: the request
// path calls it after every answer through the owner.
func (t *Table) MarkOwnerUp(owner string) {
	if o := t.owner(owner); o != nil && o.downUntil.Swap(0) != 0 {
		s := t.snap.Load()
		for _, m := range s.machines {
			if m.owner == o {
				m.queue.kick(m)
			}
		}
	}
}

// SetRegionRTTs gives measured round-trip times from this node to regions
// (network coordinates from gossip). Regions are then ordered by them;
// regions without a measurement use an estimate from the static distance
// (see regionKey). Apps are re-ordered only when the order changes.
func (t *Table) SetRegionRTTs(rtts map[string]time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rtts = rtts
	s := t.snap.Load()
	if s == nil {
		return
	}
	for _, a := range s.apps {
		regions := a.Regions()
		before := append([]string(nil), regions...)
		t.orderRegions(regions)
		for i := range regions {
			if regions[i] != before[i] {
				t.rebuild()
				return
			}
		}
	}
}

// RegionRTT returns the distance this node uses for a region: the measured
// RTT, or the static estimate, and whether it was measured.
func (t *Table) RegionRTT(region string) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.rtts[region]; ok {
		return d, true
	}
	return staticRTT(t.coords, t.region, region), false
}

// orderRegions sorts regions nearest first: by measured RTT where gossip
// has one, else by the static estimate, the name breaking ties. Called with
// t.mu held.
func (t *Table) orderRegions(regions []string) {
	key := func(r string) time.Duration {
		if r == t.region {
			return 0
		}
		if d, ok := t.rtts[r]; ok {
			return d
		}
		return staticRTT(t.coords, t.region, r)
	}
	sort.Slice(regions, func(i, j int) bool {
		di, dj := key(regions[i]), key(regions[j])
		if di != dj {
			return di < dj
		}
		return regions[i] < regions[j]
	})
}

// staticRTT estimates the RTT between two regions from their great-circle
// distance: light in fibre covers about 100 km of distance per millisecond
// of round trip, and real paths are longer than great circles, so 1 ms per
// 80 km. It only has to order regions sensibly until measurements come.
func staticRTT(coords map[string][2]float64, a, b string) time.Duration {
	if a == b {
		return 0
	}
	return time.Duration(distance(coords, a, b) / 80 * float64(time.Millisecond))
}

// SetRegionCoords adds or overrides region positions (config's
// region_coords) for the static order used until RTTs are measured.
func (t *Table) SetRegionCoords(coords map[string][2]float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.coords = coords
	if t.snap.Load() != nil {
		t.rebuild()
	}
}
