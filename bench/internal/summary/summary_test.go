package summary

import (
	"math"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name string
		xs   []float64
		want float64 // NaN: none
	}{
		{"none", nil, nan},
		{"only NaN and Inf", []float64{nan, math.Inf(1)}, nan},
		{"odd", []float64{3, 1, 2}, 2},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"NaN left out", []float64{nan, 5, 1, math.Inf(-1), 3}, 3},
	} {
		got := Median(tc.xs)
		if got != tc.want && !(math.IsNaN(got) && math.IsNaN(tc.want)) {
			t.Errorf("%s: Median(%v) = %v, want %v", tc.name, tc.xs, got, tc.want)
		}
	}
}

func TestQuantile(t *testing.T) {
	thirty := make([]float64, 30)
	for i := range thirty {
		thirty[i] = float64(30 - i) // 30 … 1
	}
	for _, tc := range []struct {
		name string
		xs   []float64
		q    float64
		want float64
	}{
		{"none: zero", nil, 0.5, 0},
		{"p50 of 30 is the 15th", thirty, 0.5, 15},
		{"p99 of 30 is the largest", thirty, 0.99, 30},
		{"p100 is the largest", thirty, 1, 30},
		{"p50 of 4 is a measured value", []float64{1, 2, 3, 4}, 0.5, 2},
		{"NaN left out", []float64{math.NaN(), 7}, 0.5, 7},
	} {
		if got := Quantile(tc.xs, tc.q); got != tc.want {
			t.Errorf("%s: Quantile(…, %v) = %v, want %v", tc.name, tc.q, got, tc.want)
		}
	}
	ds := []time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}
	if got, want := Quantile(ds, 0.99), 3*time.Millisecond; got != want {
		t.Errorf("durations: Quantile(%v, 0.99) = %v, want %v", ds, got, want)
	}
}

func TestCell(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		want string
	}{
		{"none", nil, "—"},
		{"one value: no range", []float64{1.234}, "1.23"},
		{"median and range", []float64{1.4, 1.01, 1.23}, "1.23 (1.01–1.40)"},
		{"NaN left out of the range", []float64{math.NaN(), 2, 4}, "3.00 (2.00–4.00)"},
	} {
		if got := Cell(tc.xs, "%.2f"); got != tc.want {
			t.Errorf("%s: Cell(%v) = %q, want %q", tc.name, tc.xs, got, tc.want)
		}
	}
}

func TestTable(t *testing.T) {
	got := Table([]string{"a", "b"}, [][]string{{"1", "2"}})
	want := "| a | b |\n|---|---|\n| 1 | 2 |\n"
	if got != want {
		t.Errorf("Table = %q, want %q", got, want)
	}
}
