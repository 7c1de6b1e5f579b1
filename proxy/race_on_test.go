//go:build race

package proxy

// raceEnabled reports whether the tests run under the race detector, which
// makes byte-pushing tests several times slower.
const raceEnabled = true
