package loadgen

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// result is a vegeta result of a request sent at t0+at.
func result(seq uint64, at, latency time.Duration, code uint16, hdr http.Header, errMsg string) *vegeta.Result {
	return &vegeta.Result{Attack: AttackName, Seq: seq, Code: code, Timestamp: t0.Add(at), Latency: latency, Error: errMsg, Headers: hdr}
}

func timing(replayMs string) http.Header {
	return http.Header{"Server-Timing": {"route;dur=0.010, queue;dur=0.000, replay;dur=" + replayMs + ", upstream;dur=1.000"}}
}

// sampleResults: 3 direct, 2 replayed, a 503 PR01, a 404 from the app,
// and 2 transport errors of one kind at two URLs.
func sampleResults() []*vegeta.Result {
	ms := time.Millisecond
	return []*vegeta.Result{
		result(0, 0, 1*ms, 200, timing("0.000"), ""),
		result(1, 10*ms, 21*ms, 200, timing("20.000"), ""),
		result(2, 20*ms, 2*ms, 200, timing("0.000"), ""),
		result(3, 30*ms, 23*ms, 201, timing("22.000"), ""),
		result(4, 40*ms, 3*ms, 200, timing("0.000"), ""),
		result(5, 50*ms, ms/2, 503, http.Header{"Godwit-Error": {"PR01"}}, "503 Service Unavailable"),
		result(6, 60*ms, 2*ms, 404, timing("0.000"), "404 Not Found"),
		result(7, 70*ms, 5*ms, 0, nil, `Get "http://127.0.0.1:8080/x": dial tcp 127.0.0.1:8080: connect: connection refused`),
		result(8, 80*ms, 20*ms, 0, nil, `Post "http://127.0.0.1:8080/y": dial tcp 127.0.0.1:8080: connect: connection refused`),
	}
}

func sampleReport() *Report {
	rec := NewRecorder()
	for _, r := range sampleResults() {
		rec.Add(r)
	}
	rep := rec.Report(Settings{Targets: "file mix.txt (2 targets)", Protocol: HTTP2, Rate: 100, Concurrency: 10, Duration: Seconds(2 * time.Second)})
	rep.Protocols = map[string]int{"HTTP/2.0": 7}
	var ts []Threshold
	for _, e := range []string{"p99<50ms", "errors<1%", "replay_p99<5ms", "overhead_p50<=25ms"} {
		th, err := ParseThreshold(e)
		if err != nil {
			panic(err)
		}
		ts = append(ts, th)
	}
	CheckAll(rep, ts)
	return rep
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\ngot\n%s\nwant\n%s", name, got, want)
	}
}

func TestReportJSON(t *testing.T) {
	rep := sampleReport()
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.json", buf.Bytes())

	// It reads back as the same report.
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("decoding the report: %v", err)
	}
	if !reflect.DeepEqual(&back, rep) {
		t.Errorf("JSON round trip:\ngot  %+v\nwant %+v", &back, rep)
	}

	// The field names are a contract (README): every documented one is there.
	var m map[string]any
	json.Unmarshal(buf.Bytes(), &m)
	for _, path := range [][]string{
		{"version"}, {"settings", "targets"}, {"settings", "protocol"}, {"settings", "rate_per_s"},
		{"settings", "concurrency"}, {"settings", "duration_s"}, {"started"}, {"elapsed_s"},
		{"requests"}, {"responses"}, {"achieved_rate_per_s"}, {"protocols"},
		{"groups", "all", "latency_ms", "p999"}, {"groups", "replayed", "count"}, {"groups", "replayed", "share"},
		{"groups", "direct", "latency_ms", "p50"}, {"groups", "unclassified", "latency_ms", "max"},
		{"replay", "phase_ms", "p99"}, {"replay", "overhead_ms", "p90"},
		{"status_codes", "503"}, {"proxy_errors", "PR01"}, {"transport_errors", "count"}, {"transport_errors", "messages"},
		{"errors", "count"}, {"errors", "ratio"}, {"thresholds"},
	} {
		var v any = m
		for _, k := range path {
			obj, _ := v.(map[string]any)
			var ok bool
			if v, ok = obj[k]; !ok {
				t.Errorf("report JSON has no %v", path)
				break
			}
		}
	}
}

