// Package summary turns a benchmark's repeated measurements into the
// figures its markdown report prints: medians, nearest-rank quantiles, the
// "median (min–max)" cell and the table around it. The benchmarks measure
// few rounds on a noisy machine, so a report gives the median and the range
// rather than a mean, and its quantiles are values that were measured.
//
// It knows nothing of what was measured, and does no I/O.
package summary

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Median returns the median of the finite values of xs (the mean of the two
// middle ones for an even count), NaN for none. NaN and ±Inf stand for a
// run that gave no figure (a rate of zero requests) and are left out.
func Median(xs []float64) float64 {
	s := Finite(xs)
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Quantile returns the q-quantile (0 < q ≤ 1) of xs by nearest rank: the
// smallest value with at least a fraction q of xs at or below it, so that
// with 30 samples p99 is the largest and p50 is a value that was measured.
// NaNs are left out; the zero value for none.
func Quantile[T cmp.Ordered](xs []T, q float64) T {
	s := make([]T, 0, len(xs))
	for _, x := range xs {
		if x == x { // not NaN
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		var zero T
		return zero
	}
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Finite returns the values of xs that are neither NaN nor ±Inf, in a new
// slice.
func Finite(xs []float64) []float64 {
	out := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			out = append(out, x)
		}
	}
	return out
}

// Cell formats the median of the finite values of xs with format and, when
// there are more than one, their range: "1.23 (1.01–1.40)". "—" for none.
func Cell(xs []float64, format string) string {
	xs = Finite(xs)
	if len(xs) == 0 {
		return "—"
	}
	m := fmt.Sprintf(format, Median(xs))
	if len(xs) == 1 {
		return m
	}
	return fmt.Sprintf("%s (%s–%s)", m, fmt.Sprintf(format, slices.Min(xs)), fmt.Sprintf(format, slices.Max(xs)))
}

// Table renders a markdown table: a header row, its separator, then rows,
// each line ending in a newline.
func Table(head []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|")
	for range head {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}
