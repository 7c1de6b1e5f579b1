package proxy

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/backhaul"
	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/gossip"
	"github.com/godwit/godwit/routing"
)

// publishEvery is how often this node's machine records are handed to
// gossip regardless of change. Any other change of a machine (existence,
// limits, health, started) is handed over at once, signalled by the
// routing table; its load band is not signalled (it moves with every
// request), so this bounds how stale a band can be. Gossip diffs the
// records and sends only changes, load-band changes coalesced further
// (gossip.Config.LoadInterval), so this costs no traffic.
const publishEvery = 100 * time.Millisecond

// fleet joins the node to the other edges: gossip tells it which machines
// they own (and them which it owns), and the backhaul carries requests to
// the owners of remote machines. It implements Fleet.
type fleet struct {
	node   *gossip.Node
	client *backhaul.Client
	server *backhaul.Server
	table  *routing.Table
	region string
	log    *slog.Logger
	sim    map[string]time.Duration // backhaul.simulated_rtt
	// publishEvery is how often records are published whatever changed
	// (the const of that name; tests lengthen it).
	publishEvery time.Duration

	leaveOnce sync.Once

	// watched is the watchdog's view of run: it beats every iteration
	// (the publish tick keeps it turning when idle). Nil: not watched.
	watched *watchedLoop
	// syncHook, for tests only, is called at the start of every sync: a
	// stuck consumer of gossip. Nil in production.
	syncHook func()
	// members are gossip's members by name as the last sync saw them,
	// for the request path (RoundTrip), which takes no lock of gossip's.
	members atomic.Pointer[map[string]gossip.Member]

	requests *prometheus.CounterVec // by peer region
	errs     *prometheus.CounterVec // by peer region and kind

	mu    sync.Mutex
	pins  map[string]bool   // fingerprints of alive members
	addrs map[string]string // backhaul address → region, for the simulated RTT
	// synced is closed (and replaced) when sync has set new pins.
	synced chan struct{}
	// ready is closed once the node's first sync after joining the
	// fleet has put the other edges' machines in the routing table.
	ready chan struct{}
}

// warmupWait bounds how long a request that finds no machine waits for a
// node that has just started to join its fleet (warm): the app's
// machines may all be other edges', which it does not know yet.
const warmupWait = 3 * time.Second

