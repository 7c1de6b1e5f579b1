package routing

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/replay"
)

// Pick errors, for callers to branch on.
var (
	// ErrNoMachine: the app has no started, healthy machine anywhere.
	ErrNoMachine = errors.New("routing: no started healthy machine")
	// ErrAtCapacity: every usable machine is at its hard limit (or others are
	// already queued); the caller may Wait.
	ErrAtCapacity = errors.New("routing: every machine is at its hard limit")
)

// App is the routing view of one app: its machines grouped by region, the
// regions ordered nearest first from this node.
type App struct {
	Name          string
	Org           string
	PrimaryRegion string
	Config        config.App
	// SessionRules are Config's replay_cache rules in the form the replay
	// cache matches requests with, converted once here.
	SessionRules []replay.SessionRule

	regions  []regionSet // nearest first
	machines []*Machine
	byID     map[string]*Machine
	queue    *queue
}

type regionSet struct {
	region   string
	machines []*Machine
}

// Machines returns the app's machines (the slice must not be modified).
func (a *App) Machines() []*Machine { return a.machines }

// Machine returns the app's machine with the given id, or nil.
func (a *App) Machine(id string) *Machine { return a.byID[id] }

// QueueLen is the number of requests waiting for a slot.
func (a *App) QueueLen() int { return a.queue.Len() }

// Pick chooses a machine for a new request and takes a slot on it. Machines
// in exclude (those a retry already failed on) are skipped. It returns
// ErrAtCapacity when usable machines exist but all are at their hard limit,
// or when earlier requests are already queued (they go first), and
// ErrNoMachine when no machine is usable at all. Pick does not allocate.
func (a *App) Pick(exclude ...*Machine) (*Machine, error) {
	if a.queue.Len() > 0 {
		if a.anyUsable(exclude) {
			return nil, ErrAtCapacity
		}
		return nil, ErrNoMachine
	}
	if m := a.pick(exclude); m != nil {
		return m, nil
	}
	if a.anyUsable(exclude) {
		return nil, ErrAtCapacity
	}
	return nil, ErrNoMachine
}

func (a *App) pickAny() *Machine { return a.pick(nil) }

func (a *App) anyUsable(exclude []*Machine) bool {
	for _, m := range a.machines {
		if m.usable() && !excluded(m, exclude) {
			return true
		}
	}
	return false
}

func excluded(m *Machine, exclude []*Machine) bool {
	for _, x := range exclude {
		if x == m {
			return true
		}
	}
	return false
}

// pickTries bounds how often a region's choice is retried after losing the
// race for a machine's last slot before the walk moves on to the next region.
const pickTries = 4

// pick walks regions nearest first and returns the first region's choice,
// with its slot taken.
func (a *App) pick(exclude []*Machine) *Machine {
	for i := range a.regions {
		if m := a.pickIn(&a.regions[i], exclude); m != nil {
			return m
		}
	}
	return nil
}

// choose returns the less loaded of two distinct machines drawn uniformly
// from the best non-empty load band of the region, or nil when no usable
// machine of the region is below its hard limit. A first pass counts the
// bands, a second finds the two drawn machines; should loads change between
// the passes so that the drawn ones are gone, any machine the second pass
// saw below its hard limit is returned, never nil for a region with room.
func (rs *regionSet) choose(exclude []*Machine) *Machine {
	var below, above int // usable machines below soft, between soft and hard
	for _, m := range rs.machines {
		// The band first: a full region is passed over on two loads a machine.
		b := m.Band()
		if b == AtHard || !m.usable() || (len(exclude) > 0 && excluded(m, exclude)) {
			continue
		}
		if b == BelowSoft {
			below++
		} else {
			above++
		}
	}
	band, n := BelowSoft, below
	if n == 0 {
		band, n = AboveSoft, above
	}
	if n == 0 {
		return nil
	}
	// Two distinct indexes into the band from one random number (Lemire's
	// multiply-shift on each half; the bias is below n/2^32).
	r := rand.Uint64()
	i := int((r & 0xffffffff) * uint64(n) >> 32)
	j := i
	if n > 1 {
		j = int((r >> 32) * uint64(n-1) >> 32)
		if j >= i {
			j++
		}
	}
	last := max(i, j)
	var first, second, fallback *Machine
	k := 0
	for _, m := range rs.machines {
		b := m.Band()
		if b == AtHard || !m.usable() || (len(exclude) > 0 && excluded(m, exclude)) {
			continue
		}
		fallback = m
		if b != band {
			continue
		}
		if k == i {
			first = m
		}
		if k == j {
			second = m
		}
		if k == last {
			break
		}
		k++
	}
	switch {
	case first == nil && second == nil:
		return fallback
	case first == nil:
		return second
	case second != nil && second.inflight.Load() < first.inflight.Load():
		return second
	}
	return first
}

