package gossip

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// loopback returns the config of a node on 127.0.0.1 with a free port.
func loopback(name, region string, join ...string) Config {
	fp := sha256.Sum256([]byte(name))
	return Config{
		Name:            name,
		Region:          region,
		Bind:            "127.0.0.1:0",
		Join:            join,
		SecretKey:       testKey,
		BackhaulAddr:    "127.0.0.1:4433/" + name,
		CertFingerprint: hex.EncodeToString(fp[:]),
		Tune:            quick,
	}
}

// drain empties a Changes channel.
func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// TestLoopbackFleet runs three nodes on real loopback UDP and TCP through
// the life of a fleet: join and metadata, records reaching the others,
// version order, tombstones, a graceful leave and a restart under the
// same name.
func TestLoopbackFleet(t *testing.T) {
	a := start(t, loopback("edge-a", "iad"))
	b := start(t, loopback("edge-b", "fra", a.Addr()))
	c := start(t, loopback("edge-c", "fra", a.Addr()))
	nodes := []*Node{a, b, c}
	others := []*Node{b, c}
	waitMembers(t, nodes, 10*time.Second)

	// Metadata of every member is visible to every node.
	for _, n := range nodes {
		for _, want := range nodes {
			m, ok := n.Member(want.Name())
			wantCfg := want.cfg
			if !ok || m.Region != wantCfg.Region || m.BackhaulAddr != wantCfg.BackhaulAddr ||
				m.Fingerprint != wantCfg.CertFingerprint || m.Addr != want.Addr() || m.State != StateAlive {
				t.Fatalf("%s: Member(%s) = %+v, %v; want region %s, backhaul %s, fingerprint %s, addr %s, alive",
					n.Name(), want.Name(), m, ok, wantCfg.Region, wantCfg.BackhaulAddr, wantCfg.CertFingerprint, want.Addr())
			}
		}
		if got := len(n.Members()); got != 3 {
			t.Fatalf("%s: %d members, want 3", n.Name(), got)
		}
	}

	// SetLocal on one node reaches the others.
	a.SetLocal([]Record{machine("m1"), machine("m2")})
	for _, n := range others {
		eventually(t, 5*time.Second, n.Name()+" gets edge-a's machines", func() error {
			for _, id := range []string{"m1", "m2"} {
				r, ok := remoteRecord(n, "edge-a", id)
				want := machine(id)
				if !ok || !r.Reachable || r.Region != "iad" || r.App != want.App || r.Addr != want.Addr ||
					r.State != want.State || !r.Healthy || r.Soft != 20 || r.Hard != 25 || r.Version == 0 || r.Updated.IsZero() {
					return fmt.Errorf("%s = %+v, %v", id, r, ok)
				}
			}
			return nil
		})
	}

	// A newer version replaces the record.
	m1 := machine("m1")
	m1.State = "stopped"
	a.SetLocal([]Record{m1, machine("m2")})
	for _, n := range others {
		eventually(t, 5*time.Second, n.Name()+" gets m1 stopped", func() error {
			if r, _ := remoteRecord(n, "edge-a", "m1"); r.State != "stopped" {
				return fmt.Errorf("m1 is %+v", r)
			}
			return nil
		})
	}

	// An older version arriving late, gossiped or by anti-entropy, does
	// not.
	cur, _ := remoteRecord(b, "edge-a", "m1")
	old := cur
	old.Version, old.State = cur.Version-1, "started"
	(&delegate{b}).NotifyMsg(encodeRecords(kindUpdate, []Record{old}))
	(&delegate{b}).MergeRemoteState(encodeRecords(kindState, []Record{old}), false)
	if r, _ := remoteRecord(b, "edge-a", "m1"); r.Version != cur.Version || r.State != "stopped" {
		t.Fatalf("after an older version arrived: m1 = %+v, want version %d stopped", r, cur.Version)
	}

	// A removed machine's tombstone removes it everywhere.
	a.SetLocal([]Record{m1})
	for _, n := range others {
		eventually(t, 5*time.Second, n.Name()+" drops m2", func() error {
			if r, ok := remoteRecord(n, "edge-a", "m2"); ok {
				return fmt.Errorf("m2 still there: %+v", r)
			}
			return nil
		})
	}

	// A graceful leave makes the records unreachable at once.
	for _, n := range others {
		drain(n.Changes())
	}
	left := time.Now()
	if err := a.Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	for _, n := range others {
		eventually(t, 2*time.Second, n.Name()+" marks edge-a's records unreachable", func() error {
			r, ok := remoteRecord(n, "edge-a", "m1")
			m, _ := n.Member("edge-a")
			if !ok || r.Reachable || m.State != StateLeft {
				return fmt.Errorf("m1 = %+v, %v; member %+v", r, ok, m)
			}
			return nil
		})
		select {
		case <-n.Changes():
		default:
			t.Errorf("%s: no Changes signal after edge-a left", n.Name())
		}
	}
	t.Logf("leave seen by both peers after %v", time.Since(left).Round(time.Millisecond))
	if err := a.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	// Restarted under the same name (on another port), the node rejoins
	// and its records come back.
	a2 := start(t, loopback("edge-a", "iad", b.Addr()))
	waitMembers(t, []*Node{a2, b, c}, 10*time.Second)
	for _, n := range others {
		eventually(t, 5*time.Second, n.Name()+" sees edge-a's records reachable again", func() error {
			if r, ok := remoteRecord(n, "edge-a", "m1"); !ok || !r.Reachable {
				return fmt.Errorf("m1 = %+v, %v", r, ok)
			}
			return nil
		})
	}
	// Its first SetLocal replaces what its previous run published.
	a2.SetLocal([]Record{machine("m3")})
	for _, n := range others {
		eventually(t, 5*time.Second, n.Name()+" sees the restarted node's set", func() error {
			if r, ok := remoteRecord(n, "edge-a", "m1"); ok {
				return fmt.Errorf("m1 of the previous run still there: %+v", r)
			}
			if r, ok := remoteRecord(n, "edge-a", "m3"); !ok || !r.Reachable {
				return fmt.Errorf("m3 = %+v, %v", r, ok)
			}
			return nil
		})
	}
}

