package autostart

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a wake (godwit_machine_wakes_total's outcome label).
const (
	outcomeOK             = "ok"
	outcomeTimeout        = "timeout"
	outcomeFailed         = "failed"
	outcomeCanceled       = "canceled"
	outcomeBackoff        = "backoff"
	outcomeTooManyWaiters = "too_many_waiters"
)

// Kinds of wake (godwit_machine_wake_duration_seconds' kind label).
const (
	kindCold   = "cold"   // from stopped (or failed)
	kindResume = "resume" // from suspended
)

// metrics are the Manager's collectors.
type metrics struct {
	wakes        *prometheus.CounterVec   // godwit_machine_wakes_total{outcome}
	wakeDuration *prometheus.HistogramVec // godwit_machine_wake_duration_seconds{kind}
	stops        *prometheus.CounterVec   // godwit_machine_stops_total{mode}
}

// newMetrics builds the collectors and registers them on reg; a nil reg
// registers nothing. A collector reg already holds (a second Manager on
// the same registry) is shared; any other registration error panics, as
// prometheus.MustRegister does.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "godwit", Subsystem: "machine", Name: "wakes_total",
			Help: "Requests that needed a machine woken, by outcome (ok, timeout, failed, canceled, backoff, too_many_waiters); plus one per background start on the soft limit.",
		}, []string{"outcome"}),
		wakeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "godwit", Subsystem: "machine", Name: "wake_duration_seconds",
			Help:    "Time from a machine's start to its first passing readiness check, by kind (cold from stopped, resume from suspended).",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60},
		}, []string{"kind"}),
		stops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "godwit", Subsystem: "machine", Name: "stops_total",
			Help: "Machines stopped or suspended, by mode (stop, suspend).",
		}, []string{"mode"}),
	}
	if reg != nil {
		m.wakes = register(reg, m.wakes)
		m.wakeDuration = register(reg, m.wakeDuration)
		m.stops = register(reg, m.stops)
	}
	for _, o := range []string{outcomeOK, outcomeTimeout, outcomeFailed, outcomeCanceled, outcomeBackoff, outcomeTooManyWaiters} {
		m.wakes.WithLabelValues(o)
	}
	for _, k := range []string{kindCold, kindResume} {
		m.wakeDuration.WithLabelValues(k)
	}
	for _, mode := range []StopMode{ModeStop, ModeSuspend} {
		m.stops.WithLabelValues(mode.String())
	}
	return m
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Errorf("autostart: registering metrics: %w", err))
	}
	return c
}

// wake counts one wake outcome.
func (m *metrics) wake(outcome string) { m.wakes.WithLabelValues(outcome).Inc() }

// outcomeOf is the outcome label of a wake's error.
func outcomeOf(err error) string {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, ErrWakeTimeout):
		return outcomeTimeout
	case errors.Is(err, ErrCanceled):
		return outcomeCanceled
	case errors.Is(err, ErrBackoff):
		return outcomeBackoff
	case errors.Is(err, ErrTooManyWaiters):
		return outcomeTooManyWaiters
	}
	return outcomeFailed
}
