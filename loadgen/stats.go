package loadgen

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
)

// Latency summarizes a set of durations. Its percentiles are exact, by
// the nearest-rank method: of n samples in order, the p-th percentile is
// the one at rank ceil(p/100 × n) (1-based), so it is always a duration
// that was measured, and P999 of fewer than 1000 samples is the maximum.
//
// In JSON it is an object of milliseconds with three decimals (µs):
// {"min":…, "mean":…, "p50":…, "p90":…, "p99":…, "p999":…, "max":…}.
type Latency struct {
	Min, Mean, P50, P90, P99, P999, Max time.Duration
}

// Percentile ranks, in hundredths of a percent (p99.9 = 9990).
const (
	rankP50  = 5000
	rankP90  = 9000
	rankP99  = 9900
	rankP999 = 9990
)

// Summarize returns the summary of samples, which it sorts in place, and
// false when there are none.
func Summarize(samples []time.Duration) (Latency, bool) {
	if len(samples) == 0 {
		return Latency{}, false
	}
	slices.Sort(samples)
	var sum float64 // no overflow, however long the run
	for _, s := range samples {
		sum += float64(s)
	}
	return Latency{
		Min:  samples[0],
		Mean: time.Duration(math.Round(sum / float64(len(samples)))),
		P50:  nearestRank(samples, rankP50),
		P90:  nearestRank(samples, rankP90),
		P99:  nearestRank(samples, rankP99),
		P999: nearestRank(samples, rankP999),
		Max:  samples[len(samples)-1],
	}, true
}

// Percentile returns the p-th percentile (0 < p ≤ 100, to a hundredth)
// of samples sorted in ascending order, by nearest rank; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return nearestRank(sorted, int64(math.Round(p*100)))
}

// nearestRank is the sample at rank ceil(q/10000 × n), q in hundredths
// of a percent: integer arithmetic, so that p99.9 of 1000 samples is the
// 999th and not, through a rounding error, the 1000th.
func nearestRank(sorted []time.Duration, q int64) time.Duration {
	n := int64(len(sorted))
	rank := (q*n + 9999) / 10000
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// Minus is the statistic-by-statistic difference l − o: the replay
// overhead is replayed.Minus(direct). Its values may be negative.
func (l Latency) Minus(o Latency) Latency {
	return Latency{
		Min: l.Min - o.Min, Mean: l.Mean - o.Mean,
		P50: l.P50 - o.P50, P90: l.P90 - o.P90, P99: l.P99 - o.P99, P999: l.P999 - o.P999,
		Max: l.Max - o.Max,
	}
}

// Stat returns one statistic by its threshold name: "min", "mean", "p50",
// "p90", "p99", "p99.9" (or "p999"), "max".
func (l Latency) Stat(name string) (time.Duration, bool) {
	switch name {
	case "min":
		return l.Min, true
	case "mean":
		return l.Mean, true
	case "p50":
		return l.P50, true
	case "p90":
		return l.P90, true
	case "p99":
		return l.P99, true
	case "p99.9", "p999":
		return l.P999, true
	case "max":
		return l.Max, true
	}
	return 0, false
}

// Millis is a duration that is a number of milliseconds in JSON, with
// three decimals.
type Millis time.Duration

// MarshalJSON writes the milliseconds, rounded to the microsecond.
func (m Millis) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, float64(time.Duration(m).Round(time.Microsecond))/1e6, 'f', 3, 64), nil
}

// UnmarshalJSON reads milliseconds.
func (m *Millis) UnmarshalJSON(b []byte) error {
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return err
	}
	*m = Millis(math.Round(ms * 1e6))
	return nil
}

type latencyJSON struct {
	Min  Millis `json:"min"`
	Mean Millis `json:"mean"`
	P50  Millis `json:"p50"`
	P90  Millis `json:"p90"`
	P99  Millis `json:"p99"`
	P999 Millis `json:"p999"`
	Max  Millis `json:"max"`
}

// MarshalJSON writes l in milliseconds.
func (l Latency) MarshalJSON() ([]byte, error) {
	return json.Marshal(latencyJSON{
		Millis(l.Min), Millis(l.Mean), Millis(l.P50), Millis(l.P90), Millis(l.P99), Millis(l.P999), Millis(l.Max),
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *Latency) UnmarshalJSON(b []byte) error {
	var j latencyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*l = Latency{
		time.Duration(j.Min), time.Duration(j.Mean), time.Duration(j.P50), time.Duration(j.P90),
		time.Duration(j.P99), time.Duration(j.P999), time.Duration(j.Max),
	}
	return nil
}
