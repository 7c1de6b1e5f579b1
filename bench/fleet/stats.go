package main

import (
	"fmt"
	"math"
)

// minMax returns the smallest and the largest of xs; +Inf and -Inf for
// none.
func minMax(xs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// ms formats seconds as milliseconds.
func ms(sec float64) string {
	if math.IsNaN(sec) {
		return "—"
	}
	return fmt.Sprintf("%.0f", sec*1000)
}