// TestRestartNewAddress: a node killed (no leave) and restarted under the
// same name on another port is taken back by its peers at the new address
// soon after they declared the old one dead, with its records.
func TestRestartNewAddress(t *testing.T) {
	cfg := func(name, region string, join ...string) Config {
		c := loopback(name, region, join...)
		c.Tune = func(mc *memberlist.Config) {
			quick(mc)
			// memberlist's default: the dead entry stays for the whole
			// test, as in production, instead of being reaped after
			// quick's 2s (which frees the name whatever the reclaim time).
			mc.GossipToTheDeadTime = 30 * time.Second
		}
		return c
	}
	a := start(t, cfg("edge-a", "iad"))
	b := start(t, cfg("edge-b", "fra", a.Addr()))
	c := start(t, cfg("edge-c", "fra", a.Addr()))
	others := []*Node{b, c}
	waitMembers(t, []*Node{a, b, c}, 10*time.Second)
	a.SetLocal([]Record{machine("m1")})
	for _, n := range others {
		eventually(t, 5*time.Second, n.Name()+" gets edge-a's m1", func() error {
			if r, ok := remoteRecord(n, "edge-a", "m1"); !ok || !r.Reachable {
				return fmt.Errorf("m1 = %+v, %v", r, ok)
			}
			return nil
		})
	}

	oldAddr := a.Addr()
	if err := a.Shutdown(); err != nil { // a kill: no Leave
		t.Fatalf("Shutdown: %v", err)
	}
	for _, n := range others {
		eventually(t, 15*time.Second, n.Name()+" declares edge-a dead", func() error {
			if m, _ := n.Member("edge-a"); m.State != StateDead {
				return fmt.Errorf("edge-a is %+v, want %s", m, StateDead)
			}
			return nil
		})
	}

	a2 := start(t, cfg("edge-a", "iad", b.Addr(), c.Addr()))
	if a2.Addr() == oldAddr {
		t.Fatalf("restarted node got its old address %s back; the test needs another port", oldAddr)
	}
	a2.SetLocal([]Record{machine("m2")})
	restarted := time.Now()
	for _, n := range others {
		eventually(t, 10*time.Second, n.Name()+" takes edge-a back at its new address", func() error {
			if m, _ := n.Member("edge-a"); m.State != StateAlive || m.Addr != a2.Addr() {
				return fmt.Errorf("edge-a is %s at %s, want %s at %s (old %s)", m.State, m.Addr, StateAlive, a2.Addr(), oldAddr)
			}
			if r, ok := remoteRecord(n, "edge-a", "m2"); !ok || !r.Reachable {
				return fmt.Errorf("m2 = %+v, %v; want it reachable", r, ok)
			}
			if r, ok := remoteRecord(n, "edge-a", "m1"); ok {
				return fmt.Errorf("m1 of the previous run still there: %+v", r)
			}
			return nil
		})
	}
	t.Logf("restarted node taken back by both peers %v after it started", time.Since(restarted).Round(time.Millisecond))
}

