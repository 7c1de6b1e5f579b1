package proxy

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/routing"
)

// metrics are the request path's Prometheus series. Labels stay bounded:
// app, region (the machine's), code class and reason; never host or path.
type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	rejections *prometheus.CounterVec
	queueWait  *prometheus.HistogramVec
	retries    *prometheus.CounterVec
	replays    *prometheus.CounterVec
	// replayDuration is the time a replayed request spent before its last
	// machine: the machines that answered fly-replay and the re-picks.
	replayDuration *prometheus.HistogramVec
	// The replay cache: requests by the fly-replay-cache-status they got,
	// entries stored by kind (path, session), entries invalidated.
	cacheRequests      *prometheus.CounterVec
	cacheStores        *prometheus.CounterVec
	cacheInvalidations *prometheus.CounterVec
	// backhaulRefusals counts requests an owner edge did not take (or
	// could not be reached for), by reason; each was tried elsewhere.
	backhaulRefusals *prometheus.CounterVec
	// connRefusals counts client connections refused by a connection
	// limit: scope node (app "") or app.
	connRefusals *prometheus.CounterVec
	// clientTimeouts counts requests ended by a slow client, by kind:
	// body_read (proxy.body_read_timeout), body_write
	// (proxy.body_write_timeout). See slowclient.go.
	clientTimeouts *prometheus.CounterVec
	// proxyErrors counts the answers godwit gave itself, by app and
	// error code (PX01, PL05, ...): what godwit_requests_total's status
	// classes cannot tell apart.
	proxyErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, table *routing.Table) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "godwit_requests_total",
			Help: "Requests answered, by app, machine region and status class (2xx..5xx).",
		}, []string{"app", "region", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "godwit_request_duration_seconds",
			Help:                            "Time from request received to response finished, by app and machine region.",
			Buckets:                         []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"app", "region"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "godwit_concurrency_rejections_total",
			Help: "Requests refused because every machine stayed at its hard limit (reason queue_timeout) or the wait queue was full (queue_full).",
		}, []string{"app", "reason"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "godwit_queue_wait_seconds",
			Help:                            "Time requests waited for a machine below its hard limit, whatever the outcome.",
			Buckets:                         []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"app"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "godwit_upstream_connect_failures_total",
			Help: "Connections to machines that failed before the request was written (each is retried on another machine within the retry budget).",
		}, []string{"app", "region"}),
	}
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_replays_total",
		Help: "fly-replay answers from machines, by app and outcome: replayed, or the error code that ended the request (PA01..PA05).",
	}, []string{"app", "outcome"})
	m.replayDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:                            "godwit_replay_duration_seconds",
		Help:                            "Time replayed requests spent before reaching their last machine (the machines that answered fly-replay, and picking the next).",
		Buckets:                         []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"app"})
	m.cacheRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_replay_cache_requests_total",
		Help: "Replayed requests by the fly-replay-cache-status their target got: hit (from the replay cache, the source app skipped), miss (the source app answered fly-replay), bypass (the client sent fly-replay-cache-control: skip).",
	}, []string{"app", "status"})
	m.cacheStores = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_replay_cache_stores_total",
		Help: "Replays stored in the replay cache, by kind: path (fly-replay-cache) or session (a replay_cache rule).",
	}, []string{"app", "kind"})
	m.cacheInvalidations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_replay_cache_invalidations_total",
		Help: "Replay-cache entries dropped by fly-replay-cache: invalidate.",
	}, []string{"app"})
	m.backhaulRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_backhaul_refusals_total",
		Help: "Requests for a machine of another edge that its owner refused (at_hard, unhealthy, stopped, gone, unreachable, draining) or that could not reach the owner (owner unreachable); each was tried on another machine.",
	}, []string{"app", "reason"})
	m.connRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_connection_rejections_total",
		Help: "Client connections refused by a connection limit: scope node (proxy.max_connections: 503 PL05, app empty) or app (proxy.max_connections_per_app: 503 PL06).",
	}, []string{"scope", "app"})
	reg.MustRegister(m.connRefusals)
	m.clientTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_client_timeouts_total",
		Help: "Requests ended because the client stalled: kind body_read (no request body byte for proxy.body_read_timeout) or body_write (a write of the response not done within proxy.body_write_timeout).",
	}, []string{"kind"})
	reg.MustRegister(m.clientTimeouts)
	m.proxyErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "godwit_proxy_errors_total",
		Help: "Requests answered by godwit itself with an error code (the Godwit-Error header: PX01, PH01, PL05, PU02, ...), by app (empty when none was found) and code.",
	}, []string{"app", "code"})
	reg.MustRegister(m.proxyErrors)
	reg.MustRegister(m.replays, m.replayDuration, m.cacheRequests, m.cacheStores, m.cacheInvalidations, m.backhaulRefusals)
	reg.MustRegister(m.requests, m.duration, m.rejections, m.queueWait, m.retries, &machineCollector{table: table})
	return m
}

