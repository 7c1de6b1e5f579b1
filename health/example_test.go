package health_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/health"
)

func ExampleChecker() {
	// A machine whose health endpoint fails.
	machine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "database unreachable", http.StatusServiceUnavailable)
	}))
	defer machine.Close()

	reports := make(chan bool, 8)
	checker := health.NewChecker(slog.New(slog.DiscardHandler), prometheus.NewRegistry(),
		func(machineID string, passing bool, reason string) {
			select { // a ReportFunc must not block
			case reports <- passing:
			default:
			}
		})
	checker.Set([]health.Target{{
		MachineID: "148e1234",
		App:       "web",
		Addr:      machine.Listener.Addr().String(),
		Checks:    []config.Check{{Path: "/healthz", Interval: 15 * time.Second, Timeout: 2 * time.Second}},
		Started:   time.Now(),
	}})
	fmt.Println("passing before the first check:", checker.Passing("148e1234"))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- checker.Run(ctx) }()

	fmt.Println("reported passing:", <-reports)
	fmt.Println("passing:", checker.Passing("148e1234"))

	cancel()
	fmt.Println("Run:", <-done)
	// Output:
	// passing before the first check: true
	// reported passing: false
	// passing: false
	// Run: <nil>
}