// TestJoinBeforePeerStarts starts a node whose only peer is not up yet:
// Start returns at once and the node joins when the peer comes; Joined
// tells when.
func TestJoinBeforePeerStarts(t *testing.T) {
	peerAddr := freeAddr(t)

	var attempts atomic.Int32
	cfg := loopback("edge-b", "fra", peerAddr)
	cfg.hooks = &hooks{joinAttempt: func(error) { attempts.Add(1) }}
	began := time.Now()
	b := start(t, cfg)
	if d := time.Since(began); d > time.Second {
		t.Fatalf("Start took %v with its peer down; it must not wait for the join", d)
	}
	eventually(t, 5*time.Second, "a failed join attempt", func() error {
		if attempts.Load() == 0 {
			return errors.New("no attempt yet")
		}
		return nil
	})

	select {
	case <-b.Joined():
		t.Fatal("Joined closed while edge-b's only peer is down")
	default:
	}

	acfg := loopback("edge-a", "iad")
	acfg.Bind = peerAddr
	a := start(t, acfg)
	select {
	case <-a.Joined(): // no peer to join: at once
	case <-time.After(5 * time.Second):
		t.Fatal("Joined of a node with no peer configured not closed")
	}
	select {
	case <-b.Joined():
	case <-time.After(10 * time.Second):
		t.Fatal("Joined of edge-b not closed once its peer answered")
	}
	// Joined means the join's state exchange is done: b knows a.
	if !b.isAlive("edge-a") {
		t.Error("edge-b joined but does not know edge-a as alive")
	}
	waitMembers(t, []*Node{a, b}, 10*time.Second)
}

// TestJoinNoIsland: a node keeps trying its configured peer even after
// another node joined it meanwhile; otherwise the two would stay an island
// apart from the fleet they were configured for.
func TestJoinNoIsland(t *testing.T) {
	seedAddr := freeAddr(t)
	a := start(t, loopback("edge-a", "iad", seedAddr)) // its only peer is down
	b := start(t, loopback("edge-b", "iad", a.Addr()))
	waitMembers(t, []*Node{a, b}, 10*time.Second)

	cfg := loopback("edge-seed", "iad") // joins no one: the others must come to it
	cfg.Bind = seedAddr
	seed := start(t, cfg)
	waitMembers(t, []*Node{a, b, seed}, 10*time.Second)
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (for a node that starts after its peers).
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestEncryption checks that only nodes with the fleet's key join it, and
// that a node without a key warns.
func TestEncryption(t *testing.T) {
	a := start(t, loopback("edge-a", "iad"))
	b := start(t, loopback("edge-b", "iad", a.Addr()))
	waitMembers(t, []*Node{a, b}, 10*time.Second)

	var failures atomic.Int32
	hook := &hooks{joinAttempt: func(err error) {
		if err != nil {
			failures.Add(1)
		}
	}}
	other := loopback("edge-x", "iad", a.Addr())
	other.SecretKey = []byte("another key of 32 bytes, really")[:16]
	other.hooks = hook
	x := start(t, other)

	var logs syncBuffer
	plain := loopback("edge-p", "iad", a.Addr())
	plain.SecretKey = nil
	plain.Log = slogTo(&logs)
	plainHooks := &hooks{joinAttempt: func(err error) {
		if err != nil {
			failures.Add(1)
		}
	}}
	plain.hooks = plainHooks
	p := start(t, plain)

	eventually(t, 10*time.Second, "repeated failed joins of the nodes without the key", func() error {
		if f := failures.Load(); f < 4 {
			return fmt.Errorf("%d failed attempts", f)
		}
		return nil
	})
	for _, n := range []*Node{a, b} {
		if got := aliveCount(n); got != 2 {
			t.Errorf("%s: %d alive members, want 2 (no stranger admitted): %+v", n.Name(), got, n.Members())
		}
	}
	for _, n := range []*Node{x, p} {
		if got := len(n.Members()); got != 1 {
			t.Errorf("%s: %d members, want only itself: %+v", n.Name(), got, n.Members())
		}
	}
	if s := logs.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "NOT encrypted") {
		t.Errorf("unencrypted node's log has no warning:\n%s", s)
	}
}

