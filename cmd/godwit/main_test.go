package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to write from the node's goroutines
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte(`
[[app]]
name = "web"
hosts = ["web.example.com"]

[[machine]]
id = "m1"
app = "web"
address = "127.0.0.1:3001"
`), 0o644)
	os.WriteFile(bad, []byte(`
[[app]]
name = "web"
hosts = ["web.example.com"]
  [app.http_service.concurrency]
  soft_limit = 30
  hard_limit = 10

[[machine]]
id = "m1"
app = "nope"
addres = "127.0.0.1:3001"
`), 0o644)

	tests := []struct {
		name     string
		file     string
		wantCode int
		wantOut  []string // substrings of stdout+stderr
	}{
		{"valid", good, 0, []string{"ok (1 apps, 1 machines)"}},
		{"errors with lines", bad, 1, []string{"bad.toml:7:", "bad.toml:11:", "bad.toml:12:", "did you mean \"address\"", "error(s) in"}},
		{"missing file", filepath.Join(dir, "none.toml"), 1, []string{"none.toml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code := run(t.Context(), []string{"config", "check", tt.file}, &out, &out)
			if code != tt.wantCode {
				t.Errorf("exit code: got %d, want %d; output:\n%s", code, tt.wantCode, out.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), "goroutine ") {
				t.Errorf("output has a stack trace:\n%s", out.String())
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"config"}, {"config", "check"}} {
		var out bytes.Buffer
		if code := run(t.Context(), args, &out, &out); code != 2 {
			t.Errorf("godwit %v: exit code got %d, want 2", args, code)
		}
		if !strings.Contains(out.String(), "usage") && !strings.Contains(out.String(), "Usage") {
			t.Errorf("godwit %v: no usage text in %q", args, out.String())
		}
	}
}

// init lets this test binary be the demo's sleeping machine too: `godwit
// demo` runs os.Executable() with the hidden demo-machine command, and in
// a test that is this binary. (An init rather than TestMain, which
// child_test.go has: it runs before any test would.)
func init() {
	if len(os.Args) > 1 && os.Args[1] == "demo-machine" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
}

// TestDemoCurlLinesWork runs `godwit demo` as a user would (in-process,
// on free ports), runs every curl line it prints, as printed, with the
// real curl, and checks that each answers as the printout says: a read
// from the machine of the edge's own region, a write replayed to the
// primary region, a wake of the sleeping machine's process, and the admin
// calls. Then Ctrl-C (ctx) must end it with exit code 0, its machine
// process gone.
func TestDemoCurlLinesWork(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl binary: the demo prints curl lines, and this test runs them as printed")
	}
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh: the printed curl lines are shell commands")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	began := time.Now()
	go func() {
		done <- run(ctx, []string{"demo", "-http", "127.0.0.1:0", "-admin", "127.0.0.1:0"}, &stdout, &stderr)
	}()

	// Ready: the whole block is printed. The goal is 3 s; the bound is
	// looser for slow and -race runs.
	const readyBound = 10 * time.Second
	for !strings.Contains(stdout.String(), "Ctrl-C") {
		select {
		case code := <-done:
			t.Fatalf("demo exited with %d before it was ready; stdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(began) > readyBound {
			t.Fatalf("demo not ready within %v; stdout:\n%s\nstderr:\n%s", readyBound, stdout.String(), stderr.String())
		}
	}
	t.Logf("demo ready (printed) in %v (goal: 3s)", time.Since(began).Round(time.Millisecond))
	out := stdout.String()
	t.Logf("demo printed:\n%s", out)

	// What the printout says: each edge's region by port, the primary
	// region, the simulated round trips.
	regionOf := map[string]string{} // edge http port → region
	for _, m := range regexp.MustCompile(`(?m)^  edge-\S+\s+(\w+)\s+http://127\.0\.0\.1:(\d+)\s+metrics http://\S+/metrics$`).FindAllStringSubmatch(out, -1) {
		regionOf[m[2]] = m[1]
	}
	if len(regionOf) < 3 {
		t.Fatalf("printout lists %d edges, want 3 or more (one per region)", len(regionOf))
	}
	var primary string
	if m := regexp.MustCompile(`writes to the primary, (\w+)`).FindStringSubmatch(out); m != nil {
		primary = m[1]
	} else {
		t.Fatal("printout does not name the todo app's primary region")
	}
	rtt := map[string]time.Duration{} // "cdg-iad" → 80ms
	for _, m := range regexp.MustCompile(`(\w+)-(\w+) (\d+ms)`).FindAllStringSubmatch(out, -1) {
		d, _ := time.ParseDuration(m[3])
		rtt[m[1]+"-"+m[2]], rtt[m[2]+"-"+m[1]] = d, d
	}
	if !regexp.MustCompile(`(?m)^  godwit load .*-H 'Host: todo\.localhost' http://127\.0\.0\.1:\d+/$`).MatchString(out) {
		t.Errorf("printout has no godwit load line against the todo app")
	}

	lines := regexp.MustCompile(`(?m)^  (curl .+)$`).FindAllStringSubmatch(out, -1)
	kinds := map[string]bool{}
	var wakeLine string
	var machinePID int // of the last wake
	for _, l := range lines {
		line := l[1]
		port := ""
		if m := regexp.MustCompile(`http://[a-z.]*localhost:(\d+)/`).FindStringSubmatch(line); m != nil {
			port = m[1]
		}
		edge := regionOf[port]
		res := runDemoCurlLine(t, line)
		switch {
		case strings.Contains(line, "fly-force-region:"):
			kinds["wake"] = true
			wakeLine = line
			machinePID = checkDemoWake(t, line, res)
		case strings.Contains(line, "todo.localhost") && strings.Contains(line, "-X POST"):
			kinds["write"] = true
			if res.status != 201 ||
				!strings.Contains(res.body, fmt.Sprintf("todo machine todo-%[1]s in region %[1]s (the primary) wrote", primary)) ||
				!strings.Contains(res.body, fmt.Sprintf("fly-replay-src: instance=todo-%[1]s;region=%[1]s;t=", edge)) {
				t.Errorf("%s\n(a write at the %s edge) got %d %q, want 201 from todo-%s with fly-replay-src naming todo-%s", line, edge, res.status, res.body, primary, edge)
			}
			if id := res.header.Get("Fly-Request-Id"); !strings.HasSuffix(id, "-"+edge) {
				t.Errorf("%s\nFly-Request-Id %q, want the accepting edge's region, -%s", line, id, edge)
			}
			// The replay went over the backhaul to the primary, which
			// waits the simulated round trip.
			up := timingPhase(res.header.Get("Server-Timing"), "upstream")
			if want := rtt[edge+"-"+primary]; want == 0 || up < want || timingPhase(res.header.Get("Server-Timing"), "replay") < 0 {
				t.Errorf("%s\nServer-Timing %q: want a replay entry and upstream of at least the simulated %s-%s RTT %v", line, res.header.Get("Server-Timing"), edge, primary, want)
			}
			// The edge says how long it waited on purpose (rtt), within
			// upstream, so that load tools can take it out.
			if sim, want := timingPhase(res.header.Get("Server-Timing"), "rtt"), rtt[edge+"-"+primary]; sim < want || sim > up {
				t.Errorf("%s\nServer-Timing %q: want an rtt phase of at least the simulated RTT %v and within upstream", line, res.header.Get("Server-Timing"), want)
			}
		case strings.Contains(line, "todo.localhost"):
			kinds["read"] = true
			if edge == "" || !strings.HasPrefix(res.body, fmt.Sprintf("todo machine todo-%[1]s in region %[1]s read ", edge)) {
				t.Errorf("%s\n(a read at the %s edge) got %q, want the answer of todo-%s, the machine of the edge's region", line, edge, res.body, edge)
			}
		case strings.Contains(line, "/stop"):
			kinds["stop"] = true
			var st struct{ ID, State string }
			if err := json.Unmarshal([]byte(res.body), &st); err != nil || st.State != "stopped" || !strings.Contains(line, "/machines/"+st.ID+"/") {
				t.Errorf("%s\ngot %q (%v), want the machine's status, stopped", line, res.body, err)
			}
		case strings.HasSuffix(line, "/v1/machines"):
			kinds["machines"] = true
			var ms []struct {
				ID        string
				Reachable bool
			}
			if err := json.Unmarshal([]byte(res.body), &ms); err != nil {
				t.Errorf("%s\ngot %q: %v", line, res.body, err)
			}
			seen := map[string]bool{}
			for _, m := range ms {
				seen[m.ID] = m.Reachable
			}
			for _, r := range regionOf {
				for _, id := range []string{"hello-" + r, "todo-" + r} {
					if !seen[id] {
						t.Errorf("%s\nmachine %s missing or unreachable in %s", line, id, res.body)
					}
				}
			}
		case strings.Contains(line, "/metrics"):
			kinds["metrics"] = true
			if !regexp.MustCompile(`(?m)^godwit_replays_total\{app="todo",outcome="replayed"\} [1-9]`).MatchString(res.body) {
				t.Errorf("%s\ngot %q, want the todo app's replays counted", line, res.body)
			}
		default:
			t.Errorf("printed curl line %q: this test does not know what it should answer", line)
		}
	}
	for _, k := range []string{"read", "write", "wake", "stop", "machines", "metrics"} {
		if !kinds[k] {
			t.Errorf("printout has no curl line of kind %q; lines: %q", k, lines)
		}
	}
	if wakeLine != "" && kinds["stop"] {
		// "then the line above wakes it again"
		machinePID = checkDemoWake(t, wakeLine, runDemoCurlLine(t, wakeLine))
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("demo exit code after Ctrl-C: got %d, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("demo did not exit within 15s of cancellation")
	}
	if machinePID > 0 {
		if p, err := os.FindProcess(machinePID); err == nil && p.Signal(syscall.Signal(0)) == nil {
			t.Errorf("the woken machine's process %d still runs after the demo exited", machinePID)
		}
	}
	if !strings.Contains(stderr.String(), "every edge drained") {
		t.Errorf("stderr after Ctrl-C lacks the drain report:\n%s", stderr.String())
	}
}

// TestDemoPortsBusy: a demo whose port is taken says so, with the flags
// that move it, and exits 1 having stopped what it started.
func TestDemoPortsBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stdout, stderr syncBuffer
	code := run(t.Context(), []string{"demo", "-http", "127.0.0.1:0", "-admin", ln.Addr().String()}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "address already in use") || !strings.Contains(stderr.String(), "-http 127.0.0.1:18080 -admin 127.0.0.1:19090") {
		t.Errorf("demo on a busy admin port: exit %d, stderr %q; want 1 and the error with the flags to try", code, stderr.String())
	}
	if strings.Contains(stdout.String(), "curl") {
		t.Errorf("demo that could not start printed curl lines:\n%s", stdout.String())
	}
}

// demoCurlResult is what a printed curl line wrote: with -i, the status and
// headers of the (last) response, then the body.
type demoCurlResult struct {
	status int // 0 without -i
	header http.Header
	body   string
}

// runDemoCurlLine runs a printed line in sh, as a user's shell would, without
// the user's proxy or curl settings.
func runDemoCurlLine(t *testing.T, line string) demoCurlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "no_proxy=*", "NO_PROXY=*", "CURL_HOME="+home, "HOME="+home, "XDG_CONFIG_HOME="+home)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	b, err := cmd.Output()
	t.Logf("$ %s  (%v)\n%s", line, time.Since(start).Round(time.Millisecond), b)
	if err != nil {
		t.Errorf("%s: %v\n%s", line, err, errb.String())
	}
	res := demoCurlResult{header: http.Header{}, body: string(b)}
	if !strings.Contains(line, " -si ") && !strings.Contains(line, " -i ") {
		return res
	}
	head, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok {
		t.Errorf("%s: no response head in %q", line, b)
		return res
	}
	res.body = body
	hl := strings.Split(head, "\r\n")
	if f := strings.Fields(hl[0]); len(f) >= 2 {
		res.status, _ = strconv.Atoi(f[1])
	}
	for _, h := range hl[1:] {
		if k, v, ok := strings.Cut(h, ":"); ok {
			res.header.Add(k, strings.TrimSpace(v))
		}
	}
	return res
}