func TestReportFigures(t *testing.T) {
	rep := sampleReport()
	ms := time.Millisecond
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %v, want %v", what, got, want)
		}
	}
	check("requests", rep.Requests, 9)
	check("responses", rep.Responses, 7)
	check("elapsed", time.Duration(rep.Elapsed), 100*ms) // t0 to the last end: 80 ms + 20 ms
	check("achieved rate", rep.AchievedRate, 90.0)
	check("started", rep.Started, t0)
	check("replayed", rep.Groups.Replayed.Count, 2)
	check("direct", rep.Groups.Direct.Count, 4) // the app's 404 passed through godwit directly
	check("unclassified", rep.Groups.Unclassified.Count, 1)
	check("all", rep.Groups.All.Count, 7)
	check("replayed p50", rep.Groups.Replayed.Latency.P50, 21*ms)
	check("direct p50", rep.Groups.Direct.Latency.P50, 2*ms)
	check("overhead p50", rep.Replay.Overhead.P50, 19*ms)
	check("replay phase max", rep.Replay.Phase.Max, 22*ms)
	check("status codes", rep.StatusCodes, map[string]int{"200": 4, "201": 1, "404": 1, "503": 1})
	check("proxy errors", rep.ProxyErrors, map[string]int{"PR01": 1})
	check("transport errors", rep.TransportErrors, TransportErrors{Count: 2, Messages: []ErrorMessage{{"dial tcp 127.0.0.1:8080: connect: connection refused", 2}}})
	check("errors", rep.Errors, ErrorCount{Count: 3, Ratio: 3.0 / 9}) // 2 transport, the 503; not the app's 404
	check("failed thresholds", len(rep.Failed()), 2)
}

func TestReportText(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.txt", buf.Bytes())
}

func TestReportEmpty(t *testing.T) {
	rep := NewRecorder().Report(Settings{Targets: "GET http://x/", Protocol: HTTP1, Rate: 50})
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	groups := m["groups"].(map[string]any)
	for _, g := range []string{"all", "replayed", "direct", "unclassified"} {
		if l := groups[g].(map[string]any)["latency_ms"]; l != nil {
			t.Errorf("empty report: groups.%s.latency_ms is %v, want null", g, l)
		}
	}
	for _, k := range []string{"status_codes", "proxy_errors", "protocols"} {
		if v, ok := m[k].(map[string]any); !ok || len(v) != 0 {
			t.Errorf("empty report: %s is %v, want {}", k, m[k])
		}
	}
	if v, ok := m["thresholds"].([]any); !ok || len(v) != 0 {
		t.Errorf("empty report: thresholds is %v, want []", m["thresholds"])
	}
}

func TestRecorderErrorMessages(t *testing.T) {
	rec := NewRecorder()
	for i := range MaxErrorMessages + 5 {
		for range 2 {
			rec.Add(result(0, 0, time.Millisecond, 0, nil, fmt.Sprintf(`Get "http://h/": error %02d`, i)))
		}
	}
	rep := rec.Report(Settings{})
	msgs := rep.TransportErrors.Messages
	if rep.TransportErrors.Count != 2*(MaxErrorMessages+5) || len(msgs) != MaxErrorMessages+1 {
		t.Fatalf("got %d errors in %d messages; want %d in %d", rep.TransportErrors.Count, len(msgs), 2*(MaxErrorMessages+5), MaxErrorMessages+1)
	}
	if msgs[0] != (ErrorMessage{OtherErrors, 10}) {
		t.Errorf("first message: got %+v, want the %d others, counted 10 times, first", msgs[0], 5)
	}
	if !slices.IsSortedFunc(msgs[1:], func(a, b ErrorMessage) int { return bytes.Compare([]byte(a.Message), []byte(b.Message)) }) {
		t.Errorf("messages of equal counts are not in order: %+v", msgs)
	}
}

