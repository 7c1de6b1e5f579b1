package gossip

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrShutdown is returned by Leave after Shutdown.
var ErrShutdown = errors.New("gossip: node is shut down")

// Node is this process's member of the fleet: it publishes the machines
// this node owns and learns everyone else's. Its methods are safe for
// concurrent use.
type Node struct {
	cfg     Config
	log     *slog.Logger
	ml      *memberlist.Memberlist
	queue   *memberlist.TransmitLimitedQueue
	met     *metrics
	coords  *coords
	meta    []byte
	changes chan struct{}
	// joined is closed once the node has joined its fleet (a peer of
	// cfg.Join answered and the state was exchanged), or at once when
	// it has no peer to join.
	joined     chan struct{}
	joinedOnce sync.Once
	kick       chan struct{} // SetLocal scheduled a band flush
	quit       chan struct{}
	wg         sync.WaitGroup

	maxBroadcast int          // largest update that fits a gossip packet
	alive        atomic.Int32 // live members, this node included
	left         atomic.Bool
	ownSkewLog   atomic.Int64 // UnixNano of the last warning that own versions run ahead

	mu            sync.Mutex
	tab           *table
	members       map[string]*memberInfo
	leaving       map[string]leaveIntent // by member name
	lastBandFlush time.Time
	bandDue       time.Time // when the pending band flush is due; zero: none
	lastSkewLog   time.Time // when a refused future record was last logged

	life   sync.Mutex // serializes Leave and Shutdown
	closed bool
}

// Broadcast sizing: memberlist's packet budget less the worst-case
// framing (compound header, label, encryption, user-message header).
const (
	broadcastOverhead = 100
	// maxQueued bounds the broadcast queue; past it the updates sent most
	// often are dropped, anti-entropy delivering what they carried.
	maxQueued = 4096
	// maxStateBytes bounds the anti-entropy state this node sends:
	// memberlist refuses more than 20 MB, failing the whole exchange.
	maxStateBytes = 16 << 20
)

// Start starts a node: it binds the gossip port, starts memberlist and
// a background loop that joins cfg.Join, retrying with backoff, and later
// reconnects to dead members. It returns at once, without waiting for any
// peer. Call Shutdown to stop it.
func Start(cfg Config) (*Node, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:     cfg,
		log:     cfg.Log,
		coords:  newCoords(),
		meta:    encodeMeta(meta{Region: cfg.Region, BackhaulAddr: cfg.BackhaulAddr, Fingerprint: strings.ToLower(cfg.CertFingerprint)}),
		changes: make(chan struct{}, 1),
		joined:  make(chan struct{}),
		kick:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		tab:     newTable(cfg.Name, cfg.DeadOwnerTTL),
		members: make(map[string]*memberInfo),
		leaving: make(map[string]leaveIntent),
	}
	met, err := newMetrics(cfg.Registerer, n)
	if err != nil {
		return nil, err
	}
	n.met = met
	mc := cfg.memberlistConfig(&delegate{n: n})
	n.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(n.alive.Load()) },
		RetransmitMult: mc.RetransmitMult,
	}
	n.maxBroadcast = mc.UDPBufferSize - broadcastOverhead
	if len(mc.SecretKey) == 0 && mc.Keyring == nil {
		n.log.Warn("gossip is NOT encrypted: anyone who can reach the gossip port can join the fleet, read every machine's state and inject records; set a secret key (gossip.secret_key_file; godwit keygen prints one)",
			"bind", cfg.Bind)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		if cfg.Registerer != nil {
			cfg.Registerer.Unregister(&membersCollector{n: n, desc: membersDesc})
		}
		return nil, fmt.Errorf("gossip: starting on %q: %w", cfg.Bind, err)
	}
	n.ml = ml
	n.wg.Add(2)
	go n.run()
	go n.joinLoop()
	n.log.Info("gossip started", "node", cfg.Name, "region", cfg.Region, "addr", ml.LocalNode().Address(), "encrypted", mc.EncryptionEnabled())
	return n, nil
}

// Name returns the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Addr returns the address peers reach this node's gossip at (host:port):
// with Bind port 0, the port picked.
func (n *Node) Addr() string { return n.ml.LocalNode().Address() }

