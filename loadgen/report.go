package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ReportVersion is the report's "version": it changes only when a field
// changes meaning or goes away (README, "godwit load").
const ReportVersion = 1

// Report is the outcome of a load run. Its JSON field names are a
// contract, documented in the README; maps are written with sorted keys.
type Report struct {
	Version  int       `json:"version"`
	Settings Settings  `json:"settings"`
	Started  time.Time `json:"started"` // the first request; zero when none was sent
	// Elapsed runs from the first request sent to the last result.
	Elapsed Seconds `json:"elapsed_s"`
	// Requests counts the results: responses and transport errors.
	Requests  int `json:"requests"`
	Responses int `json:"responses"`
	// AchievedRate is Requests / Elapsed.
	AchievedRate float64 `json:"achieved_rate_per_s"`
	// Protocols counts responses by protocol: "HTTP/1.1", "HTTP/2.0",
	// "HTTP/3.0".
	Protocols map[string]int `json:"protocols"`
	Groups    Groups         `json:"groups"`
	Replay    ReplayStats    `json:"replay"`
	// StatusCodes counts responses by status ("200", "503").
	StatusCodes map[string]int `json:"status_codes"`
	// ProxyErrors counts responses by their Godwit-Error code ("PR01").
	ProxyErrors     map[string]int  `json:"proxy_errors"`
	TransportErrors TransportErrors `json:"transport_errors"`
	// Errors counts failed requests: transport errors, and responses with
	// a 5xx status or a Godwit-Error code.
	Errors     ErrorCount        `json:"errors"`
	Thresholds []ThresholdResult `json:"thresholds"`
}

// Settings says what was asked for.
type Settings struct {
	// Targets is "METHOD URL", or "file PATH" for a targets file.
	Targets  string `json:"targets"`
	Protocol string `json:"protocol"` // "1.1", "2" or "3"
	// Rate is the requested rate; 0: as fast as Concurrency allows.
	Rate        float64 `json:"rate_per_s"`
	Concurrency uint64  `json:"concurrency"` // the most requests in flight; 0: no limit
	Duration    Seconds `json:"duration_s"`  // 0: until interrupted
}

// Describe is the settings in one line: "POST http://… over HTTP/2,
// 100/s (at most 10 in flight) for 10s".
func (s Settings) Describe() string {
	pace := "as fast as " + strconv.FormatUint(s.Concurrency, 10) + " requests in flight allow"
	if s.Rate > 0 {
		pace = strconv.FormatFloat(s.Rate, 'f', -1, 64) + "/s"
		if s.Concurrency > 0 {
			pace += " (at most " + strconv.FormatUint(s.Concurrency, 10) + " in flight)"
		}
	}
	dur := "until interrupted"
	if s.Duration > 0 {
		dur = "for " + time.Duration(s.Duration).String()
	}
	return s.Targets + " over HTTP/" + s.Protocol + ", " + pace + " " + dur
}

// Groups are the responses by class, and all of them.
type Groups struct {
	All          Group `json:"all"`
	Replayed     Group `json:"replayed"`
	Direct       Group `json:"direct"`
	Unclassified Group `json:"unclassified"`
}

// Group is the latency of some responses: from the request's start to the
// end of the response body.
type Group struct {
	Count int `json:"count"`
	// Share is Count / Report.Responses.
	Share float64 `json:"share"`
	// Latency is null when Count is 0.
	Latency *Latency `json:"latency_ms"`
}

// ReplayStats is what replays cost.
type ReplayStats struct {
	// Phase is the replay phase of the replayed responses' Server-Timing:
	// the edge's own measure, from the first machine's attempt to the
	// last one's. Null without replayed responses.
	Phase *Latency `json:"phase_ms"`
	// Overhead is replayed minus direct, statistic by statistic (the p99
	// of one minus the p99 of the other). Null unless both groups have
	// responses.
	Overhead *Latency `json:"overhead_ms"`
	// BeyondRTT is, where the edges simulate distance
	// (backhaul.simulated_rtt, whose wait Server-Timing reports as rtt),
	// the replayed responses' latency minus that wait, minus direct,
	// statistic by statistic: what a replay costs beyond the distance.
	// Null without such responses or without direct ones.
	BeyondRTT *Latency `json:"beyond_rtt_ms"`
}

// TransportErrors are requests that got no response.
type TransportErrors struct {
	Count int `json:"count"`
	// Messages are the distinct errors, the most frequent first; past
	// MaxErrorMessages, the rest count as OtherErrors.
	Messages []ErrorMessage `json:"messages"`
}

// ErrorMessage is one distinct transport error.
type ErrorMessage struct {
	Message string `json:"message"`
	Count   int    `json:"count"`
}

