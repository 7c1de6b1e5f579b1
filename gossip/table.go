package gossip

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Record is one machine as its owner publishes it.
type Record struct {
	ID, App, Region, Addr string
	// Owner is the name of the node that owns the machine; the owner's
	// node sets it.
	Owner string
	// State is the machine's lifecycle state ("started", "stopped",
	// "suspended", ...), opaque to gossip.
	State   string
	Healthy bool
	// Soft and Hard are the machine's concurrency limits.
	Soft, Hard int
	// Band is the load band: 0 below the soft limit, 1 between soft and
	// hard, 2 at the hard limit. Changes of Band alone are coalesced.
	Band uint8
	// Version is set by the owner's node: strictly increasing per owner,
	// from a hybrid clock (max(previous+1, UnixNano)), so that a restarted
	// owner's records supersede those of its previous run. The copy with
	// the highest Version of an (Owner, ID) wins.
	Version uint64
	// Updated is the owner's wall clock at the change; receivers measure
	// propagation with it, and it dates tombstones.
	Updated time.Time
	// Deleted marks a tombstone: the owner removed the machine. Tombstones
	// are kept DeadOwnerTTL (from Updated), so that a stale copy still in
	// flight cannot bring the machine back; Remote never returns them.
	Deleted bool
	// Reachable is false once the owner left or is declared dead, or
	// before it is known as a live member. It is set by the reading node
	// and never gossiped.
	Reachable bool
}

// sameExceptBand reports whether a and b describe the same machine state
// apart from the load band (and the bookkeeping fields).
func sameExceptBand(a, b Record) bool {
	return a.ID == b.ID && a.App == b.App && a.Region == b.Region && a.Addr == b.Addr &&
		a.State == b.State && a.Healthy == b.Healthy && a.Soft == b.Soft && a.Hard == b.Hard
}

// tombstone returns the tombstone that withdraws r (not yet versioned).
func tombstone(r Record) Record {
	return Record{ID: r.ID, App: r.App, Region: r.Region, Deleted: true}
}

// table is a node's record state: its own records as published and every
// other owner's records it knows, with the rules deciding which copy wins.
// It does no I/O and reads no clock (callers pass now), so every rule is
// tested directly; Node guards it with its mutex.
//
// Rules:
//   - Of two copies of an (Owner, ID) the higher Version wins; an equal
//     Version changes nothing, so the copy a node holds (for its own
//     records: the one it published) beats a relayed one.
//   - Records of an owner that is not a live member are unreachable; after
//     ttl they are dropped and the highest Version seen becomes the
//     owner's floor: copies at or below it, still circulating, are refused
//     until the owner is a live member again, so a dead owner's machines
//     cannot come back.
//   - A tombstone lives ttl from its Updated time on every node alike, and
//     one older than that is refused (after removing any older copy it
//     supersedes), so tombstones cannot circulate forever.
//   - The node is the authority on its own records. A copy of one that is
//     newer than what it published comes from a previous run of the node
//     (or a tombstone that expired while a stale copy survived): before
//     the first SetLocal it is adopted as published; after, the node
//     answers with a newer version of what it wants (the record, or a
//     tombstone).
//   - A copy claiming a Version or Updated time more than MaxClockSkew
//     ahead of now is refused before any other rule (it would otherwise
//     pin the record, or this node's own clock, at that version).
type table struct {
	self     string
	ttl      time.Duration // DeadOwnerTTL
	floorTTL time.Duration // how long a dropped owner's floor is kept

	clock uint64 // highest version issued or seen for self

	own           map[string]stored // own records by ID as published, tombstones included
	desired       map[string]Record // the last SetLocal set by ID; Band may not be published yet
	authoritative bool              // SetLocal has been called

	owners map[string]*owner
}

// stored is a record with the local time it was stored.
type stored struct {
	rec  Record
	seen time.Time
}

// owner is what the table knows of another node: its records and whether
// it is a live member.
type owner struct {
	recs    map[string]stored
	alive   bool
	absent  time.Time // since when it is not alive (while !alive and recs exist)
	floor   uint64    // versions at or below are refused (after recs were dropped)
	dropped time.Time // when recs were dropped
}

func newTable(self string, ttl time.Duration) *table {
	return &table{
		self:     self,
		ttl:      ttl,
		floorTTL: 10 * ttl,
		own:      make(map[string]stored),
		desired:  make(map[string]Record),
		owners:   make(map[string]*owner),
	}
}