// Table maps hosts and app names to apps. It is an immutable snapshot behind
// an atomic pointer: the request path reads it without locks and Update
// builds and swaps a new one.
type Table struct {
	region string
	snap   atomic.Pointer[snapshot]

	// localChanges (capacity 1) is signalled when this node's own
	// machines change apart from load; see LocalChanges.
	localChanges chan struct{}

	mu     sync.Mutex // serialises changes; guards the inputs below
	apps   []config.App
	local  []config.Machine
	remote []RemoteMachine
	// owners are by node name, kept across rebuilds: a map copied on
	// write under mu and read without it (the request path marks owners
	// down and up).
	owners atomic.Pointer[map[string]*ownerState]
	rtts   map[string]time.Duration
	coords map[string][2]float64 // region_coords from config
}

type snapshot struct {
	apps     map[string]*App
	hosts    map[string]*App
	machines map[string]*Machine
}

// NewTable builds a table for a node in region from validated config.
func NewTable(region string, apps []config.App, machines []config.Machine) *Table {
	t := &Table{region: region, localChanges: make(chan struct{}, 1)}
	t.owners.Store(&map[string]*ownerState{})
	t.apps, t.local = apps, machines
	t.rebuild()
	return t
}

// Update replaces the table's apps and this node's own machines (from
// config). Machines that keep their id, app, region and address keep their
// live state (in-flight count, health); their limits follow the new config.
// Apps keep their wait queue. Concurrent calls are serialised. The change
// is signalled on LocalChanges.
func (t *Table) Update(apps []config.App, machines []config.Machine) {
	t.mu.Lock()
	t.apps, t.local = apps, machines
	t.rebuild()
	t.mu.Unlock()
	signal(t.localChanges)
}

// LocalChanges returns a channel (capacity 1) that receives a value when
// this node's own machines may have changed other than in load: added or
// removed, limits changed (Update), health or started state flipped
// (SetHealthy, SetStarted). Several changes may be signalled once; the
// reader re-reads the table after each receive. Load bands move with every
// request and are not signalled: whoever needs them samples Band.
func (t *Table) LocalChanges() <-chan struct{} { return t.localChanges }