// warmup waits until the node has joined its fleet and synced (ready),
// warmupWait at most, or until ctx ends. It reports whether it had to
// wait and the node is ready now; false at once when it was ready before.
func (f *fleet) warmup(ctx context.Context) bool {
	select {
	case <-f.ready:
		return false
	default:
	}
	t := time.NewTimer(warmupWait)
	defer t.Stop()
	select {
	case <-f.ready:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// pinWait is how long a backhaul handshake waits for the peer's certificate
// to become an alive member's. An edge that has just joined learns every
// machine at once (its join exchanges the full state) and may send
// requests before news of it has reached the machines' owners, a gossip
// round or two later; refused, it would hold those owners out of its
// routing for ownerHold. It is below the backhaul's handshake timeout.
const pinWait = time.Second

// newFleet starts gossip and binds the backhaul, from config. It returns
// nil, nil when gossip is off (a single node). testGossip, if not nil (tests
// only: Server.testGossip), may change gossip's config before it starts.
func newFleet(cfg *config.Config, table *routing.Table, h *Handler, log *slog.Logger, reg prometheus.Registerer, testGossip func(*gossip.Config)) (*fleet, error) {
	if cfg.Gossip.Bind == "" {
		return nil, nil
	}
	f := &fleet{table: table, region: cfg.Node.Region, log: log, publishEvery: publishEvery,
		pins: map[string]bool{}, addrs: map[string]string{}, synced: make(chan struct{}), ready: make(chan struct{})}
	f.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_backhaul_requests_total",
		Help: "Requests sent over the backhaul to the owner edges of machines, by the owner's region.",
	}, []string{"region"})
	f.errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_backhaul_errors_total",
		Help: "Backhaul requests that failed, by the owner's region and kind: unreachable (nothing reached the owner; the request went elsewhere) or stream (the exchange broke after it started).",
	}, []string{"region", "kind"})
	reg.MustRegister(f.requests, f.errs, &rttCollector{f: f})
	var id *backhaul.Identity
	var err error
	if cfg.Backhaul.CertFile != "" {
		id, err = backhaul.LoadIdentity(cfg.Backhaul.CertFile, cfg.Backhaul.KeyFile)
	} else {
		id, err = backhaul.NewIdentity(cfg.Node.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("backhaul identity: %w", err)
	}
	// A dead peer must be noticed well within the 2 s in which its traffic
	// should move elsewhere: keep-alives every 0.5 s, and a connection
	// that hears nothing for 1.5 s is dead (its requests fail, and the
	// owner is held out of routing).
	opts := backhaul.Options{Protocol: cfg.Backhaul.Protocol, Log: log.With("component", "backhaul"),
		IdleTimeout: 1500 * time.Millisecond, HandshakeTimeout: 1500 * time.Millisecond, DrainTimeout: cfg.Proxy.DrainTimeout}
	if cfg.Backhaul.CAFile != "" {
		pem, err := os.ReadFile(cfg.Backhaul.CAFile)
		if err != nil {
			return nil, fmt.Errorf("backhaul.ca_file: %w", err)
		}
		opts.CAPool = x509.NewCertPool()
		if !opts.CAPool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("backhaul.ca_file %s: no PEM certificate in it", cfg.Backhaul.CAFile)
		}
	}
	if len(cfg.Backhaul.SimulatedRTT) > 0 {
		sim := cfg.Backhaul.SimulatedRTT
		f.sim = sim
		opts.Delay = func(peerAddr string) time.Duration {
			f.mu.Lock()
			r := f.addrs[peerAddr]
			f.mu.Unlock()
			return sim[config.RegionPair(f.region, r)]
		}
		log.Warn("backhaul.simulated_rtt is set: requests to other edges are delayed on purpose (tests and demos only)")
	}
	var advertised string
	if cfg.Backhaul.Listen != "" {
		f.server, err = backhaul.Listen(cfg.Backhaul.Listen, id, f.pinned, h.BackhaulHandler(), opts)
		if err != nil {
			return nil, fmt.Errorf("backhaul.listen %s: %w", cfg.Backhaul.Listen, err)
		}
		advertised = advertiseAddr(f.server.Addr(), cfg.Gossip)
	}
	f.client = backhaul.NewClient(id, opts)
	var key []byte
	if cfg.Gossip.SecretKeyFile != "" {
		if key, err = readGossipKey(cfg.Gossip.SecretKeyFile); err != nil {
			f.close()
			return nil, err
		}
	}
	gc := gossip.Config{
		Name: cfg.Node.Name, Region: cfg.Node.Region,
		Bind: cfg.Gossip.Bind, Advertise: cfg.Gossip.Advertise, Join: cfg.Gossip.Join,
		SecretKey: key, BackhaulAddr: advertised, CertFingerprint: id.Fingerprint,
		Log: log.With("component", "gossip"), Registerer: reg,
	}
	if testGossip != nil {
		testGossip(&gc)
	}
	f.node, err = gossip.Start(gc)
	if err != nil {
		f.close()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	return f, nil
}

// advertiseAddr is the backhaul address peers dial: the bound one, with the
// gossip advertise host when the backhaul binds every interface.
func advertiseAddr(bound string, g config.Gossip) string {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		adv := g.Advertise
		if adv == "" {
			adv = g.Bind
		}
		if h, _, err := net.SplitHostPort(adv); err == nil && h != "" {
			return net.JoinHostPort(h, port)
		}
	}
	return bound
}

// readGossipKey reads gossip.secret_key_file: base64 of 16, 24 or 32 bytes.
func readGossipKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip.secret_key_file: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("gossip.secret_key_file %s: not base64: %w (make one with `godwit keygen`)", path, err)
	}
	if n := len(key); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("gossip.secret_key_file %s: %d bytes, want 16, 24 or 32 (make one with `godwit keygen`)", path, n)
	}
	return key, nil
}

