package gossip

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/coordinate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// single starts one node on a memNet with a fresh registry.
func single(t *testing.T, name, region string) (*Node, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	n := start(t, Config{Name: name, Region: region, Transport: newMemNet().transport(), Registerer: reg})
	return n, reg
}

// TestMalformedDropped feeds garbage to every delegate entry point a peer
// reaches: nothing panics, nothing changes, the drops are counted.
func TestMalformedDropped(t *testing.T) {
	n, _ := single(t, "edge-a", "iad")
	d := &delegate{n: n}
	garbage := [][]byte{
		nil, {}, {0}, {1}, {1, 1}, {1, 1, 5}, {1, 2, 0xff}, {1, 3}, {2, 1, 0}, {0xff, 0xff, 0xff, 0xff},
		[]byte(strings.Repeat("\xff", 2000)),
	}
	for _, g := range garbage {
		d.NotifyMsg(g)
		d.MergeRemoteState(g, false)
		d.MergeRemoteState(g, true)
		d.NotifyPingComplete(&memberlist.Node{Name: "edge-a"}, time.Millisecond, g)
		d.NotifyJoin(&memberlist.Node{Name: "peer", Addr: net.IPv4(127, 0, 0, 2), Port: 1, Meta: g})
	}
	// Well-formed messages of the wrong kind are malformed too.
	d.NotifyMsg(encodeRecords(kindState, []Record{{ID: "m", Owner: "o"}}))
	d.MergeRemoteState(encodeRecords(kindUpdate, []Record{{ID: "m", Owner: "o"}}), false)
	if r := n.Remote(); len(r) != 0 {
		t.Fatalf("Remote() after garbage = %+v, want none", r)
	}
	m, ok := n.Member("peer")
	if !ok || m.Region != "" || m.State != StateAlive {
		t.Fatalf("member with garbage metadata = %+v, %v; want known, alive, no region", m, ok)
	}
	malformed := testutil.ToFloat64(n.met.messages.WithLabelValues(kindLabelUpdate, resultMalformed)) +
		testutil.ToFloat64(n.met.messages.WithLabelValues(kindLabelState, resultMalformed)) +
		testutil.ToFloat64(n.met.messages.WithLabelValues(kindLabelLeave, resultMalformed))
	if want := 3*len(garbage) + 2; int(malformed) != want {
		t.Errorf("godwit_gossip_messages_total{result=malformed} = %v, want %d", malformed, want)
	}
}

// TestCoordinatesLoopback: with real pings on loopback, each node gets an
// RTT estimate for the other region within a few probe intervals.
func TestCoordinatesLoopback(t *testing.T) {
	fast := func(mc *memberlist.Config) {
		quick(mc)
		mc.ProbeInterval = 50 * time.Millisecond
	}
	ca := loopback("edge-a", "iad")
	ca.Tune = fast
	a := start(t, ca)
	cb := loopback("edge-b", "fra", a.Addr())
	cb.Tune = fast
	b := start(t, cb)
	cc := loopback("edge-c", "fra", a.Addr())
	cc.Tune = fast
	c := start(t, cc)
	waitMembers(t, []*Node{a, b, c}, 10*time.Second)
	began := time.Now()
	eventually(t, 10*time.Second, "RTT estimates for the other region", func() error {
		for _, n := range []*Node{a, b, c} {
			rtts := n.RegionRTTs()
			other := map[string]string{"iad": "fra", "fra": "iad"}[n.cfg.Region]
			if d, ok := rtts[other]; !ok || d <= 0 || d >= time.Second || rtts[n.cfg.Region] != 0 || len(rtts) != 2 {
				return fmt.Errorf("%s: RegionRTTs() = %v", n.Name(), rtts)
			}
			for _, m := range n.Members() {
				if self := m.Name == n.Name(); !m.HasRTT || (m.RTT == 0) != self || m.RTT >= time.Second {
					return fmt.Errorf("%s: member %s has RTT %v (%v)", n.Name(), m.Name, m.RTT, m.HasRTT)
				}
			}
		}
		return nil
	})
	t.Logf("after %v: a %v, b %v", time.Since(began).Round(time.Millisecond), a.RegionRTTs(), b.RegionRTTs())
}

