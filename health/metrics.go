package health

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric label values.
const (
	typeHTTP   = "http"
	typeTCP    = "tcp"
	resultPass = "pass"
	resultFail = "fail"
)

// metrics are the collectors of one Checker.
type metrics struct {
	checks *prometheus.CounterVec // godwit_health_checks_total{app,type,result}
}

// newMetrics builds the collectors and registers them on reg; a nil reg
// registers nothing. If reg already holds the collector (a second Checker on
// the same registry), the existing one is shared. Any other registration
// error is a programming error and panics, as prometheus.MustRegister does.
func newMetrics(reg prometheus.Registerer) *metrics {
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "godwit",
		Subsystem: "health",
		Name:      "checks_total",
		Help:      "Health check attempts, by app, check type (http, tcp) and result (pass, fail).",
	}, []string{"app", "type", "result"})
	if reg != nil {
		if err := reg.Register(checks); err != nil {
			var are prometheus.AlreadyRegisteredError
			existing, ok := (*prometheus.CounterVec)(nil), false
			if errors.As(err, &are) {
				existing, ok = are.ExistingCollector.(*prometheus.CounterVec)
			}
			if !ok {
				panic(fmt.Errorf("health: registering metrics: %w", err))
			}
			checks = existing
		}
	}
	return &metrics{checks: checks}
}
