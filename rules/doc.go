// Package rules holds godwit's Prometheus recording and alerting rules
// (godwit.rules.yml) and their promtool unit tests (godwit.test.yml); the
// Grafana dashboard built on the same metrics is ../dashboards/godwit.json.
//
// It has no Go code of its own: its tests check the rules and the
// dashboard against a live fleet of two edges (every metric name they use
// must be in README's metrics table and registered by the code), run
// promtool on the rules and on a live /metrics, and scrape the fleet, and
// `godwit demo` (built and run as a child process), with a real
// Prometheus server. The tests that need promtool or prometheus
// (Debian's prometheus package) skip without them.
//
// It does not define metrics: they are the contract of the packages that
// register them (proxy, autostart, health, gossip).
package rules
