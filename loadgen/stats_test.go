package loadgen

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// msSamples returns n samples of 1 ms … n ms, shuffled.
func msSamples(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Millisecond
	}
	rand.Shuffle(n, func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}

func TestSummarize(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		want    Latency
	}{
		{"one sample", []time.Duration{7 * ms}, Latency{Min: 7 * ms, Mean: 7 * ms, P50: 7 * ms, P90: 7 * ms, P99: 7 * ms, P999: 7 * ms, Max: 7 * ms}},
		{"two samples", []time.Duration{3 * ms, 1 * ms}, Latency{Min: ms, Mean: 2 * ms, P50: ms, P90: 3 * ms, P99: 3 * ms, P999: 3 * ms, Max: 3 * ms}},
		{"1..10 ms", msSamples(10), Latency{Min: ms, Mean: 5500 * time.Microsecond, P50: 5 * ms, P90: 9 * ms, P99: 10 * ms, P999: 10 * ms, Max: 10 * ms}},
		{"1..100 ms", msSamples(100), Latency{Min: ms, Mean: 50500 * time.Microsecond, P50: 50 * ms, P90: 90 * ms, P99: 99 * ms, P999: 100 * ms, Max: 100 * ms}},
		// 0.999 × 1000 is 999.0000000000001 in floating point: the
		// 1000th sample, were the rank not computed in integers.
		{"1..1000 ms", msSamples(1000), Latency{Min: ms, Mean: 500500 * time.Microsecond, P50: 500 * ms, P90: 900 * ms, P99: 990 * ms, P999: 999 * ms, Max: 1000 * ms}},
		{"1..1001 ms", msSamples(1001), Latency{Min: ms, Mean: 501 * ms, P50: 501 * ms, P90: 901 * ms, P99: 991 * ms, P999: 1000 * ms, Max: 1001 * ms}},
		{"1..10000 ms", msSamples(10000), Latency{Min: ms, Mean: 5000500 * time.Microsecond, P50: 5000 * ms, P90: 9000 * ms, P99: 9900 * ms, P999: 9990 * ms, Max: 10000 * ms}},
		{"a tail", append(repeat(100, 1*ms), repeat(10, 50*ms)...), Latency{Min: ms, Mean: 5454545 * time.Nanosecond, P50: ms, P90: ms, P99: 50 * ms, P999: 50 * ms, Max: 50 * ms}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Summarize(tc.samples)
			if !ok || got != tc.want {
				t.Errorf("Summarize:\ngot  %+v (ok %v)\nwant %+v", got, ok, tc.want)
			}
		})
	}
	if got, ok := Summarize(nil); ok || got != (Latency{}) {
		t.Errorf("Summarize(nil): got %+v, %v; want zero, false", got, ok)
	}
}

func repeat(n int, d time.Duration) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = d
	}
	return s
}

func TestPercentile(t *testing.T) {
	sorted := make([]time.Duration, 200)
	for i := range sorted {
		sorted[i] = time.Duration(i + 1)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{0.01, 1}, {0.5, 1}, {0.6, 2}, {25, 50}, {50, 100}, {75, 150}, {99, 198}, {99.5, 199}, {99.9, 200}, {100, 200},
	} {
		if got := Percentile(sorted, tc.p); got != tc.want {
			t.Errorf("Percentile(1..200, %v): got %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil, 50): got %v, want 0", got)
	}
}

func TestLatencyMinus(t *testing.T) {
	a := Latency{Min: 21, Mean: 25, P50: 22, P90: 30, P99: 40, P999: 50, Max: 60}
	b := Latency{Min: 1, Mean: 5, P50: 2, P90: 10, P99: 45, P999: 30, Max: 40}
	want := Latency{Min: 20, Mean: 20, P50: 20, P90: 20, P99: -5, P999: 20, Max: 20}
	if got := a.Minus(b); got != want {
		t.Errorf("Minus:\ngot  %+v\nwant %+v", got, want)
	}
}

func TestLatencyJSON(t *testing.T) {
	l := Latency{Min: 1234567, Mean: 2 * time.Millisecond, P50: 999, P90: 1500, P99: -2500 * time.Microsecond, P999: time.Second, Max: 90 * time.Second}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"min":1.235,"mean":2.000,"p50":0.001,"p90":0.002,"p99":-2.500,"p999":1000.000,"max":90000.000}`
	if string(b) != want {
		t.Errorf("json.Marshal(Latency):\ngot  %s\nwant %s", b, want)
	}
	var back Latency
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if wantBack := (Latency{Min: 1235 * time.Microsecond, Mean: 2 * time.Millisecond, P50: time.Microsecond, P90: 2 * time.Microsecond, P99: -2500 * time.Microsecond, P999: time.Second, Max: 90 * time.Second}); back != wantBack {
		t.Errorf("json round trip: got %+v, want %+v", back, wantBack)
	}
}
