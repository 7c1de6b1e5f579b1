package loadgen

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// MaxErrorMessages is how many distinct transport error messages a
// Recorder keeps; the rest are counted under OtherErrors.
const MaxErrorMessages = 20

// OtherErrors is the message that counts transport errors past the
// first MaxErrorMessages distinct ones.
const OtherErrors = "(other messages)"

// Recorder collects vegeta results: every latency, by class, for exact
// percentiles, and the counts of the report. Add and Snapshot may be
// called from different goroutines; Report once the results have ended.
// It keeps 16 bytes per response (24 for a replayed one): 20 MB for a
// million.
type Recorder struct {
	mu          sync.Mutex
	requests    int
	all         []time.Duration
	byClass     [3][]time.Duration // indexed by Class
	replayPhase []time.Duration
	netOfRTT    []time.Duration // replayed latency minus the Server-Timing rtt phase, when it has one
	status      map[int]int
	proxyErrs   map[string]int
	transport   map[string]int
	transportN  int
	errors      int
	first, last time.Time             // first request sent, last result ended
	live        vegeta.LatencyMetrics // estimates of every response, for Snapshot
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{status: map[int]int{}, proxyErrs: map[string]int{}, transport: map[string]int{}}
}

// Outcome is what Add made of one result.
type Outcome struct {
	Class Class
	// Failed: no response (a transport error), a 5xx, or a proxy error
	// (Godwit-Error).
	Failed bool
}

// Label is the result's series in the HTML plot: "ERROR" for a failed
// request (vegeta's plot colours labels with ERROR red), else its class.
func (o Outcome) Label() string {
	if o.Failed {
		return "ERROR"
	}
	return o.Class.String()
}

// Judge classifies one result without recording it.
func Judge(res *vegeta.Result) Outcome {
	if res.Code == 0 {
		return Outcome{Class: Unclassified, Failed: true}
	}
	c, _ := Classify(res.Headers)
	return Outcome{Class: c, Failed: res.Code >= 500 || res.Headers.Get(HeaderError) != ""}
}

// Add records one result.
func (r *Recorder) Add(res *vegeta.Result) Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if r.first.IsZero() || res.Timestamp.Before(r.first) {
		r.first = res.Timestamp
	}
	if end := res.End(); end.After(r.last) {
		r.last = end
	}
	if res.Code == 0 {
		r.transportN++
		r.errors++
		msg := ShortError(res.Error)
		if _, ok := r.transport[msg]; !ok && len(r.transport) >= MaxErrorMessages {
			msg = OtherErrors
		}
		r.transport[msg]++
		return Outcome{Class: Unclassified, Failed: true}
	}
	c, replay := Classify(res.Headers)
	code := res.Headers.Get(HeaderError)
	out := Outcome{Class: c, Failed: res.Code >= 500 || code != ""}
	r.status[int(res.Code)]++
	if code != "" {
		r.proxyErrs[code]++
	}
	if out.Failed {
		r.errors++
	}
	r.all = append(r.all, res.Latency)
	r.byClass[c] = append(r.byClass[c], res.Latency)
	if c == Replayed {
		r.replayPhase = append(r.replayPhase, replay)
		if rtt, ok := ServerTimingPhase(res.Headers, "rtt"); ok {
			r.netOfRTT = append(r.netOfRTT, res.Latency-rtt)
		}
	}
	r.live.Add(res.Latency)
	return out
}

// ShortError drops the `Get "http://…": ` that net/http puts before a
// client error, so that one failure at many URLs is one message.
func ShortError(e string) string {
	method, rest, ok := strings.Cut(e, ` "`)
	if !ok || method == "" || strings.IndexFunc(method, func(r rune) bool { return (r < 'A' || r > 'Z') && (r < 'a' || r > 'z') }) >= 0 {
		return e
	}
	if _, msg, ok := strings.Cut(rest, `": `); ok {
		return msg
	}
	return e
}

// Progress is a Recorder's running totals.
type Progress struct {
	Requests  int // results: responses and transport errors
	Responses int
	Replayed  int
	Direct    int
	Errors    int           // as Report.Errors counts them
	P50, P99  time.Duration // of the responses so far: t-digest estimates, not exact
}

// Snapshot returns the totals so far. It costs a few microseconds.
func (r *Recorder) Snapshot() Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := Progress{
		Requests:  r.requests,
		Responses: len(r.all),
		Replayed:  len(r.byClass[Replayed]),
		Direct:    len(r.byClass[Direct]),
		Errors:    r.errors,
	}
	if p.Responses > 0 {
		p.P50, p.P99 = r.live.Quantile(0.5), r.live.Quantile(0.99)
	}
	return p
}

// Report builds the report of everything added, with s as its settings.
// It sorts the recorded latencies in place.
func (r *Recorder) Report(s Settings) *Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &Report{
		Version:         ReportVersion,
		Settings:        s,
		Requests:        r.requests,
		Responses:       len(r.all),
		Protocols:       map[string]int{},
		StatusCodes:     make(map[string]int, len(r.status)),
		ProxyErrors:     make(map[string]int, len(r.proxyErrs)),
		TransportErrors: TransportErrors{Count: r.transportN, Messages: []ErrorMessage{}},
		Errors:          ErrorCount{Count: r.errors, Ratio: ratio(r.errors, r.requests)},
		Thresholds:      []ThresholdResult{},
	}
	if !r.first.IsZero() {
		rep.Started = r.first
		rep.Elapsed = Seconds(r.last.Sub(r.first))
		if rep.Elapsed > 0 {
			rep.AchievedRate = math.Round(100*float64(r.requests)/time.Duration(rep.Elapsed).Seconds()) / 100
		}
	}
	for code, n := range r.status {
		rep.StatusCodes[strconv.Itoa(code)] = n
	}
	for code, n := range r.proxyErrs {
		rep.ProxyErrors[code] = n
	}
	for msg, n := range r.transport {
		rep.TransportErrors.Messages = append(rep.TransportErrors.Messages, ErrorMessage{msg, n})
	}
	slices.SortFunc(rep.TransportErrors.Messages, func(a, b ErrorMessage) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return strings.Compare(a.Message, b.Message)
	})
	group := func(samples []time.Duration) Group {
		g := Group{Count: len(samples), Share: ratio(len(samples), len(r.all))}
		if l, ok := Summarize(samples); ok {
			g.Latency = &l
		}
		return g
	}
	rep.Groups = Groups{
		All:          group(r.all),
		Replayed:     group(r.byClass[Replayed]),
		Direct:       group(r.byClass[Direct]),
		Unclassified: group(r.byClass[Unclassified]),
	}
	if l, ok := Summarize(r.replayPhase); ok {
		rep.Replay.Phase = &l
	}
	if rep.Groups.Replayed.Latency != nil && rep.Groups.Direct.Latency != nil {
		o := rep.Groups.Replayed.Latency.Minus(*rep.Groups.Direct.Latency)
		rep.Replay.Overhead = &o
		if net, ok := Summarize(r.netOfRTT); ok {
			b := net.Minus(*rep.Groups.Direct.Latency)
			rep.Replay.BeyondRTT = &b
		}
	}
	return rep
}

func ratio(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}