// TestRegionRTTsInjected sets peers' coordinates directly: RegionRTTs is
// the nearest member per region, and a departed member's coordinate goes.
func TestRegionRTTsInjected(t *testing.T) {
	n, _ := single(t, "edge-a", "iad")
	d := &delegate{n: n}
	at := func(name, region string, ms float64) {
		d.NotifyJoin(&memberlist.Node{Name: name, Addr: net.IPv4(10, 0, 0, 1), Port: 1, Meta: encodeMeta(meta{Region: region})})
		co := coordinate.NewCoordinate(coordinate.DefaultConfig())
		co.Vec[0] = ms / 1000
		n.coords.set(name, co)
	}
	at("fra-1", "fra", 90)
	at("fra-2", "fra", 80)
	at("syd-1", "syd", 200)
	at("iad-2", "iad", 5)
	d.NotifyJoin(&memberlist.Node{Name: "ord-1", Addr: net.IPv4(10, 0, 0, 2), Port: 1, Meta: encodeMeta(meta{Region: "ord"})}) // never pinged
	rtts := n.RegionRTTs()
	near := func(d time.Duration, ms float64) bool {
		return d > time.Duration(ms*float64(time.Millisecond)) && d < time.Duration((ms+1)*float64(time.Millisecond))
	}
	if len(rtts) != 3 || rtts["iad"] != 0 || !near(rtts["fra"], 80) || !near(rtts["syd"], 200) {
		t.Fatalf("RegionRTTs() = %v; want iad 0, fra ~80ms, syd ~200ms, no ord", rtts)
	}
	d.NotifyLeave(&memberlist.Node{Name: "fra-2"})
	if rtts = n.RegionRTTs(); !near(rtts["fra"], 90) {
		t.Fatalf("after fra-2 left: RegionRTTs() = %v, want fra ~90ms", rtts)
	}
	if _, ok := n.coords.rtt("fra-2"); ok {
		t.Error("fra-2's coordinate kept after it left")
	}
	d.NotifyLeave(&memberlist.Node{Name: "syd-1"})
	if _, ok := n.RegionRTTs()["syd"]; ok {
		t.Error("a region without live members still has an RTT")
	}
}

