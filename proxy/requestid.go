package proxy

import (
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/oklog/ulid/v2"
)

// requestIDs makes request ids of the form <ULID>-<region>, as Fly's
// fly-request-id: sortable by time to the millisecond, unique, and telling
// which edge took the request. The 80 random bits come from the runtime's
// per-thread ChaCha8 generator: no lock and no allocation on the request
// path beyond the id string itself.
type requestIDs struct {
	suffix string // "-" + region
}

func newRequestIDs(region string) *requestIDs {
	return &requestIDs{suffix: "-" + region}
}

func (g *requestIDs) next(now time.Time) string {
	var id ulid.ULID
	_ = id.SetTime(ulid.Timestamp(now)) // fails only after the year 10889
	binary.BigEndian.PutUint16(id[6:8], uint16(rand.Uint32()))
	binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	var buf [ulid.EncodedSize + 16]byte
	b := buf[:ulid.EncodedSize]
	_ = id.MarshalTextTo(b)
	return string(append(b, g.suffix...))
}
