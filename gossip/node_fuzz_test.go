package gossip

import (
	"fmt"
	"maps"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// FuzzNodeReceive feeds arbitrary bytes through every path by which a
// peer's message reaches a running node: a gossiped message (NotifyMsg)
// and a push/pull state, periodic and at a join (MergeRemoteState). The
// node must not be poisoned: bytes that decode as nothing change nothing;
// bytes that decode never change what the node publishes of its own
// machines (only their versions move, and only up), never add a record
// the message did not carry, never change a live member, and leave Remote
// sorted, unique, free of tombstones and of the node's own records.
//
// Each input runs against the same base state, reset in place, so that a
// crasher reproduces alone.
func FuzzNodeReceive(f *testing.F) {
	now := time.Now()
	v := uint64(now.UnixNano())
	remote := []Record{
		{ID: "b1", App: "web", Region: "fra", Addr: "10.0.1.1:80", Owner: "edge-b", State: "started", Healthy: true, Soft: 20, Hard: 25, Version: v, Updated: now},
		{ID: "b2", App: "web", Region: "fra", Owner: "edge-b", Deleted: true, Version: v + 1, Updated: now},
		{ID: "c1", App: "api", Region: "syd", Addr: "10.0.2.1:80", Owner: "edge-c", State: "started", Version: v, Updated: now},
	}
	own := []Record{machine("a1"), machine("a2")}
	base := encodeRecords(kindState, remote)

	for _, seed := range [][]byte{
		nil, {}, {1}, {1, 1}, {1, 2, 0}, {1, 3, 0}, {2, 1, 0},
		base,
		encodeRecords(kindUpdate, remote[:1]),
		// A newer version of a peer's record, and of a dead owner's.
		encodeRecords(kindUpdate, []Record{{ID: "b1", App: "web", Owner: "edge-b", State: "stopped", Version: v + 10, Updated: now}}),
		encodeRecords(kindState, []Record{{ID: "c1", Owner: "edge-c", Version: v + 10, Updated: now}, {ID: "b3", Owner: "edge-b", Version: 1}}),
		// Copies of this node's own records: a stale one, a newer one,
		// one it does not publish, a tombstone of one it does.
		encodeRecords(kindUpdate, []Record{{ID: "a1", Owner: "edge-a", Version: 1}}),
		encodeRecords(kindUpdate, []Record{{ID: "a1", Owner: "edge-a", App: "evil", Version: v + 1<<37, Updated: now}}),
		encodeRecords(kindState, []Record{{ID: "zz", Owner: "edge-a", State: "started", Version: v + 1<<37, Updated: now}}),
		encodeRecords(kindState, []Record{{ID: "a2", Owner: "edge-a", Deleted: true, Version: v + 1<<37, Updated: now}}),
		// Versions and times beyond MaxClockSkew (refused).
		encodeRecords(kindUpdate, []Record{{ID: "a1", Owner: "edge-a", Version: 1<<64 - 1, Updated: now}}),
		encodeRecords(kindUpdate, []Record{{ID: "b1", Owner: "edge-b", Version: v + 1, Updated: now.Add(time.Hour)}}),
		// An expired tombstone, and leave intents of a live, a dead and
		// an unknown member and of this node.
		encodeRecords(kindUpdate, []Record{{ID: "b1", Owner: "edge-b", Deleted: true, Version: v + 5, Updated: now.Add(-time.Hour)}}),
		encodeLeave("edge-b", 1), encodeLeave("edge-c", 1), encodeLeave("edge-x", -1), encodeLeave("edge-a", 1),
		[]byte(strings.Repeat("\xff", 64)),
	} {
		f.Add(seed)
	}

	n := start(f, Config{Name: "edge-a", Region: "iad", Transport: newMemNet().transport(), Log: discard})
	d := &delegate{n: n}
	metaOf := func(region string) []byte { return encodeMeta(meta{Region: region, BackhaulAddr: "10.0.0.9:4433"}) }
	d.NotifyJoin(&memberlist.Node{Name: "edge-b", Addr: net.IPv4(127, 0, 0, 2), Port: 7946, Meta: metaOf("fra")})
	d.NotifyJoin(&memberlist.Node{Name: "edge-c", Addr: net.IPv4(127, 0, 0, 3), Port: 7946, Meta: metaOf("syd")})
	d.NotifyLeave(&memberlist.Node{Name: "edge-c", Addr: net.IPv4(127, 0, 0, 3), Port: 7946, State: memberlist.StateDead})
	n.mu.Lock()
	members := n.members
	n.mu.Unlock()

	reset := func() {
		n.mu.Lock()
		n.tab = newTable(n.cfg.Name, n.cfg.DeadOwnerTTL)
		n.leaving = make(map[string]leaveIntent)
		n.members = make(map[string]*memberInfo, len(members))
		for name, mi := range members {
			c := *mi
			c.since = time.Now()
			n.members[name] = &c
			if c.State == StateAlive {
				n.tab.memberUp(name)
			}
		}
		n.mu.Unlock()
		n.SetLocal(own)
		d.MergeRemoteState(base, true)
	}

	f.Fuzz(func(t *testing.T, buf []byte) {
		reset()
		before := snapshotNode(n)
		alive := n.alive.Load()
		d.NotifyMsg(buf)
		d.MergeRemoteState(buf, false)
		d.MergeRemoteState(buf, true)
		after := snapshotNode(n)

		upd, errU := decodeRecords(buf, kindUpdate)
		state, errS := decodeRecords(buf, kindState)
		leaver, _, errL := decodeLeave(buf)
		if errU != nil && errS != nil && errL != nil {
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("a message that does not decode changed the node:\nbefore %+v\nafter  %+v", before, after)
			}
			return
		}
		sent := append(upd, state...)

		// Its own machines: as SetLocal said; versions never go back.
		for _, want := range own {
			got, ok := after.own[want.ID]
			if want.Region == "" {
				want.Region = n.cfg.Region
			}
			if !ok || got.Deleted || got.Owner != n.cfg.Name || !sameExceptBand(got, want) {
				t.Errorf("own record %s is %+v (present %v) after the message, want %+v", want.ID, got, ok, want)
			}
		}
		for id, got := range after.own {
			if prev, ok := before.own[id]; ok && got.Version < prev.Version {
				t.Errorf("own record %s went back from version %d to %d", id, prev.Version, got.Version)
			}
			if !got.Deleted && !slices.ContainsFunc(own, func(r Record) bool { return r.ID == id }) {
				t.Errorf("own record %s is published (%+v), but SetLocal did not list it", id, got)
			}
		}

		// Remote: sorted, unique, no tombstones, nothing of its own, no
		// record it was not sent.
		for i, r := range after.remote {
			switch {
			case r.Owner == n.cfg.Name || r.Deleted || r.ID == "" || r.Owner == "":
				t.Errorf("Remote()[%d] = %+v", i, r)
			case i > 0 && (after.remote[i-1].Owner > r.Owner || after.remote[i-1].Owner == r.Owner && after.remote[i-1].ID >= r.ID):
				t.Errorf("Remote() not sorted and unique at %d: %s/%s after %s/%s", i, r.Owner, r.ID, after.remote[i-1].Owner, after.remote[i-1].ID)
			}
			if r.Reachable != (after.members[r.Owner].State == StateAlive) {
				t.Errorf("Remote()[%d] = %s/%s reachable %v, but its owner is %q", i, r.Owner, r.ID, r.Reachable, after.members[r.Owner].State)
			}
		}
		for key, r := range after.others {
			if prev, ok := before.others[key]; ok && prev == r {
				continue
			}
			if !slices.ContainsFunc(sent, func(s Record) bool { return s == r }) {
				t.Errorf("record %s is %+v: neither what the node had nor what the message carried", key, r)
			}
		}
		if len(after.others) > len(before.others)+len(sent) {
			t.Errorf("%d records from a message of %d, with %d before", len(after.others), len(sent), len(before.others))
		}

		// Members: live ones untouched; a dead one may be marked left by
		// its leave intent, nothing else.
		if !maps.EqualFunc(before.members, after.members, func(a, b Member) bool {
			return a == b || a.State == StateDead && b.State == StateLeft && errL == nil && leaver == a.Name && sameMember(a, b)
		}) {
			t.Errorf("members changed:\nbefore %+v\nafter  %+v", before.members, after.members)
		}
		if a := n.alive.Load(); a != alive {
			t.Errorf("%d live members after the message, %d before", a, alive)
		}
		for name := range after.leaving {
			if _, ok := before.leaving[name]; !ok && (errL != nil || name != leaver) {
				t.Errorf("leave intent of %q from a message that carried none for it", name)
			}
		}
	})
}

// nodeState is what a node holds, in comparable form.
type nodeState struct {
	own     map[string]Record // own records by ID, tombstones included
	others  map[string]Record // other owners' records by owner/ID, tombstones included
	remote  []Record
	members map[string]Member
	leaving map[string]int64
}

func snapshotNode(n *Node) nodeState {
	s := nodeState{own: map[string]Record{}, others: map[string]Record{}, members: map[string]Member{}, leaving: map[string]int64{}}
	n.mu.Lock()
	for id, e := range n.tab.own {
		s.own[id] = e.rec
	}
	for name, o := range n.tab.owners {
		for id, e := range o.recs {
			s.others[fmt.Sprintf("%s/%s", name, id)] = e.rec
		}
	}
	for name, mi := range n.members {
		s.members[name] = mi.Member
	}
	for name, li := range n.leaving {
		s.leaving[name] = li.at
	}
	n.mu.Unlock()
	s.remote = n.Remote()
	return s
}

func sameMember(a, b Member) bool {
	a.State, b.State = "", ""
	return a == b
}