// TestForgedFutureVersion: a copy of a machine record forged (or corrupted)
// with a version near 2^64, sent to a peer and to the owner itself, is
// refused and counted, and the owner's next change still reaches the
// peer: one bad message cannot freeze a machine's state in the fleet.
func TestForgedFutureVersion(t *testing.T) {
	reg := prometheus.NewRegistry()
	logs := &syncBuffer{}
	a := start(t, loopback("edge-a", "iad"))
	bcfg := loopback("edge-b", "fra", a.Addr())
	bcfg.Registerer, bcfg.Log = reg, slogTo(logs)
	b := start(t, bcfg)
	waitMembers(t, []*Node{a, b}, 10*time.Second)

	a.SetLocal([]Record{machine("m1")})
	eventually(t, 5*time.Second, "edge-b gets m1", func() error {
		if _, ok := remoteRecord(b, "edge-a", "m1"); !ok {
			return errors.New("not yet")
		}
		return nil
	})
	cur, _ := remoteRecord(b, "edge-a", "m1")
	forged := cur
	forged.Version, forged.State, forged.Healthy = math.MaxUint64, "stopped", false
	(&delegate{b}).NotifyMsg(encodeRecords(kindUpdate, []Record{forged}))
	(&delegate{b}).MergeRemoteState(encodeRecords(kindState, []Record{forged}), false)
	(&delegate{a}).NotifyMsg(encodeRecords(kindUpdate, []Record{forged}))
	if r, _ := remoteRecord(b, "edge-a", "m1"); r.Version != cur.Version || r.State != "started" {
		t.Fatalf("edge-b after the forged copy: m1 = %+v, want version %d started", r, cur.Version)
	}
	future := testutil.ToFloat64(b.met.messages.WithLabelValues(kindLabelUpdate, resultFuture)) +
		testutil.ToFloat64(b.met.messages.WithLabelValues(kindLabelState, resultFuture))
	if future != 2 {
		t.Errorf(`godwit_gossip_messages_total{result="future"} = %v, want 2`, future)
	}
	if out := logs.String(); strings.Count(out, "machine record refused") != 1 || !strings.Contains(out, "owner=edge-a") {
		t.Errorf("edge-b's log: want one warning naming the owner, got:\n%s", out)
	}

	m1 := machine("m1")
	m1.State = "stopped"
	a.SetLocal([]Record{m1})
	eventually(t, 5*time.Second, "edge-b gets m1 stopped", func() error {
		if r, _ := remoteRecord(b, "edge-a", "m1"); r.State != "stopped" || r.Version >= math.MaxUint64/2 {
			return fmt.Errorf("m1 is %+v", r)
		}
		return nil
	})
}

// TestOwnClockAhead: a node whose versions run ahead of its clock (its
// clock jumped ahead and back) says so, since its peers refuse its
// changes until real time catches up.
func TestOwnClockAhead(t *testing.T) {
	logs := &syncBuffer{}
	cfg := loopback("edge-a", "iad")
	cfg.Log = slogTo(logs)
	a := start(t, cfg)
	a.mu.Lock()
	a.tab.clock = uint64(time.Now().Add(10 * time.Minute).UnixNano())
	a.mu.Unlock()
	a.SetLocal([]Record{machine("m1")})
	a.SetLocal([]Record{machine("m1"), machine("m2")})
	if out := logs.String(); strings.Count(out, "run ahead of its clock") != 1 {
		t.Errorf("log: want one error about versions ahead of the clock, got:\n%s", out)
	}
}