// checkDemoWake checks the answer of the wake line: the forced region's hello
// machine, in a process of its own, with Godwit-Woke and a wake phase. It
// returns the machine's pid.
func checkDemoWake(t *testing.T, line string, res demoCurlResult) int {
	t.Helper()
	m := regexp.MustCompile(`fly-force-region: (\w+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("%s: no region in the line", line)
	}
	r := m[1]
	if res.status != 200 || !strings.HasPrefix(res.header.Get("Godwit-Woke"), "hello-"+r+";dur=") ||
		!strings.HasPrefix(res.body, fmt.Sprintf("Hello from machine hello-%[1]s in region %[1]s (a process of its own, pid ", r)) ||
		timingPhase(res.header.Get("Server-Timing"), "wake") <= 0 {
		t.Errorf("%s\ngot %d Godwit-Woke %q Server-Timing %q body %q; want 200 from hello-%s's own process, woken", line,
			res.status, res.header.Get("Godwit-Woke"), res.header.Get("Server-Timing"), res.body, r)
		return 0
	}
	pid := regexp.MustCompile(`pid (\d+)`).FindStringSubmatch(res.body)
	n, _ := strconv.Atoi(pid[1])
	return n
}

// timingPhase is the duration of one phase in a Server-Timing header,
// -1 when it has none.
func timingPhase(h, phase string) time.Duration {
	for _, e := range strings.Split(h, ",") {
		name, dur, ok := strings.Cut(strings.TrimSpace(e), ";dur=")
		if ok && name == phase {
			ms, err := strconv.ParseFloat(dur, 64)
			if err == nil {
				return time.Duration(ms * float64(time.Millisecond))
			}
		}
	}
	return -1
}

// TestKeygen: godwit keygen prints a key that gossip.secret_key_file
// accepts (base64 of 32 bytes), a new one each time.
func TestKeygen(t *testing.T) {
	keys := map[string]bool{}
	for range 2 {
		var out bytes.Buffer
		if code := run(t.Context(), []string{"keygen"}, &out, &out); code != 0 {
			t.Fatalf("godwit keygen: exit %d: %s", code, out.String())
		}
		k := strings.TrimSpace(out.String())
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			t.Fatalf("godwit keygen printed %q: want base64 of 32 bytes (%v)", k, err)
		}
		keys[k] = true
	}
	if len(keys) != 2 {
		t.Errorf("two runs of godwit keygen printed the same key")
	}
}