func TestConfigCheck(t *testing.T) {
	ok := Config{Name: "a", Region: "iad", Bind: "127.0.0.1:7946"}
	cases := []struct {
		name string
		mod  func(*Config)
		want string // "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"valid with key and fingerprint", func(c *Config) {
			c.SecretKey = make([]byte, 24)
			c.CertFingerprint = strings.Repeat("AB", 32)
		}, ""},
		{"transport instead of bind", func(c *Config) { c.Bind = ""; c.Transport = newMemNet().transport() }, ""},
		{"no name", func(c *Config) { c.Name = "" }, "Name is required"},
		{"long name", func(c *Config) { c.Name = strings.Repeat("n", 256) }, "Name is 256 bytes"},
		{"no region", func(c *Config) { c.Region = "" }, "Region is required"},
		{"long region", func(c *Config) { c.Region = strings.Repeat("r", 65) }, "Region is 65 bytes"},
		{"long backhaul", func(c *Config) { c.BackhaulAddr = strings.Repeat("a", 256) }, "BackhaulAddr is 256 bytes"},
		{"bad fingerprint", func(c *Config) { c.CertFingerprint = "abc" }, "not a hex SHA-256"},
		{"bad key", func(c *Config) { c.SecretKey = make([]byte, 20) }, "SecretKey is 20 bytes: use 16, 24 or 32"},
		{"no bind", func(c *Config) { c.Bind = "" }, "Bind is required"},
		{"bind host name", func(c *Config) { c.Bind = "localhost:7946" }, "must be an IP address"},
		{"bind port", func(c *Config) { c.Bind = "127.0.0.1:x" }, "bad port"},
		{"advertise", func(c *Config) { c.Advertise = "nope" }, "Advertise"},
	}
	for _, c := range cases {
		cfg := ok
		c.mod(&cfg)
		err := cfg.check()
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: check() = %v, want %q", c.name, err, c.want)
		}
	}
	if err := (&Config{}).check(); err == nil || !strings.Contains(err.Error(), "Name") || !strings.Contains(err.Error(), "Region") {
		t.Errorf("empty config: %v; want every problem reported", err)
	}
	if _, err := Start(Config{Name: "a"}); err == nil {
		t.Error("Start with an invalid config succeeded")
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, nodes := memCluster(t, 2, nil, func(i int, c *Config) {
		if i == 1 {
			c.Registerer = reg
		}
	})
	nodes[0].SetLocal([]Record{machine("m1")})
	eventually(t, 5*time.Second, "m1 arrives", func() error {
		if _, ok := remoteRecord(nodes[1], nodes[0].Name(), "m1"); !ok {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP godwit_gossip_members Known fleet members (this node included) by state: alive, dead (failed, tried for reconnection), left.
# TYPE godwit_gossip_members gauge
godwit_gossip_members{state="alive"} 2
godwit_gossip_members{state="dead"} 0
godwit_gossip_members{state="left"} 0
`), "godwit_gossip_members")
	if err != nil {
		t.Error(err)
	}
	mfs, _ := reg.Gather()
	var count uint64
	for _, mf := range mfs {
		if mf.GetName() == "godwit_gossip_state_propagation_seconds" {
			count = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if count == 0 {
		t.Error("godwit_gossip_state_propagation_seconds has no observation after an update arrived")
	}
	if got := testutil.ToFloat64(nodes[1].met.messages.WithLabelValues(kindLabelUpdate, resultApplied)); got < 1 {
		t.Errorf("messages_total{update,applied} = %v, want >= 1", got)
	}

	// A second node on the same registerer is refused, with advice.
	_, err = Start(Config{Name: "x", Region: "iad", Transport: newMemNet().transport(), Registerer: reg, Log: discard})
	if err == nil || !strings.Contains(err.Error(), "WrapRegistererWith") {
		t.Errorf("second Start on one registerer: %v; want an error suggesting WrapRegistererWith", err)
	}
	// After Shutdown the registerer can take a new node.
	nodes[1].Shutdown()
	n, err := Start(Config{Name: "y", Region: "iad", Transport: newMemNet().transport(), Registerer: reg, Log: discard})
	if err != nil {
		t.Fatalf("Start after the previous node shut down: %v", err)
	}
	n.Shutdown()
}

func TestShutdownAndLeave(t *testing.T) {
	n, _ := single(t, "edge-a", "iad")
	if err := n.Leave(time.Second); err != nil {
		t.Fatalf("Leave alone: %v", err)
	}
	if err := n.Leave(time.Second); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	for range 2 {
		if err := n.Shutdown(); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	}
	if err := n.Leave(time.Second); err != ErrShutdown {
		t.Fatalf("Leave after Shutdown = %v, want ErrShutdown", err)
	}
}

// TestDeadOwnerDropped: a node that crashes is declared dead, its records
// turn unreachable, and after DeadOwnerTTL they are gone.
func TestDeadOwnerDropped(t *testing.T) {
	_, nodes := memCluster(t, 3, nil, func(i int, c *Config) {
		c.Tune = quick
		c.DeadOwnerTTL = 300 * time.Millisecond
	})
	nodes[0].SetLocal([]Record{machine("m1")})
	eventually(t, 5*time.Second, "m1 arrives", func() error {
		if _, ok := remoteRecord(nodes[1], nodes[0].Name(), "m1"); !ok {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	nodes[0].Shutdown()
	eventually(t, 10*time.Second, "m1 unreachable", func() error {
		if r, ok := remoteRecord(nodes[1], nodes[0].Name(), "m1"); ok && r.Reachable {
			return fmt.Errorf("still reachable")
		}
		if m, _ := nodes[1].Member(nodes[0].Name()); m.State != StateDead {
			return fmt.Errorf("member %+v, want dead", m)
		}
		return nil
	})
	eventually(t, 5*time.Second, "m1 dropped", func() error {
		for _, n := range nodes[1:] {
			if r, ok := remoteRecord(n, nodes[0].Name(), "m1"); ok {
				return fmt.Errorf("%s still has %+v", n.Name(), r)
			}
		}
		return nil
	})
}

func TestMemberlistLogLevels(t *testing.T) {
	cases := []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4", slog.LevelDebug, "Stream connection from=1.2.3.4"},
		{"[INFO] memberlist: Marking x as failed\n", slog.LevelDebug, "Marking x as failed"},
		{"[WARN] memberlist: Refuting a dead message", slog.LevelWarn, "Refuting a dead message"},
		{"[ERR] memberlist: Failed to send gossip", slog.LevelWarn, "Failed to send gossip"},
		{"no prefix at all", slog.LevelDebug, "no prefix at all"},
	}
	for _, c := range cases {
		level, msg := parseMemberlistLine([]byte(c.line))
		if level != c.level || msg != c.msg {
			t.Errorf("parse(%q) = %v %q, want %v %q", c.line, level, msg, c.level, c.msg)
		}
	}
	var buf syncBuffer
	l := newMemberlistLogger(slogTo(&buf))
	for range 3 * memberlistLogWarnBurst {
		l.Printf("[ERR] memberlist: bad packet from a stranger")
	}
	if got := strings.Count(buf.String(), "level=WARN"); got != memberlistLogWarnBurst {
		t.Errorf("%d warnings logged of %d, want the burst of %d", got, 3*memberlistLogWarnBurst, memberlistLogWarnBurst)
	}

	// memberlist racing its own shutdown is not worth a warning.
	var quiet syncBuffer
	l = newMemberlistLogger(slogTo(&quiet))
	l.Printf("[ERR] memberlist: Failed to send gossip to 127.0.0.1:7946: write udp 127.0.0.1:7946->127.0.0.1:7947: use of closed network connection")
	if strings.Contains(quiet.String(), "level=WARN") {
		t.Errorf("a send on a closed socket at shutdown logged a warning: %s", quiet.String())
	}
}

// TestChangesSignal: Changes fires on a remote update and on membership.
func TestChangesSignal(t *testing.T) {
	_, nodes := memCluster(t, 2, nil, nil)
	ch := nodes[1].Changes()
	drain(ch)
	nodes[0].SetLocal([]Record{machine("m1")})
	// A consumer that re-reads after each signal sees the update.
	timeout := time.After(5 * time.Second)
	for {
		select {
		case <-ch:
			if got := nodes[1].Remote(); len(got) == 1 && got[0].ID == "m1" {
				return
			}
		case <-timeout:
			t.Fatalf("no Changes signal after which Remote() has m1; Remote() = %+v", nodes[1].Remote())
		}
	}
}