var codeClasses = [...]string{"1xx", "1xx", "2xx", "3xx", "4xx", "5xx"}

func codeClass(status int) string {
	if c := status / 100; c >= 1 && c <= 5 {
		return codeClasses[c]
	}
	return strconv.Itoa(status)
}

// machineCollector reads the machines' live state at scrape time, so the
// request path pays nothing for per-machine gauges.
type machineCollector struct{ table *routing.Table }

var (
	descInflight = prometheus.NewDesc("godwit_machine_inflight",
		"Requests in flight on the machine (its concurrency slots in use).", []string{"app", "region", "machine"}, nil)
	descLimit = prometheus.NewDesc("godwit_machine_limit",
		"The machine's concurrency limit; limit is soft or hard (hard 0 means none).", []string{"app", "region", "machine", "limit"}, nil)
	descUp = prometheus.NewDesc("godwit_machine_up",
		"1 when the machine is started and passes its health checks.", []string{"app", "region", "machine"}, nil)
	descQueued = prometheus.NewDesc("godwit_queue_waiting",
		"Requests waiting for a machine below its hard limit.", []string{"app"}, nil)
)

func (c *machineCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descInflight
	ch <- descLimit
	ch <- descUp
	ch <- descQueued
}

func (c *machineCollector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.table.Apps() {
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(a.QueueLen()), a.Name)
		for _, m := range a.Machines() {
			ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(m.Inflight()), a.Name, m.Region, m.ID)
			ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, float64(m.SoftLimit()), a.Name, m.Region, m.ID, "soft")
			ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, float64(m.HardLimit()), a.Name, m.Region, m.ID, "hard")
			up := 0.0
			if m.Started() && m.Healthy() {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, a.Name, m.Region, m.ID)
		}
	}
}

// connCollector reads the client connection counts and limits at scrape
// time.
type connCollector struct{ lim *connLimiter }

var (
	descClientConns = prometheus.NewDesc("godwit_client_connections",
		"Client connections open on the listener (on http and https from accept, TLS handshakes in progress included; on http3 from the end of the QUIC handshake); all listeners together count against proxy.max_connections.", []string{"listener"}, nil)
	descAppClientConns = prometheus.NewDesc("godwit_app_client_connections",
		"Client connections open that have carried a request for the app; they count against proxy.max_connections_per_app.", []string{"app"}, nil)
	descConnLimit = prometheus.NewDesc("godwit_connection_limit",
		"Client connection limits in force: scope node (proxy.max_connections, or the limit derived from RLIMIT_NOFILE) and app (proxy.max_connections_per_app; 0 means none).", []string{"scope"}, nil)
)

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descClientConns
	ch <- descAppClientConns
	ch <- descConnLimit
}

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	for name, n := range c.lim.listeners {
		ch <- prometheus.MustNewConstMetric(descClientConns, prometheus.GaugeValue, float64(n.Load()), name)
	}
	c.lim.apps.Range(func(_, v any) bool {
		a := v.(*appConns)
		ch <- prometheus.MustNewConstMetric(descAppClientConns, prometheus.GaugeValue, float64(a.n.Load()), a.name)
		return true
	})
	ch <- prometheus.MustNewConstMetric(descConnLimit, prometheus.GaugeValue, float64(c.lim.nodeLimit.Load()), scopeNode)
	ch <- prometheus.MustNewConstMetric(descConnLimit, prometheus.GaugeValue, float64(c.lim.appLimit.Load()), scopeApp)
}