// ErrorCount is a count of failed requests.
type ErrorCount struct {
	Count int     `json:"count"`
	Ratio float64 `json:"ratio"` // Count / Report.Requests
}

// Seconds is a duration that is a number of seconds in JSON.
type Seconds time.Duration

// MarshalJSON writes the seconds, to the millisecond.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, float64(time.Duration(s).Round(time.Millisecond))/1e9, 'f', -1, 64), nil
}

// UnmarshalJSON reads seconds.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(math.Round(f * 1e9))
	return nil
}

// Failed returns the thresholds that did not hold.
func (r *Report) Failed() []ThresholdResult {
	var out []ThresholdResult
	for _, t := range r.Thresholds {
		if !t.OK {
			out = append(out, t)
		}
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // thresholds keep their < and >
	return enc.Encode(r)
}

// WriteText writes the human summary: counts, a latency table per group,
// the replay overhead, status codes, errors and thresholds.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString(r.Settings.Describe() + "\n")
	fmt.Fprintf(&b, "%d requests in %s (%.1f/s): %d responses, %d transport errors\n",
		r.Requests, time.Duration(r.Elapsed).Round(time.Millisecond), r.AchievedRate, r.Responses, r.TransportErrors.Count)
	if len(r.Protocols) > 0 {
		fmt.Fprintf(&b, "protocols: %s\n", counts(r.Protocols, " ×"))
	}

	b.WriteString("\n")
	const nameW = len("replay phase (Server-Timing)")
	fmt.Fprintf(&b, "%-*s %7s %6s %8s %8s %8s %8s %8s\n", nameW, "latency (ms)", "count", "share", "p50", "p90", "p99", "p99.9", "max")
	stats := func(l *Latency) string {
		if l == nil {
			return fmt.Sprintf("%8s %8s %8s %8s %8s", "-", "-", "-", "-", "-")
		}
		return fmt.Sprintf("%8s %8s %8s %8s %8s", ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999), ms(l.Max))
	}
	row := func(name string, g Group) {
		fmt.Fprintf(&b, "%-*s %7d %5.1f%% %s\n", nameW, name, g.Count, g.Share*100, stats(g.Latency))
	}
	row("replayed", r.Groups.Replayed)
	row("direct", r.Groups.Direct)
	if r.Groups.Unclassified.Count > 0 {
		row("unclassified", r.Groups.Unclassified)
	}
	row("all", r.Groups.All)
	fmt.Fprintf(&b, "%-*s %7s %6s %s\n", nameW, "overhead (replayed - direct)", "", "", stats(r.Replay.Overhead))
	if r.Replay.BeyondRTT != nil {
		fmt.Fprintf(&b, "%-*s %7s %6s %s\n", nameW, "beyond the simulated RTT", "", "", stats(r.Replay.BeyondRTT))
	}
	fmt.Fprintf(&b, "%-*s %7s %6s %s\n", nameW, "replay phase (Server-Timing)", "", "", stats(r.Replay.Phase))
	if r.Responses > 0 && r.Groups.Unclassified.Count == r.Responses && len(r.ProxyErrors) == 0 {
		b.WriteString("no response had godwit's Server-Timing: is the URL a godwit edge?\n")
	}

	b.WriteString("\n")
	fmt.Fprintf(&b, "status codes: %s\n", orNone(counts(r.StatusCodes, " ×")))
	fmt.Fprintf(&b, "proxy errors (Godwit-Error): %s\n", orNone(counts(r.ProxyErrors, " ×")))
	fmt.Fprintf(&b, "errors: %d (%.2f%%)\n", r.Errors.Count, r.Errors.Ratio*100)
	if r.TransportErrors.Count > 0 {
		fmt.Fprintf(&b, "transport errors: %d\n", r.TransportErrors.Count)
		for _, m := range r.TransportErrors.Messages {
			fmt.Fprintf(&b, "  %d× %s\n", m.Count, m.Message)
		}
	}
	if len(r.Thresholds) > 0 {
		b.WriteString("\nthresholds:\n")
		for _, t := range r.Thresholds {
			verdict := "ok  "
			if !t.OK {
				verdict = "FAIL"
			}
			fmt.Fprintf(&b, "  %s  %s: %s\n", verdict, t.Expr, t.Value)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ms formats d in milliseconds with up to three decimals.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Round(time.Microsecond))/1e6, 'f', 3, 64)
}

// counts formats a count map as "k sep n, …", keys in order.
func counts(m map[string]int, sep string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + sep + strconv.Itoa(m[k])
	}
	return strings.Join(parts, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
