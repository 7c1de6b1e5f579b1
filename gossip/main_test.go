package gossip

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// leakGrace is how long goroutines may take to end after the last test
// before they count as leaked. Every goroutine of a Node ends before
// Shutdown returns, but memberlist does not wait for its own: a probe in
// progress waits out its deadline (ProbeInterval, ×8 for a degraded node),
// and a stream handler its TCPTimeout. A real leak never ends.
const leakGrace = 20 * time.Second

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(leakGrace)
		for {
			err := goleak.Find()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: goroutines still running %v after the tests: %v\n", leakGrace, err)
				code = 1
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Exit(code)
}