// tick returns a new version for one of this node's records. It never
// wraps: a peer's copy of an own record claiming the highest version pins
// the clock there rather than sending it back to 0 (which every peer would
// refuse as stale).
func (t *table) tick(now time.Time) uint64 {
	v := uint64(max(now.UnixNano(), 0))
	if v <= t.clock {
		v = t.clock + 1
		if v == 0 {
			v = math.MaxUint64
		}
	}
	t.clock = v
	return v
}

// publish versions r as this node's record and stores it as published.
func (t *table) publish(r Record, now time.Time) Record {
	r.Owner = t.self
	r.Version = t.tick(now)
	r.Updated = now
	r.Reachable = false
	t.own[r.ID] = stored{r, now}
	return r
}

// MaxClockSkew is how far ahead of a receiver's clock a record's Version
// (and Updated time) may be. Versions come from the owner's wall clock, so
// between nodes kept in time by NTP they are seconds apart at most. A copy
// further ahead is refused: without this bound one forged or corrupt copy
// claiming a version near 2^64 would pin the record there for good (the
// owner could never publish a newer one); with it, the owner's clock
// catches up within MaxClockSkew and its answer supersedes the copy.
const MaxClockSkew = 5 * time.Minute

// ahead reports how far r claims to be ahead of now plus MaxClockSkew: a
// positive result means r is refused (see MaxClockSkew).
func ahead(r Record, now time.Time) time.Duration {
	limit := now.Add(MaxClockSkew)
	d := r.Updated.Sub(limit)
	if lim := limit.UnixNano(); lim > 0 && r.Version > uint64(lim) {
		d = max(d, time.Duration(min(r.Version-uint64(lim), math.MaxInt64)))
	}
	return d
}

// expired reports whether r is a tombstone past its lifetime.
func (t *table) expired(r Record, now time.Time) bool {
	return r.Deleted && now.Sub(r.Updated) >= t.ttl
}