// rebuild builds and swaps a new snapshot from the table's inputs. Called
// with t.mu held.
func (t *Table) rebuild() {
	old := t.snap.Load()
	apps, machines := t.apps, t.local
	s := &snapshot{
		apps:     make(map[string]*App, len(apps)),
		hosts:    make(map[string]*App),
		machines: make(map[string]*Machine, len(machines)+len(t.remote)),
	}
	for _, ac := range apps {
		a := &App{Name: ac.Name, Org: ac.Org, PrimaryRegion: ac.PrimaryRegion, Config: ac,
			SessionRules: ac.HTTPService.SessionRules(),
			byID:         make(map[string]*Machine)}
		if old != nil && old.apps[ac.Name] != nil {
			a.queue = old.apps[ac.Name].queue
		} else {
			a.queue = &queue{}
		}
		s.apps[ac.Name] = a
		for _, h := range ac.Hosts {
			s.hosts[strings.ToLower(stripPort(h))] = a
		}
	}
	byRegion := make(map[string]map[string][]*Machine) // app → region → machines
	add := func(a *App, m *Machine) {
		s.machines[m.ID] = m
		a.machines = append(a.machines, m)
		a.byID[m.ID] = m
		if byRegion[a.Name] == nil {
			byRegion[a.Name] = make(map[string][]*Machine)
		}
		byRegion[a.Name][m.Region] = append(byRegion[a.Name][m.Region], m)
	}
	for _, mc := range machines {
		a := s.apps[mc.App]
		if a == nil {
			continue // validated config never has this
		}
		var m *Machine
		if old != nil {
			if om := old.machines[mc.ID]; om != nil && om.owner == nil && om.App == mc.App && om.Addr == mc.Address && om.Region == mc.Region {
				m = om
				m.soft.Store(int32(a.Config.HTTPService.Concurrency.SoftLimit))
				m.hard.Store(int32(a.Config.HTTPService.Concurrency.HardLimit))
			}
		}
		if m == nil {
			m = newMachine(mc, a.Config.HTTPService.Concurrency, a.queue, t.localChanges)
		}
		// A reused machine already has this queue: its app kept it. (Writing
		// the field again would race with Release on the old snapshot.)
		add(a, m)
	}
	for _, rm := range t.remote {
		a := s.apps[rm.App]
		if a == nil || s.machines[rm.ID] != nil {
			continue // an app this node does not serve, or an id of its own
		}
		var m *Machine
		if old != nil {
			if om := old.machines[rm.ID]; om != nil && om.sameRemote(rm) && om.queue == a.queue {
				m = om
			}
		}
		if m == nil {
			m = &Machine{ID: rm.ID, App: rm.App, Region: rm.Region, Addr: rm.Addr, Owner: rm.Owner, queue: a.queue, owner: t.ownerState(rm.Owner)}
		}
		m.setRemote(rm)
		add(a, m)
	}
	for name, a := range s.apps {
		regions := make([]string, 0, len(byRegion[name]))
		for r := range byRegion[name] {
			regions = append(regions, r)
		}
		t.orderRegions(regions)
		for _, r := range regions {
			a.regions = append(a.regions, regionSet{region: r, machines: byRegion[name][r]})
		}
		a.queue.mu.Lock()
		a.queue.app = a
		a.queue.mu.Unlock()
	}
	t.snap.Store(s)
	// Queued requests may fit on machines the new inputs added.
	for _, a := range s.apps {
		for _, m := range a.machines {
			a.queue.kick(m)
		}
	}
}

// Probe takes and releases the lock that serialises the table's changes
// (Update, SetRemote, SetRegionRTTs, rebuilds) and returns: it blocks for
// as long as a change holds that lock. A watchdog times it to notice a
// change that never ends. The request path never takes this lock.
func (t *Table) Probe() {
	t.mu.Lock()
	defer t.mu.Unlock() // nothing in between: taking it is the probe
}

// Region is the node's own region.
func (t *Table) Region() string { return t.region }

// AppForHost returns the app serving host (a Host header: any port is
// stripped, case is ignored), or nil.
func (t *Table) AppForHost(host string) *App {
	host = stripPort(host)
	s := t.snap.Load()
	if a := s.hosts[host]; a != nil {
		return a
	}
	if hasUpper(host) {
		return s.hosts[strings.ToLower(host)]
	}
	return nil
}

// App returns the app with the given name, or nil.
func (t *Table) App(name string) *App { return t.snap.Load().apps[name] }

// Machine returns the machine with the given id, or nil.
func (t *Table) Machine(id string) *Machine { return t.snap.Load().machines[id] }

// Apps returns every app, in no particular order.
func (t *Table) Apps() []*App {
	s := t.snap.Load()
	out := make([]*App, 0, len(s.apps))
	for _, a := range s.apps {
		out = append(out, a)
	}
	return out
}

func stripPort(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		if strings.HasPrefix(host, "[") { // [v6]:port or [v6]
			if j := strings.IndexByte(host, ']'); j >= 0 {
				return host[1:j]
			}
			return host
		}
		if strings.IndexByte(host[:i], ':') >= 0 { // bare IPv6, no port
			return host
		}
		return host[:i]
	}
	return host
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}
