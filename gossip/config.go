package gossip

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the tuning fields of Config. The failure detector and
// everything not listed keep memberlist's DefaultLANConfig.
const (
	// DefaultPushPullInterval is 5s instead of memberlist's 30s: push/pull
	// is the only repair for an update that gossip failed to deliver (after
	// a burst of joins, a lost packet, a partition), and at 30s (scaled ×4
	// at 200 nodes) a missed machine change could take minutes to arrive.
	// Measured on 2 cores: a cut-off node got missed state after 4s p50,
	// 7s max at 5s, against 39s p50, 50s max at 30s.
	DefaultPushPullInterval = 5 * time.Second
	// DefaultGossipInterval and DefaultGossipNodes make one machine change
	// reach all of 200 nodes in well under a second, with room for real
	// network hops (TestPropagationBig, in memory on 2 cores: p99 ~0.2s,
	// against ~0.4s at 100ms and 4, ~0.9s at memberlist's 200ms and 3).
	// A round sends only when something is queued, so an idle fleet pays
	// nothing for the short interval; and each update is sent the same
	// number of times whatever the pace, so bandwidth per update does not
	// grow either. The pace caps a node's gossip at GossipNodes packets
	// per GossipInterval (80 a second, ~110 KB/s).
	DefaultGossipInterval = 50 * time.Millisecond
	DefaultGossipNodes    = 4
	// DefaultLoadInterval is how often changes of a machine's load band
	// alone are published: a busy machine may cross its soft limit many
	// times a second, and gossiping each crossing would flood the fleet.
	DefaultLoadInterval = 250 * time.Millisecond
	// DefaultDeadOwnerTTL is how long records of an owner that left or
	// died are kept (marked unreachable) and tombstones are kept.
	DefaultDeadOwnerTTL = 60 * time.Second
	// DefaultReconnectInterval is how often a node tries to reach one
	// member it believes dead, and the configured peers when it has no
	// live peer at all, so that two sides of a healed partition find each
	// other again (memberlist alone never would).
	DefaultReconnectInterval = 10 * time.Second
	// DefaultReconnectTimeout is how long a dead member is remembered for
	// reconnection (and listed by Members as "dead"), as in Serf.
	DefaultReconnectTimeout = 24 * time.Hour
)

// Limits on the strings a node publishes in its metadata, so that it fits
// memberlist's 512 bytes, and on its name.
const (
	maxRegionBytes = 64
	maxAddrBytes   = 255
	maxNameBytes   = 255 // the Owner of every record
)

// deadNodeReclaimTime is how long after a member is declared dead its name
// may be taken by a node at another address (a restart on a new port); see
// memberlistConfig.
const deadNodeReclaimTime = time.Second

// Config of a node. Name and Region are required, and Bind unless
// Transport is set; zero values of the other fields mean their defaults.
type Config struct {
	// Name is the node's name, unique in the fleet; it is the Owner of
	// the records the node publishes.
	Name string
	// Region is the node's region, carried in its metadata.
	Region string
	// Bind is the host:port to listen on, TCP and UDP; the host must be an
	// IP address. Port 0 picks a free port (tests).
	Bind string
	// Advertise is the host:port peers dial; "" means Bind's (with an
	// unspecified Bind host, memberlist picks a private address).
	Advertise string
	// Join lists peers (host:port). Start does not wait for them: a
	// background loop retries with backoff until one answers, since a node
	// may start before its peers.
	Join []string
	// SecretKey encrypts and authenticates gossip: 16, 24 or 32 bytes.
	// Nil means unencrypted, and Start logs a warning that anyone who can
	// reach the port can join.
	SecretKey []byte
	// BackhaulAddr is carried in the node's metadata for peers to dial.
	BackhaulAddr string
	// CertFingerprint is the hex SHA-256 of the node's backhaul
	// certificate, carried in metadata so that peers can pin it; "" or 64
	// hex digits.
	CertFingerprint string
	// Log receives the node's logs and memberlist's; nil discards them.
	Log *slog.Logger
	// Registerer receives the node's metrics; nil registers none.
	Registerer prometheus.Registerer

	// PushPullInterval is the anti-entropy period (memberlist scales it up
	// above 32 nodes); default DefaultPushPullInterval.
	PushPullInterval time.Duration
	// GossipInterval and GossipNodes: every GossipInterval, queued
	// updates go to GossipNodes random peers; defaults
	// DefaultGossipInterval and DefaultGossipNodes.
	GossipInterval time.Duration
	GossipNodes    int
	// LoadInterval: changes of a record's Band alone are published at most
	// this often, coalesced; default DefaultLoadInterval.
	LoadInterval time.Duration
	// DeadOwnerTTL: records of an owner that left or died are kept, marked
	// unreachable, this long, then dropped; tombstones are kept this long.
	// Default DefaultDeadOwnerTTL.
	DeadOwnerTTL time.Duration
	// ReconnectInterval: how often a dead member (or, with no live peer,
	// the Join list) is tried again; default DefaultReconnectInterval.
	ReconnectInterval time.Duration
	// ReconnectTimeout: how long dead members are tried and listed;
	// default DefaultReconnectTimeout.
	ReconnectTimeout time.Duration

	// Transport, for tests, replaces the network (memberlist's
	// MockNetwork, an in-memory or fault-injecting transport); Bind is
	// then ignored.
	Transport memberlist.Transport
	// Tune, for tests, may change the memberlist configuration after
	// godwit's settings are applied and before the node starts.
	Tune func(*memberlist.Config)

	// hooks observe the node in tests; nil in production.
	hooks *hooks
}