// SetLocal replaces the set of machines this node owns: the node diffs it
// against the previous set, versions and broadcasts new and changed
// records, and broadcasts a tombstone for each record no longer in it.
// Owner, Version, Updated, Reachable and Deleted of the given records are
// ignored (set by the node); an empty Region means the node's; a record
// that cannot be gossiped (no ID, a field over 1024 bytes, a limit beyond
// 32 bits) is ignored with a warning. A change of Band alone is published
// at most every LoadInterval, coalesced with other such changes; any other
// change goes out at once (with the current Band).
//
// Call SetLocal once at start, even with no machines: records a previous
// run of this node published stand until then, and are withdrawn by it.
func (n *Node) SetLocal(records []Record) {
	recs := make([]Record, 0, len(records))
	for _, r := range records {
		if err := checkRecord(r); err != nil {
			n.log.Warn("gossip: machine record ignored", "machine", r.ID, "app", r.App, "err", err)
			continue
		}
		if r.Region == "" {
			r.Region = n.cfg.Region
		}
		r.Deleted = false
		recs = append(recs, r)
	}
	now := time.Now()
	var kick bool
	n.mu.Lock()
	pub, bandPending := n.tab.setLocal(recs, now)
	if bandPending {
		if now.Sub(n.lastBandFlush) >= n.cfg.LoadInterval {
			pub = append(pub, n.tab.flushBands(now)...)
			n.lastBandFlush, n.bandDue = now, time.Time{}
		} else if n.bandDue.IsZero() {
			n.bandDue = n.lastBandFlush.Add(n.cfg.LoadInterval)
			kick = true
		}
	}
	n.mu.Unlock()
	if kick {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
	n.broadcast(pub, resultPublished)
}

// checkRecord reports why r cannot be published: receivers would refuse
// it (and with it every anti-entropy state that carried it).
func checkRecord(r Record) error {
	if r.ID == "" {
		return errors.New("no ID")
	}
	for _, f := range [...]string{r.ID, r.App, r.Region, r.Addr, r.State} {
		if len(f) > maxStringBytes {
			return fmt.Errorf("a field of %d bytes, at most %d", len(f), maxStringBytes)
		}
	}
	if r.Soft < math.MinInt32 || r.Soft > math.MaxInt32 || r.Hard < math.MinInt32 || r.Hard > math.MaxInt32 {
		return errors.New("soft or hard limit beyond 32 bits")
	}
	return nil
}

// Remote returns the newest version of every machine record of other
// owners, sorted by owner and ID, with Reachable set; tombstones are not
// returned. The slice is the caller's.
func (n *Node) Remote() []Record {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.tab.remote()
}

// Changes returns a channel (capacity 1) that receives a value whenever
// Remote or Members may have changed; several changes may be signalled
// once. Consumers re-read both after each receive.
func (n *Node) Changes() <-chan struct{} { return n.changes }

// Leave leaves the fleet gracefully: it tells the peers, which mark this
// node's records unreachable at once, and waits until the message went
// out or timeout passed. The node keeps answering gossip until Shutdown
// and does not rejoin.
func (n *Node) Leave(timeout time.Duration) error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.closed {
		return ErrShutdown
	}
	n.left.Store(true)
	n.leaveIntent(n.cfg.Name, time.Now().UnixNano())
	if err := n.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Shutdown stops the node without telling the peers (they detect its
// failure; call Leave first to leave gracefully): it closes the gossip
// listeners and returns when the node's goroutines have ended; a join
// attempt in progress can hold it up to memberlist's TCPTimeout (10s).
// memberlist does not wait for its own: a probe in flight finishes its
// round (up to a probe interval) after Shutdown returns, sending nothing.
// Shutdown is idempotent.
func (n *Node) Shutdown() error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	close(n.quit)
	err := n.ml.Shutdown()
	n.wg.Wait()
	if n.cfg.Registerer != nil {
		n.cfg.Registerer.Unregister(&membersCollector{n: n, desc: membersDesc})
	}
	if err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}

// signal tells Changes' reader that something changed.
func (n *Node) signal() {
	select {
	case n.changes <- struct{}{}:
	default:
	}
}

// checkOwnClock logs an error, at most once a minute, when records this
// node publishes carry versions further ahead of its clock than peers
// accept (MaxClockSkew): its clock ran ahead and came back, and versions
// never go back, so its changes are refused everywhere until real time
// catches up with them.
func (n *Node) checkOwnClock(recs []Record) {
	now := time.Now()
	for i := range recs {
		d := ahead(recs[i], now)
		if d <= 0 {
			continue
		}
		last := n.ownSkewLog.Load()
		if now.UnixNano()-last >= int64(time.Minute) && n.ownSkewLog.CompareAndSwap(last, now.UnixNano()) {
			n.log.Error("gossip: this node's record versions run ahead of its clock by more than max_skew, so peers refuse its machine changes until real time catches up (did its clock jump ahead and back?)",
				"ahead", (d + MaxClockSkew).Round(time.Second), "max_skew", MaxClockSkew)
		}
		return
	}
}

// broadcast queues records for gossip, one message each, named by owner
// and ID so that a newer version replaces a queued older one.
func (n *Node) broadcast(recs []Record, result string) {
	if len(recs) == 0 {
		return
	}
	if result == resultPublished {
		n.checkOwnClock(recs)
	}
	for i := range recs {
		msg := encodeRecords(kindUpdate, recs[i:i+1])
		if len(msg) > n.maxBroadcast {
			n.log.Warn("gossip: machine record too large to gossip; it spreads by anti-entropy only (shorten its fields)",
				"machine", recs[i].ID, "owner", recs[i].Owner, "bytes", len(msg), "max", n.maxBroadcast)
			continue
		}
		n.queue.QueueBroadcast(&broadcast{name: recs[i].Owner + "\x00" + recs[i].ID, msg: msg})
		n.met.message(kindLabelUpdate, result)
	}
	if n.queue.NumQueued() > maxQueued {
		n.queue.Prune(maxQueued)
	}
}

// broadcast is one queued record update.
type broadcast struct {
	name string
	msg  []byte
}

func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
func (b *broadcast) Invalidates(other memberlist.Broadcast) bool {
	nb, ok := other.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}

// merge applies records received from a peer (kind is the metric label):
// newer ones are stored, and relayed when relay is set; answers to
// stale copies of this node's own records are published.
func (n *Node) merge(recs []Record, kind string, relay bool) {
	now := time.Now()
	var applied, pub []Record
	var changed bool
	var future *Record // the first record refused as too far ahead
	var futureBy time.Duration
	logFuture := false
	n.mu.Lock()
	for _, r := range recs {
		if d := ahead(r, now); d > 0 {
			if future == nil {
				future, futureBy = &r, d+MaxClockSkew
			}
			continue
		}
		newer, ch, answer := n.tab.apply(r, now)
		if newer {
			applied = append(applied, r)
		}
		changed = changed || ch
		pub = append(pub, answer...)
	}
	if future != nil && now.Sub(n.lastSkewLog) >= time.Minute {
		n.lastSkewLog, logFuture = now, true
	}
	n.mu.Unlock()

	if future != nil {
		n.met.message(kind, resultFuture)
		if logFuture {
			n.log.Warn("gossip: machine record refused: it claims a version further ahead of this node's clock than max_skew (the owner's clock is out of sync: check NTP; or the record is forged); at most one such warning a minute",
				"owner", future.Owner, "machine", future.ID, "ahead", futureBy.Round(time.Millisecond), "max_skew", MaxClockSkew)
		}
	}
	result := resultStale
	if len(applied) > 0 {
		result = resultApplied
	}
	n.met.message(kind, result)
	for _, r := range applied {
		if relay {
			n.met.observePropagation(r.Updated, now)
		}
		if h := n.cfg.hooks; h != nil && h.applied != nil {
			h.applied(r)
		}
	}
	if relay {
		n.broadcast(applied, resultRelayed)
	}
	n.broadcast(pub, resultPublished)
	if changed {
		n.signal()
	}
}

// localState encodes every record this node knows for a push/pull, own
// records first, within maxStateBytes.
func (n *Node) localState() []byte {
	n.mu.Lock()
	recs := n.tab.all()
	n.mu.Unlock()
	size := 0
	for i := range recs {
		size += 128 + len(recs[i].ID) + len(recs[i].App) + len(recs[i].Addr) + len(recs[i].Owner) + len(recs[i].State) + len(recs[i].Region)
		if size > maxStateBytes {
			n.log.Warn("gossip: anti-entropy state truncated: too many machine records for one pool (split the fleet into regional pools)",
				"records", len(recs), "sent", i)
			recs = recs[:i]
			break
		}
	}
	return encodeRecords(kindState, recs)
}

// run is the node's timer loop: band flushes and the sweep of expired
// records and members. It ends at Shutdown.
func (n *Node) run() {
	defer n.wg.Done()
	sweep := time.NewTicker(min(max(n.cfg.DeadOwnerTTL/4, 10*time.Millisecond), time.Second))
	defer sweep.Stop()
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	defer flush.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-n.kick:
			n.mu.Lock()
			due := n.bandDue
			n.mu.Unlock()
			if !due.IsZero() {
				flush.Reset(time.Until(due))
			}
		case <-flush.C:
			n.flushBands()
		case now := <-sweep.C:
			n.sweep(now)
		}
	}
}

// flushBands publishes pending band-only changes.
func (n *Node) flushBands() {
	now := time.Now()
	n.mu.Lock()
	var pub []Record
	if !n.bandDue.IsZero() {
		pub = n.tab.flushBands(now)
		n.lastBandFlush, n.bandDue = now, time.Time{}
	}
	n.mu.Unlock()
	n.broadcast(pub, resultPublished)
}

// sweep drops expired records and members.
func (n *Node) sweep(now time.Time) {
	n.mu.Lock()
	changed := n.tab.sweep(now)
	for name, li := range n.leaving {
		if now.Sub(li.seen) >= n.cfg.DeadOwnerTTL {
			delete(n.leaving, name)
		}
	}
	for name, mi := range n.members {
		if (mi.State == StateLeft && now.Sub(mi.since) >= n.cfg.DeadOwnerTTL) ||
			(mi.State == StateDead && now.Sub(mi.since) >= n.cfg.ReconnectTimeout) {
			delete(n.members, name)
			changed = true
		}
	}
	n.mu.Unlock()
	if changed {
		n.signal()
	}
}