// pinned reports whether a backhaul peer's certificate is an alive
// member's: only nodes admitted to gossip (with its key) may send requests.
// A certificate unknown yet may be a member that has just joined: pinned
// waits up to pinWait for gossip to report it.
func (f *fleet) pinned(fp string) bool {
	var timeout <-chan time.Time
	for {
		f.mu.Lock()
		ok, synced := f.pins[fp], f.synced
		f.mu.Unlock()
		if ok {
			return true
		}
		if timeout == nil {
			t := time.NewTimer(pinWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-synced:
		case <-timeout:
			return false
		}
	}
}

// RoundTrip sends req to the backhaul of owner.
func (f *fleet) RoundTrip(req *http.Request, owner string) (*http.Response, error) {
	m, ok := f.member(owner)
	if !ok || m.State != gossip.StateAlive || m.BackhaulAddr == "" {
		f.errs.WithLabelValues(m.Region, "unreachable").Inc()
		return nil, fmt.Errorf("%w: %s is not an alive member with a backhaul", ErrOwnerUnreachable, owner)
	}
	f.requests.WithLabelValues(m.Region).Inc()
	resp, err := f.client.RoundTrip(req, m.BackhaulAddr, m.Fingerprint)
	switch {
	case errors.Is(err, backhaul.ErrPeerUnreachable):
		f.errs.WithLabelValues(m.Region, "unreachable").Inc()
		return nil, fmt.Errorf("%w: %w", ErrOwnerUnreachable, err)
	case errors.Is(err, backhaul.ErrConnectionLost) && req.Context().Err() == nil:
		// The owner may have acted on the request: it is not resent, but
		// the owner is held out of routing for the next ones.
		f.errs.WithLabelValues(m.Region, "stream").Inc()
		f.table.MarkOwnerDown(owner, ownerHold)
	case err != nil && req.Context().Err() == nil:
		f.errs.WithLabelValues(m.Region, "stream").Inc()
	}
	return resp, err
}

// rttCollector exports gossip's RTT estimates per region at scrape time.
type rttCollector struct{ f *fleet }

var descRegionRTT = prometheus.NewDesc("godwit_backhaul_rtt_seconds",
	"Estimated round-trip time from this edge to the nearest alive edge of each region (network coordinates from gossip pings); the order regions are tried in.", []string{"region"}, nil)

func (c *rttCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descRegionRTT }

func (c *rttCollector) Collect(ch chan<- prometheus.Metric) {
	if c.f.node == nil {
		return
	}
	for r, d := range c.f.regionRTTs() {
		ch <- prometheus.MustNewConstMetric(descRegionRTT, prometheus.GaugeValue, d.Seconds(), r)
	}
}

// run keeps gossip and the routing table in step until ctx ends: this
// node's machines go out (as soon as the table signals a change; load
// bands every publishEvery), other nodes' come in, with member RTTs. Then
// the node leaves gracefully, so peers reroute at once, and everything
// closes.
func (f *fleet) run(ctx context.Context) error {
	errc := make(chan error, 1)
	if f.server != nil {
		go func() { errc <- f.server.Serve(ctx) }()
	} else {
		errc <- nil
	}
	tick := time.NewTicker(f.publishEvery)
	defer tick.Stop()
	f.publish() // at once, withdrawing what a previous run published and is gone
	f.sync()
	joined := f.node.Joined()
	for {
		f.watched.beat()
		select {
		case <-ctx.Done():
			f.leave()
			f.close()
			return <-errc
		case <-joined:
			joined = nil
			f.sync()
			close(f.ready)
		case <-f.node.Changes():
			f.sync()
		case <-f.table.LocalChanges():
			f.publish()
		case <-tick.C:
			// Samples load bands, and is the safety net for a change of
			// a machine that nothing signalled.
			f.publish()
			f.table.SetRegionRTTs(f.regionRTTs())
		}
	}
}

// publish hands this node's machine records to gossip.
func (f *fleet) publish() { f.node.SetLocal(localRecords(f.table)) }

// leave tells the fleet this node is going (once): peers stop sending it
// requests at once, instead of after failure detection.
func (f *fleet) leave() {
	f.leaveOnce.Do(func() {
		if err := f.node.Leave(2 * time.Second); err != nil {
			f.log.Warn("gossip leave", "err", err)
		}
	})
}

// sync applies gossip's view: remote machines and the pins and addresses
// of alive members.
func (f *fleet) sync() {
	if f.syncHook != nil {
		f.syncHook()
	}
	members := f.node.Members()
	var back []string // owners alive again, or back under a new identity
	for _, m := range members {
		if m.State != gossip.StateAlive {
			continue
		}
		if old, ok := f.member(m.Name); ok && (old.State != gossip.StateAlive || old.BackhaulAddr != m.BackhaulAddr || old.Fingerprint != m.Fingerprint) {
			back = append(back, m.Name)
		}
	}
	pins := make(map[string]bool, len(members))
	addrs := make(map[string]string, len(members))
	byName := make(map[string]gossip.Member, len(members))
	for _, m := range members {
		byName[m.Name] = m
		if m.State == gossip.StateAlive && m.Fingerprint != "" {
			pins[m.Fingerprint] = true
		}
		if m.BackhaulAddr != "" {
			addrs[m.BackhaulAddr] = m.Region
		}
	}
	f.members.Store(&byName)
	f.mu.Lock()
	f.pins, f.addrs = pins, addrs
	close(f.synced)
	f.synced = make(chan struct{})
	f.mu.Unlock()
	f.table.SetRemote(remoteMachines(f.node.Remote()))
	f.table.SetRegionRTTs(f.regionRTTs())
	// A hold put on an owner whose backhaul failed (ownerHold) is about
	// that run of it: one that left, died or restarted and is back has
	// its machines routable again at once, not when the hold runs out.
	for _, name := range back {
		f.table.MarkOwnerUp(name)
	}
}

// member returns the member named name as the last sync saw it.
func (f *fleet) member(name string) (gossip.Member, bool) {
	if ms := f.members.Load(); ms != nil {
		m, ok := (*ms)[name]
		return m, ok
	}
	return gossip.Member{}, false
}

// regionRTTs are gossip's measured RTTs per region, plus the simulated RTT
// of backhaul.simulated_rtt where one is set: a simulated fleet on one
// machine then orders regions as the real one would.
func (f *fleet) regionRTTs() map[string]time.Duration {
	rtts := f.node.RegionRTTs()
	for r := range rtts {
		if d, ok := f.sim[config.RegionPair(f.region, r)]; ok && r != f.region {
			rtts[r] += d
		}
	}
	return rtts
}

func (f *fleet) close() {
	if f.node != nil {
		f.node.Shutdown()
	}
	if f.server != nil {
		f.server.Close()
	}
	if f.client != nil {
		f.client.Close()
	}
}

// backhaulAddr is the bound backhaul address, "" when it is off.
func (f *fleet) backhaulAddr() string {
	if f.server == nil {
		return ""
	}
	return f.server.Addr()
}

// localRecords are this node's own machines as gossip publishes them.
func localRecords(t *routing.Table) []gossip.Record {
	var out []gossip.Record
	for _, a := range t.Apps() {
		for _, m := range a.Machines() {
			if m.Remote() {
				continue
			}
			out = append(out, gossip.Record{
				ID: m.ID, App: m.App, Region: m.Region, Addr: m.Addr, State: m.State().String(),
				Healthy: m.Healthy(), Soft: m.SoftLimit(), Hard: m.HardLimit(), Band: uint8(m.Band()),
			})
		}
	}
	return out
}

// remoteMachines converts gossip's records for the routing table.
func remoteMachines(rs []gossip.Record) []routing.RemoteMachine {
	out := make([]routing.RemoteMachine, 0, len(rs))
	for _, r := range rs {
		st, _ := routing.ParseState(r.State) // unknown: stopped
		out = append(out, routing.RemoteMachine{
			ID: r.ID, App: r.App, Region: r.Region, Addr: r.Addr, Owner: r.Owner,
			Started: st == routing.StateStarted, State: st, Healthy: r.Healthy, Reachable: r.Reachable,
			Soft: r.Soft, Hard: r.Hard, Band: routing.Band(r.Band),
		})
	}
	return out
}

// GossipAddr is the node's gossip address once Run has joined the fleet,
// "" before or without gossip.
func (s *Server) GossipAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fleet == nil {
		return ""
	}
	return s.fleet.node.Addr()
}
