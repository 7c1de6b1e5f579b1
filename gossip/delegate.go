package gossip

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate is the node's face to memberlist: memberlist.Delegate (metadata,
// messages, anti-entropy), EventDelegate (membership) and PingDelegate
// (network coordinates). It is a separate type so that those methods are
// not part of Node's API. Every input from a peer is decoded defensively:
// a malformed message is logged at Debug, counted and dropped.
type delegate struct{ n *Node }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate  = (*delegate)(nil)
)

// NodeMeta returns the node's metadata: region, backhaul address and
// certificate fingerprint.
func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.n.meta) > limit {
		return nil // cannot happen: Start bounds the fields
	}
	return d.n.meta
}

// NotifyMsg handles a gossiped message: a record update or a leave
// intent. memberlist may reuse buf after this returns; decoding copies what
// it keeps.
func (d *delegate) NotifyMsg(buf []byte) {
	if messageKind(buf) == kindLeave {
		name, at, err := decodeLeave(buf)
		if err != nil {
			d.n.log.Debug("gossip: dropped a malformed leave intent", "err", err, "bytes", len(buf))
			d.n.met.message(kindLabelLeave, resultMalformed)
			return
		}
		d.n.leaveIntent(name, at)
		return
	}
	recs, err := decodeRecords(buf, kindUpdate)
	if err != nil {
		d.n.log.Debug("gossip: dropped a malformed update", "err", err, "bytes", len(buf))
		d.n.met.message(kindLabelUpdate, resultMalformed)
		return
	}
	d.n.merge(recs, kindLabelUpdate, true)
}

// GetBroadcasts hands memberlist the queued updates that fit a packet.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.n.queue.GetBroadcasts(overhead, limit)
}

// LocalState is this node's side of a push/pull: every record it knows.
func (d *delegate) LocalState(join bool) []byte {
	return d.n.localState()
}

// MergeRemoteState merges the peer's side of a push/pull. Newer records
// learned by a periodic exchange are relayed (they are what gossip failed
// to deliver, after a partition for instance); those of a join are not,
// since a joining node learns the whole fleet's state at once.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	recs, err := decodeRecords(buf, kindState)
	if err != nil {
		d.n.log.Debug("gossip: dropped a malformed anti-entropy state", "err", err, "bytes", len(buf))
		d.n.met.message(kindLabelState, resultMalformed)
		return
	}
	d.n.merge(recs, kindLabelState, !join)
}

// NotifyJoin, NotifyUpdate and NotifyLeave are called by memberlist one at
// a time, with its node lock held: they must not call memberlist.
func (d *delegate) NotifyJoin(node *memberlist.Node)   { d.n.memberEvent(node, StateAlive) }
func (d *delegate) NotifyUpdate(node *memberlist.Node) { d.n.memberEvent(node, StateAlive) }
func (d *delegate) NotifyLeave(node *memberlist.Node) {
	state := StateDead
	if node.State == memberlist.StateLeft {
		state = StateLeft
	}
	d.n.memberEvent(node, state)
}

// AckPayload carries this node's network coordinate in ping acks.
func (d *delegate) AckPayload() []byte { return d.n.coords.payload() }

// NotifyPingComplete feeds a direct ping's RTT and the peer's coordinate
// to the Vivaldi client.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	if len(payload) == 0 || !d.n.isAlive(other.Name) {
		return // a peer without coordinates, or one that left meanwhile
	}
	if err := d.n.coords.observe(other.Name, payload, rtt); err != nil {
		d.n.log.Debug("gossip: ignored a ping's coordinate", "member", other.Name, "rtt", rtt, "err", err)
	}
}
