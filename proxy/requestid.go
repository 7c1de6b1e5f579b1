package proxy

import (
	"crypto/rand"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// requestIDs makes request ids of the form <ULID>-<region>, as Fly's
// fly-request-id: sortable by time, unique, and telling which edge took the
// request. ULIDs are monotonic within a millisecond.
type requestIDs struct {
	mu      sync.Mutex
	entropy *ulid.MonotonicEntropy
	suffix  string // "-" + region
}

func newRequestIDs(region string) *requestIDs {
	return &requestIDs{entropy: ulid.Monotonic(rand.Reader, 0), suffix: "-" + region}
}

func (g *requestIDs) next(now time.Time) string {
	var buf [ulid.EncodedSize + 16]byte
	g.mu.Lock()
	id, err := ulid.New(ulid.Timestamp(now), g.entropy)
	g.mu.Unlock()
	if err != nil { // entropy exhausted within one millisecond: still unique enough, never fail a request
		id = ulid.Make()
	}
	b := buf[:ulid.EncodedSize]
	_ = id.MarshalTextTo(b)
	return string(append(b, g.suffix...))
}