// hooks are test observers, called synchronously (some with the node's
// lock held: they must not call the node).
type hooks struct {
	applied     func(r Record)  // a newer version of a remote record was stored
	joinAttempt func(err error) // a join or reconnect attempt ended
}

// withDefaults returns c with zero tuning fields set to their defaults
// and Log set.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PushPullInterval, DefaultPushPullInterval)
	def(&c.GossipInterval, DefaultGossipInterval)
	def(&c.LoadInterval, DefaultLoadInterval)
	def(&c.DeadOwnerTTL, DefaultDeadOwnerTTL)
	def(&c.ReconnectInterval, DefaultReconnectInterval)
	def(&c.ReconnectTimeout, DefaultReconnectTimeout)
	if c.GossipNodes <= 0 {
		c.GossipNodes = DefaultGossipNodes
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// check reports what is wrong with c, every problem at once.
func (c *Config) check() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("Name is required: set it to the node's name, unique in the fleet"))
	} else if len(c.Name) > maxNameBytes {
		errs = append(errs, fmt.Errorf("Name is %d bytes, at most %d", len(c.Name), maxNameBytes))
	}
	if c.Region == "" {
		errs = append(errs, errors.New("Region is required"))
	} else if len(c.Region) > maxRegionBytes {
		errs = append(errs, fmt.Errorf("Region is %d bytes, at most %d fit in the node's metadata", len(c.Region), maxRegionBytes))
	}
	if len(c.BackhaulAddr) > maxAddrBytes {
		errs = append(errs, fmt.Errorf("BackhaulAddr is %d bytes, at most %d fit in the node's metadata", len(c.BackhaulAddr), maxAddrBytes))
	}
	if c.CertFingerprint != "" {
		if b, err := hex.DecodeString(c.CertFingerprint); err != nil || len(b) != 32 {
			errs = append(errs, fmt.Errorf("CertFingerprint %q is not a hex SHA-256 (64 hex digits)", c.CertFingerprint))
		}
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		errs = append(errs, fmt.Errorf("SecretKey is %d bytes: use 16, 24 or 32 random bytes (godwit keygen prints one)", len(c.SecretKey)))
	}
	if c.Transport == nil {
		if c.Bind == "" {
			errs = append(errs, errors.New("Bind is required: the host:port to listen on (TCP and UDP)"))
		} else if _, _, err := splitIPPort(c.Bind); err != nil {
			errs = append(errs, fmt.Errorf("Bind: %w", err))
		}
	}
	if c.Advertise != "" {
		if _, _, err := splitIPPort(c.Advertise); err != nil {
			errs = append(errs, fmt.Errorf("Advertise: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gossip: config: %w", err)
	}
	return nil
}

// splitIPPort splits an IP:port address as memberlist wants it: the host
// an IP literal, the port a number.
func splitIPPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q: the host must be an IP address", addr)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("%q: bad port number", addr)
	}
	return host, int(port), nil
}

// memberlistConfig builds memberlist's configuration for c (defaults
// applied), with d as every delegate.
func (c *Config) memberlistConfig(d *delegate) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.Name
	if c.Transport != nil {
		mc.Transport = c.Transport
	} else {
		host, port, _ := splitIPPort(c.Bind)
		mc.BindAddr, mc.BindPort = host, port
		mc.AdvertisePort = port
	}
	if c.Advertise != "" {
		host, port, _ := splitIPPort(c.Advertise)
		mc.AdvertiseAddr, mc.AdvertisePort = host, port
	}
	mc.PushPullInterval = c.PushPullInterval
	// memberlist compresses every packet with LZW by default: a fresh
	// encoder (tens of KB of tables) per gossip packet of a few hundred
	// bytes that barely shrinks. It was ~45% of the CPU of a broadcasting
	// 200-node fleet. Records are already compact; push/pull states are
	// small next to a LAN's bandwidth.
	mc.EnableCompression = false
	mc.GossipInterval = c.GossipInterval
	mc.GossipNodes = c.GossipNodes
	// A node name is this fleet's identity (the Owner of its records), and
	// an edge killed and restarted often comes back on a new port.
	// memberlist keeps a dead node's address until it reaps the entry
	// (GossipToTheDeadTime, 30s) and by default (0) never lets a name
	// change address before that, so the restarted edge would be refused
	// for half a minute. Once the old address is declared dead, the name
	// may move after this grace. That lets nobody new in: only a holder of
	// the gossip key can claim a name, and peers pin the backhaul
	// certificate fingerprint from the claimant's own metadata.
	mc.DeadNodeReclaimTime = deadNodeReclaimTime
	if len(c.SecretKey) > 0 {
		mc.SecretKey = append([]byte(nil), c.SecretKey...)
	}
	mc.Delegate = d
	mc.Events = d
	mc.Ping = d
	mc.DelegateProtocolVersion = wireVersion
	mc.DelegateProtocolMin = wireVersion
	mc.DelegateProtocolMax = wireVersion
	mc.Logger = newMemberlistLogger(c.Log)
	if c.Tune != nil {
		c.Tune(mc)
	}
	return mc
}
