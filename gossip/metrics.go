package gossip

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values of godwit_gossip_messages_total.
const (
	kindLabelUpdate = "update" // a gossiped record update
	kindLabelState  = "state"  // a push/pull state exchange
	kindLabelLeave  = "leave"  // a node's intent to leave

	resultPublished = "published" // an own record queued for gossip
	resultRelayed   = "relayed"   // another owner's newer record re-queued
	resultApplied   = "applied"   // received, and newer than what this node had
	resultStale     = "stale"     // received, nothing newer in it
	resultMalformed = "malformed" // received, undecodable, dropped
	resultFuture    = "future"    // received, with a record versioned too far ahead (refused)
)

// metrics are a Node's collectors. A nil *metrics (no registerer) records
// nothing.
type metrics struct {
	propagation prometheus.Histogram
	messages    *prometheus.CounterVec
}

// newMetrics registers the collectors on reg: the members gauge (read from
// n at scrape time) and the shared propagation histogram and message
// counter. A second Node on the same registerer shares the last two but
// cannot register its members gauge: that is an error (wrap the registerer
// with prometheus.WrapRegistererWith and a node label).
func newMetrics(reg prometheus.Registerer, n *Node) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	if err := reg.Register(&membersCollector{n: n, desc: membersDesc}); err != nil {
		return nil, fmt.Errorf("gossip: registering godwit_gossip_members: %w (one Node per registerer; wrap it with prometheus.WrapRegistererWith for more)", err)
	}
	m := &metrics{
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:                            "godwit_gossip_state_propagation_seconds",
			Help:                            "Time from a machine change at its owner (owner's clock) to its arrival at this node, for each newer version of a remote record received.",
			Buckets:                         []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "godwit_gossip_messages_total",
			Help: "Gossip messages by kind (update, state, leave) and result: published (own record queued), relayed (newer remote record re-queued), applied, stale, malformed (received), future (received with a record versioned more than MaxClockSkew ahead, refused).",
		}, []string{"kind", "result"}),
	}
	m.propagation = register(reg, m.propagation)
	m.messages = register(reg, m.messages)
	return m, nil
}

// register registers c on reg, or returns the collector already there.
// Any other registration error is a programming error and panics, as
// prometheus.MustRegister does.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(fmt.Errorf("gossip: registering metrics: %w", err))
}

func (m *metrics) message(kind, result string) {
	if m != nil {
		m.messages.WithLabelValues(kind, result).Inc()
	}
}

// observePropagation records the age of a newly arrived record version.
// A clock behind the owner's makes it negative; that counts as 0.
func (m *metrics) observePropagation(updated, now time.Time) {
	if m != nil && !updated.IsZero() {
		m.propagation.Observe(max(now.Sub(updated), 0).Seconds())
	}
}

var membersDesc = prometheus.NewDesc("godwit_gossip_members",
	"Known fleet members (this node included) by state: alive, dead (failed, tried for reconnection), left.",
	[]string{"state"}, nil)

// membersCollector reads the member counts at scrape time.
type membersCollector struct {
	n    *Node
	desc *prometheus.Desc
}

func (c *membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *membersCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{StateAlive: 0, StateDead: 0, StateLeft: 0}
	for _, m := range c.n.Members() {
		counts[m.State]++
	}
	for state, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), state)
	}
}
