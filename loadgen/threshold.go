package loadgen

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ThresholdSyntax is the --fail-on grammar, for usage texts.
const ThresholdSyntax = `METRIC OP VALUE, OP one of < <= > >=:
  p50 p90 p99 p99.9 max mean min   latency of all responses; VALUE a duration (50ms, 1.5s)
  replayed_STAT  direct_STAT       latency of the replayed or the direct responses (STAT as above)
  replay_STAT                      the replay phase of Server-Timing, over the replayed responses
  overhead_STAT                    replayed minus direct, at that statistic
  beyondrtt_STAT                   replayed minus the simulated RTT (Server-Timing rtt) minus direct
  errors transport_errors proxy_errors   a count (10) or a share of the requests (1%)
  replayed direct unclassified     a count, or a share of the responses
  requests responses               a count
  rps                              the achieved rate, requests per second (95 or 95/s)`

// Threshold is one --fail-on condition: it holds when the metric compares
// to the value as Op says, and fails when it does not or when the metric
// cannot be measured (replay_p99 with no replayed response).
type Threshold struct {
	Expr   string // as given
	Metric string // as given, lower case: "p99", "replay_p99.9", "errors"
	Op     string // "<", "<=", ">", ">="

	kind    metricKind
	source  string // for latency: "all", "replayed", "direct", "replay", "overhead", "beyondrtt"
	stat    string // for latency: "p99" …
	dur     time.Duration
	num     float64 // count, percentage or rate
	percent bool
}

type metricKind uint8

const (
	kindLatency metricKind = iota
	kindErrors             // count or share of requests
	kindClass              // count or share of responses
	kindCount              // count only
	kindRate
)

// ErrThreshold is wrapped by every error of ParseThreshold.
var ErrThreshold = errors.New("bad threshold")

// ParseThreshold parses one --fail-on condition, like "p99<50ms",
// "errors < 1%" or "replay_p99<=5ms" (ThresholdSyntax).
func ParseThreshold(expr string) (Threshold, error) {
	t := Threshold{Expr: expr}
	fail := func(format string, args ...any) (Threshold, error) {
		return Threshold{}, fmt.Errorf("%w %q: %s", ErrThreshold, expr, fmt.Sprintf(format, args...))
	}
	i := strings.IndexAny(expr, "<>=!")
	if i < 0 {
		return fail("no comparison: want METRIC OP VALUE with OP one of < <= > >=, like p99<50ms")
	}
	t.Metric = strings.ToLower(strings.TrimSpace(expr[:i]))
	rest := expr[i:]
	switch {
	case strings.HasPrefix(rest, "<="), strings.HasPrefix(rest, ">="):
		t.Op, rest = rest[:2], rest[2:]
	case rest[0] == '<' || rest[0] == '>':
		t.Op, rest = rest[:1], rest[1:]
	default:
		return fail("comparison %q: want one of < <= > >=", strings.TrimRight(rest[:min(2, len(rest))], " 0123456789"))
	}
	value := strings.TrimSpace(rest)
	if t.Metric == "" {
		return fail("no metric before %s", t.Op)
	}
	if value == "" {
		return fail("no value after %s", t.Op)
	}
	if strings.ContainsAny(value, "<>=") {
		return fail("more than one comparison")
	}
	switch t.Metric {
	case "errors", "transport_errors", "proxy_errors":
		t.kind = kindErrors
	case "replayed", "direct", "unclassified":
		t.kind = kindClass
	case "requests", "responses":
		t.kind = kindCount
	case "rps":
		t.kind = kindRate
	default:
		t.kind = kindLatency
		t.source, t.stat = "all", t.Metric
		if src, stat, ok := strings.Cut(t.Metric, "_"); ok {
			t.source, t.stat = src, stat
		}
		_, known := (Latency{}).Stat(t.stat)
		switch t.source {
		case "replayed", "direct", "replay", "overhead", "beyondrtt":
			if !known {
				return fail("unknown statistic %q in %q; want one of p50 p90 p99 p99.9 max mean min", t.stat, t.Metric)
			}
		case "all":
			if known {
				break
			}
			fallthrough
		default:
			return fail("unknown metric %q; want one of p50 p90 p99 p99.9 max mean min (alone or after replayed_, direct_, replay_, overhead_ or beyondrtt_), errors, transport_errors, proxy_errors, replayed, direct, unclassified, requests, responses, rps", t.Metric)
		}
	}
	switch t.kind {
	case kindLatency:
		d, err := time.ParseDuration(value)
		if err != nil {
			return fail("%s takes a duration with its unit, like 50ms or 1.5s; got %q", t.Metric, value)
		}
		t.dur = d
	case kindErrors, kindClass, kindCount:
		if pct, ok := strings.CutSuffix(value, "%"); ok {
			if t.kind == kindCount {
				return fail("%s takes a count, not a percentage", t.Metric)
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
			if err != nil || f < 0 || f > 100 {
				return fail("%s: want a percentage from 0%% to 100%%; got %q", t.Metric, value)
			}
			t.num, t.percent = f, true
			break
		}
		n, err := strconv.ParseUint(value, 10, 63)
		if err != nil {
			return fail("%s takes a count (10) or a percentage (1%%); got %q", t.Metric, value)
		}
		t.num = float64(n)
	case kindRate:
		f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(value, "/s")), 64)
		if err != nil || f < 0 {
			return fail("rps takes requests per second, like 95 or 95/s; got %q", value)
		}
		t.num = f
	}
	return t, nil
}

