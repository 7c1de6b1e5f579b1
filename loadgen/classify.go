package loadgen

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Headers godwit sets on its answers (README, "Headers" and "Proxy error
// codes"); cmd/godwit's tests check them against package proxy's.
const (
	HeaderServerTiming = "Server-Timing"
	HeaderError        = "Godwit-Error"
)

// Class is what a response says about its way through godwit.
type Class uint8

const (
	// Unclassified: no response, or one without godwit's replay phase in
	// Server-Timing (a proxy error, or a server that is not godwit).
	Unclassified Class = iota
	// Direct: replay;dur=0, the first machine tried answered.
	Direct
	// Replayed: replay;dur>0, a machine answered fly-replay and the edge
	// sent the request on.
	Replayed
)

// String is the class's name in reports, plots and thresholds.
func (c Class) String() string {
	switch c {
	case Direct:
		return "direct"
	case Replayed:
		return "replayed"
	}
	return "unclassified"
}

// Classify sorts a response by its headers (nil for no response). replay
// is the duration of the Server-Timing replay phase: the time from the
// first machine's attempt to the last one's, as the edge measured it; 0
// unless the class is Replayed.
func Classify(h http.Header) (c Class, replay time.Duration) {
	d, ok := ServerTimingPhase(h, "replay")
	switch {
	case !ok:
		return Unclassified, 0
	case d > 0:
		return Replayed, d
	}
	return Direct, 0
}

// ServerTimingPhase returns the dur of the named metric in the
// Server-Timing header (W3C Server Timing: `name;dur=<ms>;desc=..., ...`,
// possibly over several header lines), and whether the metric is there
// with a valid dur. The first metric of that name decides. It does not
// allocate. A quoted desc holding a comma is not understood (godwit sends
// no desc).
func ServerTimingPhase(h http.Header, name string) (time.Duration, bool) {
	for _, line := range h.Values(HeaderServerTiming) {
		for line != "" {
			var metric string
			metric, line, _ = strings.Cut(line, ",")
			metricName, params, _ := strings.Cut(metric, ";")
			if !strings.EqualFold(strings.TrimSpace(metricName), name) {
				continue
			}
			for params != "" {
				var p string
				p, params, _ = strings.Cut(params, ";")
				k, v, _ := strings.Cut(p, "=")
				if !strings.EqualFold(strings.TrimSpace(k), "dur") {
					continue
				}
				v = strings.Trim(strings.TrimSpace(v), `"`)
				ms, err := strconv.ParseFloat(v, 64)
				if err != nil || ms < 0 || math.IsNaN(ms) || math.IsInf(ms, 0) || ms > float64(math.MaxInt64/int64(time.Millisecond)) {
					return 0, false
				}
				return time.Duration(math.Round(ms * float64(time.Millisecond))), true
			}
			return 0, false // the metric is there without a dur
		}
	}
	return 0, false
}