func TestShortError(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`Get "http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: connection refused`, "dial tcp 127.0.0.1:1: connect: connection refused"},
		{`Post "https://h/a?b=c": context deadline exceeded (Client.Timeout exceeded while awaiting headers)`, "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"},
		{`PROPFIND "http://h/": EOF`, "EOF"},
		{"timeout: no recent network activity", "timeout: no recent network activity"},
		{`no quote here`, `no quote here`},
		{`Get "unterminated`, `Get "unterminated`},
	} {
		if got := ShortError(tc.in); got != tc.want {
			t.Errorf("ShortError(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRecorderSnapshot(t *testing.T) {
	rec := NewRecorder()
	if p := rec.Snapshot(); p != (Progress{}) {
		t.Errorf("empty Snapshot: got %+v, want zero", p)
	}
	for _, r := range sampleResults() {
		rec.Add(r)
	}
	p := rec.Snapshot()
	if p.Requests != 9 || p.Responses != 7 || p.Replayed != 2 || p.Direct != 4 || p.Errors != 3 {
		t.Errorf("Snapshot counts: got %+v, want 9 requests, 7 responses, 2 replayed, 4 direct, 3 errors", p)
	}
	if p.P50 < time.Millisecond || p.P50 > 3*time.Millisecond || p.P99 < 20*time.Millisecond || p.P99 > 23*time.Millisecond {
		t.Errorf("Snapshot estimates: got p50 %v p99 %v; want about 2ms and 23ms", p.P50, p.P99)
	}
}

func TestJudge(t *testing.T) {
	for i, want := range []string{"direct", "replayed", "direct", "replayed", "direct", "ERROR", "direct", "ERROR", "ERROR"} {
		if got := Judge(sampleResults()[i]).Label(); got != want {
			t.Errorf("Judge(result %d).Label(): got %q, want %q", i, got, want)
		}
	}
}

// TestReportBeyondRTT: replayed responses whose Server-Timing has the
// simulated RTT the edge waited (rtt) are measured without it: replayed
// minus rtt minus direct, statistic by statistic; and beyondrtt_ thresholds
// read it.
func TestReportBeyondRTT(t *testing.T) {
	ms := time.Millisecond
	withRTT := func(replayMs, rttMs string) http.Header {
		h := timing(replayMs)
		h.Set("Server-Timing", h.Get("Server-Timing")+", rtt;dur="+rttMs)
		return h
	}
	rec := NewRecorder()
	for _, r := range []*vegeta.Result{
		result(0, 0, 2*ms, 200, timing("0.000"), ""),
		result(1, 10*ms, 2*ms, 200, timing("0.000"), ""),
		result(2, 20*ms, 83*ms, 201, withRTT("0.300", "80.000"), ""),
		result(3, 30*ms, 85*ms, 201, withRTT("0.300", "81.000"), ""), // a late timer: 1 ms more RTT
	} {
		rec.Add(r)
	}
	rep := rec.Report(Settings{})
	if rep.Replay.BeyondRTT == nil {
		t.Fatal("no beyond_rtt_ms with rtt phases in the replayed answers")
	}
	// replayed minus rtt: 3 ms and 4 ms; direct: 2 ms.
	if got := rep.Replay.BeyondRTT.P50; got != 1*ms {
		t.Errorf("beyond the RTT p50: %v, want 1ms", got)
	}
	if got := rep.Replay.BeyondRTT.Max; got != 2*ms {
		t.Errorf("beyond the RTT max: %v, want 2ms", got)
	}
	th, err := ParseThreshold("beyondrtt_p99<1500us")
	if err != nil {
		t.Fatal(err)
	}
	CheckAll(rep, []Threshold{th})
	if failed := rep.Failed(); len(failed) != 1 {
		t.Errorf("beyondrtt_p99<1500us with a p99 of 2ms: %d failed, want 1", len(failed))
	}
	if sampleReport().Replay.BeyondRTT != nil {
		t.Error("beyond_rtt_ms without any rtt phase: want null")
	}
}