// ThresholdResult is one threshold checked against a report.
type ThresholdResult struct {
	Expr string `json:"expr"`
	OK   bool   `json:"ok"`
	// Value is what was measured ("12.345ms", "3/200 = 1.50%", "98.5/s"), or
	// why nothing was ("no replayed responses").
	Value string `json:"value"`
}

// Check evaluates t against r.
func (t Threshold) Check(r *Report) ThresholdResult {
	res := ThresholdResult{Expr: t.Expr}
	switch t.kind {
	case kindLatency:
		l, why := t.latency(r)
		if l == nil {
			res.Value = why
			return res
		}
		d, _ := l.Stat(t.stat)
		res.Value = ms(d) + "ms"
		res.OK = compare(float64(d), t.Op, float64(t.dur))
	case kindErrors, kindClass, kindCount:
		n, of := t.count(r)
		share := ratio(n, of)
		res.Value = strconv.Itoa(n)
		if t.kind != kindCount {
			res.Value += fmt.Sprintf("/%d = %.2f%%", of, share*100)
		}
		if t.percent {
			res.OK = compare(share*100, t.Op, t.num)
		} else {
			res.OK = compare(float64(n), t.Op, t.num)
		}
	case kindRate:
		res.Value = strconv.FormatFloat(r.AchievedRate, 'f', 1, 64) + "/s"
		res.OK = compare(r.AchievedRate, t.Op, t.num)
	}
	return res
}

// latency is the summary the threshold reads, or why there is none.
func (t Threshold) latency(r *Report) (*Latency, string) {
	switch t.source {
	case "replayed":
		return r.Groups.Replayed.Latency, "no replayed responses"
	case "direct":
		return r.Groups.Direct.Latency, "no direct responses"
	case "replay":
		return r.Replay.Phase, "no replayed responses"
	case "overhead":
		switch {
		case r.Groups.Replayed.Latency == nil:
			return nil, "no replayed responses"
		case r.Groups.Direct.Latency == nil:
			return nil, "no direct responses"
		}
		return r.Replay.Overhead, ""
	case "beyondrtt":
		if r.Replay.BeyondRTT == nil {
			return nil, "no replayed response with a simulated RTT (Server-Timing rtt), or no direct responses"
		}
		return r.Replay.BeyondRTT, ""
	}
	return r.Groups.All.Latency, "no responses"
}

// count is the metric's count and what a share of it is taken of.
func (t Threshold) count(r *Report) (n, of int) {
	switch t.Metric {
	case "errors":
		return r.Errors.Count, r.Requests
	case "transport_errors":
		return r.TransportErrors.Count, r.Requests
	case "proxy_errors":
		n := 0
		for _, c := range r.ProxyErrors {
			n += c
		}
		return n, r.Requests
	case "replayed":
		return r.Groups.Replayed.Count, r.Responses
	case "direct":
		return r.Groups.Direct.Count, r.Responses
	case "unclassified":
		return r.Groups.Unclassified.Count, r.Responses
	case "requests":
		return r.Requests, r.Requests
	}
	return r.Responses, r.Requests
}

func compare(a float64, op string, b float64) bool {
	switch op {
	case "<":
		return a < b
	case "<=":
		return a <= b
	case ">":
		return a > b
	}
	return a >= b
}

// CheckAll evaluates every threshold against r and stores the results in
// r.Thresholds. It reports whether all held.
func CheckAll(r *Report, ts []Threshold) bool {
	r.Thresholds = make([]ThresholdResult, len(ts))
	ok := true
	for i, t := range ts {
		r.Thresholds[i] = t.Check(r)
		ok = ok && r.Thresholds[i].OK
	}
	return ok
}