// setLocal makes recs this node's current set. It returns the records to
// broadcast now (new or changed apart from Band, and tombstones of the
// removed) and whether Band-only changes remain for flushBands. Records
// without an ID, or marked Deleted, are ignored; of duplicate IDs the last
// wins.
func (t *table) setLocal(recs []Record, now time.Time) (pub []Record, bandPending bool) {
	t.authoritative = true
	desired := make(map[string]Record, len(recs))
	order := make([]string, 0, len(recs))
	for _, r := range recs {
		if r.ID == "" || r.Deleted {
			continue
		}
		r.Owner, r.Version, r.Updated, r.Reachable = t.self, 0, time.Time{}, false
		if _, dup := desired[r.ID]; !dup {
			order = append(order, r.ID)
		}
		desired[r.ID] = r
	}
	for _, id := range order {
		want := desired[id]
		cur, ok := t.own[id]
		switch {
		case !ok || cur.rec.Deleted || !sameExceptBand(cur.rec, want):
			pub = append(pub, t.publish(want, now))
		case cur.rec.Band != want.Band:
			bandPending = true
		}
	}
	var gone []string
	for id, cur := range t.own {
		if _, ok := desired[id]; !ok && !cur.rec.Deleted {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	for _, id := range gone {
		pub = append(pub, t.publish(tombstone(t.own[id].rec), now))
	}
	t.desired = desired
	return pub, bandPending
}

// flushBands publishes the records whose desired Band differs from the
// published one.
func (t *table) flushBands(now time.Time) []Record {
	var pub []Record
	for id, want := range t.desired {
		if cur, ok := t.own[id]; ok && !cur.rec.Deleted && cur.rec.Band != want.Band {
			pub = append(pub, t.publish(want, now))
		}
	}
	return pub
}

// apply merges a record received from a peer. It reports whether the
// record was a newer version of another owner's record (stored, to be
// relayed), whether the set Remote returns changed, and the records this
// node must publish in answer (only for its own records).
func (t *table) apply(r Record, now time.Time) (newer, changed bool, pub []Record) {
	r.Reachable = false
	if ahead(r, now) > 0 {
		return false, false, nil
	}
	if r.Owner == t.self {
		return false, false, t.applyOwn(r, now)
	}
	o := t.owners[r.Owner]
	if o != nil && r.Version <= o.floor {
		return false, false, nil
	}
	var cur stored
	var ok bool
	if o != nil {
		cur, ok = o.recs[r.ID]
	}
	if ok && r.Version <= cur.rec.Version {
		return false, false, nil
	}
	if t.expired(r, now) {
		// Too old to keep, but it still withdraws an older copy.
		if ok {
			delete(o.recs, r.ID)
		}
		return false, ok && !cur.rec.Deleted, nil
	}
	if o == nil {
		o = &owner{}
		t.owners[r.Owner] = o
	}
	if o.recs == nil {
		o.recs = make(map[string]stored)
	}
	if !o.alive && len(o.recs) == 0 {
		o.absent = now // the dead-owner clock starts with its first record
	}
	o.recs[r.ID] = stored{r, now}
	return true, !r.Deleted || (ok && !cur.rec.Deleted), nil
}

// applyOwn handles a copy of one of this node's own records.
func (t *table) applyOwn(r Record, now time.Time) []Record {
	t.clock = max(t.clock, r.Version)
	if cur, ok := t.own[r.ID]; ok && r.Version <= cur.rec.Version {
		return nil
	}
	if !t.authoritative {
		if !t.expired(r, now) {
			t.own[r.ID] = stored{r, now}
		}
		return nil
	}
	if want, ok := t.desired[r.ID]; ok {
		return []Record{t.publish(want, now)}
	}
	if r.Deleted {
		if !t.expired(r, now) {
			t.own[r.ID] = stored{r, now}
		}
		return nil
	}
	return []Record{t.publish(tombstone(r), now)}
}

// memberUp notes that name is a live member; it reports whether Remote
// changed (its records became reachable).
func (t *table) memberUp(name string) bool {
	if name == t.self {
		return false
	}
	o := t.owners[name]
	if o == nil {
		t.owners[name] = &owner{alive: true}
		return false
	}
	was := o.alive
	o.alive, o.absent, o.floor, o.dropped = true, time.Time{}, 0, time.Time{}
	return !was && o.visible()
}

// memberDown notes that name left or died; it reports whether Remote
// changed (its records became unreachable).
func (t *table) memberDown(name string, now time.Time) bool {
	o := t.owners[name]
	if o == nil || name == t.self || !o.alive {
		return false
	}
	o.alive, o.absent = false, now
	return o.visible()
}

// visible reports whether o has a record Remote returns.
func (o *owner) visible() bool {
	for _, e := range o.recs {
		if !e.rec.Deleted {
			return true
		}
	}
	return false
}

// sweep drops expired tombstones, the records of owners absent for ttl,
// and floors older than floorTTL. It reports whether Remote changed.
func (t *table) sweep(now time.Time) (changed bool) {
	for id, e := range t.own {
		if t.expired(e.rec, now) {
			delete(t.own, id)
		}
	}
	for name, o := range t.owners {
		for id, e := range o.recs {
			if t.expired(e.rec, now) {
				delete(o.recs, id)
			}
		}
		if !o.alive && len(o.recs) > 0 && now.Sub(o.absent) >= t.ttl {
			changed = changed || o.visible()
			for _, e := range o.recs {
				o.floor = max(o.floor, e.rec.Version)
			}
			o.recs, o.dropped = nil, now
		}
		if !o.alive && len(o.recs) == 0 && (o.floor == 0 || now.Sub(o.dropped) >= t.floorTTL) {
			delete(t.owners, name)
		}
	}
	return changed
}

// remote returns the other owners' live records, sorted by owner and ID,
// with Reachable set.
func (t *table) remote() []Record {
	var out []Record
	for _, o := range t.owners {
		for _, e := range o.recs {
			if !e.rec.Deleted {
				r := e.rec
				r.Reachable = o.alive
				out = append(out, r)
			}
		}
	}
	sortRecords(out)
	return out
}

// all returns every record the table holds, own and others', tombstones
// included: the anti-entropy state.
func (t *table) all() []Record {
	out := make([]Record, 0, len(t.own))
	for _, e := range t.own {
		out = append(out, e.rec)
	}
	for _, o := range t.owners {
		for _, e := range o.recs {
			out = append(out, e.rec)
		}
	}
	return out
}

func sortRecords(recs []Record) {
	slices.SortFunc(recs, func(a, b Record) int {
		return cmp.Or(cmp.Compare(a.Owner, b.Owner), cmp.Compare(a.ID, b.ID))
	})
}
