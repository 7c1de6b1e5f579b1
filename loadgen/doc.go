// Package loadgen is the engine of `godwit load`: it drives vegeta's
// attacker (github.com/tsenart/vegeta/v12/lib) with an HTTP/1.1, HTTP/2,
// h2c or HTTP/3 client, sorts every response into replayed, direct or
// unclassified from the headers godwit adds to it, and turns the results
// into a report (exact latency percentiles per group, the replay overhead,
// status codes, proxy error codes, transport errors), a vegeta HTML plot,
// and pass/fail thresholds.
//
// A response is replayed when godwit's Server-Timing header has a replay
// phase longer than zero (`replay;dur=20.412`): a machine answered
// fly-replay and the edge sent the request on to another one. It is direct
// when that phase is zero (`replay;dur=0.000`), and unclassified when the
// response has no replay phase at all: a proxy error (Godwit-Error), or a
// server that is not godwit.
//
// It does not parse flags, print progress or write files: cmd/godwit does,
// from the values this package computes. Its core (Classify, Recorder,
// Threshold) knows nothing of time or I/O and is driven by the caller.
package loadgen
