package health

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// goroutine a Checker starts must end by the time Run returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
