package gossip

import (
	"errors"
	"math/rand/v2"
	"strings"
	"time"
)

// Join retry backoff: from joinBackoffMin, doubling to joinBackoffMax,
// each wait jittered by ±50% so that a fleet restarted at once does not
// retry in lockstep.
const (
	joinBackoffMin = 200 * time.Millisecond
	joinBackoffMax = 30 * time.Second
	// joinWarnEvery: while no peer answers, a warning at most this often
	// (the first failure is logged at Info: peers starting later is normal).
	joinWarnEvery = time.Minute
)

// joinLoop joins cfg.Join, retrying with backoff until one answers;
// then, every ReconnectInterval, it tries one member believed dead (so the
// sides of a healed partition find each other again: memberlist stops
// probing dead members) and, when no peer is alive at all, the Join list
// again. It ends at Shutdown, and stops reconnecting after Leave.
func (n *Node) joinLoop() {
	defer n.wg.Done()
	peers := n.joinPeers()
	if len(peers) > 0 {
		n.joinWithBackoff(peers)
	}
	n.joinedOnce.Do(func() { close(n.joined) })
	for n.wait(n.cfg.ReconnectInterval) {
		if n.left.Load() {
			return
		}
		n.reconnect(peers)
	}
}

// Joined returns a channel closed once the node has joined its fleet: a
// peer answered and the two exchanged their full state (memberlist's
// push/pull), so the node knows every member's machines. With no peer to
// join it is closed at once; while no peer answers, it stays open. (It
// is also closed when the node stops.)
func (n *Node) Joined() <-chan struct{} { return n.joined }

// joinPeers returns cfg.Join without this node's own address (a fleet's
// configuration often lists every node): joining oneself "succeeds"
// without reaching anyone.
func (n *Node) joinPeers() []string {
	self := n.Addr()
	var out []string
	for _, p := range n.cfg.Join {
		if p != self && p != n.cfg.Bind && p != n.cfg.Advertise {
			out = append(out, p)
		}
	}
	return out
}

// joinWithBackoff tries peers until one of them answers, or the node
// stops. Having a live peer is not enough: nodes that joined this one
// while its peers were down would otherwise form an island of their own.
func (n *Node) joinWithBackoff(peers []string) {
	backoff := joinBackoffMin
	start := time.Now()
	var lastWarn time.Time
	for attempt := 1; ; attempt++ {
		if n.left.Load() {
			return
		}
		answered, err := n.join(peers)
		if answered > 0 && n.hasPeers() {
			n.log.Info("gossip: joined the fleet", "attempts", attempt, "members", n.alive.Load())
			return
		}
		switch {
		case attempt == 1:
			n.log.Info("gossip: no peer answered yet; retrying in the background", "peers", peers, "err", err)
		case time.Since(start) >= joinWarnEvery && time.Since(lastWarn) >= joinWarnEvery:
			lastWarn = time.Now()
			n.log.Warn("gossip: still none of the configured peers answers", "peers", peers,
				"for", time.Since(start).Round(time.Second), "members", n.alive.Load(), "err", err)
		default:
			n.log.Debug("gossip: join failed", "peers", peers, "err", err)
		}
		if !n.wait(jitter(backoff)) {
			return
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// reconnect tries one random dead member, and the Join list when no peer
// is alive.
func (n *Node) reconnect(peers []string) {
	var dead []string
	n.mu.Lock()
	for _, mi := range n.members {
		if mi.State == StateDead {
			dead = append(dead, mi.Addr)
		}
	}
	n.mu.Unlock()
	if len(dead) > 0 {
		addr := dead[rand.IntN(len(dead))]
		if _, err := n.join([]string{addr}); err != nil {
			n.log.Debug("gossip: reconnect to a dead member failed", "addr", addr, "err", err)
		}
	}
	if !n.hasPeers() && len(peers) > 0 {
		if _, err := n.join(peers); err != nil {
			n.log.Debug("gossip: rejoin failed", "peers", peers, "err", err)
		}
	}
}

// join runs one memberlist join (a push/pull with each address); it
// returns how many addresses answered.
func (n *Node) join(addrs []string) (int, error) {
	answered, err := n.ml.Join(addrs)
	if err != nil {
		// memberlist's multierror spans lines; keep log lines whole.
		msg := err.Error()
		if _, rest, ok := strings.Cut(msg, " occurred:"); ok {
			msg = rest
		}
		msg = strings.ReplaceAll(strings.TrimSpace(msg), "\n\t* ", "; ")
		err = errors.New(strings.TrimPrefix(msg, "* "))
	}
	if h := n.cfg.hooks; h != nil && h.joinAttempt != nil {
		h.joinAttempt(err)
	}
	return answered, err
}

// hasPeers reports whether another member is alive.
func (n *Node) hasPeers() bool { return n.alive.Load() > 1 }

// wait waits d; false if the node stopped meanwhile.
func (n *Node) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-n.quit:
		return false
	case <-t.C:
		return true
	}
}

// jitter returns d ±50%.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d)
}
