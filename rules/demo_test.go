package rules

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// demoRegions are the regions of `godwit demo`'s edges, in the order it
// prints them.
var demoRegions = []string{"iad", "cdg", "nrt"}

// TestPrometheusDemo is issue 7's check that the demo is what an
// operator can watch: it builds godwit, runs `godwit demo` on free
// loopback ports as a child process, sends it the printed read and
// replayed write (todo.localhost at the cdg edge), has a real Prometheus
// (Debian's prometheus package) scrape the three metrics URLs the demo
// printed, with the rules loaded, and reads the series back through the
// HTTP API.
func TestPrometheusDemo(t *testing.T) {
	bin := needPrometheus(t)
	d := startDemo(t, buildGodwit(t))
	cdg := d.edge(t, "cdg")

	// The demo's "Try:" lines: a read at cdg, answered there, and a
	// write at cdg, answered fly-replay by todo-cdg and replayed to the
	// primary, todo-iad.
	if code, body := d.todo(cdg, http.MethodGet); code != http.StatusOK || !strings.Contains(body, "todo machine todo-cdg") {
		t.Fatalf("GET todo.localhost at edge %s: %d %q; want 200 from todo-cdg", cdg.name, code, body)
	}
	if code, body := d.todo(cdg, http.MethodPost); code != http.StatusCreated || !strings.Contains(body, "replayed here by the edge") {
		t.Fatalf("POST todo.localhost at edge %s: %d %q; want 201 from todo-iad, replayed", cdg.name, code, body)
	}
	// Then a write every 100 ms, so that the replay rate is not zero.
	steadyTraffic(t, 100*time.Millisecond, func() { d.todo(cdg, http.MethodPost) })

	admins := make([]string, len(d.edges))
	for i, e := range d.edges {
		admins[i] = e.admin
	}
	prom := startPrometheus(t, bin, admins...)
	prom.waitTargetsUp(t, 30*time.Second)

	// Each edge sees the three alive.
	prom.poll(t, 30*time.Second, "godwit_gossip_members of every edge", func() error {
		res, err := prom.query(`godwit_gossip_members{state="alive"}`)
		if err != nil {
			return err
		}
		seen := map[string]float64{}
		for _, s := range res {
			seen[s.Metric["instance"]] = s.value()
		}
		for _, e := range d.edges {
			if v, ok := seen[e.admin]; !ok || v != 3 {
				return fmt.Errorf("%s (%s) sees %v alive members (present: %v), want 3; all: %v", e.name, e.admin, v, ok, seen)
			}
		}
		return nil
	})

	// The replays, counted at cdg.
	prom.poll(t, 30*time.Second, "godwit_replays_total at the cdg edge", func() error {
		res, err := prom.query(`godwit_replays_total{app="todo", instance="` + cdg.admin + `"}`)
		if err != nil {
			return err
		}
		outcomes := map[string]float64{}
		for _, s := range res {
			outcomes[s.Metric["outcome"]] += s.value()
		}
		if outcomes["replayed"] < 1 {
			return fmt.Errorf("replays of app todo at %s by outcome %v; want at least 1 replayed", cdg.name, outcomes)
		}
		t.Logf("godwit_replays_total{app=\"todo\"} at %s by outcome: %v", cdg.name, outcomes)
		return nil
	})

	// The request counter.
	prom.poll(t, 30*time.Second, "godwit_requests_total at the cdg edge", func() error {
		res, err := prom.query(`godwit_requests_total{app="todo", instance="` + cdg.admin + `"}`)
		if err != nil {
			return err
		}
		codes := map[string]float64{}
		for _, s := range res {
			codes[s.Metric["code"]] += s.value()
		}
		if codes["2xx"] < 2 {
			return fmt.Errorf("requests of app todo at %s by code class %v; want at least 2 2xx (the read and the write)", cdg.name, codes)
		}
		t.Logf("godwit_requests_total{app=\"todo\"} at %s by code class: %v", cdg.name, codes)
		return nil
	})

	// A recording rule's output: todo's replay rate, from the steady
	// writes.
	prom.poll(t, 30*time.Second, "app:godwit_replays:rate5m of app todo", func() error {
		res, err := prom.query(`app:godwit_replays:rate5m{app="todo"}`)
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].value() <= 0 {
			return fmt.Errorf("got %+v, want one positive rate", res)
		}
		t.Logf("app:godwit_replays:rate5m{app=\"todo\"} = %.2f/s", res[0].value())
		return nil
	})

	prom.waitRulesHealthy(t, 30*time.Second)
}

