package gossip

import (
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Member states, as Member.State reports them.
const (
	StateAlive = "alive"
	StateDead  = "dead" // failed: declared dead by the failure detector
	StateLeft  = "left" // left gracefully
)

// Member is one node of the fleet, as this node knows it.
type Member struct {
	Name, Region string
	// Addr is the member's gossip address (host:port).
	Addr string
	// BackhaulAddr and Fingerprint are from the member's metadata: where
	// its backhaul listens and the hex SHA-256 of its certificate.
	BackhaulAddr, Fingerprint string
	// State is StateAlive, StateDead or StateLeft. memberlist does not
	// tell its delegates when it suspects a node, so a suspect member is
	// still reported alive until it is declared dead.
	State string
	// RTT is the round-trip time from this node estimated by network
	// coordinates, valid when HasRTT (0 and true for this node itself).
	RTT    time.Duration
	HasRTT bool
}

// memberInfo is a member without its RTT, and since when it is in its
// state.
type memberInfo struct {
	Member
	since time.Time
}

// leaveIntent is a member's announced intent to leave. memberlist reports
// a graceful leave to delegates exactly as a failure (its Node.State is not
// set in events), so, as Serf does, a leaving node first gossips its
// intent, and receivers tell the two apart with it, in whichever order the
// intent and memberlist's leave arrive.
type leaveIntent struct {
	at   int64     // the leaving node's clock, unix ns: identifies the intent
	seen time.Time // local receipt, for expiry
}

// Members returns every member this node knows, itself included, sorted
// by name. Dead members are listed for ReconnectTimeout, left ones for
// DeadOwnerTTL.
func (n *Node) Members() []Member {
	n.mu.Lock()
	out := make([]Member, 0, len(n.members))
	for _, mi := range n.members {
		out = append(out, mi.Member)
	}
	n.mu.Unlock()
	for i := range out {
		n.setRTT(&out[i])
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns the member named name, if known.
func (n *Node) Member(name string) (Member, bool) {
	n.mu.Lock()
	mi := n.members[name]
	n.mu.Unlock()
	if mi == nil {
		return Member{}, false
	}
	m := mi.Member
	n.setRTT(&m)
	return m, true
}

// isAlive reports whether name is a live member.
func (n *Node) isAlive(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	mi := n.members[name]
	return mi != nil && mi.State == StateAlive
}

func (n *Node) setRTT(m *Member) {
	switch {
	case m.Name == n.cfg.Name:
		m.RTT, m.HasRTT = 0, true
	case m.State == StateAlive:
		m.RTT, m.HasRTT = n.coords.rtt(m.Name)
	}
}

// RegionRTTs returns, for each region with a live member whose RTT is
// estimated, the lowest estimated RTT to a member there; this node's own
// region is always there, at 0. A region whose members have not been
// pinged yet is missing (until a few probe intervals after they join).
func (n *Node) RegionRTTs() map[string]time.Duration {
	out := map[string]time.Duration{n.cfg.Region: 0}
	for _, m := range n.Members() {
		if m.State != StateAlive || !m.HasRTT || m.Region == "" {
			continue
		}
		if d, ok := out[m.Region]; !ok || m.RTT < d {
			out[m.Region] = m.RTT
		}
	}
	return out
}

// leaveIntent records member name's intent to leave, made at at, and
// relays it if it is new. A member already reported dead is now left.
func (n *Node) leaveIntent(name string, at int64) {
	now := time.Now()
	n.mu.Lock()
	if prev, ok := n.leaving[name]; ok && prev.at >= at {
		n.mu.Unlock()
		n.met.message(kindLabelLeave, resultStale)
		return
	}
	n.leaving[name] = leaveIntent{at: at, seen: now}
	mi := n.members[name]
	changed := mi != nil && mi.State == StateDead
	if changed {
		mi.State, mi.since = StateLeft, now
	}
	n.mu.Unlock()
	result := resultRelayed
	if name == n.cfg.Name {
		result = resultPublished
	} else {
		n.met.message(kindLabelLeave, resultApplied)
	}
	n.queue.QueueBroadcast(&broadcast{name: "\x00leave\x00" + name, msg: encodeLeave(name, at)})
	n.met.message(kindLabelLeave, result)
	if changed {
		n.log.Info("gossip: member "+StateLeft, "member", name)
		n.signal()
	}
}

// memberEvent records a membership change of node, now in state.
func (n *Node) memberEvent(node *memberlist.Node, state string) {
	m := Member{Name: node.Name, Addr: node.Address(), State: state}
	if md, err := decodeMeta(node.Meta); err != nil {
		n.log.Debug("gossip: undecodable member metadata", "member", node.Name, "err", err)
	} else {
		m.Region, m.BackhaulAddr, m.Fingerprint = md.Region, md.BackhaulAddr, md.Fingerprint
	}
	now := time.Now()
	n.mu.Lock()
	prev := n.members[node.Name]
	wasAlive := prev != nil && prev.State == StateAlive
	if _, ok := n.leaving[node.Name]; ok {
		if state == StateDead {
			state = StateLeft
		} else if !wasAlive {
			delete(n.leaving, node.Name) // rejoined
		}
	}
	m.State = state
	n.members[node.Name] = &memberInfo{Member: m, since: now}
	switch {
	case state == StateAlive && !wasAlive:
		n.alive.Add(1)
	case state != StateAlive && wasAlive:
		n.alive.Add(-1)
	}
	if state == StateAlive {
		n.tab.memberUp(node.Name)
	} else {
		n.tab.memberDown(node.Name, now)
	}
	n.mu.Unlock()

	if state != StateAlive {
		n.coords.forget(node.Name)
	}
	if node.Name != n.cfg.Name && (prev == nil || prev.State != state) {
		n.log.Info("gossip: member "+state, "member", node.Name, "region", m.Region, "addr", m.Addr)
	}
	n.signal()
}
