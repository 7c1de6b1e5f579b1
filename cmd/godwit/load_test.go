package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godwit/godwit/internal/edgetest"
	"github.com/godwit/godwit/loadgen"
	"github.com/godwit/godwit/proxy"
)

// loadMachine is an app machine on loopback; replayTo, if set, makes it
// answer every request with a body (writes) with fly-replay to that
// region. It counts its requests.
func loadMachine(t *testing.T, id, replayTo string, n *atomic.Int64) string {
	t.Helper()
	m := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		if replayTo != "" && r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Fly-Replay", "region="+replayTo)
			return
		}
		io.WriteString(w, id)
	}))
	t.Cleanup(m.Close)
	return m.Listener.Addr().String()
}

// loadEdgeTOML is the config of one edge of a load test: app web (host
// web.test, primary region iad) and the given extra tables.
func loadEdgeTOML(name, region, listen, join, extra string) string {
	joinLine := ""
	if join != "" {
		joinLine = fmt.Sprintf("join = [%q]", join)
	}
	return fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
%s
admin = "127.0.0.1:0"

[log]
access = false

[gossip]
bind = "127.0.0.1:0"
%s

[backhaul]
listen = "127.0.0.1:0"

[backhaul.simulated_rtt]
iad-lhr = "20ms"

[[app]]
name  = "web"
hosts = ["web.test"]
primary_region = "iad"
%s`, name, region, listen, joinLine, extra)
}

// loadRun runs `godwit load args...` and returns its exit code, stdout
// and stderr.
func loadRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"load"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// readLoadReport decodes a --output file.
func readLoadReport(t *testing.T, path string) *loadgen.Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the --output file: %v", err)
	}
	var rep loadgen.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("the --output file: %v\n%s", err, b)
	}
	return &rep
}

// TestLoadReplayFleet runs `godwit load` against a fleet of two edges in
// this process, 20 ms apart (backhaul.simulated_rtt): edge-lhr owns m-lhr,
// which answers reads and replays writes to the primary region iad, where
// edge-iad owns m-iad. Requests alternate GET and POST at edge-lhr for 2 s
// at 100/s: half are direct, half replayed, and the replayed ones are
// slower by about the RTT.
func TestLoadReplayFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a fleet for seconds")
	}
	const rtt = 20 * time.Millisecond
	var lhrHits, iadHits atomic.Int64
	lhrAddr := loadMachine(t, "m-lhr", "iad", &lhrHits)
	iadAddr := loadMachine(t, "m-iad", "", &iadHits)
	machine := func(id, region, addr string) string {
		return fmt.Sprintf("\n[[machine]]\nid = %q\napp = \"web\"\nregion = %q\naddress = %q\n", id, region, addr)
	}
	warn := edgetest.Options{LogLevel: slog.LevelWarn} // the edges' logs: warnings and errors only
	iad := edgetest.Start(t, "edge-iad", loadEdgeTOML("edge-iad", "iad", `http = "127.0.0.1:0"`, "", machine("m-iad", "iad", iadAddr)), warn)
	lhr := edgetest.Start(t, "edge-lhr", loadEdgeTOML("edge-lhr", "lhr", `http = "127.0.0.1:0"`, iad.Server.GossipAddr(), machine("m-lhr", "lhr", lhrAddr)), warn)
	edgetest.WaitReachable(t, lhr.Server, "m-iad", 15*time.Second)

	dir := t.TempDir()
	base := "http://" + lhr.Server.Addr("http")
	targets := filepath.Join(dir, "targets.txt")
	os.WriteFile(targets, []byte(fmt.Sprintf("GET %s/\nHost: web.test\n\nPOST %s/write\nHost: web.test\n", base, base)), 0o644)
	out, plot := filepath.Join(dir, "report.json"), filepath.Join(dir, "plot.html")
	code, stdout, stderr := loadRun(t, "--targets", targets, "--body", "payload", "--rate", "100/s", "--duration", "2s",
		"--output", out, "--plot", plot, "--progress", "plain",
		"--fail-on", "errors<1%", "--fail-on", "replayed>=45%", "--fail-on", "direct>=45%", "--fail-on", "overhead_p50>=10ms")
	t.Logf("godwit load's summary:\n%s\nstderr:\n%s", stdout, stderr)
	if code != 0 {
		t.Fatalf("godwit load: exit %d, want 0", code)
	}
	rep := readLoadReport(t, out)
	g := rep.Groups
	if rep.Requests < 150 || rep.Requests > 205 || rep.Responses != rep.Requests {
		t.Errorf("got %d requests and %d responses; want about 200 (100/s for 2s, fewer on a starved host), all answered", rep.Requests, rep.Responses)
	}
	if g.Replayed.Latency == nil || g.Direct.Latency == nil || rep.Replay.Phase == nil || rep.Replay.Overhead == nil {
		t.Fatalf("got replayed %+v, direct %+v, replay %+v; want both groups and the replay figures", g.Replayed, g.Direct, rep.Replay)
	}
	if d := g.Replayed.Count - g.Direct.Count; d < -1 || d > 1 || g.Unclassified.Count != 0 {
		t.Errorf("got %d replayed, %d direct, %d unclassified; want half and half (GET and POST alternate)", g.Replayed.Count, g.Direct.Count, g.Unclassified.Count)
	}
	if n := iadHits.Load(); n != int64(g.Replayed.Count) {
		t.Errorf("m-iad saw %d requests, want one per replayed response (%d)", n, g.Replayed.Count)
	}
	overhead := g.Replayed.Latency.P50 - g.Direct.Latency.P50
	minGap := g.Replayed.Latency.Min - g.Direct.Latency.Min
	t.Logf("p50: replayed %v, direct %v, overhead %v; min: replayed %v, direct %v; replay phase p50 %v p99 %v; simulated RTT %v",
		g.Replayed.Latency.P50, g.Direct.Latency.P50, overhead, g.Replayed.Latency.Min, g.Direct.Latency.Min, rep.Replay.Phase.P50, rep.Replay.Phase.P99, rtt)
	// The fastest of each group shows the RTT even on a busy host.
	if minGap < rtt/2 || minGap > 3*rtt {
		t.Errorf("replayed min - direct min: got %v, want about the simulated RTT %v (from %v to %v)", minGap, rtt, rtt/2, 3*rtt)
	}
	switch {
	case g.Direct.Latency.P50 > rtt/2:
		// A direct request through one loopback edge takes about 1 ms:
		// the host is starved (the race detector, other work), and the
		// medians are mostly its noise.
		t.Logf("direct p50 %v: the host is too busy to hold the medians to the RTT; only the minimums were checked", g.Direct.Latency.P50)
	case overhead < rtt/2 || overhead > 3*rtt:
		t.Errorf("replayed p50 - direct p50: got %v, want about the simulated RTT %v (from %v to %v)", overhead, rtt, rtt/2, 3*rtt)
	}
	if d := rep.Replay.Overhead.P50 - overhead; d < -time.Microsecond || d > time.Microsecond { // each rounded to the µs in JSON
		t.Errorf("replay.overhead_ms.p50: got %v, want replayed p50 - direct p50 = %v", rep.Replay.Overhead.P50, overhead)
	}
	// The replay phase runs from the first machine's attempt to the
	// last one's: m-lhr's answer and the re-route, not the trip to m-iad,
	// which is in the last machine's upstream phase.
	if p := rep.Replay.Phase.P50; p <= 0 || p >= overhead {
		t.Errorf("replay phase p50 (Server-Timing): got %v, want more than 0 and less than the overhead %v", p, overhead)
	}
	if rep.StatusCodes["200"] != rep.Responses || rep.Protocols["HTTP/1.1"] != rep.Responses {
		t.Errorf("got status codes %v, protocols %v; want 200 and HTTP/1.1 for all", rep.StatusCodes, rep.Protocols)
	}
	if len(rep.Thresholds) != 4 || len(rep.Failed()) != 0 {
		t.Errorf("thresholds: got %+v, want 4, all ok", rep.Thresholds)
	}
	for _, want := range []string{"replayed", "direct", "overhead (replayed - direct)", "replay phase (Server-Timing)", "ok    errors<1%"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the summary lacks %q", want)
		}
	}
	html, err := os.ReadFile(plot)
	if err != nil {
		t.Fatalf("the --plot file: %v", err)
	}
	for _, want := range []string{loadgen.AttackName + ": replayed", loadgen.AttackName + ": direct"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("the HTML plot has no series %q", want)
		}
	}

	// A threshold that fails: exit 1, and it is named.
	code, _, stderr = loadRun(t, "-H", "Host: web.test", "--body", "x", "--rate", "50", "--duration", "300ms", "--progress", "off",
		"--fail-on", "overhead_p50<1ms", "--fail-on", "p99<10s", base+"/write")
	if code != 1 || !strings.Contains(stderr, "1 of 2 thresholds failed: overhead_p50<1ms (no direct responses)") {
		t.Errorf("with a failing threshold: got exit %d, stderr %q; want 1, naming overhead_p50<1ms", code, stderr)
	}
}

// TestLoadProtocols runs `godwit load` against one edge over each
// protocol it serves: HTTP/1.1, h2c, HTTP/2 over TLS, HTTP/3.
func TestLoadProtocols(t *testing.T) {
	var hits atomic.Int64
	addr := loadMachine(t, "m-iad", "", &hits)
	edge := edgetest.Start(t, "edge-iad", loadEdgeTOML("edge-iad", "iad",
		"http = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nhttp3 = \"127.0.0.1:0\"", "",
		fmt.Sprintf("\n[[machine]]\nid = \"m-iad\"\napp = \"web\"\naddress = %q\n", addr)),
		edgetest.Options{LogLevel: slog.LevelWarn}).Server
	for _, tc := range []struct {
		name, proto, url, want string
	}{
		{"HTTP/1.1", "1.1", "http://" + edge.Addr("http") + "/", "HTTP/1.1"},
		{"h2c", "2", "http://" + edge.Addr("http") + "/", "HTTP/2.0"},
		{"HTTP/2 over TLS", "2", "https://" + edge.Addr("https") + "/", "HTTP/2.0"},
		{"HTTP/3", "3", "https://" + edge.Addr("http3") + "/", "HTTP/3.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "report.json")
			code, stdout, stderr := loadRun(t, "--http", tc.proto, "--insecure", "-H", "Host: web.test", "--rate", "100", "--duration", "500ms",
				"--progress", "off", "--output", out, "--fail-on", "errors<=0", "--fail-on", "direct>=100%", tc.url)
			if code != 0 {
				t.Fatalf("godwit load --http %s %s: exit %d, want 0\n%s\n%s", tc.proto, tc.url, code, stdout, stderr)
			}
			rep := readLoadReport(t, out)
			// How many the pacer sent depends on the machine's load (about
			// 50); that every one was answered, over the protocol asked
			// for, does not.
			if rep.Responses == 0 || rep.Responses != rep.Requests || rep.Protocols[tc.want] != rep.Responses || rep.Settings.Protocol != tc.proto {
				t.Errorf("got %d responses of %d requests by protocol %v (settings %+v); want every request answered, all %s", rep.Responses, rep.Requests, rep.Protocols, rep.Settings, tc.want)
			}
		})
	}
}

func TestLoadUsage(t *testing.T) {
	code, stdout, _ := loadRun(t, "--help")
	if code != 0 || !strings.Contains(stdout, "--fail-on") || !strings.Contains(stdout, "Examples:") || !strings.Contains(stdout, "replay;dur=") {
		t.Errorf("godwit load --help: got exit %d and %q; want 0 and the usage with --fail-on, how replays are told apart and examples", code, stdout)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.txt")
	os.WriteFile(empty, nil, 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no URL", nil, "no URL"},
		{"two URLs", []string{"http://a/", "http://b/"}, "one URL, got 2"},
		{"unknown flag", []string{"--frobnicate", "http://a/"}, "flag provided but not defined: -frobnicate"},
		{"bad rate", []string{"--rate", "fast", "http://a/"}, `--rate: rate "fast"`},
		{"rate 0 without a cap", []string{"--rate", "0", "http://a/"}, "needs --concurrency"},
		{"concurrency 0", []string{"--concurrency", "0", "http://a/"}, "--concurrency 0"},
		{"bad protocol", []string{"--http", "4", "http://a/"}, `--http "4"`},
		{"HTTP/3 in clear", []string{"--http", "3", "http://a/"}, "HTTP/3 needs an https:// URL"},
		{"not a URL", []string{"a.example"}, "want an http:// or https:// URL"},
		{"bad header", []string{"-H", "NoColon", "http://a/"}, `-H "NoColon"`},
		{"two bodies", []string{"--body", "x", "--body-file", empty, "http://a/"}, "--body and --body-file"},
		{"missing body file", []string{"--body-file", filepath.Join(dir, "nope"), "http://a/"}, "--body-file"},
		{"targets and URL", []string{"--targets", empty, "http://a/"}, "--targets and a URL"},
		{"targets and -X", []string{"--targets", empty, "-X", "POST"}, "--targets and -X"},
		{"empty targets", []string{"--targets", empty}, "no targets in it"},
		{"bad threshold", []string{"--fail-on", "p99<fast", "http://a/"}, `--fail-on: bad threshold "p99<fast"`},
		{"unknown metric", []string{"--fail-on", "p95<1s", "http://a/"}, `unknown metric "p95"`},
		{"bad progress", []string{"--progress", "loud", "http://a/"}, `--progress "loud"`},
		{"negative duration", []string{"--duration", "-1s", "http://a/"}, "--duration -1s"},
		{"output not writable", []string{"--output", filepath.Join(dir, "no", "such", "dir.json"), "http://a/"}, "--output: open "},
		{"plot not writable", []string{"--plot", filepath.Join(dir, "no", "plot.html"), "http://a/"}, "--plot: open "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := loadRun(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("godwit load %q: got exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
			}
		})
	}
}

// TestLoadNoResponse: nothing listens, every request fails: exit 1, and
// the error is reported once with its count.
func TestLoadNoResponse(t *testing.T) {
	ln := httptest.NewServer(http.NotFoundHandler())
	url := ln.URL + "/"
	ln.Close() // the port is now closed
	out := filepath.Join(t.TempDir(), "r.json")
	code, stdout, stderr := loadRun(t, "--rate", "50", "--duration", "200ms", "--progress", "off", "--output", out, url)
	if code != 1 || !strings.Contains(stderr, "no request got a response") {
		t.Errorf("against a closed port: got exit %d, stderr %q; want 1 and no request got a response", code, stderr)
	}
	rep := readLoadReport(t, out)
	if rep.TransportErrors.Count != rep.Requests || len(rep.TransportErrors.Messages) != 1 || !strings.Contains(rep.TransportErrors.Messages[0].Message, "connection refused") {
		t.Errorf("transport errors: got %+v of %d requests; want all, one message: connection refused", rep.TransportErrors, rep.Requests)
	}
	if !strings.Contains(stdout, "× dial tcp") {
		t.Errorf("the summary does not list the error without its URL:\n%s", stdout)
	}
}

func TestLoadOutputToStdout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Server-Timing", "route;dur=0.010, queue;dur=0.000, replay;dur=0.000, upstream;dur=0.100")
	}))
	defer srv.Close()
	code, stdout, stderr := loadRun(t, "--rate", "20", "--duration", "200ms", "--progress", "plain", "--output", "-", srv.URL)
	var rep loadgen.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != 0 {
		t.Fatalf("--output -: got exit %d, stdout %q (%v); want 0 and the JSON report alone", code, stdout, err)
	}
	if rep.Groups.Direct.Count != rep.Responses || rep.Responses == 0 {
		t.Errorf("got %d direct of %d responses, want all", rep.Groups.Direct.Count, rep.Responses)
	}
	if !strings.Contains(stderr, "latency (ms)") || !strings.Contains(stderr, "godwit load: GET "+srv.URL) {
		t.Errorf("--output -: the summary and progress belong on stderr; got %q", stderr)
	}
}

func TestLoadProgressLine(t *testing.T) {
	got := progressLine(2500*time.Millisecond, 250, loadgen.Progress{Requests: 248, Responses: 246, Replayed: 120, Errors: 2, P50: 1234 * time.Microsecond, P99: 21 * time.Millisecond})
	want := "2.5s  sent 250  100/s  in flight 2  p50 1.23ms  p99 21.00ms  replayed 120  errors 2 (0.8%)"
	if got != want {
		t.Errorf("progressLine:\ngot  %q\nwant %q", got, want)
	}
	if got := progressLine(0, 0, loadgen.Progress{}); got != "0.0s  sent 0  0/s  in flight 0  p50 -  p99 -  replayed 0  errors 0" {
		t.Errorf("progressLine at the start: got %q", got)
	}
}

// TestLoadHeaderNames: loadgen reads the headers package proxy writes.
func TestLoadHeaderNames(t *testing.T) {
	if loadgen.HeaderError != proxy.HeaderError {
		t.Errorf("loadgen.HeaderError %q, proxy.HeaderError %q: want the same", loadgen.HeaderError, proxy.HeaderError)
	}
}