// buildGodwit builds the godwit binary into a temporary directory and
// returns its path.
func buildGodwit(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "godwit")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/godwit").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ../cmd/godwit: %v\n%s", err, out)
	}
	return bin
}

// runningDemo is a `godwit demo` running as a child process.
type runningDemo struct {
	edges  []demoEdge // as printed: iad, cdg, nrt
	client *http.Client
}

// demoEdge is one edge of the demo, as it printed it.
type demoEdge struct {
	name, region string
	http, admin  string // host:port of the client listener and of /metrics
}

// startDemo runs `bin demo` on free loopback ports and waits until it has
// printed its edges and the lines to try. The test's cleanup stops it
// with SIGINT (Ctrl-C) and expects it to drain and exit 0; it is killed
// if the test process dies first.
func startDemo(t *testing.T, bin string) *runningDemo {
	t.Helper()
	stderrFile := filepath.Join(t.TempDir(), "demo.stderr")
	stderr, err := os.Create(stderrFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "demo", "-http", "127.0.0.1:0", "-admin", "127.0.0.1:0")
	cmd.Stderr = stderr
	dieWithTest(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		stderr.Close()
		t.Fatalf("start %s demo: %v", bin, err)
	}

	// One goroutine reads stdout to its end, then waits for the process:
	// ready is closed once the demo has printed its whole block.
	var (
		mu       sync.Mutex
		printed  []string
		ready    = make(chan struct{})
		exited   = make(chan struct{})
		exitErr  error
		sawReady bool
	)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			printed = append(printed, sc.Text())
			mu.Unlock()
			if !sawReady && strings.HasPrefix(sc.Text(), "Ctrl-C stops it") {
				sawReady = true
				close(ready)
			}
		}
		io.Copy(io.Discard, stdout)
		exitErr = cmd.Wait()
		close(exited)
	}()
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		b, _ := os.ReadFile(stderrFile)
		return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", strings.Join(printed, "\n"), b)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
			if exitErr != nil {
				t.Errorf("godwit demo after SIGINT: %v, want exit status 0", exitErr)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("godwit demo did not exit within 30 s of SIGINT; killing it")
			cmd.Process.Kill()
			<-exited
		}
		stderr.Close()
		if t.Failed() {
			t.Logf("godwit demo's output:\n%s", output())
		}
	})

	select {
	case <-ready:
	case <-exited:
		t.Fatalf("godwit demo exited before it was ready: %v", exitErr)
	case <-time.After(30 * time.Second):
		t.Fatalf("godwit demo not ready within 30 s")
	}

	// The edges' lines:
	//   edge-iad-1  iad  http://127.0.0.1:43343   metrics http://127.0.0.1:36187/metrics
	d := &runningDemo{client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}
	t.Cleanup(d.client.CloseIdleConnections)
	mu.Lock()
	lines := printed
	mu.Unlock()
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) != 5 || !strings.HasPrefix(f[0], "edge-") || f[3] != "metrics" {
			continue
		}
		metrics, err := url.Parse(f[4])
		if err != nil || metrics.Scheme != "http" || metrics.Path != "/metrics" || !strings.HasPrefix(f[2], "http://") {
			t.Fatalf("godwit demo printed %q: want NAME REGION http://HOST:PORT metrics http://HOST:PORT/metrics", line)
		}
		d.edges = append(d.edges, demoEdge{name: f[0], region: f[1], http: strings.TrimPrefix(f[2], "http://"), admin: metrics.Host})
	}
	if len(d.edges) != len(demoRegions) {
		t.Fatalf("godwit demo printed %d edges, want %d (one per region %v):\n%s", len(d.edges), len(demoRegions), demoRegions, strings.Join(lines, "\n"))
	}
	t.Logf("godwit demo ready: %+v", d.edges)
	return d
}

// edge returns the demo's first edge in region.
func (d *runningDemo) edge(t *testing.T, region string) demoEdge {
	t.Helper()
	for _, e := range d.edges {
		if e.region == region {
			return e
		}
	}
	t.Fatalf("godwit demo has no edge in %s: %+v", region, d.edges)
	return demoEdge{}
}

// todo sends a request for todo.localhost to edge e (a POST writes a
// todo) and returns its status and body; 0 and the error if it got no
// response.
func (d *runningDemo) todo(e demoEdge, method string) (int, string) {
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("buy milk")
	}
	req, err := http.NewRequest(method, "http://"+e.http+"/", body)
	if err != nil {
		return 0, err.Error()
	}
	req.Host = "todo.localhost"
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
